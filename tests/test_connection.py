"""
The connection state machine (L{sniproxy.proxy.ClientConnection} and
L{sniproxy.proxy.ProxyFactory}) on in-memory transports and a
L{MemoryReactorClock}: no sockets, no sleeps, every timer on the clock.
What needs real sockets (splice, TLS end to end) stays in test_proxy and
test_hardening.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sniproxy import alerts
from sniproxy.accesslog import AccessLog, entry
from sniproxy.config import ProxyConfig
from sniproxy.interfaces import Address, Route, RoutingError
from sniproxy.metrics import ProxyMetrics
from sniproxy.proxy import LINGER, ProxyFactory
from sniproxy.proxyprotocol import header_v1, header_v2
from sniproxy.record import ConnectionRecord, Outcome
from sniproxy.routing import Router
from sniproxy.testing.clienthello import alpn_extension, build_client_hello, sni_extension

HELLO = build_client_hello([sni_extension(["shop.example.com"]), alpn_extension([b"h2", b"http/1.1"])])
BACKEND = Address("127.0.0.1", 9443)
ROUTE = Route(backends=(BACKEND,), source="static", app="shop", cache="hit", detail="shop.example.com")



def timers(harness) -> list:
    """
    What is left of timers: the reactor's DelayedCalls other than the
    factory's one deadlines timer, and any deadline still pending on it.
    """
    deadlines = harness.factory.deadlines
    left = [call for call in harness.reactor.getDelayedCalls() if call.func != deadlines._sweep]
    return left + ([f"{len(deadlines)} deadlines"] if len(deadlines) else [])

class Transport(StringTransport):
    """A L{StringTransport} with the TCP transport methods the proxy calls."""

    def __init__(self, peer: IPv4Address, host: IPv4Address | None = None) -> None:
        super().__init__(hostAddress=host or IPv4Address("TCP", "127.0.0.1", 8443), peerAddress=peer)
        self.nodelay = False
        self.write_closed = False
        self.protocol = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def lose(self, reason: type[Exception] = ConnectionDone) -> None:
        """The connection is gone: tell the protocol, as the reactor would."""
        self.connected = False
        self.protocol.connectionLost(Failure(reason()))


class Source:
    """A route source answering from a dict, or with a L{Deferred} given per name."""

    name = "test"

    def __init__(self, answers: dict | None = None) -> None:
        self.answers = answers if answers is not None else {"shop.example.com": ROUTE}
        self.asked: list[str] = []

    def resolve(self, server_name: str):
        self.asked.append(server_name)
        answer = self.answers.get(server_name)
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class Harness:
    """A factory on a memory reactor, and helpers to drive its connections."""

    def __init__(self, testcase, source: Source | None = None, **settings) -> None:
        settings.setdefault("listen", ("tcp:8443",))
        self.reactor = MemoryReactorClock()
        self.source = source or Source()
        self.settings = ProxyConfig(**settings)
        self.router = Router(
            self.source,
            self.reactor,
            timeout=self.settings.routing_timeout,
            max_pending_per_name=self.settings.max_pending_per_name,
        )
        self.factory = ProxyFactory(self.settings, self.router, self.reactor, self.reactor)
        self.records: list[ConnectionRecord] = []
        self.factory.record_observers.append(self.records.append)
        self.testcase = testcase

    def accept(self, host: str = "127.0.0.2", port: int = 40000) -> tuple:
        """Accept a client: (protocol, transport), or (None, None) when refused."""
        peer = IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            return None, None
        transport = Transport(peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def backend(self, index: int = -1, host: str = BACKEND.host, port: int = BACKEND.port) -> Transport:
        """Complete the connect attempt the proxy made: the backend's transport."""
        _, _, attempt, _, _ = self.reactor.tcpClients[index]
        address = IPv4Address("TCP", host, port)
        protocol = attempt.buildProtocol(address)
        transport = Transport(address, IPv4Address("TCP", "127.0.0.1", 50000))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def fail_connect(self, index: int = -1) -> None:
        _, _, attempt, _, _ = self.reactor.tcpClients[index]
        attempt.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def relayed(self, **accept) -> tuple:
        """A client whose hello routed and whose backend connected."""
        connection, client = self.accept(**accept)
        connection.dataReceived(HELLO)
        backend = self.backend()
        return connection, client, backend


