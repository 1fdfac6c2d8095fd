"""
Balancing, passive health, app caps, ACME and per-app metrics end to end:
real TLS backends on loopback, treq verifying certificates through the
proxy, a black hole made of a listening socket whose accept queue is full,
and a L{Clock} for the back-offs.
"""

from __future__ import annotations

import itertools
import socket

from OpenSSL import SSL
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived

from sniproxy.backends import HealthState
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import CertificateAuthority, Collect, https_client, listen_https

NAME = "shop.example.com"


def black_hole(testcase) -> int:
    """
    A loopback port whose SYNs are dropped: a listening socket with a
    backlog of 0, its accept queue filled by connections never accepted.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    testcase.addCleanup(server.close)
    address = server.getsockname()
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        testcase.addCleanup(filler.close)
    return address[1]


@inlineCallbacks
def until(predicate, seconds: float = 3.0):
    """Poll C{predicate} every 10 ms, at most C{seconds}; fail if it never holds."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{predicate} never held")


class LoopbackTestCase(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.ca = CertificateAuthority()
        issued = self.ca.issue(NAME, "plain.example.com")
        self.bodies = {}
        self.ports = []
        for body in (b"one", b"two"):
            port = yield listen_https(reactor, issued, body)
            self.addCleanup(port.stopListening)
            self.ports.append(port.getHost().port)
            self.bodies[port.getHost().port] = body
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def proxy(self, ports, app: str = "", proxy: str = "", randoms=None, clock: Clock | None = None, extra: str = ""):
        backends = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
        service, port = running_proxy(
            self,
            f"""
            [proxy]
            connect_stagger = 0.05
            {proxy}
            [routing.static]
            "{NAME}" = {{ app = "shop", port = 443 }}
            "plain.example.com" = "127.0.0.1:{self.ports[0]}"
            [apps.shop]
            backends = [{backends}]
            {app}
            {extra}
            """,
        )
        if randoms is not None:
            service.backends.random = itertools.cycle(randoms).__next__
        if clock is not None:
            # The back-offs run on this clock; connects and timeouts stay real.
            service.backends.clock = clock
        self.service = service
        self.client = https_client(reactor, self.ca, "127.0.0.1", port)
        self.port = port
        return service

    @inlineCallbacks
    def get(self, name: str = NAME):
        """One request through the proxy; its body, once the proxy has closed the connection."""
        response = yield self.client.get(f"https://{name}/")
        body = yield response.content()
        yield until(lambda: not self.service.factory.connections)
        return body

    @inlineCallbacks
    def hold(self, alpn=None):
        """A connection that sent its ClientHello and stays open."""
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Collect())
        protocol.transport.write(make_client_hello(NAME, alpn=alpn))
        self.addCleanup(protocol.transport.abortConnection)
        return protocol

    def status(self, port: int):
        [status] = [s for s in self.service.backends.instances() if s.address == f"127.0.0.1:{port}"]
        return status

    def connected(self) -> int:
        return sum(s.total for s in self.service.backends.instances())


class BalancingTests(LoopbackTestCase):
    @inlineCallbacks
    def test_sequential_traffic_spreads(self):
        """Sequential connections (no load either way) take turns by the random tie-break."""
        self.proxy(self.ports, randoms=(0.0, 0.99))
        bodies = []
        for _ in range(6):
            bodies.append((yield self.get()))
        self.assertEqual(bodies, [b"one", b"two"] * 3)

    @inlineCallbacks
    def test_least_connections_on_held_connections(self):
        """Live connections steer the next one to the less loaded instance."""
        self.proxy(self.ports, randoms=(0.0,))
        for count in range(1, 4):
            yield self.hold()
            yield until(lambda: self.connected() == count)
        self.assertEqual([self.status(p).live for p in self.ports], [2, 1])

    @inlineCallbacks
    def test_first_keeps_config_order(self):
        self.proxy(self.ports, app='balance = "first"', randoms=(0.99,))
        for count in range(1, 4):
            yield self.hold()
            yield until(lambda: self.connected() == count)
        self.assertEqual([self.status(p).live for p in self.ports], [3, 0])

    @inlineCallbacks
    def test_acme_stays_on_the_first_instance(self):
        """ALPN acme-tls/1 is not balanced; other traffic still is."""
        self.proxy(self.ports, randoms=(0.0, 0.99))
        for count in range(1, 5):
            yield self.hold(alpn=[b"acme-tls/1"])
            yield until(lambda: self.connected() == count)
        # (The backends close them: they do not speak acme-tls/1.)
        self.assertEqual([self.status(p).total for p in self.ports], [4, 0])
        for count in range(5, 7):
            yield self.hold(alpn=[b"h2", b"http/1.1"])
            yield until(lambda: self.connected() == count)
        self.assertGreaterEqual(self.status(self.ports[1]).total, 1)


