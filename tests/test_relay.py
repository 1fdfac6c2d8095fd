"""The relay's bookkeeping on fake transports and a clock (the byte path is in test_proxy)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.relay import Relay


class Stuck(StringTransport):
    """A transport whose peer never reads: loseConnection never completes."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

        self.write_closed = False

    def abortConnection(self) -> None:
        self.aborted = True

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class RelayTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.client, self.backend = Stuck(), Stuck()
        self.closed = []
        self.relay = Relay(self.client, self.backend, self.clock, 10.0, self.closed.append)
        self.relay.start(b"hello", b"")

    def test_preamble_and_counts(self):
        self.assertEqual(self.backend.value(), b"hello")
        self.relay.from_client(b"abc")
        self.relay.from_backend(b"defg")
        self.assertEqual((self.relay.up, self.relay.down), (8, 4))
        self.assertEqual(self.client.value(), b"defg")

    def test_idle_timeout(self):
        self.clock.advance(6)
        self.relay.from_client(b"x")
        self.clock.advance(9)
        self.assertFalse(self.client.aborted)
        self.clock.advance(1)
        self.assertTrue(self.client.aborted and self.backend.aborted)
        self.assertEqual(self.relay.close_reason, "idle timeout")

    def test_closing_pair_is_aborted_if_a_side_never_drains(self):
        """
        A close waits for each side to flush, but not for ever: a peer that
        never reads is dropped after idle_timeout.
        """
        self.relay.backend_lost(Failure(ConnectionLost()))
        self.assertEqual(self.relay.close_reason, "backend reset")
        self.assertTrue(self.client.disconnecting)
        self.clock.advance(9.9)
        self.assertFalse(self.client.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.client.aborted)

    def test_reported_once_when_both_are_gone(self):
        self.relay.client_lost(Failure(ConnectionDone()))
        self.assertEqual(self.closed, [])
        self.relay.backend_lost(Failure(ConnectionDone()))
        self.relay.backend_lost(Failure(ConnectionDone()))
        self.assertEqual(self.closed, [self.relay])
        self.assertEqual(self.relay.close_reason, "client closed")
        self.assertEqual(len(self.relay._deadlines), 0)

    def test_half_close_both_ways_is_done(self):
        self.relay.client_eof()
        self.assertTrue(self.backend.write_closed)
        self.assertIsNone(self.relay.close_reason)
        self.relay.backend_eof()
        self.assertTrue(self.client.write_closed)
        self.assertEqual(self.relay.close_reason, "done")
