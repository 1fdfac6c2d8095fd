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


class Reports:
    """A health observer noting what the connector tells it."""

    def __init__(self):
        self.events = []

    def attempt_won(self, address):
        self.events.append(("won", address.port))

    def attempt_failed(self, address, why):
        self.events.append(("failed", address.port, why))

    def attempt_dropped(self, address):
        self.events.append(("dropped", address.port))


class HealthReportTests(ConnectTests):
    """What a health observer (the backend board) hears about each attempt."""

    def start(self, addresses=ADDRESSES, timeout=5.0, stagger=0.25):
        self.reports = Reports()
        return connect(
            self.reactor, self.reactor, addresses, Ready, timeout=timeout, stagger=stagger, health=self.reports
        )

    def test_winner_reported_and_addressed(self):
        d = self.start()
        self.succeed(0)
        self.assertEqual(self.successResultOf(d).address, ADDRESSES[0])
        self.assertEqual(self.reports.events, [("won", 1001)])

    def test_refused_reported(self):
        self.start()
        self.refuse(0)
        self.succeed(1)
        self.assertEqual(self.reports.events, [("failed", 1001, "refused"), ("won", 1002)])

    def test_losing_after_the_whole_stagger_is_a_failure(self):
        """
        An attempt that had its whole head start and is beaten by a later
        one counts as a timeout (a black-holed instance); one that had not
        had its head start yet is dropped without a verdict.
        """
        self.start()
        self.reactor.advance(0.25)
        self.reactor.advance(0.1)
        self.succeed(1)
        self.assertEqual(
            self.reports.events,
            [("won", 1002), ("failed", 1001, "no connection within the stagger while another instance connected")],
        )

    def test_losing_before_the_whole_stagger_is_no_verdict(self):
        """An attempt beaten before its head start was over is dropped without a verdict."""
        self.start()
        self.reactor.advance(0.25)
        self.reactor.advance(0.05)
        self.refuse(0)  # the third starts now
        self.reactor.advance(0.1)
        self.succeed(1)
        self.assertEqual(self.reports.events, [("failed", 1001, "refused"), ("won", 1002), ("dropped", 1003)])

    def test_no_stagger_no_verdict_for_losers(self):
        """With C{connect_stagger = 0} every address starts at once: losing says nothing about health."""
        self.start(ADDRESSES[:2], stagger=0)
        self.reactor.advance(0)
        self.succeed(1)
        self.assertEqual(self.reports.events, [("won", 1002), ("dropped", 1001)])

    def test_timeout_reported(self):
        d = self.start(ADDRESSES[:2], timeout=0.4)
        self.reactor.advance(0.25)
        self.reactor.advance(0.15)
        self.failureResultOf(d, ConnectError)
        self.assertEqual(self.reports.events, [("failed", 1001, "timed out"), ("failed", 1002, "timed out")])

    def test_cancel_is_dropped(self):
        d = self.start()
        self.reactor.advance(0.25)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.reports.events, [("dropped", 1001), ("dropped", 1002)])


class DeadlinesTimeoutTests(SynchronousTestCase):
    """With C{deadlines}, the whole connect's bound is a coarse deadline, not a DelayedCall."""

    def setUp(self):
        from sniproxy.deadlines import Deadlines

        self.reactor = MemoryReactorClock()
        self.deadlines = Deadlines(self.reactor)

    def test_timeout_on_the_deadlines(self):
        d = connect(self.reactor, self.reactor, ADDRESSES[:1], Ready, timeout=0.42, deadlines=self.deadlines)
        self.assertEqual(len(self.deadlines), 1)
        self.assertEqual([c.func for c in self.reactor.getDelayedCalls()], [self.deadlines._sweep])
        self.reactor.advance(0.42)
        self.assertNoResult(d)  # the bucket boundary after 0.42 is 0.5
        self.reactor.advance(0.08)
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual(str(error), "127.0.0.1:1001: timed out")
        self.assertTrue(all(c.stoppedConnecting for c in self.reactor.connectors))
        self.assertEqual(len(self.deadlines), 0)

    def test_winning_cancels_the_deadline(self):
        d = connect(self.reactor, self.reactor, ADDRESSES[:1], Ready, timeout=5.0, deadlines=self.deadlines)
        host, port, factory, *_ = self.reactor.tcpClients[0]
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(StringTransport())
        self.successResultOf(d)
        self.assertEqual(len(self.deadlines), 0)
