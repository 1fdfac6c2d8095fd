"""
Design spikes for issue 11's lean connection path: the floor relay's
routing and relay logic (L{bench.floor}), on Twisted's epoll reactor, in
the ways a rewrite of sniproxy could use it.  Each is a relay that routes
by SNI with recv/send, no C{tcp.Server}/C{tcp.Client}, no Deferreds, no
timers:

  - C{descriptors}: one C{IReadDescriptor}/C{IWriteDescriptor} object per
    socket (and one for the listening socket, which accepts itself),
    registered with C{reactor.addReader}/C{addWriter}; every socket event
    is one reactor dispatch (C{log.callWithLogger} included);
  - C{descriptors-nolog}: the same, with the reactor's per-event legacy
    log context (C{log.callWithLogger}) replaced by a plain call, by
    patching the reactor module -- a private patch, to measure what that
    context costs, not a design;
  - C{inner}: ONE inner C{select.epoll} holding the listener and every
    connection socket, registered with the reactor as a single reader;
    its C{doRead} dispatches every ready event itself (L{Floor.poll_once}
    with a zero timeout), so the reactor's per-event dispatch is paid once
    per wake-up, not once per socket event;
  - C{endpoint}: C{inner}, with the listening socket taken from a Twisted
    endpoint (C{serverFromString(reactor, "tcp:...")}, so that every
    endpoint string still works): the port stops reading
    (C{IListeningPort.stopReading}) and the inner epoll accepts on its
    socket.

    python bench/floor_twisted.py --mode MODE --listen 127.0.0.1:0 --route NAME=HOST:PORT ...

prints C{"listening <port>"} once listening; on SIGTERM, C{"events <n>
polls <m> connections <k>"} (polls: reactor dispatches into the relay)
and exits.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zope.interface import implementer  # noqa: E402

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor  # noqa: E402

from bench.floor import MAX_HELLO, NODELAY, Floor, listener, parse_routes, parse_sni  # noqa: E402

MODES = ("descriptors", "descriptors-nolog", "inner", "endpoint")


class Stats:
    events = polls = connections = 0


@implementer(IReadDescriptor, IWriteDescriptor)
class Side:
    """One socket of a relayed connection, as a reactor descriptor."""

    __slots__ = ("reactor", "relay", "sock", "fd", "peer", "pending", "hello", "eof", "closed")

    def __init__(self, relay: DescriptorRelay, sock: socket.socket) -> None:
        self.reactor, self.relay, self.sock, self.fd = relay.reactor, relay, sock, sock.fileno()
        self.peer, self.pending, self.hello, self.eof, self.closed = None, b"", b"", False, False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "relay"

    def connectionLost(self, reason) -> None:
        self.close()

    def doRead(self) -> None:
        relay = self.relay
        relay.stats.events += 1
        try:
            n = self.sock.recv_into(relay.buffer)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        peer = self.peer
        if peer is None:
            if not n:
                return self.close()
            self.hello += relay.buffer[:n]
            name = parse_sni(self.hello)
            if name is None and len(self.hello) < MAX_HELLO + 64:
                return
            if not name or name not in relay.routes:
                return self.close()
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            backend.setblocking(False)
            backend.setsockopt(*NODELAY)
            if backend.connect_ex(relay.routes[name]) not in (0, errno.EINPROGRESS):
                backend.close()
                return self.close()
            peer = self.peer = Side(relay, backend)
            peer.peer, peer.pending, self.hello = self, self.hello, b""
            self.reactor.removeReader(self)
            self.reactor.addWriter(peer)
        elif not n:
            self.eof = True
            self.reactor.removeReader(self)
            try:
                peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if peer.eof:
                self.close()
        else:
            data = relay.buffer[:n]
            try:
                sent = peer.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return self.close()
            if sent < n:
                peer.pending = bytes(data[sent:])
                self.reactor.removeReader(self)
                self.reactor.addWriter(peer)

    def doWrite(self) -> None:
        self.relay.stats.events += 1
        try:
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return self.close()
            sent = self.sock.send(self.pending) if self.pending else 0
        except BlockingIOError:
            return
        except OSError:
            return self.close()
        self.pending = self.pending[sent:]
        if not self.pending:
            self.reactor.removeWriter(self)
            for one in (self, self.peer):
                if not one.eof:
                    self.reactor.addReader(one)

    def close(self) -> None:
        for one in (self, self.peer):
            if one is not None and not one.closed:
                one.closed = True
                self.reactor.removeReader(one)
                self.reactor.removeWriter(one)
                one.sock.close()


@implementer(IReadDescriptor)
class DescriptorRelay:
    """The listening socket as a descriptor: accepts, and makes a L{Side} per client."""

    def __init__(self, reactor, sock: socket.socket, routes: dict[str, tuple[str, int]], stats: Stats) -> None:
        self.reactor, self.sock, self.routes, self.stats = reactor, sock, routes, stats
        self.buffer = memoryview(bytearray(1 << 18))
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "listener"

    def connectionLost(self, reason) -> None:
        self.sock.close()

    def doRead(self) -> None:
        self.stats.events += 1
        for _ in range(64):
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(*NODELAY)
            self.stats.connections += 1
            self.reactor.addReader(Side(self, sock))


@implementer(IReadDescriptor)
class InnerEpoll:
    """A L{Floor}'s epoll as one reader of the reactor: each wake-up dispatches every ready event."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def fileno(self) -> int:
        return self.floor.epoll.fileno()

    def logPrefix(self) -> str:
        return "inner-epoll"

    def connectionLost(self, reason) -> None:
        pass

    def doRead(self) -> None:
        self.floor.poll_once(0)


def start(reactor, mode: str, address: str, routes: dict[str, tuple[str, int]]):
    """Start a relay of C{mode} on C{reactor}; C{(port number, stats object)}."""
    if mode in ("descriptors", "descriptors-nolog"):
        if mode == "descriptors-nolog":
            from twisted.internet import epollreactor

            class _NoContext:
                @staticmethod
                def callWithLogger(logger, func, *args, **kw):
                    return func(*args, **kw)

            epollreactor.log = _NoContext  # private patch: measurement only
        stats = Stats()
        relay = DescriptorRelay(reactor, listener(address), routes, stats)
        reactor.addReader(relay)
        return relay.sock.getsockname()[1], stats
    if mode == "inner":
        sock = listener(address)
    elif mode == "endpoint":
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory

        host, port = address.rsplit(":", 1)
        listening = []
        serverFromString(reactor, f"tcp:{port}:interface={host}:backlog=1024").listen(Factory()).addCallback(
            listening.append
        )
        (twisted_port,) = listening  # a TCP endpoint listens synchronously
        twisted_port.stopReading()
        sock = twisted_port.socket
    else:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    floor = Floor(sock, routes)
    if mode == "endpoint":
        floor.twisted_port = twisted_port
    reactor.addReader(InnerEpoll(floor))
    return sock.getsockname()[1], floor


def main(argv: list[str]) -> None:
    import argparse

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(prog="python bench/floor_twisted.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="inner")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--route", action="append", default=[], help="NAME=HOST:PORT (repeatable)")
    options = parser.parse_args(argv)
    port, stats = start(reactor, options.mode, options.listen, parse_routes(options.route))

    def report() -> None:
        print("events", stats.events, "polls", stats.polls, "connections", stats.connections, flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", report)
    print("listening", port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
