"""
The upstream: the process's one L{twisted.names.client.Resolver}, with
short per-attempt timeouts, an overall deadline, and a clean stop.

Twisted's defaults do not suit a proxy: four attempts per server (1, 3, 11
and 45 seconds, a minute in all), and a resolv.conf that is re-read by a
repeating timer.  Here the servers come from the config or from
resolv.conf read once (its C{nameserver} lines only: C{search}, C{domain}
and C{ndots} are ignored on purpose, every query is absolute), each attempt
gets C{timeout} seconds, C{attempts} rounds go through the server list,
and no lookup outlives C{deadline}.  Answers truncated over UDP are asked
again over TCP (that comes with Twisted's client).

All timeouts fail with L{twisted.names.error.DNSQueryTimeoutError} (a
L{twisted.internet.defer.TimeoutError}); DNS errors fail as Twisted's
client reports them (L{DNSNameError} for NXDOMAIN, L{DNSServerError} for
SERVFAIL, L{DNSQueryRefusedError} for REFUSED, ...).
"""

from __future__ import annotations

import ipaddress
import weakref
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.names import client, common, dns
from twisted.names.error import DNSQueryTimeoutError
from twisted.python.failure import Failure

from sniproxy.config import DNSConfig

__all__ = ["Upstream", "parse_resolv_conf"]

log = Logger()

# What the C library uses when resolv.conf names no server.
DEFAULT_SERVERS = [("127.0.0.1", dns.PORT)]


def parse_resolv_conf(path: str) -> list[tuple[str, int]]:
    """
    The C{nameserver} addresses in the resolv.conf(5) file at C{path}, in
    order, each on port 53.

    Everything else in the file (C{search}, C{domain}, C{options ndots})
    is ignored: sniproxy's queries are absolute.  A missing or unreadable
    file, or one without a usable C{nameserver} line, gives
    C{[("127.0.0.1", 53)]}, as the C library does; that is logged.
    """
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as error:
        log.warn(
            "Cannot read {path} ({error}); asking the DNS server on 127.0.0.1:53",
            path=path,
            error=error.strerror,
        )
        return list(DEFAULT_SERVERS)
    servers: list[tuple[str, int]] = []
    for line in lines:
        fields = line.split(b"#", 1)[0].split(b";", 1)[0].split()
        if len(fields) < 2 or fields[0] != b"nameserver":
            continue
        text = fields[1].decode("ascii", "replace")
        try:
            # A scope (fe80::1%eth0) is kept for the socket, checked without.
            ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            log.warn("Ignoring {path}: nameserver {text!r} is not an IP address", path=path, text=text)
            continue
        servers.append((text, dns.PORT))
    if not servers:
        log.warn("{path} names no nameserver; asking the DNS server on 127.0.0.1:53", path=path)
        return list(DEFAULT_SERVERS)
    return servers


class _QuietPorts:
    """
    Stands in for the C{log} module inside L{twisted.internet.udp}, dropping
    the two lines each of our upstream query ports logs (one port per query,
    for a random source port: RFC 5452) and passing everything else on.

    Relies on L{twisted.internet.udp.Port} logging through its module's
    global C{log.msg}, with exactly C{"%s starting on %s"} while it binds and
    C{"(UDP Port %s Closed)"} in C{connectionLost} (Twisted 16 to 26).  If a
    release changes that, the lines come back (noisy, not broken); the test
    suite notices.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self.binding = 0
        self.closing: set[str] = set()

    def msg(self, *message: Any, **kw: Any) -> None:
        if len(message) == 1 and not kw:
            text = message[0]
            if text in self.closing:
                self.closing.discard(text)
                return
            if self.binding and isinstance(text, str) and " starting on " in text:
                return
        self._log.msg(*message, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _quiet_ports() -> _QuietPorts:
    """The process's one L{_QuietPorts}, installed on first use."""
    from twisted.internet import udp

    quiet = udp.log
    if not isinstance(quiet, _QuietPorts):
        quiet = udp.log = _QuietPorts(udp.log)  # type: ignore[assignment]
    return quiet


class _Network:
    """
    The reactor as the client sees it: every UDP port and TCP connector the
    client opens is remembered, so that L{Upstream.stop} can close them.
    UDP ports open and close without a log line (L{_QuietPorts}).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._quiet = _quiet_ports()
        self.datagram: weakref.WeakSet[Any] = weakref.WeakSet()
        self.connectors: weakref.WeakSet[Any] = weakref.WeakSet()

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        # One port per query (a random source port); not worth two log
        # lines each, nor the protocol's own start/stop lines.
        protocol.noisy = False
        quiet = self._quiet
        quiet.binding += 1
        try:
            listening = self._reactor.listenUDP(port, protocol, interface, maxPacketSize)
        finally:
            quiet.binding -= 1
        number = getattr(getattr(listening, "getHost", lambda: None)(), "port", None)
        if number is not None:
            quiet.closing.add(f"(UDP Port {number} Closed)")
        self.datagram.add(protocol)
        return listening

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Any:
        connector = self._reactor.connectTCP(host, port, factory, timeout, bindAddress)
        self.connectors.add(connector)
        return connector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class _Client(client.Resolver):
    """L{client.Resolver}, telling L{Upstream} when its TCP connections close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: list[defer.Deferred[None]] = []
        # Every TCP protocol, even one whose connection was lost: its
        # queries' timers outlive the connection.
        self.streams: weakref.WeakSet[Any] = weakref.WeakSet()

    def connectionMade(self, protocol: Any) -> None:
        self.streams.add(protocol)
        super().connectionMade(protocol)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            closed, self.closed = self.closed, []
            for d in closed:
                d.callback(None)


# -- Twisted internals the upstream leans on -------------------------------


