"""
Zero-copy relaying on Linux: each direction moves bytes socket -> pipe ->
socket with splice(2), so they never enter the Python process.

The pump takes over the two TCP transports' C{doRead} and C{doWrite}
(the methods the reactor calls when a socket is readable or writable);
everything else stays Twisted's: closing, half-closing and connection loss
go through the transports' own code paths, so the protocols see the same
events as with the plain relay.

Flow control: a direction reads from its source only while its pipe is
empty.  When the destination cannot take what the pipe holds, the source
stops being read until the destination drains, so at most one pipe's worth
(L{PIPE_SIZE}) is buffered per direction, in the kernel.
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable

from twisted.internet import main

__all__ = ["PIPE_SIZE", "SplicePump", "available"]

PIPE_SIZE = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def available(*transports) -> bool:
    """Whether splice can pump between these transports (Linux, plain TCP)."""
    if not hasattr(os, "splice"):
        return False
    return all(hasattr(t, "socket") and hasattr(t, "doRead") and hasattr(t, "doWrite") for t in transports)


class _Direction:
    """One direction: C{src}'s socket -> a pipe -> C{dst}'s socket."""

    def __init__(self, src, dst, moved: Callable[[int], None]) -> None:
        self.src = src
        self.dst = dst
        self.moved = moved
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.rpipe, self.wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.wpipe, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default 64 KiB works too
        self.pending = 0
        self.waiting = False  # src is not read until dst drains the pipe
        self.broken = False  # dst refused a write: report it from its doWrite
        self.stalls = 0
        self._dst_do_write = dst.doWrite

    def readable(self):
        """The reactor's C{src.doRead}."""
        if self.pending:
            # Twisted restarted reading (a resumeProducing, say) before the
            # pipe drained: wait for the destination.
            self._wait()
            return None
        try:
            n = os.splice(self.src_fd, self.wpipe, PIPE_SIZE, flags=_FLAGS)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not n:
            # EOF with nothing left in the pipe: Twisted's own path, which
            # gives a half-closeable protocol its readConnectionLost.
            return main.CONNECTION_DONE
        self.pending = n
        self.moved(n)
        self._flush()
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

    def _flush(self) -> None:
        while self.pending:
            try:
                sent = os.splice(self.rpipe, self.dst_fd, self.pending, flags=_FLAGS)
            except BlockingIOError:
                self._wait()
                return
            except OSError:
                self.broken = True
                self.pending = 0
                self.dst.startWriting()
                return
            self.pending -= sent
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

    def close(self) -> None:
        for fd in (self.rpipe, self.wpipe):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rpipe = self.wpipe = -1


class SplicePump:
    """
    Pumps both directions between a client and a backend transport.

    @param moved_up: called with each count of bytes moved client ->
        backend; C{moved_down} likewise.
    """

    def __init__(self, client, backend, moved_up: Callable[[int], None], moved_down: Callable[[int], None]) -> None:
        self.up = _Direction(client, backend, moved_up)
        self.down = _Direction(backend, client, moved_down)
        client.doRead = self.up.readable
        backend.doWrite = self.up.writable
        backend.doRead = self.down.readable
        client.doWrite = self.down.writable

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

    def close(self) -> None:
        """Release the pipes (once both connections are gone)."""
        self.up.close()
        self.down.close()
