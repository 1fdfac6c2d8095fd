"""
L{sniproxy.transport}: the lean transport over real loopback sockets on
the real reactor (whichever trial installed: epoll, poll, select), and a
listening port serving it.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from sniproxy.transport import BUFFER_SIZE, SocketTransport, serve_accepts


def turn():
    """One turn of the reactor."""
    return deferLater(reactor, 0, lambda: None)


@inlineCallbacks
def until(condition, what: str, limit: int = 2000):
    for _ in range(limit):
        if condition():
            return
        yield deferLater(reactor, 0.001, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class Recorder(Protocol):
    """Records what its transport tells it."""

    def __init__(self) -> None:
        self.data = b""
        self.events: list[str] = []
        self.reason = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.events.append("lost")
        self.reason = reason
        self.lost.callback(None)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write lost")


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def drain(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything C{sock} receives until the end of its stream."""
    sock.settimeout(limit)
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@inlineCallbacks
def closed_by_them(sock: socket.socket):
    """Wait, with the reactor running, for the end of C{sock}'s stream (or its reset)."""
    sock.setblocking(False)
    received = []

    def ended():
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        received.append(chunk)
        return chunk == b""

    yield until(ended, "the end of the stream")
    return b"".join(received)


def accept_one(testcase, protocol_class, first: bytes = b"hello"):
    """
    A served port, a client that connected and sent C{first}, and the
    protocol the port's accept loop built for it (run at once, no reactor
    turn: on loopback the bytes are queued on the accepted socket by then).

    @return: (port, protocol, client socket)
    """
    built = []

    def build():
        built.append(protocol_class())
        return built[-1]

    port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    serve_accepts(port)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    testcase.addCleanup(client.close)
    client.sendall(first)
    port.doRead()
    [protocol] = built
    return port, protocol, client


