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
  - C{lean}: C{descriptors} plus the least that sniproxy's features need
    per connection, to price them: sniproxy's own incremental
    C{ClientHelloParser}, a static map with C{*.suffix} wildcards, the
    client address from C{accept}, bytes counted each way, hello and idle
    deadlines on one coarse clock swept by a single C{LoopingCall} (no
    timer per connection), and one frozen record per closed connection
    handed to a list of observers (one counts outcomes);
  - C{inner-et}: C{inner} with the edge-triggered, fewer-system-calls
    L{EdgeFloor} inside (sockets registered once for both directions,
    no C{recv} just to learn of a drained socket or an end of stream);
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

from dataclasses import dataclass  # noqa: E402

from zope.interface import implementer  # noqa: E402

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402

from sniproxy.clienthello import ClientHelloError, ClientHelloParser  # noqa: E402

from bench.floor import MAX_HELLO, NODELAY, EdgeFloor, Floor, listener, parse_routes, parse_sni  # noqa: E402

SWEEP = 0.5  # seconds between ticks of the coarse clock
HELLO_TIMEOUT = 5.0
IDLE_TIMEOUT = 600.0
MODES = ("descriptors", "descriptors-nolog", "lean", "inner", "inner-et", "endpoint")


class Stats:
    events = polls = connections = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One closed connection (the shape of sniproxy's ConnectionRecord, in brief)."""

    client: str
    sni: str | None
    outcome: str
    backend: tuple[str, int] | None
    bytes_up: int
    bytes_down: int
    started: float
    duration: float


def route(routes: dict[str, tuple[str, int]], name: str) -> tuple[str, int] | None:
    """Exact name first, then the longest C{*.suffix} pattern."""
    target = routes.get(name)
    rest = name
    while target is None:
        dot = rest.find(".")
        if dot < 0:
            return None
        rest = rest[dot + 1 :]
        target = routes.get("*." + rest)
    return target


@implementer(IReadDescriptor, IWriteDescriptor)
class Side:
    """One socket of a relayed connection, as a reactor descriptor."""

    __slots__ = ("reactor", "relay", "sock", "fd", "peer", "pending", "hello", "eof", "closed", "moved", "lean")

    def __init__(self, relay: DescriptorRelay, sock: socket.socket) -> None:
        self.reactor, self.relay, self.sock, self.fd = relay.reactor, relay, sock, sock.fileno()
        self.peer, self.pending, self.hello, self.eof, self.closed = None, b"", b"", False, False
        self.moved, self.lean = 0, None

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
            lean = self.lean
            if lean is None:
                self.hello += relay.buffer[:n]
                name = parse_sni(self.hello)
                if name is None and len(self.hello) < MAX_HELLO + 64:
                    return
                target = relay.routes.get(name) if name else None
            else:
                try:
                    hello = lean.parser.feed(bytes(relay.buffer[:n]))
                except ClientHelloError:
                    lean.outcome = "malformed"
                    return self.close()
                if hello is None:
                    return
                self.hello = lean.parser.buffered
                self.moved = len(self.hello)  # bytes_up counts the replayed hello (and what came with it)
                relay.hello_wait.pop(self, None)
                lean.parser = None
                name = lean.sni = hello.server_name
                target = route(relay.routes, name) if name else None
                lean.backend = target
            if target is None:
                if lean is not None:
                    lean.outcome = "no route"
                return self.close()
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            backend.setblocking(False)
            backend.setsockopt(*NODELAY)
            if backend.connect_ex(target) not in (0, errno.EINPROGRESS):
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
            self.moved += n
            lean = self.lean or self.peer.lean
            if lean is not None:
                lean.seen = relay.now
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
        client = self if self.lean is not None else self.peer
        if client is not None and client.lean is not None:
            client.lean.finish(client)


class Lean:
    """What the C{lean} spike keeps per connection, beside its two sockets."""

    __slots__ = ("relay", "client", "parser", "sni", "backend", "outcome", "started", "seen")

    def __init__(self, relay: DescriptorRelay, client: str) -> None:
        self.relay, self.client, self.parser = relay, client, ClientHelloParser(65536)
        self.sni = self.backend = None
        self.outcome = "relayed"
        self.started = self.seen = relay.now

    def finish(self, side: Side) -> None:
        relay = self.relay
        relay.hello_wait.pop(side, None)
        relay.live.discard(side)
        side.lean = None  # once
        peer = side.peer
        record = Record(
            self.client, self.sni, self.outcome, self.backend, side.moved, 0 if peer is None else peer.moved,
            self.started, relay.now - self.started,
        )
        for observer in relay.observers:
            observer(record)


@implementer(IReadDescriptor)
class DescriptorRelay:
    """The listening socket as a descriptor: accepts, and makes a L{Side} per client."""

    def __init__(
        self,
        reactor,
        sock: socket.socket,
        routes: dict[str, tuple[str, int]],
        stats: Stats,
        lean: bool = False,
        clock=None,
    ) -> None:
        self.reactor, self.sock, self.routes, self.stats, self.lean = reactor, sock, routes, stats, lean
        self.buffer = memoryview(bytearray(1 << 18))
        sock.setblocking(False)
        self.hello_wait: dict[Side, float] = {}  # client sides still sending their hello -> accepted at
        self.live: set[Side] = set()  # client sides, for the idle sweep
        self.outcomes: dict[str, int] = {}
        self.observers = [self.count]
        self.clock = reactor if clock is None else clock
        self.now = self.clock.seconds()
        self.sweeper = None
        if lean:
            self.sweeper = LoopingCall(self.sweep)
            self.sweeper.clock = self.clock
            self.sweeper.start(SWEEP, now=False)

    def count(self, record: Record) -> None:
        self.outcomes[record.outcome] = self.outcomes.get(record.outcome, 0) + 1

    def sweep(self) -> None:
        """The coarse clock's tick: close hellos older than L{HELLO_TIMEOUT}."""
        self.now = now = self.clock.seconds()
        late = [side for side, at in self.hello_wait.items() if now - at > HELLO_TIMEOUT]
        for side in late:
            side.lean.outcome = "hello timeout"
            side.close()
        idle = [side for side in self.live if now - side.lean.seen > IDLE_TIMEOUT]
        for side in idle:
            side.lean.outcome = "idle"
            side.close()

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
                sock, address = self.sock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(*NODELAY)
            self.stats.connections += 1
            side = Side(self, sock)
            if self.lean:
                side.lean = Lean(self, address[0])
                self.hello_wait[side] = self.now
                self.live.add(side)
            self.reactor.addReader(side)


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


def start(reactor, mode: str, address: str, routes: dict[str, tuple[str, int]], clock=None):
    """
    Start a relay of C{mode} on C{reactor}; C{(port number, state)}: the
    L{DescriptorRelay} or the L{Floor}.  C{clock}: the C{lean} spike's
    coarse clock (default C{reactor}).
    """
    if mode in ("descriptors", "descriptors-nolog", "lean"):
        if mode == "descriptors-nolog":
            from twisted.internet import epollreactor

            class _NoContext:
                @staticmethod
                def callWithLogger(logger, func, *args, **kw):
                    return func(*args, **kw)

            epollreactor.log = _NoContext  # private patch: measurement only
        relay = DescriptorRelay(reactor, listener(address), routes, Stats(), lean=mode == "lean", clock=clock)
        reactor.addReader(relay)
        return relay.sock.getsockname()[1], relay
    if mode in ("inner", "inner-et"):
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
    floor = (EdgeFloor if mode == "inner-et" else Floor)(sock, routes)
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
    port, state = start(reactor, options.mode, options.listen, parse_routes(options.route))
    stats = state if isinstance(state, Floor) else state.stats

    def report() -> None:
        print("events", stats.events, "polls", stats.polls, "connections", stats.connections, flush=True)

    reactor.addSystemEventTrigger("before", "shutdown", report)
    print("listening", port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