class RecordTests(SynchronousTestCase):
    """One L{ConnectionRecord} per closed connection, read by the access log and the metrics alike."""

    def test_relayed_record(self):
        harness = Harness(self)
        reactor = harness.reactor
        reactor.advance(1000)
        connection, client, backend = harness.relayed()
        self.assertEqual(backend.value(), HELLO)
        self.assertTrue(client.nodelay)
        reactor.advance(2)
        backend.protocol.dataReceived(b"x" * 7)
        connection.dataReceived(b"y" * 3)
        self.assertEqual(client.value(), b"x" * 7)
        client.lose()
        self.assertEqual(harness.records, [])  # the backend side is still open
        backend.lose()
        [record] = harness.records
        self.assertEqual(
            record,
            ConnectionRecord(
                client="127.0.0.2",
                peer="127.0.0.2:40000",
                sni="shop.example.com",
                alpn=("h2", "http/1.1"),
                ech=False,
                outcome=Outcome.RELAYED,
                reason="client closed",
                source="static",
                app="shop",
                backend=BACKEND,
                cache="hit",
                bytes_up=len(HELLO) + 3,
                bytes_down=7,
                started=1000.0,
                duration=2.0,
                route_seconds=0.0,
                connect_seconds=0.0,
                setup_seconds=0.0,
            ),
        )
        self.assertEqual(harness.factory.connections, set())

    def test_access_log_entry_is_unchanged(self):
        """Every access-log field, with the names and forms it always had."""
        harness = Harness(self)
        harness.reactor.advance(1000.0004)
        connection, client, backend = harness.relayed()
        harness.reactor.advance(0.25)
        client.lose()
        backend.lose()
        [record] = harness.records
        self.assertEqual(
            entry(record),
            {
                "time": 1000.0,
                "client": "127.0.0.2:40000",
                "sni": "shop.example.com",
                "alpn": ["h2", "http/1.1"],
                "ech": False,
                "source": "static",
                "cache": "hit",
                "route_ms": 0.0,
                "backend": "127.0.0.1:9443",
                "connect_ms": 0.0,
                "bytes_up": len(HELLO),
                "bytes_down": 0,
                "duration_ms": 250.0,
                "outcome": "relayed",
                "reason": "client closed",
            },
        )

    def test_access_log_entry_of_a_rejection(self):
        harness = Harness(self, Source({}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        client.lose()
        [record] = harness.records
        line = entry(record)
        self.assertEqual(
            (line["outcome"], line["reason"], line["source"], line["cache"], line["backend"], line["route_ms"]),
            ("no route", "no route", None, None, None, 0.0),
        )
        self.assertEqual(line["connect_ms"], None)

    def test_access_log_writes_the_entry(self):
        path = self.mktemp()
        access = AccessLog(path)
        self.addCleanup(access.close)
        harness = Harness(self)
        harness.factory.record_observers.append(access.observe)
        connection, client, backend = harness.relayed()
        client.lose()
        backend.lose()
        access.close()
        with open(path) as f:
            [line] = f.read().splitlines()
        self.assertEqual(json.loads(line), entry(harness.records[0]))
        self.assertEqual(line, json.dumps(entry(harness.records[0]), separators=(",", ":")))

    def test_metrics_observe(self):
        harness = Harness(self)
        metrics = ProxyMetrics(live=lambda: len(harness.factory.connections))
        harness.factory.record_observers.append(metrics.observe)
        connection, client, backend = harness.relayed()
        backend.protocol.dataReceived(b"z" * 5)
        client.lose()
        backend.lose()
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "relayed"}), 1)
        self.assertEqual(sample("sniproxy_connections_total", {"outcome": "no route"}), 0)
        self.assertEqual(sample("sniproxy_routed_connections_total", {"source": "static", "cache": "hit"}), 1)
        self.assertEqual(sample("sniproxy_relayed_bytes_total", {"direction": "up"}), len(HELLO))
        self.assertEqual(sample("sniproxy_relayed_bytes_total", {"direction": "down"}), 5)
        self.assertEqual(sample("sniproxy_route_decision_seconds_count"), 1)
        self.assertEqual(sample("sniproxy_connection_setup_seconds_count"), 1)

    def test_every_outcome_has_a_label_from_the_start(self):
        metrics = ProxyMetrics(live=lambda: 0)
        for outcome in Outcome:
            self.assertEqual(
                metrics.registry.get_sample_value("sniproxy_connections_total", {"outcome": outcome.value}), 0
            )

    def test_outcome_values(self):
        self.assertEqual(
            [o.value for o in Outcome],
            [
                "relayed",
                "no route",
                "malformed",
                "hello timeout",
                "routing failed",
                "backend unreachable",
                "client closed",
                "over limit",
                "shutdown",
                "internal error",
                "denied",
            ],
        )
        self.assertEqual(Outcome("no route"), Outcome.NO_ROUTE)
        self.assertEqual(json.dumps(Outcome.NO_ROUTE), '"no route"')


