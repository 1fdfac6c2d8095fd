"""
The admin endpoint on a running proxy: Prometheus metrics scraped with
treq, and route explanations.
"""

from __future__ import annotations

import json

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import CertificateAuthority, Collect, https_client, listen_https


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class AdminTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.ca = CertificateAuthority()
        backend = yield listen_https(reactor, self.ca.issue("shop.example.com"), b"shop")
        self.addCleanup(backend.stopListening)
        self.service, self.port = running_proxy(
            self,
            f"""
            [routing.static]
            "shop.example.com" = "127.0.0.1:{backend.getHost().port}"
            [admin]
            listen = "tcp:0:interface=127.0.0.1"
            """,
        )
        self.admin = f"http://127.0.0.1:{self.service.admin_port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)

    def get(self, path: str, **kwargs):
        return treq.get(self.admin + path, pool=self.pool, **kwargs)

    @inlineCallbacks
    def scrape(self) -> dict:
        response = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        return samples((yield response.text()))

    @inlineCallbacks
    def test_counters_move(self):
        before = yield self.scrape()
        self.assertEqual(before[("sniproxy_connections_total", (("outcome", "relayed"),))], 0)
        self.assertEqual(before[("sniproxy_live_connections", ())], 0)
        self.assertIn(("sniproxy_dns_cache_hits_total", ()), before)

        client = https_client(reactor, self.ca, "127.0.0.1", self.port)
        response = yield client.get("https://shop.example.com/")
        self.assertEqual((yield response.content()), b"shop")
        unrouted = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), unrouted)
        protocol.transport.write(make_client_hello("nowhere.example.com"))
        yield unrouted.done
        yield self.service.factory.drain(5)

        after = yield self.scrape()
        self.assertEqual(after[("sniproxy_connections_total", (("outcome", "relayed"),))], 1)
        self.assertEqual(after[("sniproxy_connections_total", (("outcome", "no route"),))], 1)
        self.assertEqual(after[("sniproxy_routed_connections_total", (("cache", "none"), ("source", "static")))], 1)
        self.assertEqual(after[("sniproxy_route_decision_seconds_count", ())], 2)
        self.assertEqual(after[("sniproxy_connection_setup_seconds_count", ())], 1)
        self.assertGreater(after[("sniproxy_relayed_bytes_total", (("direction", "up"),))], 300)
        self.assertGreater(after[("sniproxy_relayed_bytes_total", (("direction", "down"),))], 300)

    @inlineCallbacks
    def test_explain(self):
        response = yield self.get("/explain", params={"name": "Shop.Example.COM."})
        self.assertEqual(response.code, 200)
        result = json.loads((yield response.text()))
        self.assertEqual(result["server_name"], "shop.example.com")
        self.assertEqual(result["steps"], [{"source": "static", "answer": "route", "detail": "shop.example.com"}])
        self.assertEqual(result["route"]["backends"], [f"127.0.0.1:{self.service.config.routing.static['shop.example.com'].address.port}"])

    @inlineCallbacks
    def test_explain_no_route(self):
        response = yield self.get("/explain", params={"name": "nowhere.example.com"})
        result = json.loads((yield response.text()))
        self.assertIsNone(result["route"])
        self.assertEqual(result["decision"], "no route: the client gets unrecognized_name")

    @inlineCallbacks
    def test_explain_needs_a_name(self):
        response = yield self.get("/explain")
        self.assertEqual(response.code, 400)
        yield response.content()
