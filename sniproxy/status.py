"""
What the status page shows, as one frozen L{Snapshot} built from what the
proxy already keeps: the Prometheus counters of L{sniproxy.metrics}, the
live connection count, the backends' board and the DNS cache's counters.

Nothing here runs per connection.  Connection rates come from a ring of
per-outcome totals that one L{LoopingCall} samples every second
(L{RateSampler}); everything else is read when a page is asked for.

Two providers are injected: an L{IBackendStatus} (the service's
L{sniproxy.backends.BackendBoard}) and an L{IDNSStatus} (the process's
L{sniproxy.dns.cache.CachingResolver}).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import Attribute, Interface

import sniproxy
from sniproxy.record import Outcome

__all__ = [
    "MAX_INSTANCES",
    "MAX_NAMES",
    "OUTCOMES",
    "IBackendStatus",
    "IDNSStatus",
    "RateSampler",
    "Snapshot",
    "StatusCollector",
]

# Every outcome the page shows, in the order it shows them: the ones an
# operator looks for first, then the quiet ones.
OUTCOMES: tuple[str, ...] = tuple(
    outcome.value
    for outcome in (
        Outcome.RELAYED,
        Outcome.NO_ROUTE,
        Outcome.MALFORMED,
        Outcome.HELLO_TIMEOUT,
        Outcome.ROUTING_FAILED,
        Outcome.BACKEND_UNREACHABLE,
        Outcome.OVER_LIMIT,
        Outcome.DENIED,
        Outcome.CLIENT_CLOSED,
        Outcome.SHUTDOWN,
        Outcome.INTERNAL_ERROR,
    )
)

#: At most this many instance rows on the page and in the JSON.
MAX_INSTANCES = 200
#: The most used DNS names shown.
MAX_NAMES = 20

# Rate windows (seconds), sampled once a second.
SHORT_WINDOW = 10.0
LONG_WINDOW = 300.0

_HEALTH = ("up", "ejected", "probing")


class IBackendStatus(Interface):
    """What the status page reads about backends (contract 2)."""

    def instances() -> list[Any]:
        """
        Every instance, in config order, each with the attributes of
        C{sniproxy.backends.InstanceStatus}: C{app}, C{address}, C{state}
        (C{"up"}, C{"ejected"}, C{"probing"}), C{ejected_until} (reactor
        seconds or C{None}), C{live}, C{total}, C{connect_failures},
        C{bytes_up}, C{bytes_down}, C{max_connections}.
        """


class IDNSStatus(Interface):
    """What the status page reads about the DNS cache (contract 3)."""

    counters = Attribute(
        "An object with the cache's counters as int attributes: hits, misses, stale, negative_hits, "
        "merged, upstream_queries, upstream_failures, entries, in_flight (absent ones read 0)."
    )

    def entries_status(limit: int) -> tuple[int, list[Any]]:
        """
        The number of entries and at most C{limit} of them, most used
        first, each with C{name}, C{type}, C{state}, C{ttl_left}, C{hits},
        C{origin}.
        """


# -- the snapshot


@dataclass(frozen=True, slots=True)
class Header:
    """
    @ivar now: wall-clock time of the snapshot (epoch seconds).
    @ivar uptime: seconds since the service was made.
    @ivar loaded_at: wall-clock time of the last successful load or reload.
    @ivar last_reload_error: the one-line error of the last failed reload,
        C{None} when the last one succeeded (or there was none).
    @ivar workers: worker processes configured (1: the main process serves).
    @ivar workers_serving: of those, how many serve now.
    """

    version: str
    now: float
    uptime: float
    config_path: str
    loaded_at: float
    last_reload_error: str | None
    workers: int = 1
    workers_serving: int = 1


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    """
    @ivar total: connections that ended so, since start.
    @ivar rate_10s: per second over the last 10 s (see L{Connections}).
    @ivar rate_5m: per second over the last 5 min.
    """

    outcome: str
    total: int
    rate_10s: float
    rate_5m: float


@dataclass(frozen=True, slots=True)
class Connections:
    """
    @ivar live: connections open now.
    @ivar window_10s: seconds the short rate actually covers (less than 10
        just after start).
    @ivar window_5m: likewise for the long rate.
    @ivar bytes_up: bytes relayed client -> backend, since start.
    """

    live: int
    total: int
    rate_10s: float
    rate_5m: float
    window_10s: float
    window_5m: float
    outcomes: tuple[OutcomeCount, ...]
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True, slots=True)
class Instance:
    """
    One backend instance.  C{state} is C{"up"}, C{"ejected"} or
    C{"probing"}; C{ejected_until} is wall-clock time (epoch seconds) and
    C{ejected_for} the seconds left, both C{None} unless ejected.
    """

    app: str
    address: str
    state: str
    ejected_until: float | None
    ejected_for: float | None
    live: int
    total: int
    connect_failures: int
    bytes_up: int
    bytes_down: int
    max_connections: int


@dataclass(frozen=True, slots=True)
class Apps:
    """
    @ivar instances: at most L{MAX_INSTANCES}, in config order.
    @ivar total_instances: how many there are in all (more than shown when
        truncated).
    """

    apps: int
    total_instances: int
    instances: tuple[Instance, ...]

    @property
    def truncated(self) -> bool:
        return self.total_instances > len(self.instances)


@dataclass(frozen=True, slots=True)
class DNSName:
    name: str
    type: str
    state: str
    ttl_left: float
    hits: int
    origin: str


@dataclass(frozen=True, slots=True)
class DNS:
    """
    @ivar hit_rate: the share of lookups answered from the cache (fresh,
        negative or stale), C{None} before the first lookup.
    @ivar names: the most used names, at most L{MAX_NAMES}.
    """

    entries: int
    lookups: int
    hit_rate: float | None
    hits: int
    negative_hits: int
    stale: int
    misses: int
    merged: int
    upstream_queries: int
    upstream_failures: int
    in_flight: int
    names: tuple[DNSName, ...]

    @property
    def truncated(self) -> bool:
        return self.entries > len(self.names)


@dataclass(frozen=True, slots=True)
class SourceCount:
    """One routing source, in routing order, and the connections it routed."""

    name: str
    decisions: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the status page and C{/status.json} show, at one moment."""

    header: Header
    connections: Connections
    apps: Apps
    dns: DNS
    sources: tuple[SourceCount, ...]

    def as_json(self) -> dict[str, Any]:
        """The documented C{/status.json} document (docs/status-page.rst)."""
        h, c, a, d = self.header, self.connections, self.apps, self.dns
        return {
            "version": h.version,
            "now": h.now,
            "uptime": h.uptime,
            "config": {"path": h.config_path, "loaded_at": h.loaded_at, "last_reload_error": h.last_reload_error},
            **({"workers": {"count": h.workers, "serving": h.workers_serving}} if h.workers > 1 else {}),
            "connections": {
                "live": c.live,
                "total": c.total,
                "rate_10s": c.rate_10s,
                "rate_5m": c.rate_5m,
                "window_10s": c.window_10s,
                "window_5m": c.window_5m,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "outcomes": {
                    o.outcome: {"total": o.total, "rate_10s": o.rate_10s, "rate_5m": o.rate_5m} for o in c.outcomes
                },
            },
            "apps": {
                "apps": a.apps,
                "total_instances": a.total_instances,
                "truncated": a.truncated,
                "instances": [
                    {
                        "app": i.app,
                        "address": i.address,
                        "state": i.state,
                        "ejected_until": i.ejected_until,
                        "live": i.live,
                        "total": i.total,
                        "connect_failures": i.connect_failures,
                        "bytes_up": i.bytes_up,
                        "bytes_down": i.bytes_down,
                        "max_connections": i.max_connections,
                    }
                    for i in a.instances
                ],
            },
            "dns": {
                "entries": d.entries,
                "lookups": d.lookups,
                "hit_rate": d.hit_rate,
                "hits": d.hits,
                "negative_hits": d.negative_hits,
                "stale": d.stale,
                "misses": d.misses,
                "merged": d.merged,
                "upstream_queries": d.upstream_queries,
                "upstream_failures": d.upstream_failures,
                "in_flight": d.in_flight,
                "truncated": d.truncated,
                "names": [
                    {
                        "name": n.name,
                        "type": n.type,
                        "state": n.state,
                        "ttl_left": n.ttl_left,
                        "hits": n.hits,
                        "origin": n.origin,
                    }
                    for n in d.names
                ],
            },
            "sources": [{"name": s.name, "decisions": s.decisions} for s in self.sources],
        }