class MaxLifetimeTests(SynchronousTestCase):
    """C{proxy.max_lifetime}: one coarse sweep per factory closes relays past their time."""

    def test_closed_with_the_reason_max_lifetime(self):
        harness = Harness(self, max_lifetime=10.0)
        reactor = harness.reactor
        connection, client, backend = harness.relayed()
        reactor.advance(9)
        self.assertFalse(client.disconnecting)
        reactor.advance(2)  # the sweep after the 10th second
        self.assertTrue(client.disconnecting)
        self.assertTrue(backend.disconnecting)
        client.lose()
        backend.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.RELAYED, "max lifetime"))
        self.assertEqual(entry(record)["reason"], "max lifetime")

    def test_one_timer_for_all_connections_none_when_idle(self):
        harness = Harness(self, max_lifetime=100.0)
        reactor = harness.reactor
        self.assertEqual(timers(harness), [])
        pairs = [harness.relayed(port=40000 + i) for i in range(5)]
        sweeps = [call for call in reactor.getDelayedCalls() if call.func is harness.factory._sweeper]
        self.assertEqual(len(sweeps), 1)
        for _, client, backend in pairs:
            client.lose()
            backend.lose()
        self.assertIsNone(harness.factory._sweeper)
        # Only the relays' own idle timers could be left; none is, once closed.
        self.assertEqual(timers(harness), [])

    def test_not_yet_relayed_connections_are_left_alone(self):
        harness = Harness(self, max_lifetime=1.0, hello_timeout=30.0)
        reactor = harness.reactor
        connection, client = harness.accept()
        reactor.advance(5)
        self.assertFalse(client.write_closed)
        self.assertFalse(client.disconnecting)

    def test_off_by_default(self):
        harness = Harness(self)
        connection, client, backend = harness.relayed()
        self.assertIsNone(harness.factory._sweeper)
        harness.reactor.advance(500)
        self.assertFalse(client.disconnecting)

    def test_reload_applies_to_open_connections(self):
        harness = Harness(self)
        reactor = harness.reactor
        connection, client, backend = harness.relayed()
        reactor.advance(60)
        harness.factory.reconfigure(ProxyConfig(listen=("tcp:8443",), max_lifetime=30.0), harness.router)
        reactor.advance(1)
        self.assertTrue(client.disconnecting)
        # And a reload that lifts the cap stops the sweep.
        harness.factory.reconfigure(ProxyConfig(listen=("tcp:8443",)), harness.router)
        self.assertIsNone(harness.factory._sweeper)

    def test_stop_leaves_no_timer(self):
        harness = Harness(self, max_lifetime=10.0)
        harness.relayed()
        sweeper = harness.factory._sweeper
        self.assertTrue(sweeper.running)
        harness.factory.stop()
        self.assertFalse(sweeper.running)
        self.assertEqual([c for c in harness.reactor.getDelayedCalls() if c.func is sweeper], [])
        self.assertIsNone(harness.factory._sweeper)


def alert(description: int, version: int = 0x0301) -> bytes:
    return alerts.alert_record(description, version)