class HealthTests(LoopbackTestCase):
    @inlineCallbacks
    def test_black_hole_costs_the_first_failure_then_the_probes(self):
        """
        With a black-holed first instance, the first connection waits out
        the stagger and ejects it; the next ones skip it; after each
        back-off one connection probes it; every client is served.
        """
        from sniproxy.explain import explain
        from sniproxy.service import build_router

        clock = Clock()
        hole = black_hole(self)
        service = self.proxy([hole, self.ports[1]], app='balance = "first"', clock=clock)
        for _ in range(5):
            self.assertEqual((yield self.get()), b"two")
        self.assertEqual(self.status(hole).connect_failures, 1)
        self.assertEqual(self.status(hole).state, HealthState.EJECTED)
        self.assertEqual(self.status(hole).ejected_until, 1.0)
        clock.advance(1.0)
        for _ in range(4):
            self.assertEqual((yield self.get()), b"two")
        # One probe, which failed: back-off doubled.
        self.assertEqual(self.status(hole).connect_failures, 2)
        self.assertEqual(self.status(hole).ejected_until, 3.0)
        clock.advance(1.9)
        self.assertEqual((yield self.get()), b"two")
        self.assertEqual(self.status(hole).connect_failures, 2)
        clock.advance(0.1)
        self.assertEqual((yield self.get()), b"two")
        self.assertEqual(self.status(hole).connect_failures, 3)
        ejected = [e for e in self.events if "ejected" in e.get("log_format", "")]
        self.assertEqual(len(ejected), 1)
        self.assertIn("stagger", ejected[0]["why"])
        # /explain shows it.
        result = yield explain(
            lambda dns: build_router(service.config, reactor, dns), service.dns, NAME, board=service.backends
        )
        self.assertEqual(
            [(i["address"], i["state"]) for i in result["route"]["instances"]],
            [(f"127.0.0.1:{hole}", "ejected"), (f"127.0.0.1:{self.ports[1]}", "up")],
        )
        value = service.metrics.registry.get_sample_value
        self.assertEqual(value("sniproxy_backend_up", {"app": "shop", "address": f"127.0.0.1:{hole}"}), 0)
        self.assertEqual(value("sniproxy_backend_up", {"app": "shop", "address": f"127.0.0.1:{self.ports[1]}"}), 1)

    @inlineCallbacks
    def test_healed_instance_gets_traffic_again(self):
        """A refusing instance is ejected; once it listens again, the probe after its back-off restores it."""
        clock = Clock()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        dead = port.getHost().port
        yield port.stopListening()
        self.proxy([dead, self.ports[1]], app='balance = "first"', clock=clock)
        self.assertEqual((yield self.get()), b"two")
        self.assertEqual(self.status(dead).state, HealthState.EJECTED)
        healed = yield listen_https(reactor, self.ca.issue(NAME), b"healed", port=dead)
        self.addCleanup(healed.stopListening)
        self.assertEqual((yield self.get()), b"two")  # still ejected: skipped
        clock.advance(1.0)
        self.assertEqual((yield self.get()), b"healed")
        self.assertEqual(self.status(dead).state, HealthState.UP)
        self.assertEqual((yield self.get()), b"healed")
        restored = [e for e in self.events if "restored" in e.get("log_format", "")]
        self.assertEqual(len(restored), 1)


