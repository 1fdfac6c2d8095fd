"""
The lean transport: one connected non-blocking TCP socket on the reactor's
descriptors, for both legs of a relayed connection.

Twisted's C{tcp.Server} and C{tcp.Client} are general transports; a
connection through the proxy pays for their generality twice (one per
leg) in construction, in the two-buffer write path, and most of all in the
close path (a C{Failure} per leg, C{shutdown} before C{close}, a reactor
turn to finish a C{loseConnection}).  L{SocketTransport} is what the proxy
needs of them and no more, built on public reactor APIs only
(C{IReactorFDSet.addReader}/C{addWriter}, C{IReadWriteDescriptor}), so every
POSIX reactor (epoll, poll, select) drives it:

  - reading: one C{recv} per readable event, handed to
    C{protocol.dataReceived}; an end of stream is
    C{protocol.readConnectionLost()} (the protocol must be half-closeable,
    as both of ours are);
  - writing: C{write} sends at once when nothing is queued (a relayed
    chunk or a ClientHello reaches the kernel in the same call, no reactor
    turn), and queues the rest for C{doWrite}; past L{BUFFER_SIZE} queued
    bytes a registered streaming producer is paused until the queue drains;
  - C{loseWriteConnection} is a C{shutdown(SHUT_WR)} once the queue is
    empty; C{loseConnection} closes once it is empty -- at once when it
    already is and nothing else (the splice pump) writes for us;
  - C{abortConnection} drops the queue and resets the connection (an RST,
    as Twisted's does), reporting C{ConnectionAborted} on the next reactor
    turn;
  - the end is one C{protocol.connectionLost(reason)}, with a shared
    C{Failure}: L{DONE} for an orderly close, L{LOST} for a reset or a
    refused write, which the relay tells apart as it always has.

It keeps the contract the splice pump relies on for Twisted's transports
(L{sniproxy.splice}): C{doRead}/C{doWrite} looked up per event (so an
instance attribute takes them over), C{doWrite} with an empty queue
completing a pending close or half-close, C{doRead} returning
C{main.CONNECTION_DONE}/C{CONNECTION_LOST} to have the reactor end the
connection, and C{connected}/C{disconnecting}/C{socket}/C{fileno} meaning
what they mean there.

L{serve_accepts} makes a listening port build these instead of
C{tcp.Server}s.
"""

from __future__ import annotations

import socket
import struct
from _socket import socket as _CSocket
from typing import Any, Callable

from twisted.internet import error, main
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorFDSet,
    IReadWriteDescriptor,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import reflect
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["BUFFER_SIZE", "DONE", "LOST", "SocketTransport", "close_later", "serve_accepts"]

# Queued bytes past which a streaming producer is paused (Twisted's own
# transports' bufferSize).
BUFFER_SIZE = 1 << 16
# One recv's worth.
READ_SIZE = 1 << 16

# Shared, as the reactor shares its own: a Failure costs a traceback walk
# to build, and these carry nothing per connection.
DONE = Failure(error.ConnectionDone())
LOST = Failure(error.ConnectionLost())
_LINGER_RESET = struct.pack("ii", 1, 0)
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
_log = Logger()
_TCP = socket.IPPROTO_TCP
_NODELAY = socket.TCP_NODELAY


