"""
Prometheus metrics, with the well-kept C{prometheus_client}.

Each service has its own registry (tests and embedders may run several
proxies in one process).  Counters move when a connection ends; the
histograms take the timings the connection recorded on its way.

The per-connection side is plain integers: observing a record adds to a
few counts and one bucket of each histogram, with no lock and no
C{prometheus_client} object involved.  A custom collector turns those
counts into the same metric families (names, labels, values, C{_created})
a C{prometheus_client} C{Counter} or C{Histogram} would expose, at scrape
time only.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from sniproxy.record import ConnectionRecord, Outcome

__all__ = ["OUTCOMES", "ProxyMetrics"]

# Every outcome, so each label exists (at zero) from the first scrape.
OUTCOMES = tuple(Outcome)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The DNS cache's counters, as exposed (name suffix, help).
_DNS_COUNTERS = (
    ("hits", "Answers from a fresh cache entry"),
    ("misses", "Lookups that found no usable entry"),
    ("stale", "Stale answers served (RFC 8767)"),
    ("negative_hits", "Cached NXDOMAIN/NODATA answers served"),
    ("merged", "Lookups that joined an upstream query already in flight"),
    ("evictions", "Entries evicted by the LRU bound"),
    ("upstream_queries", "Queries sent upstream"),
    ("upstream_failures", "Upstream queries that failed (timeout, SERVFAIL, refused)"),
)


class _DNSCollector:
    """Reads the DNS cache's own counters at scrape time."""

    def __init__(self, counters: Callable[[], Any]) -> None:
        self.counters = counters

    def collect(self):
        counters = self.counters()
        if counters is None:
            return
        for name, documentation in _DNS_COUNTERS:
            family = CounterMetricFamily(f"sniproxy_dns_cache_{name}", documentation)
            family.add_metric([], getattr(counters, name, 0))
            yield family
        entries = GaugeMetricFamily("sniproxy_dns_cache_entries", "Entries in the DNS cache")
        entries.add_metric([], getattr(counters, "entries", 0))
        yield entries


class Count:
    """
    One labelled counter's value: a plain number that L{inc} (or C{value
    += n}) moves, read at scrape time.

    @ivar value: the count.
    @ivar created: when it was made (C{time.time()}), for C{_created}.
    """

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Add C{amount} (default 1)."""
        self.value += amount


class LabelledCounter:
    """
    A counter family of plain L{Count}s by label values, with the
    C{labels(...)} and C{collect()} of a C{prometheus_client} C{Counter}
    (so readers such as the status page use it unchanged).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        """The L{Count} for these label values, made at zero the first time."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, given {values!r}")
            child = self.children[values] = Count()
        return child

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(list(values), child.value, created=child.created)
        yield family


class PlainHistogram:
    """
    A histogram as a plain array of bucket counts and a sum; L{observe}
    costs one C{bisect}, the cumulative buckets are built at scrape time.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        # One count per bound, and the last for +Inf.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        """Count C{value} in the first bucket whose bound is at least C{value}."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, self.sum)
        family.add_sample(self.name + "_created", {}, self.created)
        yield family


class _Collector:
    """Exposes the plain counts and histograms at scrape time."""

    def __init__(self, parts: Sequence[LabelledCounter | PlainHistogram]) -> None:
        self.parts = parts

    def collect(self):
        for part in self.parts:
            yield from part.collect()


class ProxyMetrics:
    """
    @ivar registry: the registry to expose (see L{sniproxy.admin}).
    @ivar connections: C{sniproxy_connections}, by C{outcome}.
    @ivar routed: C{sniproxy_routed_connections}, by C{source} and C{cache}.
    @ivar relayed_bytes: C{sniproxy_relayed_bytes}, by C{direction}.
    @ivar route_seconds: the C{sniproxy_route_decision_seconds} histogram.
    @ivar setup_seconds: the C{sniproxy_connection_setup_seconds} histogram.
    """

    def __init__(self, live: Callable[[], int], dns_counters: Callable[[], Any] = lambda: None) -> None:
        self.registry = registry = CollectorRegistry()
        self.connections = LabelledCounter("sniproxy_connections", "Connections handled, by outcome", ["outcome"])
        # Children bound once, so observing a record is attribute work only.
        self._outcomes = {outcome: self.connections.labels(outcome.value) for outcome in OUTCOMES}
        self.routed = LabelledCounter(
            "sniproxy_routed_connections",
            "Connections routed, by the source that answered and the DNS cache state",
            ["source", "cache"],
        )
        self.route_seconds = PlainHistogram(
            "sniproxy_route_decision_seconds",
            "Time from the complete ClientHello to the routing decision",
            _LATENCY_BUCKETS,
        )
        self.setup_seconds = PlainHistogram(
            "sniproxy_connection_setup_seconds",
            "Time from accept to the backend connection being established",
            _LATENCY_BUCKETS,
        )
        self.relayed_bytes = LabelledCounter("sniproxy_relayed_bytes", "Bytes relayed, by direction", ["direction"])
        self._routed: dict[tuple[str, str], Count] = {}
        self._up = self.relayed_bytes.labels("up")
        self._down = self.relayed_bytes.labels("down")
        registry.register(
            _Collector((self.connections, self.routed, self.route_seconds, self.setup_seconds, self.relayed_bytes))
        )
        live_gauge = Gauge("sniproxy_live_connections", "Connections open now", registry=registry)
        live_gauge.set_function(live)
        registry.register(_DNSCollector(dns_counters))

    def over_limit(self) -> None:
        """Count a connection refused at accept by a connection limit."""
        self._outcomes[Outcome.OVER_LIMIT].value += 1

    def denied(self) -> None:
        """Count a connection refused at accept by C{proxy.allow_clients}/C{deny_clients}."""
        self._outcomes[Outcome.DENIED].value += 1

    def observe(self, record: ConnectionRecord) -> None:
        """Count a closed connection (a record observer of L{sniproxy.proxy.ProxyFactory})."""
        self._outcomes[record.outcome].value += 1
        seconds = record.route_seconds
        if seconds is not None:
            histogram = self.route_seconds
            histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
            histogram.sum += seconds
        source = record.source
        if source is not None:
            key = (source, record.cache or "none")
            routed = self._routed.get(key)
            if routed is None:
                routed = self._routed[key] = self.routed.labels(*key)
            routed.value += 1
        seconds = record.setup_seconds
        if seconds is not None:
            histogram = self.setup_seconds
            histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
            histogram.sum += seconds
        if record.bytes_up:
            self._up.value += record.bytes_up
        if record.bytes_down:
            self._down.value += record.bytes_down
