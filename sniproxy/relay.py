"""
The byte pump between a client and its backend, once both are connected.

Bytes are written as they arrive, never inspected or copied by us.  Each
transport is registered as the streaming producer of the other, so when one
side's send buffer passes its C{bufferSize} the other side stops reading
until it drains: a slow reader can never make the proxy buffer without
bound.  A half-close (EOF one way) is passed on as a half-close, and the
pair is closed once both directions are done, or when neither side has sent
anything for C{idle_timeout} seconds (checked on the factory's coarse
L{Deadlines}: within a tenth of a second of it).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sniproxy import splice
from sniproxy.deadlines import Deadlines
from sniproxy.splice import PipePool, SplicePump

__all__ = ["BackendConnection", "Relay"]


def _send_directly(transport, data: bytes) -> int:
    """
    Send C{data} on C{transport}'s socket now, bypassing its write buffer.

    The one place the relay reaches into Twisted.  It relies on
    C{twisted.internet.tcp.Connection} (Twisted 23.10 through 25.x) having
    a C{socket} attribute, the connected non-blocking C{socket.socket}, and
    on the caller knowing that nothing is in the transport's own buffer yet
    (so bytes sent here cannot overtake bytes written before).

    @return: how many bytes the kernel took: 0 when it would block or
        failed (the transport's own write then meets the same error and
        reports it the usual way).
    """
    try:
        return transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return 0


@implementer(IPushProducer)
class _Valve:
    """
    Registers a transport as the producer for its peer, counting how often
    the peer's full buffer paused it (rare, so the count costs nothing on
    the byte path).
    """

    __slots__ = ("transport", "pauses", "paused")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.pauses = 0
        self.paused = False

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The peer's connection is gone.  The relay closes this side itself
        # as it hears of that; closing it here (what a transport's
        # stopProducing does) would come first and blame the wrong side.
        pass


@implementer(IHalfCloseableProtocol)
class BackendConnection(Protocol):
    """
    The backend's side of a relayed connection.  It exists only once the
    connection is made, and hands every event to its L{Relay}.
    """

    relay: Relay | None = None

    def __init__(self, connected: Callable[[BackendConnection], None]) -> None:
        self._connected = connected

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_backend(data)

    def readConnectionLost(self) -> None:
        self.relay.backend_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.backend_lost(reason)


class Relay:
    """
    Pumps bytes both ways between two connected transports.

    @ivar up: bytes relayed client -> backend (including the preamble).
    @ivar down: bytes relayed backend -> client.
    @ivar close_reason: why the pair closed (C{"done"}, C{"client closed"},
        C{"backend closed"}, C{"backend reset"} (its connection was lost with
        an error: a reset, or a write it refused), C{"idle timeout"},
        C{"shutdown"}, ...), or C{None} while it is open.
    """

    def __init__(
        self,
        client,
        backend,
        clock: IReactorTime,
        idle_timeout: float,
        closed: Callable[[Relay], None],
        pipes: PipePool | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.client = client
        self.backend = backend
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._closed = closed
        self.up = 0
        self.down = 0
        self.last_activity = clock.seconds()
        self.close_reason: str | None = None
        self._stalled_at_close = ""
        self._client_eof = False
        self._backend_eof = False
        self._client_lost = False
        self._backend_lost = False
        self._reported = False
        # Made by start() for the portable pump only (the splice pump has its own flow control).
        self._client_valve: _Valve | None = None
        self._backend_valve: _Valve | None = None
        # The one pending deadline: (bucket, callable), or None.
        self._deadline: tuple[int, Callable[[], None]] | None = None
        self._deadlines = deadlines if deadlines is not None else Deadlines(clock)
        self._pipes = pipes
        self.pump: SplicePump | None = None

    @property
    def pauses(self) -> tuple[int, int]:
        """How often (client reads, backend reads) were paused by the other side's full buffer."""
        if self.pump is not None:
            return self.pump.stalls
        if self._client_valve is None:
            return 0, 0
        return self._client_valve.pauses, self._backend_valve.pauses

    @property
    def stalled(self) -> str:
        """
        Which side, if any, is not reading what it is sent (its send buffer
        is full, so the other side's reads are paused), for log lines:
        once the relay is closing, as it was when it began to close (the
        flush on closing may drain what was stuck).
        """
        if self.close_reason is not None:
            return self._stalled_at_close
        if self.pump is not None:
            return self.pump.stalled
        if self._client_valve is None:
            return ""
        if self._client_valve.paused:
            return "backend"
        if self._backend_valve.paused:
            return "client"
        return ""

    def start(self, buffered: bytes, header: bytes = b"") -> None:
        """
        Write C{header} (a PROXY protocol header, or nothing) and the
        client's C{buffered} bytes to the backend in one write, then start
        relaying both ways.  Only the client's bytes count in L{up}.
        """
        self.up = len(buffered)
        preamble = header + buffered if header else buffered
        if self._pipes is not None and splice.available(self.client, self.backend):
            pumping = self._sent_at_once(preamble)
        else:
            self.backend.write(preamble)
            pumping = False
        if pumping:
            # From here on the bytes never enter this process.
            self.pump = SplicePump(
                self.client, self.backend, self._pipes, self._moved_up, self._moved_down, self._progressed
            )
        else:
            self._client_valve = _Valve(self.client)
            self._backend_valve = _Valve(self.backend)
            self.backend.registerProducer(self._client_valve, True)
            self.client.registerProducer(self._backend_valve, True)
        self.client.resumeProducing()
        self._arm(self.last_activity + self.idle_timeout, self._idle_check)

    def _arm(self, when: float, expired: Callable[[], None]) -> None:
        """Make C{expired} at C{when} the one pending deadline of this relay."""
        self._disarm()
        self._deadline = (self._deadlines.add(when, expired), expired)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            self._deadlines.cancel(*deadline)

    def _sent_at_once(self, data: bytes) -> bool:
        """
        Send C{data} straight to the backend's fresh socket (whose buffer
        takes a ClientHello whole); what it does not take goes through the
        transport, and then the pump cannot be used (it would overtake it).
        """
        sent = _send_directly(self.backend, data)
        if sent == len(data):
            return True
        self.backend.write(data[sent:])
        return False

    def _moved_up(self, count: int) -> None:
        self.up += count
        self.last_activity = self.clock.seconds()

    def _moved_down(self, count: int) -> None:
        self.down += count
        self.last_activity = self.clock.seconds()

    def _progressed(self) -> None:
        self.last_activity = self.clock.seconds()

    def from_client(self, data: bytes) -> None:
        self.up += len(data)
        self.last_activity = self.clock.seconds()
        self.backend.write(data)

    def from_backend(self, data: bytes) -> None:
        self.down += len(data)
        self.last_activity = self.clock.seconds()
        self.client.write(data)

    def client_eof(self) -> None:
        """The client will send no more: pass the half-close on."""
        self._client_eof = True
        if self.close_reason is None:
            self.backend.unregisterProducer()
            self.backend.loseWriteConnection()
            if self.pump is not None:
                self.pump.write_closed(self.backend)
            if self._backend_eof:
                self.close("done")

    def backend_eof(self) -> None:
        """The backend will send no more: pass the half-close on."""
        self._backend_eof = True
        if self.close_reason is None:
            self.client.unregisterProducer()
            self.client.loseWriteConnection()
            if self.pump is not None:
                self.pump.write_closed(self.client)
            if self._client_eof:
                self.close("done")

    def client_lost(self, reason: Failure) -> None:
        self._client_lost = True
        self.close("client closed")

    def backend_lost(self, reason: Failure) -> None:
        self._backend_lost = True
        # ConnectionLost (not ConnectionDone): a reset, or a write refused.
        self.close("backend reset" if isinstance(reason.value, ConnectionLost) else "backend closed")

    def close(self, reason: str) -> None:
        """
        Close both sides, after flushing what each has buffered.  The first
        reason given is the one reported, once both connections are gone.
        """
        if self.close_reason is None:
            self._stalled_at_close = self.stalled
            self.close_reason = reason
            # Closing flushes what each side has buffered; a peer that never
            # reads must not keep the pair open for ever.
            self._arm(self.clock.seconds() + self.idle_timeout, self._flush_timed_out)
            # A paused producer would keep loseConnection waiting for ever.
            for transport in (self.client, self.backend):
                if transport.producer is not None:
                    transport.unregisterProducer()
                transport.loseConnection()
        if self._client_lost and self._backend_lost and not self._reported:
            self._reported = True
            self._disarm()
            if self.pump is not None:
                self.pump.close()
            closed, self._closed = self._closed, None  # (no cycle left with the connection)
            closed(self)

    def abort(self, reason: str) -> None:
        """Close both sides at once, dropping whatever is buffered."""
        self.close(reason)
        self.client.abortConnection()
        self.backend.abortConnection()

    def _flush_timed_out(self) -> None:
        self._deadline = None
        self.abort(self.close_reason)

    def _idle_check(self) -> None:
        self._deadline = None
        idle_until = self.last_activity + self.idle_timeout
        if self.clock.seconds() >= idle_until:
            self.abort("idle timeout")
        else:
            self._arm(idle_until, self._idle_check)
