"""
Staggered connects, driven by a memory reactor and a clock: no socket is
opened, so every timing is exact.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.connect import ConnectError, connect
from sniproxy.interfaces import Address


class Ready(Protocol):
    def __init__(self, ready):
        self.ready = ready

    def connectionMade(self):
        self.ready(self)


ADDRESSES = (Address("127.0.0.1", 1001), Address("127.0.0.2", 1002), Address("127.0.0.3", 1003))


class ConnectTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def start(self, addresses=ADDRESSES, timeout=5.0, stagger=0.25):
        return connect(self.reactor, self.reactor, addresses, Ready, timeout=timeout, stagger=stagger)

    def attempts(self):
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def succeed(self, index):
        host, port, factory, *_ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        if protocol is not None:
            protocol.makeConnection(StringTransport())
        return protocol

    def refuse(self, index):
        _, _, factory, *_ = self.reactor.tcpClients[index]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def test_first_address_alone_while_it_has_its_head_start(self):
        self.start()
        self.assertEqual(self.attempts(), [("127.0.0.1", 1001)])
        self.reactor.advance(0.24)
        self.assertEqual(len(self.attempts()), 1)
        self.reactor.advance(0.01)
        self.assertEqual(self.attempts(), [("127.0.0.1", 1001), ("127.0.0.2", 1002)])

    def test_refused_address_passes_its_turn_at_once(self):
        self.start()
        self.reactor.advance(0.1)
        self.refuse(0)
        self.assertEqual(len(self.attempts()), 2)
        # The third still waits a full stagger after the second started.
        self.reactor.advance(0.24)
        self.assertEqual(len(self.attempts()), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.attempts()), 3)

    def test_first_to_connect_wins_and_the_others_stop(self):
        d = self.start()
        self.reactor.advance(0.25)
        self.reactor.advance(0.25)
        self.assertEqual(len(self.attempts()), 3)
        winner = self.succeed(1)
        self.assertIs(self.successResultOf(d), winner)
        self.assertEqual(
            [connector.stoppedConnecting for connector in self.reactor.connectors], [True, False, True]
        )
        # A late connect of a loser gets no protocol (the reactor closes it).
        self.assertIsNone(self.succeed(0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_all_refused(self):
        d = self.start(ADDRESSES[:2])
        self.refuse(0)
        self.refuse(1)
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual(str(error), "127.0.0.1:1001: refused; 127.0.0.2:1002: refused")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_bounds_the_whole_connect(self):
        d = self.start(timeout=0.4)
        self.reactor.advance(0.25)
        self.reactor.advance(0.15)
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual(
            str(error), "127.0.0.1:1001: timed out; 127.0.0.2:1002: timed out; 1 more not tried"
        )
        self.assertTrue(all(c.stoppedConnecting for c in self.reactor.connectors))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_abandons_every_attempt(self):
        d = self.start()
        self.reactor.advance(0.25)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(all(c.stoppedConnecting for c in self.reactor.connectors))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.attempts()), 2)

    def test_ipv6_literal(self):
        d = self.start((Address("::1", 443),))
        self.assertEqual(self.attempts(), [("::1", 443)])
        self.succeed(0)
        self.successResultOf(d)
