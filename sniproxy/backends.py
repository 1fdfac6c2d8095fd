"""
An app's instances as the proxy sees them: which one takes the next
connection (balancing), which ones are skipped for now (passive health),
how many connections an app may hold (its cap), and what each app and
instance has carried (counters, read by a Prometheus collector at scrape
time).

One L{BackendBoard} serves the whole service and survives reloads: live
counts and health carry over, the new config's balancing, caps and
back-offs apply from the next connection.

Passive health only: nothing here sends traffic of its own.  An instance
is judged by the connections the proxy makes to it anyway:

 - a connect refused, reset or timed out (or abandoned because another
   instance connected while this one had had its whole stagger head
   start: what a black-holed instance looks like) ejects it for
   C{eject_base} seconds;
 - an ejected instance is skipped, unless every instance of the app is
   ejected (then all are tried in config order, as without health);
 - once its back-off has passed, the next connection tries it first (the
   probe; one at a time), with the healthy instances behind it as
   failover; success restores it, failure doubles the back-off, up to
   C{eject_max}.

Health is per address: an address shared by several apps has one record.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sniproxy.interfaces import Address, Route
from sniproxy.record import ConnectionRecord, Outcome

__all__ = ["Balance", "BackendBoard", "HealthState", "InstanceStatus", "is_acme"]

log = Logger()

# Labels for routes that name no app: the fixed set of route sources.
FIXED_LABELS = ("static", "subdomain", "txt", "system", "fallback")

ACME_TLS_1 = b"acme-tls/1"

# (app, addresses) plans remembered; DNS-expanded instances bound it.
_MAX_PLANS = 4096


class HealthState(str, enum.Enum):
    """An instance's passive health."""

    UP = "up"
    EJECTED = "ejected"
    PROBING = "probing"


class Balance(str, enum.Enum):
    """C{[apps.<id>] balance}: how an app's next connection picks its instance."""

    LEAST_CONNECTIONS = "least-connections"
    FIRST = "first"
    RANDOM = "random"


@dataclass(frozen=True)
class InstanceStatus:
    """
    One instance of one app, now.

    @ivar app: the app id.
    @ivar address: C{"host:port"}.
    @ivar state: its passive health.
    @ivar ejected_until: reactor seconds its back-off ends, C{None} when up.
    @ivar live: connections relayed to this address now (all apps).
    @ivar total: connections ever made to this address.
    @ivar connect_failures: failed connect attempts to this address.
    @ivar bytes_up: bytes relayed to this address, of closed connections.
    @ivar bytes_down: bytes relayed from this address, of closed connections.
    @ivar max_connections: the app's cap, 0 for none.
    """

    app: str
    address: str
    state: HealthState
    ejected_until: float | None
    live: int
    total: int
    connect_failures: int
    bytes_up: int
    bytes_down: int
    max_connections: int


def is_acme(alpn) -> bool:
    """Whether a ClientHello's ALPN list is exactly C{acme-tls/1} (an RFC 8737 validation)."""
    return len(alpn) == 1 and alpn[0] == ACME_TLS_1


class _Instance:
    """The health and counters of one address."""

    __slots__ = (
        "address",
        "state",
        "backoff",
        "ejected_until",
        "live",
        "total",
        "connect_failures",
        "bytes_up",
        "bytes_down",
    )

    def __init__(self, address: Address) -> None:
        self.address = address
        self.state = HealthState.UP
        self.backoff = 0.0
        self.ejected_until: float | None = None
        self.live = 0
        self.total = 0
        self.connect_failures = 0
        self.bytes_up = 0
        self.bytes_down = 0


