"""
Zero-copy relaying on Linux: each direction moves bytes socket -> pipe ->
socket with splice(2), so they never enter the Python process.

The pump takes over the two TCP transports' C{doRead} and C{doWrite}
(the methods the reactor calls when a socket is readable or writable);
everything else stays Twisted's: closing, half-closing and connection loss
go through the transports' own code paths, so the protocols see the same
events as with the plain relay.

A direction holds a pipe only while bytes are in flight: it takes one from
the L{PipePool} to read, and gives it back once the destination has taken
everything (the usual case, within the same call).  So pipes (two file
descriptors and up to L{PIPE_SIZE} of kernel memory each) are bounded by
the directions with a slow reader, not by the connections.

Flow control: a direction reads from its source only while its pipe is
empty.  When the destination cannot take what the pipe holds, the source
stops being read until the destination drains it: at most one pipe's
worth is buffered per direction, in the kernel.
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable

from twisted.internet import main

__all__ = ["PIPE_SIZE", "PipePool", "SplicePump", "available"]

PIPE_SIZE = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


# ---------------------------------------------------------------- the adapter
#
# The one place the pump reaches into Twisted.  It relies on these
# internals of twisted.internet.tcp.Connection (an abstract.FileDescriptor),
# unchanged from Twisted 23.10 through 25.x:
#
# - the reactors (epoll, poll, select, and the asyncio one) call
#   selectable.doRead() / doWrite() by attribute lookup at each readiness
#   event, so an instance attribute shadows the class's method, and
#   deleting it restores the class's;
# - doRead()/doWrite() return None, main.CONNECTION_DONE or
#   main.CONNECTION_LOST, which the reactor turns into connectionLost (and
#   CONNECTION_DONE into readConnectionLost for a half-closeable protocol);
# - the class's doWrite, called with its own buffer empty, stops writing
#   and completes a pending loseConnection or loseWriteConnection;
# - fileno(), startReading(), stopReading(), startWriting(), and the
#   connected / disconnecting flags mean what they mean in FileDescriptor.
#
# test_splice exercises each of these on the installed Twisted, so a release
# that changes one fails the suite, not production.


def available(*transports) -> bool:
    """Whether splice can pump between these transports (Linux, plain TCP)."""
    if not hasattr(os, "splice"):
        return False
    for t in transports:
        if not (hasattr(t, "socket") and hasattr(t, "doRead") and hasattr(t, "doWrite")):
            return False
    return True


def _take_over(transport, do_read: Callable[[], object], do_write: Callable[[], object]) -> Callable[[], object]:
    """
    Make the reactor call C{do_read} and C{do_write} for C{transport}.

    @return: the transport's own C{doWrite}, which C{do_write} calls when
        it has nothing of its own to write.
    """
    own_do_write = transport.doWrite
    transport.doRead = do_read
    transport.doWrite = do_write
    return own_do_write


def _give_back(transport) -> None:
    """Give C{transport} its own C{doRead} and C{doWrite} again."""
    for name in ("doRead", "doWrite"):
        transport.__dict__.pop(name, None)


class _Pipe:
    __slots__ = ("read", "write", "size")

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            # Past the user's pipe-user-pages-soft (or pipe-max-size) the
            # kernel keeps the default size: smaller splices, same bytes.
            pass
        self.size = fcntl.fcntl(self.write, _F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class PipePool:
    """
    Empty pipes kept for reuse, so a short connection costs no pipe
    creation at all.

    @param keep: how many idle pipes to keep open at most.
    """

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._idle: list[_Pipe] = []
        self.created = 0

    def take(self) -> _Pipe:
        """An empty pipe.  @raise OSError: when none can be made (EMFILE)."""
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return _Pipe()

    def give(self, pipe: _Pipe, empty: bool = True) -> None:
        """Return C{pipe}; one that may hold bytes is closed instead."""
        if empty and len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            pipe.close()

    def close(self) -> None:
        """Close every idle pipe."""
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()


def _gone(*args) -> None:
    """What a closed direction reports progress to."""


class _Direction:
    """One direction: C{src}'s socket -> a pipe -> C{dst}'s socket."""

    def __init__(self, src, dst, pool: PipePool, moved: Callable[[int], None], progressed: Callable[[], None]) -> None:
        self.src = src
        self.dst = dst
        self.pool = pool
        self.moved = moved
        self.progressed = progressed
        self.pipe: _Pipe | None = None
        self.pending = 0
        self.waiting = False  # src is not read until dst drains the pipe
        self.broken = False  # dst refused a write: report it from its doWrite
        self.stalls = 0
        # Twisted's own dst.doWrite, set by SplicePump as it takes over.
        self._dst_do_write: Callable[[], object] = dst.doWrite

    def readable(self):
        """The reactor's C{src.doRead}."""
        if not self.dst.connected:
            # The destination is gone (earlier in this reactor turn, say):
            # its descriptor number may already be another connection's.
            self.src.stopReading()
            return None
        if self.pending:
            # Reading was restarted before the pipe drained: wait for the
            # destination.
            self._wait()
            return None
        pipe = self.pipe
        if pipe is None:
            idle = self.pool._idle
            if idle:
                pipe = self.pipe = idle.pop()  # (PipePool.take, inline: once per read)
            else:
                try:
                    pipe = self.pipe = self.pool.take()
                except OSError:
                    return main.CONNECTION_LOST
        try:
            n = os.splice(self.src.fileno(), pipe.write, pipe.size, flags=_FLAGS)
        except BlockingIOError:
            n = -1
        except OSError:
            return main.CONNECTION_LOST
        if n <= 0:
            # Nothing was read: the (empty) pipe goes back at once.
            self.pipe = None
            self._give(pipe)
            # EOF with nothing left in the pipe: Twisted's own path, which
            # gives a half-closeable protocol its readConnectionLost.
            return main.CONNECTION_DONE if n == 0 else None
        self.pending = n
        self.moved(n)
        # (moved() counted as progress already: no second report per chunk.)
        self._flush(False)
        return None

    def writable(self):
        """The reactor's C{dst.doWrite}."""
        if self.broken:
            return main.CONNECTION_LOST
        if self.pending:
            self._flush()
            if self.broken:
                return main.CONNECTION_LOST
            if self.pending:
                return None
        # The pipe is empty: Twisted's doWrite flushes its own (empty)
        # buffer, stops writing, or completes a close or half-close.
        return self._dst_do_write()

    def _flush(self, report: bool = True) -> None:
        if not self.dst.connected:
            self._discard()
            return
        dst_fd = self.dst.fileno()
        while self.pending:
            try:
                sent = os.splice(self.pipe.read, dst_fd, self.pending, flags=_FLAGS)
            except BlockingIOError:
                self._wait()
                return
            except OSError:
                self._discard()
                self.broken = True
                self.src.stopReading()
                self.dst.startWriting()
                return
            self.pending -= sent
            if report:
                self.progressed()
            report = True
        pipe, self.pipe = self.pipe, None
        self._give(pipe)
        if self.waiting:
            self.waiting = False
            if self.src.connected and not self.src.disconnecting:
                self.src.startReading()

    def _wait(self) -> None:
        if not self.waiting:
            self.waiting = True
            self.stalls += 1
            self.src.stopReading()
            self.dst.startWriting()

    def _give(self, pipe: _Pipe) -> None:
        """Give an empty C{pipe} back to the pool (L{PipePool.give}, inline)."""
        pool = self.pool
        idle = pool._idle
        if len(idle) < pool.keep:
            idle.append(pipe)
        else:
            pipe.close()

    def _release(self) -> None:
        if self.pipe is not None and not self.pending:
            self.pool.give(self.pipe)
            self.pipe = None

    def _discard(self) -> None:
        """Drop what the pipe holds (its destination is gone)."""
        if self.pipe is not None:
            self.pool.give(self.pipe, empty=False)
            self.pipe = None
        self.pending = 0

    def close(self) -> None:
        if self.pending:
            self._discard()
        self._release()
        # Both connections are gone: no more events, and no cycle left
        # through the relay's bound methods.
        self.moved = self.progressed = _gone