class RejectTests(SynchronousTestCase):
    """Reject: one alert in the client's record version, a half-close, then linger."""

    def test_no_route_gets_unrecognized_name_and_lingers(self):
        harness = Harness(self, Source({}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        self.assertEqual(client.value(), alert(alerts.UNRECOGNIZED_NAME))
        self.assertTrue(client.write_closed)
        self.assertEqual(client.producerState, "producing")  # reading again, to drain
        # Bytes during the linger are read and dropped.
        connection.dataReceived(b"more")
        self.assertEqual(client.value(), alert(alerts.UNRECOGNIZED_NAME))
        self.assertFalse(client.disconnected)
        harness.reactor.advance(LINGER)
        self.assertTrue(client.disconnected)
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason, record.sni), (Outcome.NO_ROUTE, "no route", "shop.example.com"))

    def test_client_closing_during_the_linger_ends_it(self):
        harness = Harness(self, Source({}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        connection.readConnectionLost()
        self.assertTrue(client.disconnecting)
        client.lose()
        self.assertEqual(timers(harness), [])
        self.assertEqual(harness.records[0].outcome, Outcome.NO_ROUTE)

    def test_malformed_gets_decode_error(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        self.assertEqual(client.value(), alert(alerts.DECODE_ERROR))
        client.lose()
        self.assertEqual(harness.records[0].outcome, Outcome.MALFORMED)

    def test_not_tls_gets_no_alert(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(client.value(), b"")
        self.assertTrue(client.write_closed)
        client.lose()
        self.assertEqual(harness.records[0].outcome, Outcome.MALFORMED)

    def test_no_sni_and_no_fallback(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(build_client_hello([]))
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.NO_ROUTE, "no route: the client sent no server name"))
        self.assertEqual(harness.source.asked, [])

    def test_routing_failure_gets_internal_error(self):
        harness = Harness(self, Source({"shop.example.com": RoutingError("SERVFAIL")}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        self.assertEqual(client.value(), alert(alerts.INTERNAL_ERROR))
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.ROUTING_FAILED, "routing failed: SERVFAIL"))
        self.assertIsNotNone(record.route_seconds)

    def test_backend_unreachable_gets_internal_error(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        harness.fail_connect()
        self.assertEqual(client.value(), alert(alerts.INTERNAL_ERROR))
        client.lose()
        [record] = harness.records
        self.assertEqual(record.outcome, Outcome.BACKEND_UNREACHABLE)
        self.assertEqual(record.reason, "backend unreachable: 127.0.0.1:9443: refused")
        self.assertEqual(record.source, "static")
        self.assertIsNone(record.backend)

    def test_alert_in_a_tls_1_0_record_version(self):
        harness = Harness(self, Source({}))
        connection, client = harness.accept()
        connection.dataReceived(build_client_hello([sni_extension(["x.example"])], record_version=0x0303))
        self.assertEqual(client.value(), alert(alerts.UNRECOGNIZED_NAME, 0x0303))


class InboundProxyHeaderTests(SynchronousTestCase):
    """A trusted load balancer's PROXY header names the client."""

    def harness(self):
        return Harness(self, accept_proxy_from=("127.0.0.0/8",))

    def test_v1_header_names_the_client(self):
        harness = self.harness()
        connection, client = harness.accept()
        header = header_v1(("203.0.113.7", 5555), ("198.51.100.1", 443))
        # In pieces: the header may arrive split, and with the hello.
        connection.dataReceived(header[:7])
        connection.dataReceived(header[7:] + HELLO[:10])
        connection.dataReceived(HELLO[10:])
        backend = harness.backend()
        self.assertEqual(backend.value(), HELLO)  # the header is not replayed
        client.lose()
        backend.lose()
        [record] = harness.records
        self.assertEqual(record.client, "203.0.113.7")
        self.assertEqual(record.peer, "203.0.113.7:5555 via 127.0.0.2:40000")

    def test_v2_header(self):
        harness = self.harness()
        connection, client = harness.accept()
        connection.dataReceived(header_v2(("2001:db8::1", 6000), ("2001:db8::2", 443)) + HELLO)
        harness.backend()
        self.assertEqual(connection.client_ip, "2001:db8::1")

    def test_bad_header_from_a_trusted_peer(self):
        harness = self.harness()
        connection, client = harness.accept()
        connection.dataReceived(b"PROXY BOGUS\r\n" + HELLO)
        self.assertEqual(client.value(), b"")
        self.assertTrue(client.write_closed)
        client.lose()
        [record] = harness.records
        self.assertEqual(record.outcome, Outcome.MALFORMED)
        self.assertTrue(record.reason.startswith("malformed: bad PROXY header from a trusted peer"), record.reason)

    def test_untrusted_peer_header_is_not_tls(self):
        harness = Harness(self, accept_proxy_from=("10.0.0.0/8",))
        connection, client = harness.accept()
        connection.dataReceived(header_v1(("203.0.113.7", 5555), ("198.51.100.1", 443)) + HELLO)
        client.lose()
        self.assertEqual(harness.records[0].outcome, Outcome.MALFORMED)
        self.assertEqual(harness.records[0].client, "127.0.0.2")


class LimitTests(SynchronousTestCase):
    def test_max_connections(self):
        harness = Harness(self, max_connections=2)
        metrics = ProxyMetrics(live=lambda: len(harness.factory.connections))
        harness.factory.metrics = metrics
        first, _ = harness.accept(port=1)
        harness.accept(port=2)
        self.assertEqual(harness.accept(port=3), (None, None))
        self.assertEqual(metrics.registry.get_sample_value("sniproxy_connections_total", {"outcome": "over limit"}), 1)
        first.transport.lose()
        self.assertIsNotNone(harness.accept(port=4)[0])

    def test_max_connections_per_client(self):
        harness = Harness(self, max_connections_per_client=1)
        harness.accept(host="127.0.0.2", port=1)
        self.assertEqual(harness.accept(host="127.0.0.2", port=2), (None, None))
        self.assertIsNotNone(harness.accept(host="127.0.0.3", port=1)[0])

    def test_trusted_balancer_is_exempt_from_the_per_client_limit(self):
        harness = Harness(self, max_connections_per_client=1, accept_proxy_from=("127.0.0.2/32",))
        harness.accept(port=1)
        self.assertIsNotNone(harness.accept(port=2)[0])

    def test_hello_timeout(self):
        harness = Harness(self, hello_timeout=3.0)
        connection, client = harness.accept()
        connection.dataReceived(HELLO[:20])
        harness.reactor.advance(3)
        self.assertTrue(client.write_closed)
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.HELLO_TIMEOUT, "hello timeout: no complete ClientHello within 3s"))

    def test_max_hello_bytes(self):
        harness = Harness(self, max_hello_bytes=512)
        connection, client = harness.accept()
        big = build_client_hello([sni_extension(["shop.example.com"]), (21, bytes(1000))])
        connection.dataReceived(big)
        self.assertEqual(client.value(), alert(alerts.ILLEGAL_PARAMETER))

    def test_routing_timeout(self):
        harness = Harness(self, Source({"shop.example.com": Deferred()}), routing_timeout=2.0)
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        self.assertTrue(client.producerState == "paused")
        harness.reactor.advance(2)
        self.assertEqual(client.value(), alert(alerts.INTERNAL_ERROR))
        client.lose()
        self.assertEqual(harness.records[0].reason, "routing failed: no routing answer within 2s")

    def test_max_pending_per_name(self):
        harness = Harness(self, Source({"shop.example.com": None}), max_pending_per_name=1)
        pending: list[Deferred] = []
        harness.source.resolve = lambda name: pending.append(Deferred()) or pending[-1]
        first, _ = harness.accept(port=1)
        first.dataReceived(HELLO)
        second, client = harness.accept(port=2)
        second.dataReceived(HELLO)
        self.assertEqual(client.value(), alert(alerts.INTERNAL_ERROR))
        self.assertEqual(second.reason, "routing failed: 1 connections already wait for this name's route")

    def test_connect_timeout(self):
        harness = Harness(self, connect_timeout=4.0)
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        harness.reactor.advance(4)
        self.assertEqual(client.value(), alert(alerts.INTERNAL_ERROR))
        self.assertEqual(connection.reason, "backend unreachable: 127.0.0.1:9443: timed out")

    def test_idle_timeout(self):
        harness = Harness(self, idle_timeout=30.0)
        connection, client, backend = harness.relayed()
        harness.reactor.advance(29)
        connection.dataReceived(b"tick")
        harness.reactor.advance(29)
        self.assertFalse(client.disconnected)
        harness.reactor.advance(2)
        self.assertTrue(client.disconnected)
        self.assertTrue(backend.disconnected)
        client.lose()
        backend.lose()
        self.assertEqual(harness.records[0].reason, "idle timeout")


class LeavingTests(SynchronousTestCase):
    """A client leaving in each state is recorded once and leaves nothing behind."""

    def assertClean(self, harness):
        self.assertEqual(harness.factory.connections, set())
        self.assertEqual(harness.factory._per_client, {})
        self.assertEqual(timers(harness), [])

    def test_before_any_byte(self):
        harness = Harness(self)
        connection, client = harness.accept()
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.CLIENT_CLOSED, "before the ClientHello was complete"))
        self.assertClean(harness)

    def test_half_way_through_the_hello(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(HELLO[:30])
        connection.readConnectionLost()
        self.assertTrue(client.disconnecting)
        client.lose()
        self.assertEqual(harness.records[0].reason, "before the ClientHello was complete")
        self.assertClean(harness)

    def test_while_routing(self):
        answer: Deferred = Deferred()
        harness = Harness(self, Source({"shop.example.com": answer}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.CLIENT_CLOSED, "while routing"))
        self.assertTrue(answer.called)  # cancelled
        self.assertEqual(harness.router.pending, {})
        self.assertClean(harness)

    def test_while_connecting(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        client.lose()
        [record] = harness.records
        self.assertEqual((record.outcome, record.reason), (Outcome.CLIENT_CLOSED, "while connecting"))
        self.assertEqual(record.source, "static")
        self.assertClean(harness)

    def test_while_relaying(self):
        harness = Harness(self)
        connection, client, backend = harness.relayed()
        client.lose()
        self.assertTrue(backend.disconnecting)
        backend.lose()
        self.assertEqual(harness.records[0].reason, "client closed")
        self.assertClean(harness)

    def test_backend_reset_while_relaying(self):
        harness = Harness(self)
        connection, client, backend = harness.relayed()
        backend.lose(ConnectionLost)
        self.assertTrue(client.disconnecting)
        client.lose()
        self.assertEqual(harness.records[0].reason, "backend reset")
        self.assertClean(harness)

    def test_during_the_linger(self):
        harness = Harness(self, Source({}))
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        client.lose()
        self.assertEqual(len(harness.records), 1)
        self.assertClean(harness)


class DrainTests(SynchronousTestCase):
    def test_drain_with_nothing_open(self):
        harness = Harness(self)
        self.successResultOf(harness.factory.drain(5))

    def test_drain_waits_then_closes_what_is_left(self):
        harness = Harness(self)
        relayed, client, backend = harness.relayed(port=1)
        waiting, waiting_client = harness.accept(port=2)
        d = harness.factory.drain(10)
        self.assertNoResult(d)
        waiting_client.lose()
        self.assertNoResult(d)
        harness.reactor.advance(10)
        self.assertTrue(client.disconnected and backend.disconnected)
        self.assertNoResult(d)
        client.lose()
        backend.lose()
        self.successResultOf(d)
        self.assertEqual(harness.records[-1].reason, "shutdown")
        self.assertEqual(timers(harness), [])

    def test_drain_ends_early_when_the_last_one_closes(self):
        harness = Harness(self)
        connection, client = harness.accept()
        d = harness.factory.drain(10)
        client.lose()
        self.successResultOf(d)
        self.assertEqual(timers(harness), [])

    def test_abort_before_relaying_is_shutdown(self):
        harness = Harness(self)
        connection, client = harness.accept()
        harness.factory.drain(1)
        harness.reactor.advance(1)
        self.assertTrue(client.disconnected)
        client.lose()
        self.assertEqual(harness.records[0].outcome, Outcome.SHUTDOWN)


class ReconfigureTests(SynchronousTestCase):
    def test_new_connections_get_the_new_router_live_ones_keep_theirs(self):
        harness = Harness(self)
        connection, client = harness.accept(port=1)
        other = Source({"shop.example.com": None})
        harness.factory.reconfigure(
            ProxyConfig(listen=("tcp:8443",), hello_timeout=1.0), Router(other, harness.reactor)
        )
        connection.dataReceived(HELLO)
        self.assertEqual(harness.source.asked, ["shop.example.com"])
        self.assertEqual(other.asked, [])
        fresh, fresh_client = harness.accept(port=2)
        self.assertEqual(fresh.settings.hello_timeout, 1.0)
        fresh.dataReceived(HELLO)
        self.assertEqual(other.asked, ["shop.example.com"])
        self.assertEqual(fresh_client.value(), alert(alerts.UNRECOGNIZED_NAME))

    def test_limits_take_effect_at_once(self):
        harness = Harness(self)
        harness.accept(port=1)
        harness.factory.reconfigure(ProxyConfig(listen=("tcp:8443",), max_connections=1), harness.router)
        self.assertEqual(harness.accept(port=2), (None, None))

    def test_trusted_networks_follow_the_reload(self):
        harness = Harness(self)
        harness.factory.reconfigure(ProxyConfig(listen=("tcp:8443",), accept_proxy_from=("127.0.0.0/8",)), harness.router)
        connection, client = harness.accept()
        self.assertEqual(connection.inbound, b"")


class ObserverTests(SynchronousTestCase):
    def test_a_failing_observer_does_not_stop_the_others(self):
        harness = Harness(self)

        def broken(record):
            raise RuntimeError("observer bug")

        later: list[ConnectionRecord] = []
        harness.factory.record_observers[:0] = [broken]
        harness.factory.record_observers.append(later.append)
        connection, client = harness.accept()
        d = harness.factory.drain(5)
        client.lose()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(later), 1)
        self.assertEqual(len(harness.records), 1)
        self.successResultOf(d)