class _Label:
    """The counters of one app (or one fixed label), and its settings."""

    __slots__ = (
        "name",
        "balance",
        "max_connections",
        "configured",
        "live",
        "outcomes",
        "bytes_up",
        "bytes_down",
        "seen",
        "declared",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = Balance.LEAST_CONNECTIONS
        self.max_connections = 0
        self.configured = True
        self.live = 0
        self.outcomes: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        # The instance addresses of an app, in config order, as far as
        # known (an instance named by host name or without a port is
        # known once a route has expanded it).
        self.seen: dict[Address, None] = {}
        # The addresses the config names outright (IP literal and port).
        self.declared: frozenset[Address] = frozenset()


class BackendBoard:
    """
    Balancing, passive health, per-app caps and per-app/instance counters,
    one per service.

    @ivar eject_base: seconds of an instance's first ejection.
    @ivar eject_max: the longest back-off, in seconds.
    """

    def __init__(
        self,
        clock: IReactorTime,
        random: Callable[[], float] = _random.random,
        eject_base: float = 1.0,
        eject_max: float = 30.0,
    ) -> None:
        self.clock = clock
        self.random = random
        self.eject_base = eject_base
        self.eject_max = eject_max
        self._labels: dict[str, _Label] = {name: _Label(name) for name in FIXED_LABELS}
        self._apps: tuple[str, ...] = ()
        self._instances: dict[Address, _Instance] = {}
        self._plans: dict[tuple[str, tuple[Address, ...]], tuple[_Instance, ...]] = {}

    # -- configuration

    def configure(self, config) -> None:
        """
        Apply a (re)loaded L{sniproxy.config.Config}: its apps' balancing
        and caps, and C{[proxy] eject_base}/C{eject_max}.  Counters, live
        counts and health carry over; an app no longer configured stops
        being exported once its last connection closes.
        """
        proxy = config.proxy
        self.eject_base = getattr(proxy, "eject_base", self.eject_base)
        self.eject_max = getattr(proxy, "eject_max", self.eject_max)
        self.configure_apps(config.apps)

    def configure_apps(self, apps: Mapping) -> None:
        """Apply the C{[apps]} table (see L{configure})."""
        old = self._labels
        labels: dict[str, _Label] = {name: old[name] for name in FIXED_LABELS}
        for app_id, app in apps.items():
            label = old.get(app_id) or _Label(app_id)
            if app_id in FIXED_LABELS:
                # An app id equal to a fixed label shares its series.
                label = labels[app_id]
            label.configured = True
            label.balance = Balance(getattr(app, "balance", Balance.LEAST_CONNECTIONS))
            label.max_connections = getattr(app, "max_connections", 0)
            label.seen = {
                Address(backend.host, backend.port): None
                for backend in app.backends
                if backend.port is not None and _literal(backend.host)
            }
            label.declared = frozenset(label.seen)
            labels[app_id] = label
        for name, label in old.items():
            if name not in labels and label.live > 0:
                label.configured = False
                labels[name] = label
        self._labels = labels
        self._apps = tuple(apps)
        self._plans = {}
        keep: set[Address] = set()
        for label in labels.values():
            keep.update(label.seen)
        self._instances = {
            address: instance
            for address, instance in self._instances.items()
            if address in keep or instance.live > 0 or instance.state is not HealthState.UP
        }

    # -- a connection's way through

    def admit(self, route: Route, alpn=()) -> tuple[Address, ...] | None:
        """
        Take a routed connection: count it live for its app (or fixed
        label) and order the route's addresses for the connector.

        @param alpn: the client's ALPN list; exactly C{acme-tls/1} is not
            balanced (the first healthy instance in config order takes it,
            so a tls-alpn-01 validation reaches the instance that asked).
        @return: the addresses to try, in order, or C{None} when the app
            is at its C{max_connections} (the connection is not counted).
        """
        app_id = route.app
        label = self._labels.get(app_id if app_id is not None else route.source)
        if label is None:
            return route.backends
        if app_id is None:
            label.live += 1
            return route.backends
        cap = label.max_connections
        if cap and label.live >= cap:
            return None
        label.live += 1
        backends = route.backends
        plan = self._plans.get((app_id, backends))
        if plan is None:
            plan = self._plan(label, backends)
        if len(plan) == 1:
            return backends
        return self._order(plan, label.balance, is_acme(alpn))

    def _plan(self, label: _Label, backends: tuple[Address, ...]) -> tuple[_Instance, ...]:
        if len(self._plans) >= _MAX_PLANS:
            self._prune()
        instances = self._instances
        plan = []
        for address in backends:
            instance = instances.get(address)
            if instance is None:
                instance = instances[address] = _Instance(address)
            plan.append(instance)
            label.seen.setdefault(address, None)
        plan = tuple(plan)
        self._plans[(label.name, backends)] = plan
        return plan

    def _prune(self) -> None:
        """
        Forget the plans, and the instances that DNS once expanded a
        backend to but that are idle and healthy now: rotating backend
        addresses must not grow the instance list (and its metric series)
        without bound.  Declared, live and unhealthy instances stay.
        """
        self._plans = {}
        instances = self._instances

        def kept(address: Address) -> bool:
            instance = instances.get(address)
            return instance is not None and (instance.live > 0 or instance.state is not HealthState.UP)

        keep: set[Address] = set()
        for label in self._labels.values():
            label.seen = {a: None for a in label.seen if a in label.declared or kept(a)}
            keep.update(label.seen)
        self._instances = {address: instance for address, instance in instances.items() if address in keep}

    def _order(self, plan: tuple[_Instance, ...], balance: Balance, acme: bool) -> tuple[Address, ...]:
        healthy: list[_Instance] = []
        probe: _Instance | None = None
        now = None
        UP, EJECTED = HealthState.UP, HealthState.EJECTED
        for instance in plan:
            state = instance.state
            if state is UP:
                healthy.append(instance)
            elif state is EJECTED and probe is None and not acme:
                if now is None:
                    now = self.clock.seconds()
                if instance.ejected_until <= now:
                    probe = instance
        if probe is not None:
            # This connection probes the instance; the healthy ones stand
            # behind it, staggered, so the client barely notices a failure.
            probe.state = HealthState.PROBING
            if not healthy:
                # Every instance is ejected: the probe first, then the rest
                # in config order, as without health.
                return (probe.address, *(i.address for i in plan if i is not probe))
            return (probe.address, *(i.address for i in healthy))
        if not healthy:
            # Every instance is ejected: try them all, as without health.
            return tuple(i.address for i in plan)
        count = len(healthy)
        if count == 1 or acme or balance is Balance.FIRST:
            return tuple(i.address for i in healthy)
        if balance is Balance.RANDOM:
            chosen = healthy[int(self.random() * count) % count]
        else:
            fewest = min(i.live for i in healthy)
            candidates = [i for i in healthy if i.live == fewest]
            chosen = candidates[int(self.random() * len(candidates)) % len(candidates)]
        return (chosen.address, *(i.address for i in healthy if i is not chosen))

    # -- the connector's reports (see sniproxy.connect)

    def attempt_won(self, address: Address) -> None:
        """A connect to C{address} succeeded: count it live, restore it if it was ejected."""
        instance = self._instances.get(address)
        if instance is None:
            instance = self._instances[address] = _Instance(address)
        instance.live += 1
        instance.total += 1
        if instance.state is not HealthState.UP:
            backoff = instance.backoff
            instance.state = HealthState.UP
            instance.backoff = 0.0
            instance.ejected_until = None
            log.info(
                "backend {address} of {apps} restored: a connection succeeded (last back-off {backoff:g}s)",
                address=str(address),
                apps=self._apps_of(address),
                backoff=backoff,
            )

    def attempt_failed(self, address: Address, why: str) -> None:
        """
        A connect to C{address} was refused, reset, timed out, or lost the
        race after its whole stagger head start: eject it (or, for a
        failed probe, double its back-off).
        """
        instance = self._instances.get(address)
        if instance is None:
            instance = self._instances[address] = _Instance(address)
        instance.connect_failures += 1
        now = self.clock.seconds()
        state = instance.state
        if state is HealthState.UP:
            instance.backoff = self.eject_base
            instance.ejected_until = now + instance.backoff
            instance.state = HealthState.EJECTED
            log.warn(
                "backend {address} of {apps} ejected for {backoff:g}s: {why}",
                address=str(address),
                apps=self._apps_of(address),
                backoff=instance.backoff,
                why=why,
            )
        elif state is HealthState.PROBING or instance.ejected_until <= now:
            # A probe failed (or, every instance being ejected, this one was
            # tried after its back-off): wait twice as long.  Failures of
            # attempts that started before the ejection change nothing.
            instance.backoff = min(max(instance.backoff * 2, self.eject_base), self.eject_max)
            instance.ejected_until = now + instance.backoff
            instance.state = HealthState.EJECTED

    def attempt_dropped(self, address: Address) -> None:
        """An attempt was abandoned with no verdict: a probe in it may run again."""
        instance = self._instances.get(address)
        if instance is not None and instance.state is HealthState.PROBING:
            instance.state = HealthState.EJECTED

    def record_closed(self, record: ConnectionRecord) -> None:
        """
        Count a closed connection (a record observer of the factory): its
        outcome and bytes for its app, and it is no longer live.
        """
        app_id = record.app
        up, down = record.bytes_up, record.bytes_down
        # The instance first: its connect counted it live whether or not
        # the app's label still exists (a reload may have dropped the app
        # while this connection was routing on the old router).
        if app_id is not None and record.backend is not None:
            instance = self._instances.get(record.backend)
            if instance is not None:
                instance.live -= 1
                instance.bytes_up += up
                instance.bytes_down += down
        label = self._labels.get(app_id if app_id is not None else record.source)
        if label is None:
            return
        outcome = record.outcome
        label.outcomes[outcome] = label.outcomes.get(outcome, 0) + 1
        label.bytes_up += up
        label.bytes_down += down
        # A connection refused by the app's cap was never counted live.
        if outcome != Outcome.OVER_LIMIT:
            label.live -= 1
            if label.live <= 0 and not label.configured:
                self._labels.pop(label.name, None)

    # -- reading

    def _apps_of(self, address: Address) -> str:
        return ", ".join(app for app in self._apps if address in self._labels[app].seen) or "no app"

    def instances(self) -> list[InstanceStatus]:
        """Every known instance of every configured app, in config order."""
        result = []
        for app_id in self._apps:
            label = self._labels[app_id]
            for address in label.seen:
                instance = self._instances.get(address)
                if instance is None:
                    instance = _Instance(address)
                result.append(
                    InstanceStatus(
                        app=app_id,
                        address=str(address),
                        state=instance.state,
                        ejected_until=instance.ejected_until,
                        live=instance.live,
                        total=instance.total,
                        connect_failures=instance.connect_failures,
                        bytes_up=instance.bytes_up,
                        bytes_down=instance.bytes_down,
                        max_connections=label.max_connections,
                    )
                )
        return result

    def describe(self, route: Route) -> list[dict]:
        """The health of a route's addresses, for C{/explain}."""
        now = self.clock.seconds()
        described = []
        for address in route.backends:
            instance = self._instances.get(address)
            state = instance.state if instance is not None else HealthState.UP
            entry = {"address": str(address), "state": state.value, "live": instance.live if instance else 0}
            if instance is not None and instance.ejected_until is not None:
                entry["ejected_for"] = round(max(instance.ejected_until - now, 0.0), 3)
            described.append(entry)
        return described

    def live(self, label: str) -> int:
        """Live connections of an app (or fixed label)."""
        entry = self._labels.get(label)
        return entry.live if entry is not None else 0

    def collector(self) -> _Collector:
        """A C{prometheus_client} collector reading this board at scrape time."""
        return _Collector(self)


def _literal(host: str) -> bool:
    from sniproxy.addresses import is_ip_literal

    return is_ip_literal(host)


class _Collector:
    """The board's counters as Prometheus metrics, read at scrape time."""

    def __init__(self, board: BackendBoard) -> None:
        self.board = board

    def collect(self) -> Iterator:
        board = self.board
        labels = list(board._labels.values())
        connections = CounterMetricFamily(
            "sniproxy_app_connections", "Connections closed, by app (or route source) and outcome", labels=["app", "outcome"]
        )
        relayed = CounterMetricFamily(
            "sniproxy_app_bytes", "Bytes relayed by closed connections, by app and direction", labels=["app", "direction"]
        )
        live = GaugeMetricFamily("sniproxy_app_live_connections", "Connections open now, by app", labels=["app"])
        for label in labels:
            for outcome, count in label.outcomes.items():
                connections.add_metric([label.name, outcome.value if isinstance(outcome, Outcome) else str(outcome)], count)
            relayed.add_metric([label.name, "up"], label.bytes_up)
            relayed.add_metric([label.name, "down"], label.bytes_down)
            live.add_metric([label.name], label.live)
        yield connections
        yield relayed
        yield live
        up = GaugeMetricFamily("sniproxy_backend_up", "1 when an app instance is up, 0 while ejected or probed", labels=["app", "address"])
        instance_live = GaugeMetricFamily(
            "sniproxy_backend_live_connections", "Connections open now to an instance address", labels=["app", "address"]
        )
        failures = CounterMetricFamily(
            "sniproxy_backend_connect_failures", "Failed connect attempts to an instance address", labels=["app", "address"]
        )
        for status in board.instances():
            key = [status.app, status.address]
            up.add_metric(key, 1 if status.state is HealthState.UP else 0)
            instance_live.add_metric(key, status.live)
            failures.add_metric(key, status.connect_failures)
        yield up
        yield instance_live
        yield failures