@implementer(IReadWriteDescriptor, IHalfCloseableDescriptor, ITCPTransport, IPushProducer, IConsumer, ISystemHandle)
class SocketTransport:
    """
    A connected, non-blocking TCP socket as a transport for C{protocol}.
    Reading starts at once; C{protocol.makeConnection(transport)} is the
    caller's to make.

    @ivar connected: whether the socket is still open.
    @ivar disconnecting: whether C{loseConnection} was called.
    @ivar producer: the registered producer, or C{None}.
    @ivar queued: bytes written but not yet taken by the kernel.
    @ivar write_shut: whether this side's stream has been shut
        (C{shutdown(SHUT_WR)}, after L{loseWriteConnection}).
    """

    connected = True
    disconnecting = False
    producer = None
    _streaming = False
    _producer_paused = False
    _write_closing = False
    write_shut = False
    _reading = False
    _writing = False
    _aborting = False
    _host = None

    def __init__(self, sock: socket.socket, protocol, reactor: IReactorFDSet, peer: Any = None) -> None:
        """
        @param peer: the peer's address, as C{accept} gave it (a tuple) or
            as an C{IAddress}, or C{None} to ask the socket when needed.
        """
        sock.setblocking(False)
        self.socket = sock
        self.protocol = protocol
        self.reactor = reactor
        self._peer = peer
        self._queue: list[bytes] = []
        self.queued = 0
        self._prefix = prefix = protocol.__class__.__name__
        # The reactor asks for these at every event: the socket's own
        # (C-level) fileno, which answers -1 once it is closed, and a
        # C-level callable answering the constant prefix, instead of a
        # Python method call each.
        self.fileno = sock.fileno
        self.logPrefix = prefix.__str__
        self._half_closeable = IHalfCloseableProtocol.providedBy(protocol)
        self._reading = True
        reactor.addReader(self)

    # -- IFileDescriptor

    def fileno(self) -> int:
        """The socket's descriptor; -1 once it is closed.  (Shadowed per instance by the socket's own.)"""
        return self.socket.fileno()

    def logPrefix(self) -> str:
        """The protocol's class name, for log lines.  (Shadowed per instance by a C-level equivalent.)"""
        return self._prefix

    def getHandle(self) -> socket.socket:
        return self.socket

    # -- reading

    def doRead(self):
        try:
            data = self.socket.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if data:
            self.protocol.dataReceived(data)
            return None
        # The end of the peer's stream: this side may still write.
        self.stopReading()
        self._read_ended()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        """The reactor saw the end of the stream (a hang-up, or C{doRead}'s C{CONNECTION_DONE})."""
        self._reading = False
        if self.connected:
            self._read_ended()

    def _read_ended(self) -> None:
        if self._half_closeable:
            self.protocol.readConnectionLost()
        else:
            # A protocol that cannot half-close is closed, as Twisted's
            # transports do.
            self.stopWriting()
            self._lost(DONE)

    def startReading(self) -> None:
        if not self._reading and self.connected:
            self._reading = True
            self.reactor.addReader(self)

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def pauseProducing(self) -> None:
        self.stopReading()

    def resumeProducing(self) -> None:
        if self.connected and not self.disconnecting:
            self.startReading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- writing

    def startWriting(self) -> None:
        if not self._writing and self.connected:
            self._writing = True
            self.reactor.addWriter(self)

    def stopWriting(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def write(self, data: bytes) -> None:
        if not data or not self.connected or self.write_shut:
            return
        if not self._queue:
            # Nothing queued: straight to the kernel, which takes a relayed
            # chunk whole in the usual case.
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # Reported as the reactor's write event meets it again.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._queue.append(data)
        self.queued += len(data)
        if self.queued > BUFFER_SIZE and self.producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()
        self.startWriting()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def doWrite(self):
        queue = self._queue
        if queue:
            data = queue[0] if len(queue) == 1 else b"".join(queue)
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if sent < len(data):
                rest = data[sent:]
                self._queue = [rest]
                self.queued = len(rest)
                return None
            self._queue = []
            self.queued = 0
        # Nothing left of ours to send.
        self.stopWriting()
        producer = self.producer
        if producer is not None and (not self._streaming or self._producer_paused):
            self._producer_paused = False
            producer.resumeProducing()
        elif self.disconnecting:
            self._lost(DONE)
        elif self._write_closing and not self.write_shut:
            self._shut_write()
        return None

    def _shut_write(self) -> None:
        self.write_shut = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._half_closeable:
            self.protocol.writeConnectionLost()

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}, because producer {self.producer} was never unregistered.")
        if not self.connected:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False
        if self.connected and self.disconnecting:
            self.startWriting()

    # -- ending

    def loseWriteConnection(self) -> None:
        """
        Half-close (C{shutdown(SHUT_WR)}) once what is queued is sent: at
        once when nothing is, through C{doWrite} (so a pump that took it
        over first flushes what it holds for this side).
        """
        if self._write_closing or not self.connected:
            return
        self._write_closing = True
        if self._queue:
            self.startWriting()
        else:
            self.doWrite()

    def loseConnection(self) -> None:
        """
        Close once what is queued is sent (and a paused or pull producer
        is unregistered): at once when nothing is, through C{doWrite} as
        for L{loseWriteConnection}.
        """
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self.stopReading()
        if self.write_shut:
            # Nothing more can be written: doWrite would not end it.
            self._lost(DONE)
        elif self._queue:
            self.startWriting()
        else:
            self.doWrite()

    def abortConnection(self) -> None:
        """Close now with a reset, dropping what is queued; reported on the next reactor turn."""
        if not self.connected or self._aborting:
            return
        self._aborting = True
        self.stopReading()
        self.stopWriting()
        self.doRead = self.doWrite = _nothing
        self.reactor.callLater(0, self._lost, Failure(error.ConnectionAborted()))

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped this descriptor (an error event, or its shutdown)."""
        self._reading = self._writing = False
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        self.stopReading()
        self.stopWriting()
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        sock = self.socket
        if self._aborting:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        # Non-inheritable, so ours alone: close() is the whole orderly end,
        # made once the reactor's current batch of events is handled.
        self.fileno = _closed_fileno
        close_later(self.reactor, sock)
        self._queue = []
        self.queued = 0
        protocol = self.protocol
        # As Twisted's transports do: the protocol may keep its transport,
        # but not the other way round, so neither waits for the cyclic
        # garbage collector.
        self.protocol = None
        protocol.connectionLost(reason)

    def _discard(self) -> None:
        """Unregister and close, telling nobody: the protocol never got going."""
        if self.connected:
            self.connected = False
            self.stopReading()
            self.stopWriting()
            self.fileno = _closed_fileno
            close_later(self.reactor, self.socket)
            self.protocol = None

    # -- ITCPTransport

    def setTcpNoDelay(self, enabled: bool) -> None:
        try:
            self.socket.setsockopt(_TCP, _NODELAY, enabled)
        except OSError:
            # A connection reset already (some kernels refuse then, as
            # Twisted's own transports allow for): its end is on its way.
            pass

    def getTcpNoDelay(self) -> bool:
        return bool(self.socket.getsockopt(_TCP, _NODELAY))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def getPeer(self):
        peer = self._peer
        if peer is None or isinstance(peer, tuple):
            peer = self._peer = _address(peer if peer is not None else self.socket.getpeername())
        return peer

    def getHost(self):
        host = self._host
        if host is None:
            host = self._host = _address(self.socket.getsockname())
        return host

    def __repr__(self) -> str:
        return f"<{self._prefix} transport fd={self.fileno()}>"


def _nothing(*args) -> None:
    return None


# What a closed transport's fileno answers (a C-level callable, as the
# open one's is).
_closed_fileno = (-1).__int__


class _Closer:
    """
    Sockets to close once the reactor has handled its current batch of
    events.

    A batch from C{epoll_wait} or C{poll} is a list of descriptor
    numbers; an event later in the batch for a descriptor closed earlier
    in it is dropped by the reactor -- unless the number was given to a
    new socket meanwhile (the kernel gives out the lowest free number:
    the next accept or backend connect would get it), and then the stale
    event would reach the new owner.  So a socket we close while handling
    an event keeps its number until the batch is over.
    """

    def __init__(self) -> None:
        self.sockets: list = []
        self.call = None

    def add(self, reactor, sock) -> None:
        self.sockets.append(sock)
        call = self.call
        # (A pending call someone cancelled -- trial's janitor does, between
        # tests -- must not leave the sockets waiting for ever.)
        if call is None or not call.active():
            self.call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass


_closer = _Closer()


def close_later(reactor, sock) -> None:
    """
    Close C{sock}, which the caller has just unregistered from C{reactor},
    once the reactor has handled the events it is handling now (at the
    start of its next turn), so its descriptor number cannot be reused
    within the batch.
    """
    _closer.add(reactor, sock)


def _address(pair: tuple):
    if len(pair) == 4 or ":" in pair[0]:
        return IPv6Address("TCP", pair[0], pair[1], *pair[2:4])
    return IPv4Address("TCP", pair[0], pair[1])


def _accepted(sock: socket.socket, protocol, addr: tuple, server, sessionno: int, reactor) -> SocketTransport:
    """A listening port's transport factory: a L{SocketTransport} for each accepted socket."""
    return SocketTransport(sock, protocol, reactor, addr)


