"""
The Twisted internals the relay and the splice pump rely on (see the
adapters L{sniproxy.relay._send_directly} and L{sniproxy.splice._take_over}),
checked on the installed Twisted over real loopback TCP transports: a
Twisted release that changes one fails here, not in production.
"""

from __future__ import annotations

import os

from twisted.internet import main, reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from sniproxy import splice
from sniproxy.relay import _send_directly


class Keep(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.arrived: Deferred[None] | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            arrived.callback(None)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class TwistedInternalsTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.server = Keep()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: self.server))
        self.addCleanup(port.stopListening)
        self.client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Keep())
        # The server side may not be built yet when the client connects.
        while self.server.transport is None:
            d = Deferred()
            reactor.callLater(0, d.callback, None)
            yield d

    @inlineCallbacks
    def tearDown(self):
        for keep in (self.client, self.server):
            if keep.transport is not None and keep.transport.connected:
                keep.transport.loseConnection()
                yield keep.lost

    def test_transport_is_a_tcp_connection_with_a_socket(self):
        transport = self.client.transport
        self.assertIsInstance(transport, tcp.Connection)
        self.assertEqual(transport.socket.fileno(), transport.fileno())
        self.assertEqual(splice.available(transport, self.server.transport), hasattr(os, "splice"))

    @inlineCallbacks
    def test_send_directly(self):
        self.server.arrived = Deferred()
        self.assertEqual(_send_directly(self.client.transport, b"hello"), 5)
        yield self.server.arrived
        self.assertEqual(self.server.data, b"hello")

    @inlineCallbacks
    def test_reactor_calls_the_instance_do_read(self):
        """The reactor looks doRead up on the instance at each event; giving it back restores Twisted's."""
        transport = self.server.transport
        calls: list[str] = []
        arrived: Deferred[None] = Deferred()

        def do_read():
            calls.append("read")
            result = type(transport).doRead(transport)
            if not arrived.called:
                arrived.callback(None)
            return result

        def do_write():
            calls.append("write")
            return own_do_write()

        own_do_write = splice._take_over(transport, do_read, do_write)
        self.assertEqual(own_do_write.__func__, type(transport).doWrite)
        self.client.transport.write(b"ping")
        yield arrived
        self.assertEqual(self.server.data, b"ping")
        self.assertIn("read", calls)
        # Twisted's own doWrite, called with its buffer empty, stops writing.
        transport.startWriting()
        self.assertIsNone(own_do_write())
        splice._give_back(transport)
        self.assertEqual(transport.doRead.__func__, type(transport).doRead)
        self.assertEqual(transport.doWrite.__func__, type(transport).doWrite)

    @inlineCallbacks
    def test_do_read_connection_done_is_a_close(self):
        """Returning CONNECTION_DONE from doRead makes the reactor close the connection."""
        transport = self.server.transport
        splice._take_over(transport, lambda: main.CONNECTION_DONE, transport.doWrite)
        self.client.transport.write(b"x")
        yield self.server.lost
        self.assertFalse(transport.connected)
