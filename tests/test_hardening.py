"""
The proxy under hostile conditions, end to end on loopback: connection
limits and the accept loop, a bound on connections waiting for one name's
route, a thousand slow clients, refused routes that must never become a
connect (not an open relay), and backends that reset, stop reading or
close half-way.

Time is a L{Clock} wherever a timeout matters (the proxy's timers run on
it while its sockets are real), so nothing here sleeps through a timeout.
Every connection goes to 127.0.0.0/8; the refused addresses of the
no-open-relay tests reach a recording reactor that opens no socket.
"""

from __future__ import annotations

import collections
import errno
import gc
import resource
import socket
import struct
import time
import tomllib
import tracemalloc

from twisted.internet import reactor, selectreactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from sniproxy.accesslog import entry
from sniproxy.config import parse_config
from sniproxy.interfaces import Route
from sniproxy.routing import Router
from sniproxy.sources.chain import FallbackChain
from sniproxy.sources.system import SystemResolver
from sniproxy.testing.churn import Churn, EchoBackend, config_for, open_fds
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import Collect
from tests.test_proxy import queued

# A listen string with a backlog big enough for a burst of connects (the
# Twisted default of 50 makes the kernel drop SYNs, and the client retry a
# second later, when many connect at once).
LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"

# The end of an alert record: fatal (2) internal_error (80).
INTERNAL_ERROR = b"\x02\x50"


# ---------------------------------------------------------------- helpers


