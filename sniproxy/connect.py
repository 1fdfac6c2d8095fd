"""
Staggered connects across a route's addresses.

The first address gets a head start of C{stagger} seconds; if it has not
connected by then (or failed sooner) the next one starts too, and so on,
happy-eyeballs style (RFC 8305).  The first connection to be established
wins; the others are abandoned.  The whole attempt is bounded by
C{timeout}.

A I{health} observer (L{sniproxy.backends.BackendBoard}) may hear how each
address fared: C{attempt_won(address)} for the winner,
C{attempt_failed(address, why)} for a refused, reset or timed-out attempt
-- and for one abandoned because another address won after this one had
had at least its full stagger head start (a black-holed instance looks
exactly like that) -- and C{attempt_dropped(address)} for an attempt
abandoned with no verdict (the client left, or it had not had its head
start yet).
"""

from __future__ import annotations

import errno
import os
import socket
from _socket import socket as _CSocket
from typing import Callable, Sequence

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime, IWriteDescriptor
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sniproxy.addresses import is_ip_literal
from sniproxy.interfaces import Address
from sniproxy.transport import SocketTransport, close_later

__all__ = ["ConnectError", "connect", "connect_now"]

log = Logger()


class ConnectError(Exception):
    """
    No address could be connected.  C{str(error)} lists each address with
    why it failed, for the log line.
    """


class _Attempt(ClientFactory):
    """One address's connection attempt, reporting to its L{_Race}."""

    noisy = False

    def __init__(self, race: _Race, address: Address, started: float) -> None:
        self.race = race
        self.address = address
        self.started = started
        self.connector = None

    def buildProtocol(self, addr):
        return self.race.won(self)

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self.race.lost(self, reason)


    def stop(self) -> None:
        self.connector.stopConnecting()


# connect_ex's answers for a connect under way (or done at once).
_IN_PROGRESS = frozenset({0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR})


