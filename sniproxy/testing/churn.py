"""
Many short connections through a running proxy, of every kind a proxy on
the open internet sees: good ones, refused ones, malformed ones, clients
that give up half-way.  The leak check (C{bench/leaks.py}) and the test
suite drive the proxy with it and compare file descriptors and memory
before and after.

Everything goes to loopback, and every run is bounded in count and time.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from twisted.internet.defer import Deferred, DeferredSemaphore, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from sniproxy.testing.clienthello import build_client_hello, make_client_hello, sni_extension

__all__ = ["KINDS", "Churn", "EchoBackend", "config_for", "open_fds", "rss_bytes"]

# The names the churn config routes.
GOOD = "good.churn.test"
DOWN = "down.churn.test"


def open_fds() -> int:
    """File descriptors open in this process (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBackend(Factory):
    """A backend that sends back whatever it receives."""

    protocol = _Echo
    noisy = False


def config_for(backend_port: int, down_port: int, hello_timeout: float = 0.5) -> str:
    """
    The proxy config the churn expects: C{GOOD} goes to the echo backend,
    C{DOWN} to a port nobody listens on, anything else has no route.
    """
    return f"""
[proxy]
hello_timeout = {hello_timeout}
max_connections_per_client = 0
[routing.static]
"{GOOD}" = "127.0.0.1:{backend_port}"
"{DOWN}" = "127.0.0.1:{down_port}"
"""


_GOOD_HELLO = make_client_hello(GOOD)
_NO_ROUTE_HELLO = make_client_hello("nowhere.churn.test")
_DOWN_HELLO = make_client_hello(DOWN)
_BAD_NAME_HELLO = build_client_hello([sni_extension([b"bad name.churn.test"])])
# A hello whose session_id length (33) is over its limit (32).
_BROKEN_HELLO = b"\x16\x03\x01\x00\x29\x01\x00\x00\x25\x03\x03" + bytes(32) + b"\x21"


@implementer(IHalfCloseableProtocol)
class _Client(Protocol):
    """
    One churn connection: sends C{first}, then behaves as C{kind} says.
    C{done} fires when the connection is gone, with what was received.
    """

    def __init__(self, kind: str, first: bytes, expect: int, reactor) -> None:
        self.kind = kind
        self.first = first
        self.expect = expect
        self.reactor = reactor
        self.received = 0
        self.done: Deferred[str] = Deferred()
        self.guard = None

    def connectionMade(self) -> None:
        # No connection may outlive this, whatever the proxy does.
        self.guard = self.reactor.callLater(10.0, self.transport.abortConnection)
        if self.first:
            self.transport.write(self.first)
        if self.kind == "abandon":
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.expect and self.received >= self.expect:
            if self.kind == "reset":
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        if self.guard is not None and self.guard.active():
            self.guard.cancel()
        self.done.callback(self.kind)


class _OneClient(ClientFactory):
    """Connects one L{_Client}, quietly (no line per connection)."""

    noisy = False

    def __init__(self, client: _Client) -> None:
        self.client = client

    def buildProtocol(self, addr) -> _Client:
        return self.client

    def clientConnectionFailed(self, connector, reason) -> None:
        self.client.done.errback(reason)


@dataclass(frozen=True)
class Kind:
    """A kind of connection: what it sends, how many bytes it waits for."""

    name: str
    first: bytes
    expect: int = 0


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        # Relayed: the hello and 100 bytes come back from the echo backend.
        Kind("good", _GOOD_HELLO + b"x" * 100, len(_GOOD_HELLO) + 100),
        # Relayed, then the client resets the connection.
        Kind("reset", _GOOD_HELLO, len(_GOOD_HELLO)),
        # No route: an unrecognized_name alert, then EOF.
        Kind("no route", _NO_ROUTE_HELLO),
        # The backend refuses: an internal_error alert, then EOF.
        Kind("backend down", _DOWN_HELLO),
        # Not TLS: closed at once.
        Kind("not tls", b"GET / HTTP/1.1\r\nHost: good.churn.test\r\n\r\n"),
        # A length over its limit: decode_error.
        Kind("broken hello", _BROKEN_HELLO),
        # An SNI that is not a host name: unrecognized_name.
        Kind("bad name", _BAD_NAME_HELLO),
        # Half a hello, then the client resets.
        Kind("abandon", _GOOD_HELLO[:50]),
        # Half a hello, then nothing: closed at hello_timeout.
        Kind("slow", _GOOD_HELLO[:50]),
    )
}

# The default mix: mostly good, a bit of everything else, a few slow ones
# (each holds a slot for hello_timeout).
MIX = ("good",) * 8 + ("reset", "no route", "backend down", "not tls", "broken hello", "bad name", "abandon") * 2


@dataclass
class Churn:
    """
    Drive C{total} connections, C{concurrency} at a time, to the proxy on
    C{port}, cycling through C{mix} (kind names of L{KINDS}); one in
    C{slow_every} is a slow one, if that is not 0.
    """

    reactor: object
    port: int
    total: int
    concurrency: int = 50
    mix: tuple[str, ...] = MIX
    slow_every: int = 500
    time_limit: float = 300.0
    counts: collections.Counter = field(default_factory=collections.Counter)
    elapsed: float = 0.0

    def kinds(self) -> Iterable[str]:
        for i in range(self.total):
            if self.slow_every and i % self.slow_every == self.slow_every - 1:
                yield "slow"
            else:
                yield self.mix[i % len(self.mix)]

    @inlineCallbacks
    def run(self, progress: Callable[[int], None] | None = None):
        """
        Run them all; fires with the counts by kind.

        @raise RuntimeError: past C{time_limit} seconds (what has started
            still finishes: every connection has its own 10 s guard).
        """
        semaphore = DeferredSemaphore(self.concurrency)
        started = time.monotonic()
        deadline = started + self.time_limit
        running: list[Deferred] = []
        for i, name in enumerate(self.kinds()):
            if time.monotonic() > deadline:
                yield Deferred.fromCoroutine(_gather(running))
                raise RuntimeError(f"churn over its time limit of {self.time_limit:g}s after {i} connections")
            yield semaphore.acquire()
            d = self._one(KINDS[name])
            d.addBoth(self._count, semaphore)
            running.append(d)
            if len(running) > 4 * self.concurrency:
                running = [r for r in running if not r.called]
            if progress is not None and i % 1000 == 999:
                progress(i + 1)
        yield Deferred.fromCoroutine(_gather(running))
        self.elapsed = time.monotonic() - started
        return self.counts

    def _count(self, result, semaphore: DeferredSemaphore):
        semaphore.release()
        self.counts[result if isinstance(result, str) else "error"] += 1
        return None

    def _one(self, kind: Kind) -> Deferred:
        client = _Client(kind.name, kind.first, kind.expect, self.reactor)
        self.reactor.connectTCP("127.0.0.1", self.port, _OneClient(client), timeout=5)
        return client.done


async def _gather(deferreds: list[Deferred]) -> None:
    for d in deferreds:
        if not d.called:
            await d
