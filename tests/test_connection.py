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
from sniproxy.proxyprotocol import header as proxy_header
from sniproxy.record import ConnectionRecord, Outcome
from sniproxy.routing import Router
from sniproxy.testing.clienthello import alpn_extension, build_client_hello, sni_extension

HELLO = build_client_hello([sni_extension(["shop.example.com"]), alpn_extension([b"h2", b"http/1.1"])])
BACKEND = Address("127.0.0.1", 9443)
ROUTE = Route(backends=(BACKEND,), source="static", app="shop", cache="hit", detail="shop.example.com")


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
        self.router = Router(self.source, self.reactor, timeout=self.settings.routing_timeout)
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