def capture_logs(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def lines(events: list[dict], start: str) -> list[dict]:
    """The log events whose format starts with C{start}."""
    return [e for e in events if e.get("log_format", "").startswith(start)]


def sleep(seconds: float = 0.01) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def until(predicate, timeout: float = 5.0, what: str = "condition"):
    """Let the reactor run until C{predicate()} is true (real time, bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield sleep(0.005)


@inlineCallbacks
def listen(testcase, factory, interface: str = "127.0.0.1"):
    port = yield TCP4ServerEndpoint(reactor, 0, interface=interface, backlog=1024).listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


def connect(port: int, protocol: Protocol, bind: str | None = None) -> Deferred:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(bind, 0) if bind else None)
    return connectProtocol(endpoint, protocol)


def proxy(testcase, toml: str = "", clock: Clock | None = None):
    """
    A proxy on L{LISTEN} (unless the config says otherwise) whose closed
    connections' access records are kept in C{service.records}.
    """
    data = tomllib.loads(toml)
    data.setdefault("proxy", {}).setdefault("listen", [LISTEN])
    data.setdefault("log", {}).setdefault("access", "")
    service, port = running_proxy(testcase, config=parse_config(data), clock=clock)
    service.records = []
    service.factory.record_observers.append(lambda record: service.records.append(entry(record)))
    if clock is not None:
        # Shutdown drains on the proxy's clock: a test that fails with
        # connections open must not leave the drain waiting for ever.
        testcase.addCleanup(service.factory._abort_all)
    return service, port


class Sink(Protocol):
    """A backend that keeps what it receives; C{received} fires on the first bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.received: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.received.called:
            self.received.callback(None)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class Backends(Factory):
    """Makes C{protocol()} per connection and keeps them all."""

    def __init__(self, protocol=Sink) -> None:
        self.protocol = protocol
        self.made: list[Protocol] = []

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        self.made.append(p)
        return p


@implementer(IHalfCloseableProtocol)
class Client(Collect):
    """A client that sends C{first} once connected and keeps what it receives."""

    def __init__(self, first: bytes = b"") -> None:
        super().__init__()
        self.first = first
        self.eof = False

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.reason = reason
        super().connectionLost(reason)


def rst(transport) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), not a FIN."""
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abortConnection()


# ---------------------------------------------------------------- backend faults


class BackendFaultTests(TestCase):
    """
    A backend that resets mid-stream, stops reading, or closes half-way:
    the client is closed cleanly, nothing stays open, and one log line says
    what happened.
    """

    def assertNothingOpen(self, service, *transports) -> None:
        self.assertEqual(service.factory.connections, set())
        self.assertEqual(service.factory._per_client, {})
        for transport in transports:
            self.assertFalse(transport.connected, transport)

    @inlineCallbacks
    def test_backend_resets_mid_stream(self):
        """
        The backend sends 64 KiB, which reach the client, then resets: the
        client gets those bytes and then an orderly EOF, and one warning
        names the backend, the SNI and the bytes relayed.
        """
        events = capture_logs(self)
        backends = Backends()
        port = yield listen(self, backends)
        service, proxy_port = proxy(self, f'[routing.static]\n"reset.example" = "127.0.0.1:{port.getHost().port}"\n')
        hello = make_client_hello("reset.example")
        client = Client(hello)
        yield connect(proxy_port, client)
        yield until(lambda: backends.made and backends.made[0].received.called, what="the hello at the backend")
        backend = backends.made[0]
        response = bytes(range(256)) * 256
        backend.transport.write(response)
        yield until(lambda: len(b"".join(client.chunks)) == len(response), what="the response at the client")
        [connection] = service.factory.connections
        relay = connection.relay
        rst(backend.transport)
        received = yield client.done
        self.assertEqual(received, response)
        self.assertTrue(client.eof, "the client got a reset, not an orderly close")
        yield until(lambda: not service.factory.connections, what="the proxy to forget the connection")
        self.assertNothingOpen(service, relay.client, relay.backend)
        [line] = lines(events, "backend {backend} reset")
        self.assertEqual(line["sni"], "reset.example")
        self.assertEqual((line["up"], line["down"]), (len(hello), len(response)))
        self.assertEqual(line["backend"], f"127.0.0.1:{port.getHost().port}")
        self.assertEqual(
            formatEvent(line),
            f"backend 127.0.0.1:{port.getHost().port} reset the connection for {line['client']} "
            f"sni=reset.example after {len(hello)} bytes up, {len(response)} bytes down",
        )
        [record] = service.records
        self.assertEqual((record["outcome"], record["reason"]), ("relayed", "backend reset"))

    @inlineCallbacks
    def test_backend_never_reads(self):
        """
        A backend that accepts and never reads: the client's bytes fill the
        buffers, the proxy stops reading the client (it buffers less than
        a MiB meanwhile), and at C{idle_timeout} both are closed with one
        line saying the backend read nothing.
        """
        clock = Clock()
        events = capture_logs(self)

        class Deaf(Sink):
            def connectionMade(self):
                self.transport.pauseProducing()

        backends = Backends(Deaf)
        port = yield listen(self, backends)
        service, proxy_port = proxy(
            self,
            f'[proxy]\nidle_timeout = 30.0\n[routing.static]\n"deaf.example" = "127.0.0.1:{port.getHost().port}"\n',
            clock=clock,
        )
        hello = make_client_hello("deaf.example")
        client = Client(hello + b"\x17" * (16 << 20))
        yield connect(proxy_port, client)
        yield until(lambda: service.factory.connections and next(iter(service.factory.connections)).relay, what="relay")
        [connection] = service.factory.connections
        relay = connection.relay
        # The kernel's buffers fill, then the proxy's: the client is paused
        # for good and nothing moves any more.
        up = -1
        for _ in range(100):
            if relay.up == up and relay.stalled == "backend":
                break
            up = relay.up
            yield sleep(0.05)
        else:
            self.fail("the client was never paused for good")
        for transport in (relay.client, relay.backend):
            self.assertLess(queued(transport), 1 << 20)
        clock.advance(29)
        yield sleep(0.02)
        self.assertIn(connection, service.factory.connections)
        clock.advance(1)
        yield client.done
        yield until(lambda: not service.factory.connections, what="the proxy to forget the connection")
        self.assertNothingOpen(service, relay.client, relay.backend)
        [line] = lines(events, "closed {client}")
        self.assertEqual(line["why"], "the backend read nothing")
        self.assertEqual(
            formatEvent(line),
            f"closed {line['client']} sni=deaf.example to {line['backend']}: the backend read nothing "
            f"for 30s, after {relay.up} bytes up, 0 bytes down",
        )
        self.assertEqual(service.records[0]["reason"], "idle timeout")

    @inlineCallbacks
    def test_backend_closes_half_way(self):
        """
        A backend that answers half and closes while the client is still
        sending: the client gets the half answer, then EOF; the client's
        later bytes meet the backend's reset, the relay closes, and one
        warning says so.
        """
        events = capture_logs(self)

        class HalfWay(Sink):
            def dataReceived(self, data):
                super().dataReceived(data)
                if len(self.data) >= 1000 and self.transport.connected:
                    self.transport.write(b"half an answer")
                    self.transport.loseConnection()

        backends = Backends(HalfWay)
        port = yield listen(self, backends)
        service, proxy_port = proxy(self, f'[routing.static]\n"half.example" = "127.0.0.1:{port.getHost().port}"\n')

        @implementer(IHalfCloseableProtocol)
        class KeepsSending(Client):
            sent = 0

            def readConnectionLost(self):
                # The backend is gone; this client does not notice and
                # sends on, as a client in the middle of an upload would.
                self.eof = True
                self.upload = LoopingCall(self.send_more)
                self.upload.start(0.005)

            def send_more(self):
                if self.sent >= 1000 or not self.transport.connected:
                    self.upload.stop()
                    return
                self.sent += 1
                self.transport.write(b"\x17" * 16384)

            def connectionLost(self, reason):
                if self.eof and self.upload.running:
                    self.upload.stop()
                super().connectionLost(reason)

        client = KeepsSending(make_client_hello("half.example"))
        yield connect(proxy_port, client)
        yield until(lambda: service.factory.connections, what="the connection")
        [connection] = service.factory.connections
        yield until(lambda: connection.relay is not None, what="relay")
        relay = connection.relay
        self.assertEqual((yield client.done), b"half an answer")
        self.assertTrue(client.eof)
        yield until(lambda: not service.factory.connections, what="the proxy to forget the connection")
        self.assertNothingOpen(service, relay.client, relay.backend)
        [line] = lines(events, "backend {backend} reset")
        self.assertEqual(line["sni"], "half.example")
        self.assertEqual(service.records[0]["reason"], "backend reset")

    @inlineCallbacks
    def test_backend_closing_first_is_an_ordinary_ending(self):
        """
        A backend that closes first while the client is quiet (a server
        ending a TLS session) is passed on as an EOF: the relay ends
        "done", in the access log only; no warning.
        """
        events = capture_logs(self)

        class AnswersAndCloses(Sink):
            def dataReceived(self, data):
                super().dataReceived(data)
                self.transport.write(b"the whole answer")
                self.transport.loseConnection()

        port = yield listen(self, Backends(AnswersAndCloses))
        service, proxy_port = proxy(self, f'[routing.static]\n"fin.example" = "127.0.0.1:{port.getHost().port}"\n')
        client = Client(make_client_hello("fin.example"))
        yield connect(proxy_port, client)
        self.assertEqual((yield client.done), b"the whole answer")
        yield until(lambda: service.records, what="the access record")
        self.assertEqual(service.records[0]["reason"], "done")
        self.assertEqual(lines(events, "backend {backend}") + lines(events, "closed {client}"), [])


# ---------------------------------------------------------------- limits


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@inlineCallbacks
def relayed_through(testcase, port: int, name: str, bind: str | None = None):
    """
    Open a connection, send a hello for C{name} and wait for the echo
    backend to send it back: the proxy admitted, routed and relayed it.
    """
    hello = make_client_hello(name)
    client = Client(hello)
    yield connect(port, client, bind)
    yield until(lambda: len(b"".join(client.chunks)) >= len(hello), what=f"the echo of {name}'s hello")
    testcase.assertEqual(b"".join(client.chunks), hello)
    client.transport.loseConnection()
    yield client.done


class LimitTests(TestCase):
    """
    C{proxy.max_connections} and C{proxy.max_connections_per_client}: over
    a limit a new connection is closed at once, with a log line at most
    once a second, and the accept loop goes on.
    """

    @inlineCallbacks
    def setUp(self):
        port = yield listen(self, Factory.forProtocol(Echo))
        self.routes = f'[routing.static]\n"echo.example" = "127.0.0.1:{port.getHost().port}"\n'

    @inlineCallbacks
    def hold(self, port: int, count: int, bind: str | None = None) -> list[Client]:
        """C{count} connections that send nothing (they wait for their hello)."""
        clients = [Client() for _ in range(count)]
        for client in clients:
            yield connect(port, client, bind)
        return clients

    @inlineCallbacks
    def test_overall_limit(self):
        """
        With C{max_connections} connections open, a burst of 50 more are
        each closed at once (the clock never moves: no timeout is involved),
        one log line names the limit, and once a connection ends a new one
        is admitted and relayed.
        """
        clock = Clock()
        events = capture_logs(self)
        service, port = proxy(self, "[proxy]\nmax_connections = 3\n" + self.routes, clock=clock)
        held = yield self.hold(port, 3)
        yield until(lambda: len(service.factory.connections) == 3, what="three connections")

        started = time.monotonic()
        refused = yield self.hold(port, 50)
        for client in refused:
            yield client.done
        took = time.monotonic() - started
        self.assertLess(took, 2.0, "over-limit connections were not closed at once")
        self.assertTrue(all(b"".join(c.chunks) == b"" for c in refused))
        self.assertEqual(len(service.factory.connections), 3)
        self.assertTrue(all(not c.done.called for c in held))

        # One line for the burst (the clock stands still) ...
        [line] = lines(events, "refused {client}")
        self.assertEqual(line["reason"], "3 connections open (proxy.max_connections)")
        self.assertRegex(
            formatEvent(line), r"^refused 127\.0\.0\.1:\d+: 3 connections open \(proxy\.max_connections\)$"
        )
        # ... and the next one, a second later, counts what it left out.
        clock.advance(1.0)
        late = Client()
        yield connect(port, late)
        yield late.done
        _, second = lines(events, "refused {client}")
        self.assertTrue(
            formatEvent(second).endswith(
                ": 3 connections open (proxy.max_connections) (and 49 more refused since the last line)"
            ),
            formatEvent(second),
        )
        over_limit = service.metrics.registry.get_sample_value("sniproxy_connections_total", {"outcome": "over limit"})
        self.assertEqual(over_limit, 51)

        # A connection ends: the next one is admitted and works.
        held[0].transport.loseConnection()
        yield held[0].done
        yield until(lambda: len(service.factory.connections) == 2, what="the proxy to see the close")
        yield relayed_through(self, port, "echo.example")
        self.assertEqual(len(lines(events, "refused {client}")), 2)

    @inlineCallbacks
    def test_per_client_limit(self):
        """
        C{max_connections_per_client} counts connections per client IP
        address: 127.0.0.2 is refused its third while 127.0.0.3 is served.
        """
        events = capture_logs(self)
        service, port = proxy(self, "[proxy]\nmax_connections_per_client = 2\n" + self.routes, clock=Clock())
        held = yield self.hold(port, 2, bind="127.0.0.2")
        yield until(lambda: len(service.factory.connections) == 2, what="two connections")
        [third] = yield self.hold(port, 1, bind="127.0.0.2")
        self.assertEqual((yield third.done), b"")
        [line] = lines(events, "refused {client}")
        self.assertTrue(line["client"].startswith("127.0.0.2:"), line["client"])
        self.assertEqual(line["reason"], "2 connections open from this address (proxy.max_connections_per_client)")
        yield relayed_through(self, port, "echo.example", bind="127.0.0.3")
        yield until(lambda: service.factory._per_client == {"127.0.0.2": 2}, what="127.0.0.3 to be forgotten")
        held[1].transport.loseConnection()
        yield held[1].done
        yield until(lambda: service.factory._per_client == {"127.0.0.2": 1}, what="the count to go down")
        yield relayed_through(self, port, "echo.example", bind="127.0.0.2")

    @inlineCallbacks
    def test_trusted_balancer_is_not_limited_per_client(self):
        """
        A load balancer trusted to send PROXY headers stands for many
        clients: the per-client limit does not apply to its address (the
        overall limit does).
        """
        service, port = proxy(
            self,
            '[proxy]\nmax_connections_per_client = 2\nmax_connections = 5\naccept_proxy_from = ["127.0.0.4/32"]\n'
            + self.routes,
            clock=Clock(),
        )
        yield self.hold(port, 5, bind="127.0.0.4")
        yield until(lambda: len(service.factory.connections) == 5, what="five connections")
        [sixth] = yield self.hold(port, 1, bind="127.0.0.4")
        self.assertEqual((yield sixth.done), b"")
        self.assertEqual(len(service.factory.connections), 5)

    @inlineCallbacks
    def test_limits_off(self):
        """0 switches a limit off."""
        service, port = proxy(
            self, "[proxy]\nmax_connections = 0\nmax_connections_per_client = 0\n" + self.routes, clock=Clock()
        )
        yield self.hold(port, 300)
        yield until(lambda: len(service.factory.connections) == 300, what="300 connections")


class Pending:
    """A route source that answers C{fast.example} at once and never answers C{slow.example}."""

    name = "test"

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.waiting: list[Deferred] = []

    def resolve(self, server_name: str) -> Deferred:
        from sniproxy.interfaces import Address

        if server_name == "fast.example":
            d = Deferred()
            d.callback(Route(backends=(Address("127.0.0.1", self.backend),), source="test"))
            return d
        d = Deferred()
        self.waiting.append(d)
        return d


class PendingPerNameTests(TestCase):
    @inlineCallbacks
    def test_bound_on_connections_waiting_for_one_name(self):
        """
        C{max_pending_per_name} connections may wait for one name's routing
        answer; the next one is refused at once with an C{internal_error}
        alert and a log line, other names are served meanwhile, and the
        waiting ones fail at the routing deadline.
        """
        clock = Clock()
        events = capture_logs(self)
        backend = yield listen(self, Factory.forProtocol(Echo))
        service, port = proxy(self, "[proxy]\nmax_pending_per_name = 3\nrouting_timeout = 4.0\n", clock=clock)
        source = Pending(backend.getHost().port)
        factory = service.factory
        router = Router(FallbackChain([source]), clock, timeout=4.0, max_pending_per_name=3)
        factory.reconfigure(factory.settings, router)

        waiting = [Client(make_client_hello("slow.example")) for _ in range(3)]
        for client in waiting:
            yield connect(port, client)
        yield until(lambda: router.pending.get("slow.example") == 3, what="three waiting")
        fourth = Client(make_client_hello("slow.example"))
        yield connect(port, fourth)
        received = yield fourth.done
        self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR)
        [line] = lines(events, "rejected ")
        self.assertEqual((line["sni"], line["outcome"]), ("slow.example", "routing failed"))
        self.assertIn("3 connections already wait for this name's route", line["reason"])

        yield relayed_through(self, port, "fast.example")
        self.assertTrue(all(not c.done.called for c in waiting))

        clock.advance(4.0)
        for client in waiting:
            received = yield client.done
            self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR)
        self.assertEqual(router.pending, {})
        self.assertEqual(len(lines(events, "rejected ")), 4)
        self.assertTrue(all(d.called for d in source.waiting), "the source's lookups were not cancelled")


# ---------------------------------------------------------------- slow clients

SLOW_CLIENTS = 1000


def _fd_room(needed: int) -> int:
    """
    Make room for C{needed} more file descriptors (raising the soft limit
    up to the hard one if need be); return how many there are room for.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = open_fds() + needed + 100
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft - open_fds() - 100