def _connected(sock: socket.socket) -> bool:
    """Whether a connect under way has completed already (it has a peer)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


@implementer(IWriteDescriptor)
class _RawAttempt:
    """
    One address's connection attempt as a bare non-blocking socket: a
    C{connect_ex}, a write interest until the kernel has an answer, then
    (on success) the socket made the protocol's L{SocketTransport}.  No
    Connector, no resolver Deferred, no timer of its own.
    """

    def __init__(self, race: _Race, address: Address, started: float) -> None:
        self.race = race
        self.address = address
        self.started = started
        self.family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.socket: socket.socket | None = None

    def start(self) -> None:
        reactor = self.race.reactor
        try:
            # The C-level socket: no Python-level wrapper to build and close.
            sock = self.socket = _CSocket(self.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((self.address.host, self.address.port))
        except OSError as e:
            code = e.errno or errno.EINVAL
        if code in _IN_PROGRESS:
            if code == 0 or _connected(sock):
                # Loopback and other near backends are connected by now:
                # no write interest, no reactor turn to learn it.
                self._adopt()
            else:
                reactor.addWriter(self)
        else:
            # Refused at once (rare: an unroutable address): reported on the
            # next turn of the reactor, as a Connector would.
            self.race.clock.callLater(0, self._failed, code)

    def fileno(self) -> int:
        sock = self.socket
        return -1 if sock is None else sock.fileno()

    def logPrefix(self) -> str:
        return "sniproxy.connect"

    def doRead(self) -> None:
        """Never asked for (a write interest only); a stray read event is ignored."""

    def doWrite(self) -> None:
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.race.reactor.removeWriter(self)
            self._failed(code)
            return
        if not _connected(self.socket):
            return  # a stray event: the kernel has no answer yet
        self.race.reactor.removeWriter(self)
        self._adopt()

    def _adopt(self) -> None:
        """
        Connected: the socket itself becomes the winner's transport (a
        L{SocketTransport}: no duplicate descriptor, no C{tcp} transport).
        """
        sock, self.socket = self.socket, None
        race, address = self.race, self.address
        reactor = race.reactor
        transport = None
        try:
            protocol = race.won(self)
            if protocol is None:
                close_later(reactor, sock)  # lost the race
                return
            transport = SocketTransport(sock, protocol, reactor, (address.host, address.port))
            protocol.makeConnection(transport)
        except Exception:
            # A bug in building or starting the protocol: logged, nothing
            # left registered, and the race answers (the connection is
            # refused with internal_error) instead of waiting for ever.
            log.failure("connected to {address}, but could not start the connection", address=str(address))
            if transport is not None:
                transport._discard()
            else:
                close_later(reactor, sock)
            if race.outcome is None:
                race.failures.append(f"{address}: internal error")
                race.fail()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped our descriptor: a refused connect (epoll and poll
        report a hang-up, not a write), the reactor shutting down, or
        C{doWrite} failing.  The socket's own error names it when it has one.
        """
        sock, code = self.socket, 0
        if sock is not None:
            try:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                pass
        self._close()
        if code:
            reason = Failure(error.getConnectError((code, os.strerror(code))))
        self.race.lost(self, reason)

    def _failed(self, code: int) -> None:
        self._close()
        self.race.lost(self, Failure(error.getConnectError((code, os.strerror(code)))))

    def _close(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            # Its number is not reused within the reactor's batch of events.
            close_later(self.race.reactor, sock)

    def stop(self) -> None:
        """Abandon this attempt (another won, or the connection went away)."""
        if self.socket is not None:
            self.race.reactor.removeWriter(self)
            self._close()


class _Race:
    """The state of one staggered connect."""

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        addresses: Sequence[Address],
        build: Callable[[Callable[[Protocol], None]], Protocol],
        timeout: float,
        stagger: float,
        health=None,
        raw: bool = False,
        deadlines=None,
    ) -> None:
        self.reactor = reactor
        self.raw = raw
        self.deadlines = deadlines
        self.health = health
        self.clock = clock
        self.addresses = list(addresses)
        self.build = build
        self.stagger = stagger
        self.deadline = clock.seconds() + timeout
        self.started = 0
        self.pending: list[_Attempt] = []
        self.failures: list[str] = []
        # Made only when the caller must wait (see connect_now).
        self.result: Deferred[Protocol] | None = None
        # Set once a winner is chosen or the race is given up.
        self.over = False
        # The winner's protocol once its connectionMade ran, or the
        # ConnectError; None while neither.
        self.outcome: Protocol | ConnectError | None = None
        self.stagger_call: IDelayedCall | None = None
        if deadlines is not None:
            # On the factory's coarse deadlines (within 0.1 s), no timer of its own.
            self.timeout_call = None
            self.timeout_tick: int | None = deadlines.add(self.deadline, self.timed_out)
        else:
            self.timeout_call = clock.callLater(timeout, self.timed_out)
            self.timeout_tick = None

    def start_next(self) -> None:
        self.stagger_call = None
        if self.started >= len(self.addresses):
            return
        address = self.addresses[self.started]
        self.started += 1
        # A host name (a fallback given by name) goes through the
        # Connector, whose resolver runs off the reactor thread.
        if self.raw and is_ip_literal(address.host):
            attempt = _RawAttempt(self, address, self.clock.seconds())
            self.pending.append(attempt)
            attempt.start()
            if self.over:
                return  # connected at once (or the race is over): no stagger
        else:
            attempt = _Attempt(self, address, self.clock.seconds())
            self.pending.append(attempt)
            remaining = max(self.deadline - self.clock.seconds(), 0.001)
            # The connector's own timeout is a backstop; ours fires first.
            attempt.connector = self.reactor.connectTCP(
                address.host, address.port, attempt, timeout=remaining + 1
            )
        if self.started < len(self.addresses) and self.stagger_call is None:
            self.stagger_call = self.clock.callLater(self.stagger, self.start_next)

    def won(self, attempt: _Attempt) -> Protocol | None:
        if self.over:
            # Another address won (or we gave up) while this one connected.
            return None
        self.pending.remove(attempt)
        health = self.health
        if health is not None:
            health.attempt_won(attempt.address)
            now = self.clock.seconds()
            for other in self.pending:
                if self.stagger > 0 and now - other.started >= self.stagger:
                    health.attempt_failed(other.address, "no connection within the stagger while another instance connected")
                else:
                    health.attempt_dropped(other.address)
            self.pending_reported = True
        self.finish()
        protocol = self.build(self.settle)
        # Which address this is, as configured (the peer address the
        # kernel reports may be spelt differently).
        protocol.address = attempt.address
        return protocol

    def lost(self, attempt: _Attempt, reason: Failure) -> None:
        if attempt not in self.pending:
            return
        self.pending.remove(attempt)
        why = _why(reason)
        self.failures.append(f"{attempt.address}: {why}")
        if self.health is not None:
            if why == "cancelled":
                self.health.attempt_dropped(attempt.address)
            else:
                self.health.attempt_failed(attempt.address, why)
        if self.started < len(self.addresses):
            # Don't wait out the stagger: the next address starts now.
            if self.stagger_call is not None:
                self.stagger_call.cancel()
                self.stagger_call = None
            self.start_next()
        elif not self.pending:
            self.fail()

    def timed_out(self) -> None:
        self.timeout_call = None
        self.timeout_tick = None
        for attempt in self.pending:
            self.failures.append(f"{attempt.address}: timed out")
            if self.health is not None:
                self.health.attempt_failed(attempt.address, "timed out")
        self.pending_reported = True
        never = len(self.addresses) - self.started
        if never:
            self.failures.append(f"{never} more not tried")
        self.fail()

    def fail(self) -> None:
        self.finish()
        if not self.failures:
            self.failures.append("no addresses")
        self.settle(ConnectError("; ".join(self.failures)))

    def settle(self, outcome) -> None:
        """The race's answer: the winner's protocol (from its C{connectionMade}), or a L{ConnectError}."""
        self.outcome = outcome
        result = self.result
        if result is not None:
            if isinstance(outcome, ConnectError):
                result.errback(outcome)
            else:
                result.callback(outcome)

    def deferred(self) -> Deferred[Protocol]:
        """The answer as a L{Deferred} (cancelling it abandons every attempt)."""
        result = self.result
        if result is None:
            result = self.result = Deferred(self.cancel)
            outcome = self.outcome
            if outcome is not None:
                self.result = None  # already answered: nothing more to fire
                if isinstance(outcome, ConnectError):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
        return result

    def cancel(self, result: Deferred) -> None:
        self.finish()

    pending_reported = False

    def finish(self) -> None:
        self.over = True
        for call in (self.stagger_call, self.timeout_call):
            if call is not None and call.active():
                call.cancel()
        self.stagger_call = self.timeout_call = None
        tick, self.timeout_tick = self.timeout_tick, None
        if tick is not None:
            self.deadlines.cancel(tick, self.timed_out)
        pending, self.pending = self.pending, []
        report = self.health is not None and not self.pending_reported
        for attempt in pending:
            if report:
                self.health.attempt_dropped(attempt.address)
            attempt.stop()