class CapTests(LoopbackTestCase):
    @inlineCallbacks
    def test_cap_refuses_the_next_and_admits_after_a_close(self):
        service = self.proxy(self.ports, app="max_connections = 1")
        held = yield self.hold()
        yield until(lambda: service.backends.live("shop") == 1)
        error = yield self.assertFailure(self.client.get(f"https://{NAME}/"), ResponseNeverReceived)
        [reason] = error.reasons
        self.assertTrue(reason.check(SSL.Error))
        self.assertIn("internal error", str(reason.value))
        [line] = [e for e in self.events if e.get("log_format", "").startswith("refused ")]
        self.assertIn("apps.shop.max_connections", line["reason"])
        self.assertEqual([e for e in self.events if e.get("log_format", "").startswith("rejected ")], [])
        held.transport.loseConnection()
        yield until(lambda: not service.factory.connections)
        self.assertEqual((yield self.get()) in (b"one", b"two"), True)
        value = service.metrics.registry.get_sample_value
        self.assertEqual(value("sniproxy_connections_total", {"outcome": "over limit"}), 1)
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "shop", "outcome": "over limit"}), 1)
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "shop", "outcome": "relayed"}), 2)
        self.assertEqual(service.backends.live("shop"), 0)


class MetricsTests(LoopbackTestCase):
    @inlineCallbacks
    def test_label_values(self):
        """Per-app series carry app ids and the fixed route-source labels, never a server name."""
        service = self.proxy(self.ports)
        yield self.get()
        yield self.get("plain.example.com")
        text = generate_latest(service.metrics.registry).decode()
        value = service.metrics.registry.get_sample_value
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "shop", "outcome": "relayed"}), 1)
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "static", "outcome": "relayed"}), 1)
        self.assertGreater(value("sniproxy_app_bytes_total", {"app": "shop", "direction": "up"}), 0)
        self.assertGreater(value("sniproxy_app_bytes_total", {"app": "static", "direction": "down"}), 0)
        self.assertEqual(value("sniproxy_app_live_connections", {"app": "shop"}), 0)
        self.assertEqual(sum(s.total for s in service.backends.instances()), 1)
        apps = set()
        for metric in service.metrics.registry.collect():
            for sample in metric.samples:
                if "app" in sample.labels:
                    apps.add(sample.labels["app"])
        self.assertEqual(apps, {"shop", "static", "subdomain", "txt", "system", "fallback"})
        self.assertNotIn("example.com", text.replace(f"127.0.0.1", ""))
        for port in self.ports:
            self.assertIn(f'sniproxy_backend_up{{address="127.0.0.1:{port}",app="shop"}} 1.0', text)


class AdminTests(LoopbackTestCase):
    @inlineCallbacks
    def test_explain_and_metrics_show_health(self):
        """The admin endpoint's /explain and /metrics show an ejected instance."""
        import json

        import treq
        from twisted.web.client import HTTPConnectionPool

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        dead = port.getHost().port
        yield port.stopListening()
        service = self.proxy(
            [dead, self.ports[1]], app='balance = "first"', extra='[admin]\nlisten = "tcp:0:interface=127.0.0.1"'
        )
        self.assertEqual((yield self.get()), b"two")
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        admin = f"http://127.0.0.1:{service.admin_port.getHost().port}"
        response = yield treq.get(admin + "/explain", params={"name": NAME}, pool=pool)
        result = json.loads((yield response.text()))
        instances = result["route"]["instances"]
        self.assertEqual(
            [(i["address"], i["state"], i["live"]) for i in instances],
            [(f"127.0.0.1:{dead}", "ejected", 0), (f"127.0.0.1:{self.ports[1]}", "up", 0)],
        )
        self.assertGreater(instances[0]["ejected_for"], 0)
        response = yield treq.get(admin + "/metrics", pool=pool)
        text = yield response.text()
        self.assertIn(f'sniproxy_backend_up{{address="127.0.0.1:{dead}",app="shop"}} 0.0', text)
        self.assertIn(f'sniproxy_backend_connect_failures_total{{address="127.0.0.1:{dead}",app="shop"}} 1.0', text)
        self.assertIn('sniproxy_app_connections_total{app="shop",outcome="relayed"} 1.0', text)