def _ask(resolver: client.Resolver, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
    """
    One query through Twisted's client.

    Relies on L{client.Resolver._lookup}C{(name, cls, type, timeout)}
    (private, unchanged since Twisted 8): the one entry point that takes
    the class and any type without dispatching through C{lookupX}.  Without
    it, the public C{query} (class IN and the types it maps) is used.
    """
    lookup = getattr(resolver, "_lookup", None)
    if lookup is None:  # pragma: no cover - a Twisted without it
        return resolver.query(dns.Query(name, type, cls), timeout)
    return lookup(name, cls, type, timeout)


def _abort(protocol: Any) -> None:
    """
    Fail a DNS protocol's outstanding queries now and cancel their timers.

    Relies on L{dns.DNSMixin.liveMessages}: a dict of query id to
    C{(Deferred, IDelayedCall)} (unchanged since Twisted 8).  Without it
    nothing is failed here, and the queries end by their own timeouts.
    """
    live = getattr(protocol, "liveMessages", None) or {}
    for id in list(live):
        d, timer = live.pop(id)
        if timer.active():
            timer.cancel()
        d.errback(Failure(defer.CancelledError("upstream resolver stopped")))


class Upstream(common.ResolverBase):
    """
    The upstream resolver: an L{IResolver} over one long-lived
    L{client.Resolver}.

    A lookup tries each server in turn for up to C{timeout} seconds, and goes
    through the list C{attempts} times; it fails with
    L{DNSQueryTimeoutError} after that, or after C{deadline} seconds,
    whichever is first.  Concurrent lookups of one (name, type, class) share
    one query (Twisted's client does that).

    @ivar client: the L{client.Resolver}.
    @ivar servers: the C{(host, port)} pairs, in the order they are tried.
    """

    def __init__(
        self,
        servers: Iterable[tuple[str, int]],
        *,
        timeout: float = 1.0,
        attempts: int = 2,
        deadline: float = 3.0,
        reactor: Any = None,
    ) -> None:
        """
        @param reactor: provides the network (UDP, TCP) and time; the global
            reactor by default.  L{sniproxy.testing.clock.ClockReactor} puts
            the timeouts on a test's clock.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.servers = tuple(servers)
        if not self.servers:
            raise ValueError("no DNS servers")
        self.deadline = deadline
        self._reactor = reactor
        self._network = _Network(reactor)
        self._pending: dict[defer.Deferred[Any], IDelayedCall] = {}
        self._stopped = False
        # servers= and never resolv=: with a resolv.conf path the client
        # re-reads it on a repeating timer, for the life of the process.
        self.client = _Client(servers=list(self.servers), timeout=(timeout,) * attempts, reactor=self._network)

    @classmethod
    def from_config(cls, config: DNSConfig, reactor: Any = None) -> Upstream:
        """
        The upstream for the C{[dns]} table: its C{servers}, else those of
        its C{resolv_conf} file.
        """
        servers = list(config.servers) or parse_resolv_conf(config.resolv_conf)
        log.info("DNS upstream servers: {servers}", servers=servers)
        return cls(
            servers,
            timeout=config.timeout,
            attempts=config.attempts,
            deadline=config.deadline,
            reactor=reactor,
        )

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        """
        Ask the servers.  Cancelling the result abandons this lookup only:
        the query itself runs on (others may share it) until it answers or
        times out.
        """
        if self._stopped:
            return defer.fail(defer.CancelledError("upstream resolver stopped"))
        result: defer.Deferred[Any] = defer.Deferred(self._forget)
        self._pending[result] = self._reactor.callLater(self.deadline, self._expire, result, name)
        # The client's Deferred is never cancelled: it has no canceller, and
        # its own timer would later fire it a second time.
        query = defer.maybeDeferred(_ask, self.client, name, cls, type, timeout)
        query.addBoth(self._done, result, name)
        return result

    def _done(self, outcome: Any, result: defer.Deferred[Any], name: bytes) -> None:
        timer = self._pending.pop(result, None)
        if timer is None:  # expired, cancelled or stopped: nobody waits
            return
        if timer.active():
            timer.cancel()
        if not isinstance(outcome, Failure):
            result.callback(outcome)
        elif outcome.check(defer.TimeoutError):
            # The client's last attempt fails with a plain TimeoutError.
            result.errback(DNSQueryTimeoutError(name))
        else:
            result.errback(outcome)

    def _expire(self, result: defer.Deferred[Any], name: bytes) -> None:
        del self._pending[result]
        result.errback(DNSQueryTimeoutError(name))

    def _forget(self, result: defer.Deferred[Any]) -> None:
        timer = self._pending.pop(result, None)
        if timer is not None and timer.active():
            timer.cancel()

    def stop(self) -> defer.Deferred[None]:
        """
        Fail every lookup in progress with L{defer.CancelledError}, cancel
        every timer and close every socket; later lookups fail the same way.

        @return: fires when the last TCP connection is closed.
        """
        self._stopped = True
        pending, self._pending = self._pending, {}
        for result, timer in pending.items():
            if timer.active():
                timer.cancel()
            result.errback(defer.CancelledError("upstream resolver stopped"))
        for protocol in list(self._network.datagram):
            # Failing the queries makes the client close their ports.
            _abort(protocol)
        for connector in list(self._network.connectors):
            if connector.state == "connecting":
                connector.stopConnecting()
        for protocol in list(self.client.streams):
            _abort(protocol)
        closing: list[defer.Deferred[None]] = [defer.Deferred()] if self.client.connections else []
        self.client.closed.extend(closing)
        for protocol in list(self.client.connections):
            protocol.transport.loseConnection()
        return defer.gatherResults(closing).addCallback(lambda _: None)