class SplicePump:
    """
    Pumps both directions between a client and a backend transport.

    @param moved_up: called with each count of bytes read client ->
        backend; C{moved_down} likewise.
    @param progressed: called whenever bytes reach a destination (the idle
        timer counts a slow reader draining a pipe as activity).
    """

    def __init__(
        self,
        client,
        backend,
        pool: PipePool,
        moved_up: Callable[[int], None],
        moved_down: Callable[[int], None],
        progressed: Callable[[], None],
    ) -> None:
        self.client = client
        self.backend = backend
        self.up = _Direction(client, backend, pool, moved_up, progressed)
        self.down = _Direction(backend, client, pool, moved_down, progressed)
        self.down._dst_do_write = _take_over(client, self.up.readable, self.down.writable)
        self.up._dst_do_write = _take_over(backend, self.down.readable, self.up.writable)

    @property
    def stalls(self) -> tuple[int, int]:
        """How often (client reads, backend reads) waited for the other side."""
        return self.up.stalls, self.down.stalls

    @property
    def stalled(self) -> str:
        """Which side, if any, is not taking what it is sent."""
        if self.up.waiting:
            return "backend"
        if self.down.waiting:
            return "client"
        return ""

    def write_closed(self, dst) -> None:
        """
        C{dst.loseWriteConnection()} was just called: complete it now, when
        nothing of ours is in flight to C{dst}, instead of a reactor turn
        later on its write event.  The class's C{doWrite} with an empty
        buffer does exactly what that event would (the adapter's third
        point); if it fails, the write interest it leaves registered makes
        the reactor meet (and report) the same failure.
        """
        direction = self.up if dst is self.backend else self.down
        if direction.pending or direction.broken or dst.disconnecting or not dst.connected:
            return
        if getattr(dst, "write_shut", False):
            return  # a SocketTransport completed it already (through our writable)
        dst.doWrite()

    def close(self) -> None:
        """Give the pipes back and the transports their own methods (both connections are gone)."""
        self.up.close()
        self.down.close()
        _give_back(self.client)
        _give_back(self.backend)