class SocketTransportTests(TestCase):
    def pair(self, protocol_class=HalfCloser):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(theirs.close)
        protocol = protocol_class()
        transport = SocketTransport(ours, protocol, reactor, ("127.0.0.1", 1))
        protocol.makeConnection(transport)
        self.addCleanup(lambda: transport.connected and transport.abortConnection())
        return protocol, transport, theirs

    def assertGone(self, transport: SocketTransport) -> None:
        self.assertFalse(transport.connected)
        self.assertEqual(transport.fileno(), -1)
        self.assertNotIn(transport, reactor.getReaders())
        self.assertNotIn(transport, reactor.getWriters())

    @inlineCallbacks
    def test_reads_and_writes_at_once(self):
        protocol, transport, theirs = self.pair()
        transport.write(b"to them")
        # Straight to the kernel: no reactor turn, nothing queued.
        self.assertEqual(theirs.recv(100), b"to them")
        self.assertEqual(transport.queued, 0)
        self.assertNotIn(transport, reactor.getWriters())
        theirs.sendall(b"to us")
        yield until(lambda: protocol.data == b"to us", "the bytes")

    @inlineCallbacks
    def test_a_full_socket_queues_and_pauses_the_producer(self):
        protocol, transport, theirs = self.pair()
        producer = Producer()
        transport.registerProducer(producer, True)
        payload = b"x" * (4 * BUFFER_SIZE)
        for _ in range(16):
            transport.write(payload)
            if transport.queued:
                break
        self.assertGreater(transport.queued, 0)
        self.assertIn(transport, reactor.getWriters())
        while "pause" not in producer.events:
            transport.write(payload)
        self.assertEqual(producer.events, ["pause"])
        # The peer reads everything: the queue drains and the producer resumes.
        received = []
        theirs.setblocking(False)
        for _ in range(5000):
            try:
                received.append(len(theirs.recv(1 << 20)))
            except BlockingIOError:
                pass
            if not transport.queued and "resume" in producer.events:
                break
            yield deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertNotIn(transport, reactor.getWriters())

    @inlineCallbacks
    def test_half_close_both_ways(self):
        protocol, transport, theirs = self.pair()
        transport.write(b"last words")
        transport.loseWriteConnection()
        self.assertTrue(transport.write_shut)
        self.assertEqual(protocol.events, ["write lost"])
        self.assertEqual(drain(theirs), b"last words")
        # We still read.
        theirs.sendall(b"reply")
        theirs.shutdown(socket.SHUT_WR)
        yield until(lambda: "read lost" in protocol.events, "the end of their stream")
        self.assertEqual(protocol.data, b"reply")
        self.assertTrue(transport.connected)
        transport.loseConnection()
        self.assertEqual(protocol.events, ["write lost", "read lost", "lost"])
        self.assertIsInstance(protocol.reason.value, ConnectionDone)
        self.assertGone(transport)

    @inlineCallbacks
    def test_lose_connection_flushes_first(self):
        protocol, transport, theirs = self.pair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
        transport.write(payload)
        self.assertGreater(transport.queued, 0)
        transport.loseConnection()
        self.assertTrue(transport.connected)  # still flushing
        received = []

        def read():
            theirs.setblocking(False)
            try:
                chunk = theirs.recv(1 << 20)
            except BlockingIOError:
                return False
            received.append(chunk)
            return chunk == b""

        yield until(read, "the end of the stream")
        self.assertEqual(b"".join(received), payload)
        yield protocol.lost
        self.assertIsInstance(protocol.reason.value, ConnectionDone)
        self.assertGone(transport)

    @inlineCallbacks
    def test_lose_connection_with_nothing_queued_is_at_once(self):
        protocol, transport, theirs = self.pair()
        transport.loseConnection()
        self.assertEqual(protocol.events, ["lost"])
        self.assertGone(transport)
        # The descriptor itself is closed once the reactor has handled the
        # events of this turn (its number is not reused within them).
        yield turn()
        self.assertEqual(drain(theirs), b"")

    @inlineCallbacks
    def test_abort_resets_and_reports_on_the_next_turn(self):
        protocol, transport, theirs = self.pair(Recorder)
        transport.write(b"x")
        transport.abortConnection()
        self.assertEqual(protocol.events, [])
        yield protocol.lost
        self.assertIsInstance(protocol.reason.value, ConnectionAborted)
        self.assertGone(transport)

    @inlineCallbacks
    def test_abort_sends_a_reset_on_tcp(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
        self.addCleanup(theirs.close)
        protocol = Recorder()
        transport = SocketTransport(ours, protocol, reactor)
        protocol.makeConnection(transport)
        self.assertEqual(transport.getPeer().port, listener.getsockname()[1])
        self.assertEqual(transport.getHost().port, ours.getsockname()[1])
        transport.abortConnection()
        yield protocol.lost
        yield turn()
        theirs.settimeout(5)
        with self.assertRaises(ConnectionResetError):
            theirs.recv(10)

    @inlineCallbacks
    def test_peer_reset_is_connection_lost(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
        protocol = HalfCloser()
        transport = SocketTransport(ours, protocol, reactor)
        protocol.makeConnection(transport)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        theirs.close()
        yield protocol.lost
        self.assertIsInstance(protocol.reason.value, ConnectionLost)
        self.assertGone(transport)

    @inlineCallbacks
    def test_end_of_stream_closes_a_protocol_that_cannot_half_close(self):
        protocol, transport, theirs = self.pair(Recorder)
        theirs.shutdown(socket.SHUT_WR)
        yield protocol.lost
        self.assertIsInstance(protocol.reason.value, ConnectionDone)
        self.assertGone(transport)

    def test_peer_from_accept_and_from_the_socket(self):
        protocol, transport, theirs = self.pair()
        peer = transport.getPeer()
        self.assertEqual((peer.type, peer.host, peer.port), ("TCP", "127.0.0.1", 1))
        self.assertIs(transport.getPeer(), peer)  # built once

    @inlineCallbacks
    def test_writes_after_close_are_dropped(self):
        protocol, transport, theirs = self.pair()
        transport.loseConnection()
        transport.write(b"late")
        self.assertEqual(transport.queued, 0)
        yield turn()
        self.assertEqual(drain(theirs), b"")


class ServeAcceptsTests(TestCase):
    def listen(self, factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_accepted_connections_get_the_lean_transport(self):
        built = []

        def build():
            built.append(HalfCloser())
            return built[-1]

        port = self.listen(Factory.forProtocol(build))
        self.assertTrue(serve_accepts(port))
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(b"hello")
        yield until(lambda: built and built[0].data == b"hello", "the bytes")
        [protocol] = built
        self.assertIsInstance(protocol.transport, SocketTransport)
        self.assertEqual(protocol.transport.getPeer().port, client.getsockname()[1])
        protocol.transport.write(b"back")
        self.assertEqual(client.recv(10), b"back")
        protocol.transport.loseConnection()
        self.assertEqual((yield closed_by_them(client)), b"")

    @inlineCallbacks
    def test_a_refused_connection_is_closed_and_the_port_keeps_listening(self):
        answers = [None, "boom", "ok"]
        built = []

        class Choosy(Factory):
            def buildProtocol(self, addr):
                answer = answers.pop(0)
                if answer == "boom":
                    raise RuntimeError("a bug in buildProtocol")
                if answer is None:
                    return None
                built.append(Recorder())
                return built[-1]

        port = self.listen(Choosy())
        serve_accepts(port)
        refused = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(refused.close)
        self.assertEqual((yield closed_by_them(refused)), b"")
        broken = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(broken.close)
        self.assertEqual((yield closed_by_them(broken)), b"")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        served = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(served.close)
        yield until(lambda: built, "the third connection")
        self.assertTrue(port.connected)

    @inlineCallbacks
    def test_an_accept_error_hands_over_to_twisteds_loop(self):
        """Descriptor exhaustion and other accept errors go to Twisted's own loop, which still builds ours."""
        built = []

        def build():
            built.append(Recorder())
            return built[-1]

        port = self.listen(Factory.forProtocol(build))
        calls = []

        class Flaky(socket.socket):
            def _accept(self):
                calls.append(1)
                if len(calls) == 1:
                    raise OSError(errno.EMFILE, "Too many open files")
                return super()._accept()

        flaky = Flaky(port.socket.family, port.socket.type, fileno=port.socket.detach())
        flaky.setblocking(False)
        port.socket = flaky
        port.fileno = flaky.fileno  # (the reactor asks the port, which asked the old object)
        serve_accepts(port)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        yield until(lambda: built, "the connection")
        self.assertIsInstance(built[0].transport, SocketTransport)
        self.assertGreaterEqual(len(calls), 2)

    def test_first_bytes_already_there_are_read_at_accept(self):
        """
        A client's first bytes that arrived with its connect are read as the
        connection is accepted, not a reactor turn later.
        """
        port, protocol, client = accept_one(self, HalfCloser)
        self.assertEqual(protocol.data, b"hello")
        protocol.transport.abortConnection()

    @inlineCallbacks
    def test_a_protocol_failing_on_its_first_bytes_is_closed(self):
        """An exception from the first read at accept is logged and the connection closed, as the reactor would."""
        class Fragile(Recorder):
            def dataReceived(self, data):
                raise RuntimeError("a bug in dataReceived")

        port, protocol, client = accept_one(self, Fragile)
        self.assertEqual(protocol.events, ["lost"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((yield closed_by_them(client)), b"")
        self.assertTrue(port.connected)

    def test_only_plain_tcp_ports(self):
        class NotAPort:
            pass

        self.assertFalse(serve_accepts(NotAPort()))
        port = self.listen(Factory.forProtocol(Protocol))
        self.assertTrue(serve_accepts(port))
        self.assertFalse(serve_accepts(port))  # once is enough
        self.assertIs(type(port), tcp.Port)


class DescriptorReuseTests(TestCase):
    """
    A socket closed while the reactor handles a batch of events keeps its
    descriptor number until the batch is over, so a stale event later in
    the batch cannot reach a new socket given the same number.
    """

    @inlineCallbacks
    def test_the_number_is_kept_until_the_next_turn(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        protocol = HalfCloser()
        transport = SocketTransport(ours, protocol, reactor)
        protocol.makeConnection(transport)
        number = ours.fileno()
        transport.loseConnection()
        self.assertEqual(transport.fileno(), -1)
        os.fstat(number)  # still ours: no new socket can get it now
        fresh = socket.socket()
        self.addCleanup(fresh.close)
        self.assertNotEqual(fresh.fileno(), number)
        yield turn()
        yield turn()
        with self.assertRaises(OSError):
            os.fstat(number)


class AcceptFailureTests(TestCase):
    @inlineCallbacks
    def test_a_protocol_failing_to_start_leaves_nothing_registered(self):
        """
        A protocol whose connectionMade raises is logged and its socket
        unregistered and closed, so the next connection (which may get the
        same descriptor number) is served.
        """
        built = []

        class Fragile(Recorder):
            def connectionMade(self):
                if not built:
                    built.append(None)
                    raise RuntimeError("a bug in connectionMade")
                built.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Fragile), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        serve_accepts(port)
        first = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(first.close)
        yield until(lambda: built, "the first connection")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((yield closed_by_them(first)), b"")
        second = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(second.close)
        second.sendall(b"served")
        yield until(lambda: len(built) == 2 and built[1].data == b"served", "the second connection's bytes")

    def test_tls_ports_are_left_alone(self):
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory

        port = reactor.listenTCP(0, TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertFalse(serve_accepts(port))
        self.assertIs(port.transport, tcp.Server)


class ProtocolBugTests(TestCase):
    @inlineCallbacks
    def test_bugs_on_the_first_bytes_and_in_connection_lost_leave_the_port_listening(self):
        """
        A protocol raising in dataReceived (on the bytes read at accept) and
        again in connectionLost is logged; the listening port keeps
        listening, as with Twisted's own accept loop.
        """
        class Buggy(Recorder):
            def dataReceived(self, data):
                raise RuntimeError("a bug in dataReceived")

            def connectionLost(self, reason):
                raise ValueError("a bug in connectionLost")

        port, protocol, client = accept_one(self, Buggy)
        self.assertTrue(port.connected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual((yield closed_by_them(client)), b"")


class CloserTests(TestCase):
    @inlineCallbacks
    def test_a_cancelled_flush_does_not_strand_later_closes(self):
        """
        The pending flush being cancelled (trial's janitor cancels what a
        test leaves behind) does not leave later sockets unclosed.
        """
        from sniproxy import transport as transport_module

        first, first_peer = socket.socketpair()
        self.addCleanup(first_peer.close)
        transport_module.close_later(reactor, first)
        transport_module._closer.call.cancel()
        second, second_peer = socket.socketpair()
        self.addCleanup(second_peer.close)
        number = second.fileno()
        transport_module.close_later(reactor, second)
        yield turn()
        yield turn()
        self.assertEqual(first.fileno(), -1)
        with self.assertRaises(OSError):
            os.fstat(number)