class SlowClientTests(TestCase):
    @inlineCallbacks
    def test_a_thousand_slow_clients(self):
        """
        1,000 clients connect from four addresses and send nothing (half of
        them) or one byte: the proxy holds them all (well under the default
        limits), serves another client meanwhile, and at C{hello_timeout}
        closes every one of them, each with a log line.  The Python heap a
        waiting connection costs the proxy is measured on the way and held
        to a loose bound (about 2 KiB is usual; bench/pending_memory.py
        measures it, and RSS, with 10,000 connections).
        """
        count = SLOW_CLIENTS
        if isinstance(reactor, selectreactor.SelectReactor):
            # (2,000 descriptors in this one process: the proxy's ends and the clients'.)
            raise SkipTest("select(2) watches at most FD_SETSIZE (1,024) descriptors; this test needs about 2,050")
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
        room = _fd_room(2 * count + 50)
        if room < 2 * count + 50:
            # Each slow client costs two descriptors in this process (its
            # own socket and the proxy's); scale down on a small hard limit.
            count = max(50, (room - 50) // 2)
        clock = Clock()
        events = capture_logs(self)
        backend = yield listen(self, Factory.forProtocol(Echo))
        service, port = proxy(
            self,
            f'[proxy]\nhello_timeout = 5.0\n[routing.static]\n"echo.example" = "127.0.0.1:{backend.getHost().port}"\n',
            clock=clock,
        )
        factory = service.factory
        sockets: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in sockets])

        gc.collect()
        tracemalloc.start(1)
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.take_snapshot()
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.0.{10 + i % 4}", 0))
            s.setblocking(False)
            self.assertIn(s.connect_ex(("127.0.0.1", port)), (0, errno.EINPROGRESS))
            sockets.append(s)
            if i % 100 == 99:
                yield sleep(0)
        yield until(lambda: len(factory.connections) == count, timeout=10, what=f"{count} connections")
        for s in sockets[::2]:
            s.send(b"\x16")
        yield sleep(0.05)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        # Only what the proxy (and the reactor serving it) allocated: the
        # test's own sockets are allocated from this file.
        here = tracemalloc.Filter(False, __file__)
        grown = sum(
            stat.size_diff for stat in after.filter_traces([here]).compare_to(before.filter_traces([here]), "filename")
        )
        per_connection = grown / count
        self.assertLess(per_connection, 16384)

        # The proxy keeps serving others meanwhile.
        yield relayed_through(self, port, "echo.example")

        self.assertEqual(lines(events, "rejected "), [])
        clock.advance(4.9)
        yield sleep(0.02)
        self.assertEqual(lines(events, "rejected "), [])
        started = time.monotonic()
        clock.advance(0.1)
        # Every client sees its connection end (EOF: the proxy read the one
        # byte it was sent, so no reset).
        ended = set()
        deadline = time.monotonic() + 10
        while len(ended) < count and time.monotonic() < deadline:
            for i, s in enumerate(sockets):
                if i in ended:
                    continue
                try:
                    if s.recv(1) == b"":
                        ended.add(i)
                except BlockingIOError:
                    pass
            yield sleep(0.01)
        self.assertEqual(len(ended), count, "some slow clients were not closed at hello_timeout")
        self.assertLess(time.monotonic() - started, 5.0)
        rejected = lines(events, "rejected ")
        self.assertEqual(len(rejected), count)
        self.assertEqual({e["outcome"] for e in rejected}, {"hello timeout"})
        for s in sockets:
            s.close()
        yield until(lambda: not factory.connections, timeout=10, what="the proxy to forget them")
        self.assertEqual(factory._per_client, {})


