"""
Prometheus metrics, with the well-kept C{prometheus_client}.

Each service has its own registry (tests and embedders may run several
proxies in one process).  Counters move when a connection ends; the
histograms take the timings the connection recorded on its way.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class ProxyMetrics:
    """
    @ivar registry: the registry to expose (see L{sniproxy.admin}).
    """

    def __init__(self, live: Callable[[], int], dns_counters: Callable[[], Any] = lambda: None) -> None:
        self.registry = registry = CollectorRegistry()
        self.connections = Counter(
            "sniproxy_connections", "Connections handled, by outcome", ["outcome"], registry=registry
        )
        # Children bound once: a labels() lookup per connection costs more
        # than the increment.
        self._outcomes = {outcome: self.connections.labels(outcome.value) for outcome in OUTCOMES}
        self.routed = Counter(
            "sniproxy_routed_connections",
            "Connections routed, by the source that answered and the DNS cache state",
            ["source", "cache"],
            registry=registry,
        )
        self.route_seconds = Histogram(
            "sniproxy_route_decision_seconds",
            "Time from the complete ClientHello to the routing decision",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.setup_seconds = Histogram(
            "sniproxy_connection_setup_seconds",
            "Time from accept to the backend connection being established",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.relayed_bytes = Counter(
            "sniproxy_relayed_bytes", "Bytes relayed, by direction", ["direction"], registry=registry
        )
        self._routed: dict[tuple[str, str], Any] = {}
        self._up = self.relayed_bytes.labels("up")
        self._down = self.relayed_bytes.labels("down")
        live_gauge = Gauge("sniproxy_live_connections", "Connections open now", registry=registry)
        live_gauge.set_function(live)
        registry.register(_DNSCollector(dns_counters))

    def over_limit(self) -> None:
        """Count a connection refused at accept by a connection limit."""
        self._outcomes[Outcome.OVER_LIMIT].inc()

    def denied(self) -> None:
        """Count a connection refused at accept by C{proxy.allow_clients}/C{deny_clients}."""
        self._outcomes[Outcome.DENIED].inc()

    def observe(self, record: ConnectionRecord) -> None:
        """Count a closed connection (a record observer of L{sniproxy.proxy.ProxyFactory})."""
        self._outcomes[record.outcome].inc()
        if record.route_seconds is not None:
            self.route_seconds.observe(record.route_seconds)
        source = record.source
        if source is not None:
            key = (source, record.cache or "none")
            routed = self._routed.get(key)
            if routed is None:
                routed = self._routed[key] = self.routed.labels(*key)
            routed.inc()
        if record.setup_seconds is not None:
            self.setup_seconds.observe(record.setup_seconds)
        if record.bytes_up:
            self._up.inc(record.bytes_up)
        if record.bytes_down:
            self._down.inc(record.bytes_down)
