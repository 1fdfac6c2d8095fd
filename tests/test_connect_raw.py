"""
The bare-socket backend connect (C{connect(..., raw=True)}) on the real
reactor, over loopback: it reaches the first address that answers, names
refusals as the Connector path does, fails over at once, reports to the
health observer, and leaves no descriptor behind when abandoned.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sniproxy.connect import ConnectError, connect
from sniproxy.interfaces import Address
from sniproxy.transport import SocketTransport


class Ready(Protocol):
    def __init__(self, ready):
        self.ready = ready

    def connectionMade(self):
        self.ready(self)


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Health:
    def __init__(self):
        self.events = []

    def attempt_won(self, address):
        self.events.append(("won", address))

    def attempt_failed(self, address, why):
        self.events.append(("failed", address, why))

    def attempt_dropped(self, address):
        self.events.append(("dropped", address))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


class RawConnectTests(TestCase):
    def setUp(self):
        self.port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.address = Address("127.0.0.1", self.port.getHost().port)

    def start(self, addresses, **kwargs):
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("stagger", 0.25)
        return connect(reactor, reactor, addresses, Ready, raw=True, **kwargs)

    @inlineCallbacks
    def test_connects_and_relays(self):
        health = Health()
        protocol = yield self.start([self.address], health=health)
        self.assertEqual(protocol.address, self.address)
        self.assertEqual(health.events, [("won", self.address)])
        received = Deferred()
        protocol.dataReceived = received.callback
        protocol.transport.write(b"ping")
        self.assertEqual((yield received), b"ping")
        self.assertEqual(protocol.transport.getPeer().port, self.address.port)
        protocol.transport.loseConnection()

    @inlineCallbacks
    def test_refused_is_named_as_before(self):
        refused = Address("127.0.0.1", closed_port())
        health = Health()
        error = yield self.assertFailure(self.start([refused], health=health), ConnectError)
        self.assertEqual(str(error), f"{refused}: refused")
        self.assertEqual(health.events, [("failed", refused, "refused")])

    @inlineCallbacks
    def test_refused_fails_over_at_once(self):
        refused = Address("127.0.0.1", closed_port())
        health = Health()
        started = reactor.seconds()
        protocol = yield self.start([refused, self.address], stagger=5.0, health=health)
        self.assertLess(reactor.seconds() - started, 2.0)  # did not wait out the stagger
        self.assertEqual(protocol.address, self.address)
        self.assertEqual(health.events, [("failed", refused, "refused"), ("won", self.address)])
        protocol.transport.loseConnection()

    @inlineCallbacks
    def test_host_name_goes_through_the_connector(self):
        """A backend given by name (a fallback) is resolved off the reactor thread, not by connect_ex."""
        protocol = yield self.start([Address("localhost", self.address.port)])
        self.assertEqual(protocol.transport.getPeer().port, self.address.port)
        protocol.transport.loseConnection()

    def test_the_socket_becomes_the_transport(self):
        """
        The connected socket itself is the winner's L{SocketTransport}: no
        duplicate descriptor, and closing it leaves none behind.
        """
        before = open_fds()
        protocol = self.successResultOf(self.start([self.address]))
        self.assertIsInstance(protocol.transport, SocketTransport)
        self.assertEqual(protocol.transport.fileno(), protocol.transport.socket.fileno())
        # The one new descriptor is our end; the listener's accepted end may
        # not exist yet, and is counted once it does.
        self.assertLessEqual(open_fds() - before, 2)
        protocol.transport.loseConnection()
        self.assertFalse(protocol.transport.connected)
        self.assertEqual(protocol.transport.fileno(), -1)

    def black_hole(self) -> Address:
        """
        A loopback address whose connects stay under way: a listener with
        a full backlog (the kernel drops further SYNs) that never accepts.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            self.addCleanup(filler.close)
        return Address("127.0.0.1", listener.getsockname()[1])

    def test_connected_at_once_on_loopback(self):
        """A loopback connect is complete before the reactor turns: the protocol is there at once."""
        d = self.start([self.address])
        protocol = self.successResultOf(d)
        self.assertEqual(protocol.address, self.address)
        self.assertNotIn(True, [getattr(w, "race", None) is not None for w in reactor.getWriters()])
        protocol.transport.loseConnection()

    @inlineCallbacks
    def test_cancel_leaves_no_descriptor(self):
        hole = self.black_hole()
        # A turn first: the reactor's own descriptors exist once it has run.
        yield deferLater(reactor, 0, lambda: None)
        before = open_fds()
        health = Health()
        d = self.start([hole], health=health)
        self.assertNoResult(d)
        self.assertIn(True, [getattr(w, "race", None) is not None for w in reactor.getWriters()])
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        # Closed once the reactor has handled this turn's events.
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(open_fds(), before)
        self.assertNotIn(True, [getattr(w, "race", None) is not None for w in reactor.getWriters()])
        self.assertEqual(health.events, [("dropped", hole)])

    @inlineCallbacks
    def test_timeout_and_stagger_on_a_black_hole(self):
        hole = self.black_hole()
        health = Health()
        protocol = yield self.start([hole, self.address], stagger=0.05, health=health)
        self.assertEqual(protocol.address, self.address)
        # The black-holed instance had its full head start: a failure to the board.
        self.assertEqual(health.events[0][:2], ("won", self.address))
        self.assertEqual(health.events[1][:2], ("failed", hole))
        protocol.transport.loseConnection()

    def test_a_protocol_that_cannot_start_fails_the_connect(self):
        """
        A bug building or starting the winner's protocol is logged and the
        connect fails (the client gets internal_error), instead of waiting
        for ever with nothing left to answer it.
        """

        class Broken(Ready):
            def connectionMade(self):
                raise RuntimeError("a bug in connectionMade")

        health = Health()
        d = connect(reactor, reactor, [self.address], Broken, raw=True, health=health)
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual(str(error), f"{self.address}: internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(True, [getattr(r, "race", None) is not None for r in reactor.getReaders() + reactor.getWriters()])

    def test_a_stray_event_is_not_a_connection(self):
        """
        A read or write event for an attempt still under way (one meant for
        a socket that had its descriptor number before) neither fails nor
        completes it.
        """
        hole = self.black_hole()
        health = Health()
        d = self.start([hole], health=health)
        [attempt] = [w for w in reactor.getWriters() if getattr(w, "race", None) is not None]
        attempt.doRead()
        attempt.doWrite()
        self.assertNoResult(d)
        self.assertIn(attempt, reactor.getWriters())
        self.assertEqual(health.events, [])
        d.cancel()
        self.failureResultOf(d, CancelledError)

    @inlineCallbacks
    def test_timeout_on_a_black_hole(self):
        hole = self.black_hole()
        d = self.start([hole], timeout=0.2)
        [attempt] = [w for w in reactor.getWriters() if getattr(w, "race", None) is not None]
        error = yield self.assertFailure(d, ConnectError)
        self.assertEqual(str(error), f"{hole}: timed out")
        self.assertIsNone(attempt.socket)  # closed
        self.assertNotIn(True, [getattr(w, "race", None) is not None for w in reactor.getWriters()])

    @inlineCallbacks
    def test_ipv6_loopback(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="::1")
        except Exception as e:  # no ::1 on this host
            self.skipTest(f"no IPv6 loopback: {e}")
        self.addCleanup(port.stopListening)
        address = Address("::1", port.getHost().port)
        protocol = yield self.start([address])
        self.assertEqual(protocol.address, address)
        protocol.transport.loseConnection()
