"""
The proxy's client side: a connection's life from accept to close.

1. Accept, set TCP_NODELAY, feed every byte to a L{ClientHelloParser}.
2. Once the ClientHello is whole, stop reading and ask the L{Router}.
3. Connect to the route's backends (L{sniproxy.connect}), write the
   buffered bytes exactly as received, then relay both ways
   (L{sniproxy.relay}).

A connection that cannot be routed gets a fatal TLS alert
(C{unrecognized_name} for no route, C{internal_error} for a failure), a
half-close so the alert is read before anything else happens, and one log
line naming the client, the SNI and the reason.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
try:
    from twisted.internet.posixbase import PosixReactorBase
except ImportError:  # pragma: no cover (not a POSIX platform)
    PosixReactorBase = ()  # type: ignore[assignment,misc]
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sniproxy import alerts, proxyprotocol
from sniproxy.accesslog import AccessLog
from sniproxy.clientnets import ClientNetworks, RefusalLog
from sniproxy.clienthello import ClientHello, ClientHelloError, ClientHelloParser
from sniproxy.config import ProxyConfig
from sniproxy.connect import ConnectError, connect_now
from sniproxy.deadlines import Deadlines
from sniproxy.interfaces import Address, Route, RoutingError
from sniproxy.metrics import ProxyMetrics
from sniproxy.proxyprotocol import ProxyHeader, ProxyHeaderError, parse_proxy_header
from sniproxy.record import ConnectionRecord, Outcome
from sniproxy.relay import BackendConnection, Relay
from sniproxy.splice import PipePool
from sniproxy.routing import Router

__all__ = ["ClientConnection", "ProxyFactory"]

log = Logger()

# After a rejection the alert is written and our side half-closed; the
# client gets this long (within the 0.1 s of the factory's deadlines) to
# read it and close before we drop the connection.
# Reading (and discarding) meanwhile keeps the kernel from answering the
# client's unread bytes with a reset that could destroy the alert.
LINGER = 2.0

# How often the factory looks for connections past proxy.max_lifetime.
LIFETIME_SWEEP = 1.0


def _peer(address) -> str:
    port = getattr(address, "port", None)
    return str(address) if port is None else str(Address(address.host, port))


@implementer(IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """
    One client's connection.

    @ivar hello: the parsed ClientHello, once complete.
    @ivar route: the route chosen, once decided.
    @ivar relay: the L{Relay}, once the backend is connected.
    @ivar outcome: C{None} while undecided, then L{Outcome.RELAYED} or the
        kind of rejection.
    @ivar reason: the detail behind a rejection, for the log line.
    @ivar client: the client as log lines name it (C{host:port}, or
        C{"host:port via balancer:port"} after a PROXY header).
    @ivar client_ip: the client's IP address as text (the one a PROXY
        header names, if any).
    @ivar buffered: the bytes of the ClientHello, kept until they are
        replayed to the backend.
    """

    hello: ClientHello | None = None
    route: Route | None = None
    relay: Relay | None = None
    outcome: Outcome | None = None
    reason: str = ""
    address_key: str = ""
    # Bytes of an inbound PROXY header so far; None when none is expected.
    inbound: bytes | None = None
    proxied: ProxyHeader | None = None
    # The peer address buildProtocol was given, if it built this connection.
    peer_address = None

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        # A reload swaps the factory's settings and router; this connection
        # keeps the ones it started with.
        self.settings = factory.settings
        self.router = factory.router
        self.clock = factory.clock
        self.parser: ClientHelloParser | None = ClientHelloParser(self.settings.max_hello_bytes)
        self.pending: Deferred | None = None
        # The one pending deadline (hello timeout, or the linger after a
        # rejection) on the factory's Deadlines: (bucket, callable).
        self.timer: tuple[int, Callable[[], object]] | None = None
        self.started = self.clock.seconds()
        self.hello_at: float | None = None
        self.routed_at: float | None = None
        self.connected_at: float | None = None
        self.client = ""
        self.client_ip = ""
        self.backend: Address | None = None
        self.buffered = b""

    # -- the client's events

    def connectionMade(self) -> None:
        transport = self.transport
        transport.setTcpNoDelay(True)
        # The address the factory was given at accept (the same the
        # transport reports): one address object per connection, not two.
        peer = self.peer_address
        if peer is None:
            peer = transport.getPeer()
        self.client = _peer(peer)
        self.client_ip = getattr(peer, "host", "")
        if self.factory.trusts_proxy_header(peer):
            self.inbound = b""
        self.timer = (self.factory.deadlines.add(self.started + self.settings.hello_timeout, self._hello_timed_out), self._hello_timed_out)
        self.factory.opened(self)

    def dataReceived(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_client(data)
            return
        if self.inbound is not None:
            data = self._inbound_header(data)
            if not data:
                return
        parser = self.parser
        if parser is None:
            # Routing (we paused reading, but bytes of the same read may
            # still arrive) or lingering after a rejection: nothing to do.
            return
        try:
            hello = parser.feed(data)
        except ClientHelloError as error:
            self.reject(Outcome.MALFORMED, str(error), error.alert)
            return
        if hello is not None:
            self._route(hello, parser.buffered)

    def _inbound_header(self, data: bytes) -> bytes:
        """
        Read the PROXY header a trusted load balancer sends first; from
        then on the client is the one it names.

        @return: the bytes after the header (the start of the ClientHello).
        """
        buffered = self.inbound + data
        try:
            parsed = parse_proxy_header(buffered)
        except ProxyHeaderError as error:
            self.inbound = None
            self.reject(Outcome.MALFORMED, f"bad PROXY header from a trusted peer: {error}", None)
            return b""
        if parsed is None:
            self.inbound = buffered
            return b""
        header, consumed = parsed
        self.inbound = None
        if header.source is not None:
            self.proxied = header
            self.client_ip = header.source[0]
            self.client = f"{Address(*header.source)} via {self.client}"
            if self.factory.clients is not None and self.factory.refuse_client(self, header.source[0]):
                return b""
        return buffered[consumed:]

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.client_eof()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def _disarm(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            self.factory.deadlines.cancel(*timer)

    def connectionLost(self, reason: Failure) -> None:
        self._disarm()
        if self.relay is not None:
            self.relay.client_lost(reason)
            return
        if self.outcome is None:
            self.outcome = Outcome.CLIENT_CLOSED
            if self.hello is None:
                self.reason = "before the ClientHello was complete"
            else:
                self.reason = "while connecting" if self.route is not None else "while routing"
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        self.factory.closed(self)

    # -- routing and connecting

    def _route(self, hello: ClientHello, buffered: bytes) -> None:
        self._disarm()
        self.parser = None
        self.hello_at = self.clock.seconds()
        self.hello = hello
        self.buffered = buffered
        self.transport.pauseProducing()
        decided = self.router.decide(hello.server_name)
        if not isinstance(decided, Deferred):
            # A static or otherwise synchronous answer: no Deferred at all.
            try:
                self._routed(decided)
            except Exception:
                self._crashed(Failure())
            return
        d = self.pending = decided
        d.addCallbacks(self._routed, self._failed, errbackArgs=(RoutingError, Outcome.ROUTING_FAILED))
        d.addErrback(self._crashed)

    def _routed(self, route: Route | None) -> None:
        self.pending = None
        self.routed_at = self.clock.seconds()
        if route is None:
            detail = "the client sent no server name" if self.hello.server_name is None else ""
            self.reject(Outcome.NO_ROUTE, detail, alerts.UNRECOGNIZED_NAME)
            return
        self.route = route
        settings = self.settings
        backends, board = route.backends, self.factory.board
        if board is not None:
            backends = board.admit(route, self.hello.alpn)
            if backends is None:
                self.factory.app_over_limit(self, route.app, board.live(route.app))
                return
        connected = connect_now(
            self.factory.reactor,
            self.clock,
            backends,
            BackendConnection,
            timeout=settings.connect_timeout,
            stagger=settings.connect_stagger,
            health=board if route.app is not None else None,
            raw=self.factory.raw_connect,
            deadlines=self.factory.deadlines,
        )
        if not isinstance(connected, Deferred):
            # Connected at once (a near backend): no Deferred at all.
            self._connected(connected)
            return
        d = self.pending = connected
        d.addCallbacks(self._connected, self._failed, errbackArgs=(ConnectError, Outcome.BACKEND_UNREACHABLE))
        d.addErrback(self._crashed)

    def _crashed(self, failure: Failure) -> None:
        """A bug in our own callbacks: log it, and do not leave the connection hanging."""
        log.failure("connection from {client} sni={sni}: internal error", failure, client=self.client, sni=self.hello.server_name)
        self.outcome = self.outcome or Outcome.INTERNAL_ERROR
        self.abort(Outcome.INTERNAL_ERROR)

    def _failed(self, failure: Failure, expected: type[Exception], outcome: Outcome) -> None:
        """Routing or connecting failed: refuse with C{internal_error}."""
        self.pending = None
        if self.routed_at is None:
            # Routing itself failed: the decision (a failure) is now.
            self.routed_at = self.clock.seconds()
        if failure.check(CancelledError):
            return  # the client went away first
        if not failure.check(expected):
            log.failure(
                "{outcome} for sni={sni}: unexpected error", failure, outcome=outcome.value, sni=self.hello.server_name
            )
        self.reject(outcome, str(failure.value), alerts.INTERNAL_ERROR)

    def _connected(self, backend: BackendConnection) -> None:
        self.pending = None
        self.connected_at = self.clock.seconds()
        self.outcome = Outcome.RELAYED
        # The address as the route named it (what the board counts by);
        # the peer's when the connector did not say.
        address = getattr(backend, "address", None)
        if address is None:
            peer = backend.transport.getPeer()
            address = Address(peer.host, peer.port)
        self.backend = address
        relay = Relay(
            self.transport,
            backend.transport,
            self.clock,
            self.settings.idle_timeout,
            self._relay_closed,
            pipes=self.factory.pipes if self.settings.splice else None,
            deadlines=self.factory.deadlines,
        )
        backend.relay = relay
        self.relay = relay
        version = self.route.proxy_protocol
        header = b""
        if version:
            header = proxyprotocol.header(version, *self._endpoints(), authority=self.hello.server_name)
        relay.start(self.buffered, header)
        self.buffered = b""

    def _endpoints(self) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        """The (client, proxy) address pair a PROXY header reports."""
        proxied = self.proxied
        if proxied is not None:
            return proxied.source, proxied.destination
        peer, host = self.transport.getPeer(), self.transport.getHost()
        if getattr(peer, "port", None) is None or getattr(host, "port", None) is None:
            return None, None
        return (peer.host, peer.port), (host.host, host.port)

    def _relay_closed(self, relay: Relay) -> None:
        reason = self.reason = relay.close_reason or ""
        # Ordinary endings are in the access log only; these get a line of
        # their own (one per connection, never per chunk).
        if reason == "backend reset":
            log.warn(
                "backend {backend} reset the connection for {client} sni={sni} "
                "after {up} bytes up, {down} bytes down",
                backend=str(self.backend),
                client=self.client,
                sni=self.hello.server_name or "-",
                up=relay.up,
                down=relay.down,
                reason=reason,
            )
        elif reason == "idle timeout":
            stalled = relay.stalled
            why = "the " + stalled + " read nothing" if stalled else "no bytes either way"
            log.info(
                "closed {client} sni={sni} to {backend}: {why} for {timeout:g}s, "
                "after {up} bytes up, {down} bytes down",
                client=self.client,
                sni=self.hello.server_name or "-",
                backend=str(self.backend),
                why=why,
                timeout=self.settings.idle_timeout,
                up=relay.up,
                down=relay.down,
                reason=reason,
            )
        self.factory.closed(self)

    # -- endings

    def record(self, ended: float) -> ConnectionRecord:
        """This connection, closed at C{ended}, as the one L{ConnectionRecord} its observers read."""
        hello, route, relay = self.hello, self.route, self.relay
        hello_at, routed_at, connected_at = self.hello_at, self.routed_at, self.connected_at
        return ConnectionRecord(
            client=self.client_ip,
            peer=self.client,
            sni=hello.server_name if hello is not None else None,
            alpn=tuple([p.decode("latin-1") for p in hello.alpn]) if hello is not None and hello.alpn else (),
            ech=hello.ech if hello is not None else False,
            outcome=self.outcome or Outcome.CLIENT_CLOSED,
            reason=self.reason,
            source=route.source if route is not None else None,
            app=route.app if route is not None else None,
            backend=self.backend,
            cache=route.cache if route is not None else "",
            bytes_up=relay.up if relay is not None else 0,
            bytes_down=relay.down if relay is not None else 0,
            started=self.started,
            duration=ended - self.started,
            route_seconds=None if hello_at is None or routed_at is None else routed_at - hello_at,
            connect_seconds=None if routed_at is None or connected_at is None else connected_at - routed_at,
            setup_seconds=None if connected_at is None else connected_at - self.started,
        )

    def abort(self, outcome: Outcome) -> None:
        """
        Close this connection now, whatever state it is in.

        @param outcome: the outcome if none is decided yet (and the relay's
            close reason if it is relaying).
        """
        if self.relay is not None:
            self.relay.abort(outcome.value)
            return
        if self.outcome is None:
            self.outcome = outcome
        self.transport.abortConnection()

    def _hello_timed_out(self) -> None:
        self.timer = None
        self.reject(Outcome.HELLO_TIMEOUT, f"no complete ClientHello within {self.settings.hello_timeout:g}s", None)

    def reject(self, outcome: Outcome, detail: str, alert: int | None, quiet: bool = False) -> None:
        """
        Refuse this connection: log one line, write the TLS alert (if any)
        in the client's record version, half-close, and drop the connection
        once the client closes or L{LINGER} seconds pass.

        @param outcome: the kind of rejection, for metrics and the access log.
        @param detail: what exactly went wrong, for the log line.
        @param quiet: log nothing (the caller logs, rate-limited).
        """
        if not self.transport.connected:
            return  # the client left while we decided
        self.outcome = outcome
        self.reason = f"{outcome.value}: {detail}" if detail else outcome.value
        hello = self.hello
        if not quiet:
            log.info(
                "rejected {client} sni={sni}: {reason}",
                client=self.client,
                sni=(hello.server_name or "-") if hello is not None else "-",
                outcome=outcome.value,
                reason=self.reason,
            )
        parser, self.parser = self.parser, None
        self._disarm()
        transport = self.transport
        if alert is not None:
            version = hello.record_version if hello is not None else (parser and parser.record_version)
            transport.write(alerts.alert_record(alert, version or 0x0301))
        transport.resumeProducing()
        transport.loseWriteConnection()
        self.timer = (self.factory.deadlines.add(self.clock.seconds() + LINGER, self._lingered), self._lingered)

    def _lingered(self) -> None:
        self.timer = None
        self.transport.abortConnection()


class ProxyFactory(Factory):
    """
    Builds a L{ClientConnection} per accepted connection and keeps the
    current settings and router, which L{reconfigure} swaps as one.

    @ivar connections: the connections alive now.
    @ivar record_observers: callables each given the L{ConnectionRecord}
        of every connection as it closes, in order.  (C{access_log} and
        C{metrics}, when given, are the first.)
    @ivar metrics: the L{ProxyMetrics} told about connections refused at
        accept (which have no record), or C{None}.
    """

    noisy = False

    def __init__(
        self,
        settings: ProxyConfig,
        router: Router,
        reactor: IReactorTCP | None = None,
        clock: IReactorTime | None = None,
        access_log: AccessLog | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.metrics = metrics
        self._raw_for: tuple[object, bool] | None = None
        self.record_observers: list[Callable[[ConnectionRecord], object]] = []
        if access_log is not None:
            self.record_observers.append(access_log.observe)
        if metrics is not None:
            self.record_observers.append(metrics.observe)
        self._sweeper: LoopingCall | None = None
        # Every connection's hello, linger and idle deadlines, on one timer.
        self.deadlines = Deadlines(self.clock)
        # The service's BackendBoard (balancing, health, app caps), if any.
        self.board = None
        self._limit_log = RefusalLog(log, self.clock)
        self._denied_log = RefusalLog(log, self.clock)
        self._app_limit_log = RefusalLog(log, self.clock)
        self.connections: set[ClientConnection] = set()
        self.reconfigure(settings, router)
        self._per_client: dict[str, int] = {}
        self._drained: list[Deferred[None]] = []
        # Pipes for the splice pump, shared by every connection.
        self.pipes = PipePool()

    @property
    def raw_connect(self) -> bool:
        """
        Whether backend connects use bare sockets on the reactor's
        descriptors (see L{sniproxy.connect}): on every reactor of
        Twisted's POSIX family (epoll, poll, select, kqueue: their
        C{IReactorFDSet} and C{IReactorSocket}); not on anything else (a
        memory reactor, which records C{connectTCP} calls, a test's
        wrapper of the real reactor, the Windows IOCP reactor), which gets
        C{connectTCP}.  Worked out once per reactor object.
        """
        reactor = self.reactor
        known = self._raw_for
        if known is None or known[0] is not reactor:
            known = self._raw_for = (reactor, isinstance(reactor, PosixReactorBase))
        return known[1]

    def reconfigure(self, settings: ProxyConfig, router: Router) -> None:
        """New connections use C{settings} and C{router}; live ones keep theirs."""
        self.settings = settings
        self.router = router
        self._trusted = tuple(ipaddress.ip_network(network) for network in settings.accept_proxy_from)
        if settings.max_lifetime:
            if self.connections:
                self._start_sweeping()
        else:
            self._stop_sweeping()
        self.clients = ClientNetworks.from_config(settings.allow_clients, settings.deny_clients)

    def refuse_client(self, connection: ClientConnection | None, host: str, addr=None) -> bool:
        """
        Judge a client address against C{allow_clients}/C{deny_clients}:
        a refused one is logged (rate-limited), counted (outcome
        C{denied}) and its connection closed at once.

        @return: whether the client was refused.
        """
        why = self.clients.refuses(host)
        if why is None:
            return False
        if connection is None:
            if not self._denied_log.counted():
                self._denied_log.refused(str(Address(host, getattr(addr, "port", 0))), why)
            if self.metrics is not None:
                self.metrics.denied()
        else:
            self._denied_log.refused(connection.client, why)
            connection.outcome = Outcome.DENIED
            connection.reason = f"denied: {why}"
            connection.transport.abortConnection()
        return True

    def app_over_limit(self, connection: ClientConnection, app: str, live: int) -> None:
        """Refuse a connection over its app's C{max_connections} with C{internal_error}, logged rate-limited."""
        reason = f"app {app} has {live} connections open (apps.{app}.max_connections)"
        self._app_limit_log.refused(connection.client, f"sni={connection.hello.server_name or '-'}: {reason}")
        # Set first: this connection was never counted live for the app.
        connection.outcome = Outcome.OVER_LIMIT
        connection.reject(Outcome.OVER_LIMIT, reason, alerts.INTERNAL_ERROR, quiet=True)

    def trusts_proxy_header(self, peer) -> bool:
        """Whether C{peer} is a load balancer allowed (and expected) to send a PROXY header."""
        if not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(peer.host)
        except (AttributeError, ValueError):
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)

    def buildProtocol(self, addr) -> ClientConnection | None:
        """
        A connection for C{addr}, or C{None} (the reactor closes the socket
        at once) when a connection limit is reached.
        """
        settings = self.settings
        host = getattr(addr, "host", "")
        if self.clients is not None and not self.trusts_proxy_header(addr) and self.refuse_client(None, host, addr):
            return None
        open_now = len(self.connections)
        if settings.max_connections and open_now >= settings.max_connections:
            self._over_limit(host, addr, open_now, " (proxy.max_connections)")
            return None
        per_client = self._per_client.get(host, 0)
        if (
            settings.max_connections_per_client
            and per_client >= settings.max_connections_per_client
            # A trusted load balancer carries many clients: the real one is
            # known only from its PROXY header, after this decision.
            and not self.trusts_proxy_header(addr)
        ):
            self._over_limit(host, addr, per_client, " from this address (proxy.max_connections_per_client)")
            return None
        self._per_client[host] = per_client + 1
        connection = ClientConnection(self)
        connection.address_key = host
        connection.peer_address = addr
        return connection

    def _over_limit(self, host: str, addr, count: int, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.over_limit()
        # One line per second at most: a flood must not become a log flood,
        # nor cost the formatting of lines nobody writes.
        if not self._limit_log.counted():
            self._limit_log.refused(str(Address(host, getattr(addr, "port", 0))), f"{count} connections open{limit}")

    def opened(self, connection: ClientConnection) -> None:
        self.connections.add(connection)
        if self._sweeper is None and self.settings.max_lifetime:
            self._start_sweeping()

    def closed(self, connection: ClientConnection) -> None:
        """
        C{connection} has closed: forget it, and give its one
        L{ConnectionRecord} to each of L{record_observers}.
        """
        ended = self.clock.seconds()
        self.connections.discard(connection)
        key = connection.address_key
        left = self._per_client.get(key, 1) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)
        observers = self.record_observers
        if observers:
            record = connection.record(ended)
            for observer in observers:
                try:
                    observer(record)
                except Exception:
                    # One broken consumer must not starve the others, nor
                    # leave a drain waiting.
                    log.failure("record observer {observer!r} failed", observer=observer)
        if not self.connections:
            self._stop_sweeping()
            if self._drained:
                drained, self._drained = self._drained, []
                for d in drained:
                    d.callback(None)

    # -- proxy.max_lifetime

    def _start_sweeping(self) -> None:
        """Run the one coarse timer that closes relays past C{proxy.max_lifetime}."""
        if self._sweeper is None:
            sweeper = self._sweeper = LoopingCall(self._sweep)
            sweeper.clock = self.clock
            sweeper.start(LIFETIME_SWEEP, now=False)

    def _stop_sweeping(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.running:
            sweeper.stop()

    def _sweep(self) -> None:
        """
        Close every relayed connection accepted more than the current
        C{proxy.max_lifetime} ago (a reload's new value applies to the
        connections already open too: that is the point of the cap).
        """
        max_lifetime = self.settings.max_lifetime
        if not max_lifetime:
            return
        born_before = self.clock.seconds() - max_lifetime
        for connection in list(self.connections):
            relay = connection.relay
            if relay is not None and connection.started <= born_before and relay.close_reason is None:
                relay.close("max lifetime")

    def stop(self) -> None:
        """The service is stopping: no timer of ours is left running, no pipe open."""
        self._stop_sweeping()
        self.deadlines.stop()
        self.pipes.close()

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Wait for the live connections to end.  Those still open after
        C{timeout} seconds are closed.

        @return: a L{Deferred} firing once no connection is left.
        """
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        deadline = self.clock.callLater(timeout, self._abort_all)

        def drained(result):
            if deadline.active():
                deadline.cancel()
            return result

        return d.addBoth(drained)

    def _abort_all(self) -> None:
        if self.connections:
            log.info("closing {count} connections still open at shutdown", count=len(self.connections))
        for connection in list(self.connections):
            connection.abort(Outcome.SHUTDOWN)
