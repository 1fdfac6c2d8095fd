"""
The floor: a bare-epoll CPython relay that routes by SNI with recv/send,
no framework, as the reference for what a proxy in this language can cost
per connection (issue 11).

    python bench/floor.py [--edge] --listen 127.0.0.1:0 --route NAME=HOST:PORT ...

prints C{"listening <port>"} once listening; on SIGTERM (or when its
standard input closes) it prints C{"events <n> polls <m> connections <k>"}
and exits.  Level-triggered epoll, one 256 KiB buffer for every recv, a
partial send keeps the rest and pauses the other side (bounded memory),
half-close passed on, the ClientHello replayed byte for byte.  A name
without a route, or a hello that does not parse, is closed.  No timers.
C{--edge}: L{EdgeFloor}, the same relay with nginx's pattern of system
calls (edge-triggered, each socket registered once).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys

IN, OUT, ERRS = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
MAX_HELLO = 65536


def parse_sni(data: bytes) -> str | bool | None:
    """The SNI of the ClientHello at the start of C{data}; C{None}: need more bytes; C{False}: reject."""
    if data[0] != 0x16:
        return False
    if len(data) < 9:
        return None
    if data[5] != 1 or (length := int.from_bytes(data[6:9], "big")) > MAX_HELLO:
        return False
    body, at = bytearray(), 0
    while len(body) < length + 4:  # the hello may span several records
        if len(data) < at + 5:
            return None
        if data[at] != 0x16:
            return False
        size = int.from_bytes(data[at + 3 : at + 5], "big")
        if len(data) < at + 5 + size:
            return None
        body += data[at + 5 : at + 5 + size]
        at += 5 + size
    hello, payload = memoryview(body)[4 : 4 + length], 34
    try:
        payload += 1 + hello[payload]  # session id
        payload += 2 + int.from_bytes(hello[payload : payload + 2], "big")  # cipher suites
        payload += 1 + hello[payload]  # compression methods
        end = payload + 2 + int.from_bytes(hello[payload : payload + 2], "big")
        payload += 2
        while payload + 4 <= end:
            kind = int.from_bytes(hello[payload : payload + 2], "big")
            size = int.from_bytes(hello[payload + 2 : payload + 4], "big")
            if kind == 0:  # server_name: list length, type, name length, name
                name = bytes(hello[payload + 9 : payload + 9 + int.from_bytes(hello[payload + 7 : payload + 9], "big")])
                return name.decode("ascii").lower().rstrip(".") or False
            payload += 4 + size
    except (IndexError, UnicodeDecodeError):
        pass
    return False


class Side:
    """One socket of a connection: its peer, the bytes it still has to send, and its state."""

    __slots__ = ("sock", "fd", "peer", "pending", "hello", "eof")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.fd, self.peer, self.pending, self.hello, self.eof = sock, sock.fileno(), None, b"", b"", False


class Floor:
    """The relay; L{poll_once} runs one round of events (so a reactor can drive it, see L{bench.floor_twisted})."""

    def __init__(self, listener: socket.socket, routes: dict[str, tuple[str, int]]) -> None:
        self.listener, self.routes, self.sides, self.buffer = listener, routes, {}, memoryview(bytearray(1 << 18))
        self.epoll, self.events, self.polls, self.connections = select.epoll(), 0, 0, 0
        self.stop_fds: set[int] = set()
        self.stopped = False
        self.twisted_port = None  # when the listening socket is a Twisted port's (L{bench.floor_twisted})
        listener.setblocking(False)
        self.epoll.register(listener.fileno(), IN)

    def poll_once(self, timeout: float) -> None:
        ready = self.epoll.poll(timeout)
        self.polls += 1
        self.events += len(ready)
        sides, listen_fd = self.sides, self.listener.fileno()
        for fd, mask in ready:
            if (side := sides.get(fd)) is not None:
                if mask & OUT:
                    self.writable(side)
                if mask & (IN | ERRS) and fd in sides:
                    self.readable(side)
            elif fd == listen_fd:
                self.accept()
            elif fd in self.stop_fds:
                self.stopped = True

    def accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(*NODELAY)
            self.sides[sock.fileno()] = side = Side(sock)
            self.epoll.register(side.fd, IN)
            self.connections += 1

    def readable(self, side: Side) -> None:
        try:
            n = side.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        peer = side.peer
        if side.eof or (peer is not None and peer.pending):  # an error/hang-up while paused: later
            return
        if peer is None:  # still reading the hello
            if not n:
                return self.close(side)
            side.hello += self.buffer[:n]
            name = parse_sni(side.hello)
            if name is None and len(side.hello) < MAX_HELLO + 64:
                return
            if not name or name not in self.routes:
                return self.close(side)
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            backend.setblocking(False)
            backend.setsockopt(*NODELAY)
            err = backend.connect_ex(self.routes[name])
            if err not in (0, errno.EINPROGRESS):
                backend.close()
                return self.close(side)
            peer = side.peer = Side(backend)
            peer.peer, peer.pending, side.hello = side, side.hello, b""
            self.sides[peer.fd] = peer
            self.epoll.modify(side.fd, 0)
            self.epoll.register(peer.fd, OUT)
        elif not n:
            side.eof = True
            self.epoll.modify(side.fd, 0)
            try:
                peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if peer.eof:
                self.close(side)
        else:
            data = self.buffer[:n]
            try:
                sent = peer.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return self.close(side)
            if sent < n:  # the peer is slow: keep the rest, stop reading until it drains
                peer.pending = bytes(data[sent:])
                self.epoll.modify(side.fd, 0)
                self.epoll.modify(peer.fd, OUT)

    def writable(self, side: Side) -> None:
        peer = side.peer
        try:
            if side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return self.close(side)
            sent = side.sock.send(side.pending) if side.pending else 0
        except BlockingIOError:
            return
        except OSError:
            return self.close(side)
        side.pending = side.pending[sent:]
        if not side.pending:  # drained (or connected): both sides read again
            self.epoll.modify(side.fd, 0 if side.eof else IN)
            self.epoll.modify(peer.fd, 0 if peer.eof else IN)

    def close(self, side: Side) -> None:
        for one in (side, side.peer):
            if one is not None and self.sides.pop(one.fd, None) is not None:
                self.epoll.unregister(one.fd)
                one.sock.close()


ET = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
RDHUP = select.EPOLLRDHUP


class EdgeFloor(Floor):
    """
    The floor with fewer system calls, the way nginx does it: each
    connection socket registered once, edge-triggered, for both
    directions (never modified, never unregistered: closing removes it);
    a short read means the socket is drained, and a hang-up flag seen
    with it means end of stream, so no extra C{recv} for either; a side
    paused by its peer's backlog remembers that it has unread bytes and
    is read again when the backlog drains; backend sockets created
    non-blocking; one accept per event on the (level-triggered) listener;
    a failed connect shows as the hello's send error.
    """

    def poll_once(self, timeout: float) -> None:
        ready = self.epoll.poll(timeout)
        self.polls += 1
        self.events += len(ready)
        sides = self.sides
        for fd, mask in ready:
            if (side := sides.get(fd)) is not None:
                if mask & RDHUP:
                    side.rdhup = True
                if mask & OUT and (side.pending or not side.connected):
                    self.writable(side)
                if mask & (IN | ERRS | RDHUP) and fd in sides:
                    self.readable(side)
            elif fd == self.listener.fileno():
                self.accept()
            elif fd in self.stop_fds:
                self.stopped = True

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(*NODELAY)
        self.sides[sock.fileno()] = side = EdgeSide(sock)
        self.epoll.register(side.fd, ET)
        self.connections += 1

    def readable(self, side: EdgeSide) -> None:
        peer = side.peer
        if side.eof:
            return
        if peer is not None and (peer.pending or not peer.connected):
            side.unread = True  # paused: read again once the peer drains
            return
        try:
            n = side.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            return self.close(side)
        if peer is None:
            if not n:
                return self.close(side)
            side.hello += self.buffer[:n]
            name = parse_sni(side.hello)
            if name is None and len(side.hello) < MAX_HELLO + 64:
                return
            if not name or name not in self.routes:
                return self.close(side)
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            backend.setsockopt(*NODELAY)
            if backend.connect_ex(self.routes[name]) not in (0, errno.EINPROGRESS):
                backend.close()
                return self.close(side)
            peer = side.peer = EdgeSide(backend)
            peer.peer, peer.pending, peer.connected, side.hello = side, side.hello, False, b""
            self.sides[peer.fd] = peer
            self.epoll.register(peer.fd, ET)
            return
        if n:
            data = self.buffer[:n]
            try:
                sent = peer.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return self.close(side)
            if sent < n:
                peer.pending = bytes(data[sent:])
                side.unread = True
                return
            if n == len(self.buffer):  # maybe more queued, and no new edge for it
                return self.readable(side)
            if not side.rdhup:
                return
        side.eof = True
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if peer.eof:
            self.close(side)

    def writable(self, side: EdgeSide) -> None:
        side.connected = True
        if side.pending:
            try:
                sent = side.sock.send(side.pending)
            except BlockingIOError:
                return
            except OSError:
                return self.close(side)
            side.pending = side.pending[sent:]
            if side.pending:
                return
        peer = side.peer
        if peer.unread:
            peer.unread = False
            self.readable(peer)

    def close(self, side: Side) -> None:
        for one in (side, side.peer):
            if one is not None and self.sides.pop(one.fd, None) is not None:
                one.sock.close()  # leaves the epoll set with its last reference


class EdgeSide(Side):
    __slots__ = ("rdhup", "connected", "unread")

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.rdhup, self.connected, self.unread = False, True, False


def listener(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


def parse_routes(routes: list[str]) -> dict[str, tuple[str, int]]:
    table = {}
    for route in routes:
        name, target = route.split("=", 1)
        host, port = target.rsplit(":", 1)
        table[name.lower()] = (host, int(port))
    return table


def main(argv: list[str]) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python bench/floor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--route", action="append", default=[], help="NAME=HOST:PORT (repeatable)")
    parser.add_argument("--edge", action="store_true", help="edge-triggered, fewer system calls (L{EdgeFloor})")
    options = parser.parse_args(argv)
    floor = (EdgeFloor if options.edge else Floor)(listener(options.listen), parse_routes(options.route))
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    for fd in (stop_r, sys.stdin.fileno()):  # SIGTERM, or our parent is gone
        floor.epoll.register(fd, IN)
        floor.stop_fds.add(fd)
    print("listening", floor.listener.getsockname()[1], flush=True)
    while not floor.stopped:
        floor.poll_once(-1)
    print("events", floor.events, "polls", floor.polls, "connections", floor.connections, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
