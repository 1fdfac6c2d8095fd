"""
The splice(2) pump, driven by hand over real sockets and pipes (the
reactor's part is played by the test: it calls doRead/doWrite itself).
"""

from __future__ import annotations

import os
import socket

from twisted.internet import main
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sniproxy.splice import PipePool, SplicePump


class Transport:
    """Just what the pump uses of a TCP transport, over one real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        sock.setblocking(False)
        self.connected = True
        self.disconnecting = False
        self.reading = True
        self.writing = False
        self.own_writes = 0

    def fileno(self) -> int:
        return self.socket.fileno() if self.connected else -1

    def startReading(self):
        self.reading = True

    def stopReading(self):
        self.reading = False

    def startWriting(self):
        self.writing = True

    def stopWriting(self):
        self.writing = False

    def doRead(self):
        raise AssertionError("replaced by the pump")

    def doWrite(self):
        self.own_writes += 1
        self.stopWriting()


class SplicePumpTests(SynchronousTestCase):
    def setUp(self):
        if not hasattr(os, "splice"):
            raise SkipTest("no splice(2) here")
        # client <-> [client transport | proxy | backend transport] <-> backend
        self.client_peer, client_side = socket.socketpair()
        self.backend_peer, backend_side = socket.socketpair()
        for sock in (self.client_peer, self.backend_peer):
            self.addCleanup(sock.close)
            sock.setblocking(False)
        self.client = Transport(client_side)
        self.backend = Transport(backend_side)
        self.addCleanup(client_side.close)
        self.addCleanup(backend_side.close)
        self.pool = PipePool(keep=4)
        self.addCleanup(self.pool.close)
        self.moved = {"up": 0, "down": 0, "progress": 0}
        self.pump = SplicePump(
            self.client,
            self.backend,
            self.pool,
            lambda n: self.moved.__setitem__("up", self.moved["up"] + n),
            lambda n: self.moved.__setitem__("down", self.moved["down"] + n),
            lambda: self.moved.__setitem__("progress", self.moved["progress"] + 1),
        )
        self.addCleanup(self.pump.close)

    def drain(self, sock: socket.socket) -> bytes:
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def test_moves_bytes_both_ways_and_reuses_one_pipe(self):
        for round in range(5):
            self.client_peer.sendall(b"up %d" % round)
            self.assertIsNone(self.client.doRead())
            self.assertEqual(self.drain(self.backend_peer), b"up %d" % round)
            self.backend_peer.sendall(b"down %d" % round)
            self.assertIsNone(self.backend.doRead())
            self.assertEqual(self.drain(self.client_peer), b"down %d" % round)
        self.assertEqual((self.moved["up"], self.moved["down"]), (20, 30))
        # Each transfer gave its pipe back at once.
        self.assertEqual(self.pool.created, 1)

    def test_nothing_to_read(self):
        self.assertIsNone(self.client.doRead())
        self.assertEqual(self.pool.created, 1)
        self.assertIsNone(self.pump.up.pipe)

    def test_eof_is_twisteds_connection_done(self):
        self.client_peer.shutdown(socket.SHUT_WR)
        self.assertIs(self.client.doRead(), main.CONNECTION_DONE)

    def test_slow_destination_pauses_the_source(self):
        """
        When the destination's socket is full, the source stops being read
        until the destination drains; nothing is lost or reordered.
        """
        sent = bytearray()
        received = bytearray()
        block = os.urandom(1 << 16)
        for _ in range(200):
            if not self.client.reading:
                break
            try:
                sent += block[: self.client_peer.send(block)]
            except BlockingIOError:
                pass
            self.client.doRead()
        self.assertFalse(self.client.reading, "the source was never paused")
        self.assertTrue(self.backend.writing)
        self.assertEqual(self.pump.stalls, (1, 0))
        self.assertEqual(self.pump.stalled, "backend")
        for _ in range(10000):
            received += self.drain(self.backend_peer)
            if self.backend.writing:
                self.backend.doWrite()
            if self.client.reading:
                self.client.doRead()
            if len(received) == len(sent) and not self.pump.up.pending:
                received += self.drain(self.backend_peer)
                break
        received += self.drain(self.backend_peer)
        self.assertEqual(bytes(received), bytes(sent))
        self.assertTrue(self.client.reading)
        # Draining the pipe after the wait counted as progress (a read that
        # is flushed at once counts through moved() alone).
        self.assertGreaterEqual(self.moved["progress"], 1)

    def test_gone_destination_is_never_written(self):
        """
        A destination that went away (its descriptor number possibly reused
        by now) is never spliced into: the source just stops being read.
        """
        self.backend.connected = False
        self.client_peer.sendall(b"secret")
        self.assertIsNone(self.client.doRead())
        self.assertFalse(self.client.reading)
        self.assertEqual(self.moved["up"], 0)

    def test_broken_destination_is_reported_from_its_doWrite(self):
        self.backend_peer.close()
        self.client_peer.sendall(b"x" * 100)
        self.assertIsNone(self.client.doRead())
        self.assertTrue(self.backend.writing)
        self.assertIs(self.backend.doWrite(), main.CONNECTION_LOST)
        self.assertFalse(self.client.reading)

    def test_doWrite_hands_over_to_twisted_once_the_pipe_is_empty(self):
        """With nothing in the pipe, the transport's own doWrite runs (a close or half-close)."""
        self.backend.doWrite()
        self.assertEqual(self.backend.own_writes, 1)

    def test_write_closed_completes_a_half_close_at_once(self):
        """Nothing in flight to the backend: its own doWrite (the half-close) runs now, not on a later write event."""
        self.pump.write_closed(self.backend)
        self.assertEqual(self.backend.own_writes, 1)
        self.pump.write_closed(self.client)
        self.assertEqual(self.client.own_writes, 1)

    def test_write_closed_waits_for_bytes_in_flight(self):
        # The backend takes nothing more: the client's bytes stay in the pipe.
        self.backend.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.client_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        payload = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < len(payload):
                sent += self.client_peer.send(payload[sent:])
        except BlockingIOError:
            pass
        for _ in range(64):
            self.client.doRead()
            if self.pump.up.pending:
                break
        self.assertTrue(self.pump.up.pending)
        self.pump.write_closed(self.backend)
        self.assertEqual(self.backend.own_writes, 0)  # left to the write event, after the pipe drains
        self.assertTrue(self.backend.writing)

    def test_write_closed_leaves_a_closing_transport_alone(self):
        self.backend.disconnecting = True
        self.pump.write_closed(self.backend)
        self.assertEqual(self.backend.own_writes, 0)

    def test_close_restores_the_transports(self):
        self.pump.close()
        self.assertNotIn("doRead", vars(self.client))
        self.assertNotIn("doWrite", vars(self.backend))