# ---------------------------------------------------------------- not an open relay


class _NoConnector:
    """What L{RecordingReactor} hands out for an address it will not dial."""

    def stopConnecting(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class RecordingReactor:
    """
    The real reactor, except that C{connectTCP} records every backend
    connect and dials only loopback: any other address fails at once
    ("refused") without a socket ever being opened.
    """

    def __init__(self, real) -> None:
        self.real = real
        self.connects: list[tuple[str, int]] = []

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        import ipaddress

        self.connects.append((host, port))
        if ipaddress.ip_address(host).is_loopback:
            return self.real.connectTCP(host, port, factory, timeout, bindAddress)
        connector = _NoConnector()
        self.real.callLater(
            0, factory.clientConnectionFailed, connector, Failure(ConnectionRefusedError("not dialled by the test"))
        )
        return connector

    def __getattr__(self, name):
        return getattr(self.real, name)


def record_connects(service) -> RecordingReactor:
    recorder = RecordingReactor(service.factory.reactor)
    service.factory.reactor = recorder
    return recorder


@inlineCallbacks
def alert_for(port: int, name: str):
    """Send a hello for C{name}; return what came back before the close."""
    client = Client(make_client_hello(name))
    yield connect(port, client)
    received = yield client.done
    return received


class TXTNotAnOpenRelayTests(TestCase):
    """
    A TXT route record can only name a registered app: one naming an IP
    literal of any range gets the client an C{internal_error} alert, a log
    line naming the record and the reason, and no backend connect to any
    address at all (a recording reactor sees every connect the proxy
    makes).  Records naming an unregistered app, C{localhost} or
    127.0.0.1 through the proxy are in
    tests/test_dns_routing.py (C{TXTRoutingTests.test_not_an_open_relay});
    the TXT source's own refusals in tests/test_sources_txt.py.
    """

    @inlineCallbacks
    def setUp(self):
        self.events = capture_logs(self)
        self.backend = yield listen(self, Factory.forProtocol(Echo))
        self.dns = DNSServer()
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.service, self.port = proxy(
            self,
            f"""
            [routing]
            sources = ["txt"]
            [apps.web]
            backends = ["127.0.0.1"]
            [dns]
            servers = ["127.0.0.1:{self.dns.port}"]
            """,
        )
        self.connects = record_connects(self.service)

    @inlineCallbacks
    def test_ip_literals_of_every_range(self):
        values = [
            "[::1]:22",
            "::1:22",
            "10.0.0.1:443",
            "192.168.1.1:443",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "0.0.0.0:443",
            "93.184.216.34:443",
        ]
        for i, value in enumerate(values):
            name = f"ip{i}.example"
            self.dns.add_txt(f"_dstack-app-address.{name}", value)
            received = yield alert_for(self.port, name)
            self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR, value)
            [line] = [e for e in lines(self.events, "rejected ") if e["sni"] == name]
            self.assertEqual(line["outcome"], "routing failed")
            self.assertIn(f'TXT _dstack-app-address.{name} = "{value}"', line["reason"])
        self.assertEqual(self.connects.connects, [])

    @inlineCallbacks
    def test_registered_app_is_routed(self):
        """The control: a record naming the registered app is relayed, and the recorder saw the connect."""
        self.dns.add_txt("_dstack-app-address.good.example", f"web:{self.backend.getHost().port}")
        yield relayed_through(self, self.port, "good.example")
        self.assertEqual(self.connects.connects, [("127.0.0.1", self.backend.getHost().port)])