# -- rates


class RateSampler:
    """
    A ring of C{(time, totals)} samples taken every C{interval} seconds by
    one L{LoopingCall}, for rates over the last C{SHORT_WINDOW} and
    C{LONG_WINDOW} seconds.

    @param totals: returns the per-outcome totals, in L{OUTCOMES} order.
    """

    def __init__(
        self, totals: Callable[[], tuple[int, ...]], clock: IReactorTime, interval: float = 1.0, keep: float = LONG_WINDOW
    ) -> None:
        self._totals = totals
        self._clock = clock
        self.interval = interval
        self._ring: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=int(keep / interval) + 2)
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """Sample now and every C{interval} seconds (again: nothing)."""
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop sampling (again, or never started: nothing).  The ring stays."""
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        self._ring.append((self._clock.seconds(), self._totals()))

    def rates(self, window: float, now: float, current: tuple[int, ...]) -> tuple[float, tuple[float, ...]]:
        """
        Per-second rates of each total over the last C{window} seconds: from
        the oldest sample in the window to C{current} at C{now}.

        @return: the seconds actually covered (0 when there is no sample old
            enough to say), and the rates (all 0 then).
        """
        start = now - window - self.interval / 2
        for taken, totals in self._ring:
            if taken >= start:
                span = now - taken
                if span < self.interval / 2:
                    break
                return span, tuple(max(0, c - t) / span for c, t in zip(current, totals))
        return 0.0, (0.0,) * len(current)


def _counter_values(counter: Any, label: str) -> dict[str, float]:
    """The C{_total} of each child of a labelled Prometheus counter, by one label."""
    values: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                values[key] = values.get(key, 0.0) + sample.value
    return values


def _type_name(value: Any) -> str:
    if isinstance(value, int):
        from twisted.names import dns

        return dns.QUERY_TYPES.get(value, str(value))
    return str(value)


class StatusCollector:
    """
    Builds L{Snapshot}s for the admin endpoint.

    @param metrics: the service's L{sniproxy.metrics.ProxyMetrics}.
    @param live: returns the number of connections open now.
    @param service: the L{sniproxy.service.ProxyService} (or anything with
        C{config}, C{config_path}, C{loaded_at} and C{last_reload_error}).
    @ivar sampler: the L{RateSampler}; the service starts it while the
        admin endpoint listens.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        metrics: Any,
        live: Callable[[], int],
        service: Any,
        backends: IBackendStatus,
        dns: IDNSStatus,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.live = live
        self.service = service
        self.backends = backends
        self.dns = dns
        self.started = clock.seconds()
        self.sampler = RateSampler(self.outcome_totals, clock)

    def outcome_totals(self) -> tuple[int, ...]:
        """Connections ended so far, per outcome, in L{OUTCOMES} order."""
        values = _counter_values(self.metrics.connections, "outcome")
        return tuple(int(values.get(outcome, 0)) for outcome in OUTCOMES)

    def snapshot(self) -> Snapshot:
        """What the proxy looks like now."""
        now = self.clock.seconds()
        wall = time.time()
        return Snapshot(
            header=self._header(now, wall),
            connections=self._connections(now),
            apps=self._apps(now, wall),
            dns=self._dns(),
            sources=self._sources(),
        )

    def _header(self, now: float, wall: float) -> Header:
        service = self.service
        return Header(
            version=sniproxy.__version__,
            now=wall,
            uptime=now - self.started,
            config_path=service.config_path,
            loaded_at=wall - (now - service.loaded_at),
            last_reload_error=service.last_reload_error,
            **dict(zip(("workers", "workers_serving"), getattr(service, "workers_status", (1, 1)))),
        )

    def _connections(self, now: float) -> Connections:
        current = self.outcome_totals()
        short, short_rates = self.sampler.rates(SHORT_WINDOW, now, current)
        long, long_rates = self.sampler.rates(LONG_WINDOW, now, current)
        relayed = _counter_values(self.metrics.relayed_bytes, "direction")
        return Connections(
            live=self.live(),
            total=sum(current),
            rate_10s=sum(short_rates),
            rate_5m=sum(long_rates),
            window_10s=short,
            window_5m=long,
            outcomes=tuple(
                OutcomeCount(outcome, total, s, l)
                for outcome, total, s, l in zip(OUTCOMES, current, short_rates, long_rates)
            ),
            bytes_up=int(relayed.get("up", 0)),
            bytes_down=int(relayed.get("down", 0)),
        )

    def _apps(self, now: float, wall: float) -> Apps:
        rows = self.backends.instances()
        shown = []
        for row in rows[:MAX_INSTANCES]:
            state = str(getattr(row.state, "value", row.state))
            until = row.ejected_until if state == "ejected" else None
            shown.append(
                Instance(
                    app=str(row.app),
                    address=str(row.address),
                    state=state,
                    ejected_until=None if until is None else wall + (until - now),
                    ejected_for=None if until is None else max(0.0, until - now),
                    live=int(row.live),
                    total=int(row.total),
                    connect_failures=int(row.connect_failures),
                    bytes_up=int(row.bytes_up),
                    bytes_down=int(row.bytes_down),
                    max_connections=int(row.max_connections),
                )
            )
        apps = len(self.service.config.apps)
        return Apps(apps=apps, total_instances=len(rows), instances=tuple(shown))

    def _dns(self) -> DNS:
        counters = self.dns.counters
        count = {
            name: int(getattr(counters, name, 0) or 0)
            for name in (
                "hits",
                "negative_hits",
                "stale",
                "misses",
                "merged",
                "upstream_queries",
                "upstream_failures",
                "in_flight",
            )
        }
        entries, listed = self.dns.entries_status(MAX_NAMES)
        lookups = count["hits"] + count["negative_hits"] + count["stale"] + count["misses"] + count["merged"]
        cached = count["hits"] + count["negative_hits"] + count["stale"]
        names = tuple(
            DNSName(
                name=str(e.name),
                type=_type_name(e.type),
                state=str(getattr(e.state, "value", e.state)),
                ttl_left=float(e.ttl_left),
                hits=int(e.hits),
                origin=str(getattr(e.origin, "value", e.origin)),
            )
            for e in listed[:MAX_NAMES]
        )
        return DNS(
            entries=int(entries),
            lookups=lookups,
            hit_rate=cached / lookups if lookups else None,
            names=names,
            **count,
        )

    def _sources(self) -> tuple[SourceCount, ...]:
        counts = _counter_values(self.metrics.routed, "source")
        config = self.service.config
        order = list(config.routing.sources)
        if config.proxy.fallback is not None:
            order.append("fallback")
        # Sources no longer configured (a reload dropped them) keep their counts.
        order.extend(sorted(name for name in counts if name not in order))
        return tuple(SourceCount(name, int(counts.get(name, 0))) for name in order)
