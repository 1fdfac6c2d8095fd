"""
The plain-integer metrics expose exactly what C{prometheus_client}'s own
C{Counter} and C{Histogram} would for the same observations.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.interfaces import Address
from sniproxy.metrics import _LATENCY_BUCKETS, LabelledCounter, PlainHistogram, ProxyMetrics
from sniproxy.record import ConnectionRecord, Outcome


def _record(**changes) -> ConnectionRecord:
    fields = dict(
        client="127.0.0.1",
        peer="127.0.0.1:5",
        sni="a.example",
        alpn=(),
        ech=False,
        outcome=Outcome.RELAYED,
        reason="done",
        source="static",
        app=None,
        backend=Address("127.0.0.1", 9),
        cache="",
        bytes_up=10,
        bytes_down=20,
        started=0.0,
        duration=1.0,
        route_seconds=0.0004,
        connect_seconds=0.001,
        setup_seconds=0.002,
    )
    fields.update(changes)
    return ConnectionRecord(**fields)


def _samples(registry, skip_created=True):
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect()
        for s in family.samples
        if not (skip_created and s.name.endswith("_created"))
    )


class PlainMetricsTests(SynchronousTestCase):
    def test_histogram_matches_prometheus_client(self):
        ours = PlainHistogram("h_seconds", "help", _LATENCY_BUCKETS)
        registry = CollectorRegistry()
        theirs = Histogram("h_seconds", "help", buckets=_LATENCY_BUCKETS, registry=registry)
        # Bounds themselves, between them, beyond the last, and zero.
        values = [0.0, 0.0005, 0.0007, 0.001, 0.003, 0.25, 0.2501, 9.99, 10.0, 11.0, 1e6]
        for value in values:
            ours.observe(value)
            theirs.observe(value)
        mine = CollectorRegistry()
        mine.register(ours)
        self.assertEqual(_samples(mine), _samples(registry))
        names = [s.name for f in mine.collect() for s in f.samples]
        self.assertIn("h_seconds_created", names)

    def test_counter_matches_prometheus_client(self):
        ours = LabelledCounter("c", "help", ["a", "b"])
        registry = CollectorRegistry()
        theirs = Counter("c", "help", ["a", "b"], registry=registry)
        for labels, amount in [(("x", "y"), 1), (("x", "z"), 5), (("x", "y"), 2)]:
            ours.labels(*labels).inc(amount)
            theirs.labels(*labels).inc(amount)
        mine = CollectorRegistry()
        mine.register(ours)
        self.assertEqual(_samples(mine), _samples(registry))
        self.assertEqual(
            sorted(s.name for f in mine.collect() for s in f.samples),
            sorted(s.name for f in registry.collect() for s in f.samples),
        )

    def test_counter_label_arity(self):
        counter = LabelledCounter("c", "help", ["a"])
        self.assertRaises(ValueError, counter.labels, "x", "y")

    def test_observe(self):
        metrics = ProxyMetrics(live=lambda: 7)
        metrics.observe(_record())
        metrics.observe(_record(outcome=Outcome.NO_ROUTE, source="fallback", cache="hit", bytes_up=0, bytes_down=0,
                                route_seconds=0.3, setup_seconds=None))
        metrics.observe(_record(outcome=Outcome.MALFORMED, source=None, route_seconds=None, setup_seconds=None,
                                bytes_up=0, bytes_down=0))
        metrics.over_limit()
        metrics.denied()
        metrics.denied()
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "relayed"}), 1)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "no route"}), 1)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "malformed"}), 1)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "over limit"}), 1)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "denied"}), 2)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "shutdown"}), 0)
        self.assertEqual(sample("sniproxy_routed_connections_total", {"source": "static", "cache": "none"}), 1)
        self.assertEqual(sample("sniproxy_routed_connections_total", {"source": "fallback", "cache": "hit"}), 1)
        self.assertEqual(sample("sniproxy_relayed_bytes_total", {"direction": "up"}), 10)
        self.assertEqual(sample("sniproxy_relayed_bytes_total", {"direction": "down"}), 20)
        self.assertEqual(sample("sniproxy_route_decision_seconds_count"), 2)
        self.assertEqual(sample("sniproxy_route_decision_seconds_bucket", {"le": "0.0005"}), 1)
        self.assertEqual(sample("sniproxy_route_decision_seconds_bucket", {"le": "0.25"}), 1)
        self.assertEqual(sample("sniproxy_route_decision_seconds_bucket", {"le": "0.5"}), 2)
        self.assertAlmostEqual(sample("sniproxy_route_decision_seconds_sum"), 0.3004)
        self.assertEqual(sample("sniproxy_connection_setup_seconds_count"), 1)
        self.assertEqual(sample("sniproxy_live_connections"), 7)