# What the fake getaddrinfo answers for each name, and the refusal the
# proxy must log for it.
SYSTEM_NAMES = {
    "loop4.svc.example": (["127.0.0.1", "127.1.2.3"], "loopback"),
    "loop6.svc.example": (["::1"], "loopback"),
    "mapped.svc.example": (["::ffff:127.0.0.1"], "loopback"),
    "ten.svc.example": (["10.1.2.3"], "private"),
    "s172.svc.example": (["172.16.0.5", "172.31.255.254"], "private"),
    "s192.svc.example": (["192.168.1.1"], "private"),
    "ula.svc.example": (["fc00::1", "fd12:3456::1"], "private"),
    "ll4.svc.example": (["169.254.169.254"], "link-local"),
    "ll6.svc.example": (["fe80::1"], "link-local"),
    "unspec.svc.example": (["0.0.0.0", "::"], "unspecified"),
}


def fake_getaddrinfo(answers: dict[str, list[str]]):
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.rstrip(".")
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for address in answers[name]:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    return getaddrinfo


class SystemNotAnOpenRelayTests(TestCase):
    """
    Names the system source takes resolve, through a fake getaddrinfo, into
    loopback, private, link-local and unspecified ranges: each is refused
    with an alert and a log line naming the range, and no connect happens,
    unless C{allow_private} says otherwise (and unspecified addresses are
    refused even then).  Non-loopback addresses reach a recording reactor
    only: no socket is ever opened to them.
    """

    @inlineCallbacks
    def start(self, allow_private: bool, extra: dict[str, list[str]] | None = None):
        self.events = capture_logs(self)
        self.backend = yield listen(self, Factory.forProtocol(Echo))
        self.service, self.port = proxy(
            self,
            f"""
            [routing]
            sources = ["system"]
            [routing.system]
            allow = ["*.svc.example"]
            port = {self.backend.getHost().port}
            allow_private = {"true" if allow_private else "false"}
            """,
        )
        answers = {name: addresses for name, (addresses, _) in SYSTEM_NAMES.items()}
        answers.update(extra or {})
        [system] = self.service.factory.router.source.sources
        self.assertIsInstance(system, SystemResolver)
        system.getaddrinfo = fake_getaddrinfo(answers)
        self.connects = record_connects(self.service)

    @inlineCallbacks
    def test_refused_ranges(self):
        yield self.start(allow_private=False)
        for name, (addresses, kind) in SYSTEM_NAMES.items():
            received = yield alert_for(self.port, name)
            self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR, name)
            [line] = [e for e in lines(self.events, "rejected ") if e["sni"] == name]
            self.assertEqual(line["outcome"], "routing failed")
            self.assertIn("every address is refused", line["reason"])
            for address in addresses:
                self.assertIn(f"{address} ({kind})", line["reason"])
        self.assertEqual(self.connects.connects, [])

    @inlineCallbacks
    def test_refused_addresses_dropped_from_a_mixed_answer(self):
        """Of a name's addresses only the allowed ones are dialled."""
        yield self.start(allow_private=False, extra={"mixed.svc.example": ["10.0.0.7", "192.0.2.1", "93.184.216.34"]})
        received = yield alert_for(self.port, "mixed.svc.example")
        # 93.184.216.34 is the only address allowed; the recording reactor
        # fails it without dialling, so the client gets internal_error.
        self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR)
        self.assertEqual(self.connects.connects, [("93.184.216.34", self.backend.getHost().port)])

    @inlineCallbacks
    def test_allow_private(self):
        """
        With C{allow_private}, loopback is relayed for real and a private
        address is dialled (by the recording reactor, which opens no
        socket); unspecified addresses stay refused.
        """
        yield self.start(allow_private=True)
        port = self.backend.getHost().port
        yield relayed_through(self, self.port, "loop4.svc.example")
        self.assertEqual(self.connects.connects, [("127.0.0.1", port)])
        yield alert_for(self.port, "ten.svc.example")
        self.assertEqual(self.connects.connects[1:], [("10.1.2.3", port)])
        [line] = [e for e in lines(self.events, "rejected ") if e["sni"] == "ten.svc.example"]
        self.assertEqual(line["outcome"], "backend unreachable")
        received = yield alert_for(self.port, "unspec.svc.example")
        self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02" + INTERNAL_ERROR)
        [line] = [e for e in lines(self.events, "rejected ") if e["sni"] == "unspec.svc.example"]
        self.assertIn("0.0.0.0 (unspecified)", line["reason"])
        self.assertEqual(len(self.connects.connects), 2)