# How many connections one readable event of a listening socket accepts at
# most, so a flood cannot starve the connections already open.
ACCEPTS_PER_EVENT = 64


def _accept_loop(port) -> Callable[[], None]:
    """
    The listening C{port}'s C{doRead}: accept what is waiting, each
    connection a C-level socket (no Python-level socket wrapper) in a
    L{SocketTransport}, built for C{port.factory}.
    """
    listening = port.socket
    accept = listening._accept
    family = listening.family
    ipv6 = family == socket.AF_INET6
    build = port.factory.buildProtocol
    reactor = port.reactor
    twisteds = type(port).doRead

    def doRead() -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                # Descriptor exhaustion and the rest: Twisted's own accept
                # loop handles them (it keeps a descriptor in reserve to
                # shed the connection with) and logs them.
                return twisteds(port)
            sock = _CSocket(family, socket.SOCK_STREAM, 0, fd)
            transport = None
            try:
                if ipv6:
                    host, _ = socket.getnameinfo(addr, _NUMERIC)  # with its scope id
                    address = IPv6Address("TCP", host, *addr[1:4])
                else:
                    address = IPv4Address("TCP", addr[0], addr[1])
                protocol = build(address)
                if protocol is None:
                    sock.close()  # (never registered: closed at once)
                    continue
                transport = SocketTransport(sock, protocol, reactor, address)
                protocol.makeConnection(transport)
            except Exception:
                # Never the listening socket's end: the reactor would close it.
                _log.failure("accepting a connection from {address}", address=addr)
                if transport is not None:
                    transport._discard()
                else:
                    sock.close()
                continue
            # The client sends its first bytes (a ClientHello) right after its
            # connect completes, so they are often here already: read them now
            # rather than a reactor turn later (one recv, at worst EAGAIN).
            try:
                if transport._reading and transport.doRead() is not None:
                    transport._lost(LOST)
            except Exception:
                # As the reactor does with a descriptor whose doRead raised;
                # and never the listening socket's end, whatever the
                # protocol's connectionLost does with it.
                _log.failure("reading from {address}", address=addr)
                try:
                    transport._lost(Failure())
                except Exception:
                    _log.failure("closing the connection from {address}", address=addr)
        return None

    return doRead


