"""
Moving bytes through a socket as fast as Python can, for the throughput
figures: the sending side C{sendall}s one 4 MiB block (a memoryview, no
copies in Python) over and over; the receiving side splices the socket
into a pipe and the pipe into /dev/null (Linux C{splice(2)}: the bytes
never enter the process), or C{recv_into}s one reused buffer where splice
is missing.  On a 2-core loopback this pair moves 3-4 GB/s, which is the
ceiling of the method (the "direct" figure of the report).
"""

from __future__ import annotations

import os
import select
import socket

__all__ = ["CHUNK", "Sink", "send_count"]

CHUNK = 4 << 20
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


def send_count(sock: socket.socket, count: int, block: memoryview) -> None:
    """Send C{count} bytes, C{block} over and over."""
    left = count
    size = len(block)
    while left:
        n = min(size, left)
        sock.sendall(block[:n])
        left -= n


class Sink:
    """Swallows bytes from sockets; a context manager for its pipe."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.splice = hasattr(os, "splice")
        self.buffer = memoryview(bytearray(CHUNK))
        self.fds: tuple[int, ...] = ()
        if self.splice:
            read_end, write_end = os.pipe()
            try:
                import fcntl

                fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass
            self.fds = (read_end, write_end, os.open(os.devnull, os.O_WRONLY))

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = ()

    def drain(self, sock: socket.socket, count: int) -> int:
        """
        Read C{count} bytes (fewer if the stream ends first) and discard them.

        @return: how many were read.
        @raise TimeoutError: when no byte comes for C{timeout} seconds.
        """
        left = count
        fd = sock.fileno()
        while left:
            try:
                if self.splice:
                    read_end, write_end, null = self.fds
                    n = os.splice(fd, write_end, min(left, _PIPE_SIZE))
                    moved = n
                    while moved:
                        moved -= os.splice(read_end, null, moved)
                else:
                    n = sock.recv_into(self.buffer[: min(left, CHUNK)])
            except (TimeoutError, BlockingIOError):
                # A socket with a timeout is non-blocking underneath.
                if not select.select([fd], [], [], self.timeout)[0]:
                    raise TimeoutError(f"no data for {self.timeout:g} s") from None
                continue
            if not n:
                break
            left -= n
        return count - left