# ---------------------------------------------------------------- leaks


def settled_fds(service) -> int:
    """
    The process's open file descriptors once the proxy's pool of idle
    splice pipes (kept for reuse, as many as the busiest moment needed) is
    emptied: what is left open for good.
    """
    pipes = getattr(service.factory, "pipes", None)
    if pipes is not None:
        pipes.close()
    return open_fds()


class LeakTests(TestCase):
    @inlineCallbacks
    def test_short_connections_leave_nothing_behind(self):
        """
        1,500 short connections of every kind (good, reset mid-relay, no
        route, backend down, not TLS, broken hellos, invalid names,
        abandoned and slow hellos): afterwards the process has exactly the
        file descriptors it had, and the proxy holds no connection, count
        or timer.  (C{bench/leaks.py} runs 20,000 and measures memory.)
        """
        backend = yield listen(self, EchoBackend())
        down = yield listen(self, Factory.forProtocol(Protocol))
        down_port = down.getHost().port
        yield down.stopListening()
        service, port = proxy(self, config_for(backend.getHost().port, down_port, hello_timeout=0.3))
        # Warm up (the reactor's and the logger's working sets, port reuse).
        yield Churn(reactor, port, 200, 50, time_limit=20).run()
        yield until(lambda: not service.factory.connections, what="the warm-up to end")
        yield sleep(0.1)
        gc.collect()
        fds = settled_fds(service)
        timers = len(reactor.getDelayedCalls())
        churn = Churn(reactor, port, 1500, 50, slow_every=300, time_limit=30)
        counts = yield churn.run()
        self.assertEqual(sum(counts.values()), 1500)
        self.assertNotIn("error", counts)
        yield until(lambda: not service.factory.connections, what="the proxy to close everything")
        yield sleep(0.1)
        gc.collect()
        self.assertEqual(settled_fds(service), fds)
        self.assertEqual(service.factory._per_client, {})
        self.assertEqual(service.factory.router.pending, {})
        self.assertLessEqual(len(reactor.getDelayedCalls()), timers)
        outcomes = collections.Counter(r["outcome"] for r in service.records)
        self.assertEqual(
            set(outcomes), {"relayed", "no route", "backend unreachable", "malformed", "client closed", "hello timeout"}
        )