def _why(reason: Failure) -> str:
    error = reason.value
    text = getattr(error, "osError", None) or getattr(error, "args", None)
    name = type(error).__name__.removesuffix("Error") or "error"
    if isinstance(error, CancelledError):
        return "cancelled"
    # ConnectionRefusedError and friends carry little useful text.
    return {"ConnectionRefused": "refused", "TCPTimedOut": "timed out"}.get(name, f"{name} {text}" if text else name)


def connect(*args, **kwargs) -> Deferred[Protocol]:
    """
    L{connect_now}'s connect, always answered by a L{Deferred} (fired
    already when the connection was made at once).
    """
    connected = connect_now(*args, **kwargs)
    if isinstance(connected, Deferred):
        return connected
    return succeed(connected)


def connect_now(
    reactor: IReactorTCP,
    clock: IReactorTime,
    addresses: Sequence[Address],
    build: Callable[[Callable[[Protocol], None]], Protocol],
    timeout: float = 5.0,
    stagger: float = 0.25,
    health=None,
    raw: bool = False,
    deadlines=None,
) -> Protocol | Deferred[Protocol]:
    """
    Connect to the first of C{addresses} that answers: with the winner's
    protocol itself when the connection is made at once (a loopback or
    other near backend, with C{raw}), no L{Deferred} at all; otherwise a
    L{Deferred}.

    @param addresses: IP literals with ports, tried in order with a head
        start of C{stagger} seconds each (a refused address passes its turn
        at once).
    @param build: makes the protocol for the winning connection (it is
        called once, for the winner) given a callable that the protocol's
        C{connectionMade} must call with the protocol itself.  The
        protocol gets an C{address} attribute: the L{Address} it reached.
    @param health: an observer of each attempt's fate (see the module
        docstring), or C{None}.
    @param raw: connect with bare non-blocking sockets watched by
        C{reactor.addWriter}, the winner's becoming its
        L{SocketTransport} (C{reactor} must provide C{IReactorFDSet} and
        really poll), instead of C{reactor.connectTCP}.
    @param deadlines: a L{sniproxy.deadlines.Deadlines} to keep the
        C{timeout} on (to within its resolution) instead of a
        C{DelayedCall} of its own, or C{None}.
    @return: the protocol, its C{connectionMade} run; or a L{Deferred}
        firing with it, or failing with L{ConnectError} when every address
        failed or C{timeout} passed.  Cancelling it abandons every attempt.
    """
    race = _Race(reactor, clock, addresses, build, timeout, stagger, health, raw, deadlines)
    if addresses:
        race.start_next()
    else:
        race.fail()
    outcome = race.outcome
    if outcome is not None and not isinstance(outcome, ConnectError):
        race.outcome = None  # (the protocol keeps the race, not the other way round)
        return outcome
    return race.deferred()