def serve_accepts(port) -> bool:
    """
    Make the listening C{port} accept its connections itself and give each
    a L{SocketTransport} instead of a C{tcp.Server}.

    The one place this module reaches into Twisted.  It relies on these
    internals of C{twisted.internet.tcp.Port}, unchanged from Twisted 23.10
    through 26.10:

      - the reactor calls C{port.doRead()} by attribute lookup at each
        readable event (as the splice pump relies on for connections), so
        an instance attribute takes it over;
      - C{port.socket} is the listening, non-blocking C{socket.socket};
        C{port.factory} and C{port.reactor} are the port's;
      - the class's C{doRead} accepts what is waiting, handling descriptor
        exhaustion, and builds each connection's transport by calling
        C{port.transport(socket, protocol, address, port, session number,
        reactor)} (its TLS port once set C{ssl.Server} there the same way).

    Everything else of the port -- C{getHost}, C{stopListening},
    C{systemd:} and adopted sockets -- stays Twisted's.
    C{tests/test_twisted_internals.py} checks the contract on the installed
    Twisted.

    @return: whether C{port} is a plain TCP port now serving
        L{SocketTransport}s (anything else -- UNIX sockets, TLS ports,
        other reactors' ports -- is left as it is).
    """
    try:
        from twisted.internet import tcp
    except ImportError:  # pragma: no cover (not a POSIX platform)
        return False
    if type(port) is not tcp.Port or getattr(port, "transport", None) is not tcp.Server:
        return False
    if not IReactorFDSet.providedBy(port.reactor) or not isinstance(getattr(port, "socket", None), socket.socket):
        return False
    if isinstance(port.factory, TLSMemoryBIOFactory):
        return False  # a TLS listener (listenSSL's port is a tcp.Port too)
    # Twisted's own loop, where ours hands over to it, makes ours too.
    port.transport = _accepted
    port.doRead = _accept_loop(port)
    # The reactor asks for it at every event (the class's builds it each time).
    port.logPrefix = reflect.qual(port.factory.__class__).__str__
    return True
