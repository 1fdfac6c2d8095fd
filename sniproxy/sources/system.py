"""
The system source: names matching an allow-list are connected to
themselves, at the addresses the operating system's resolver gives.

Only names matching C{routing.system.allow} (exact names and C{*.suffix}
wildcards, as in the static map) are looked up, with
C{getaddrinfo(name + ".", port, type=SOCK_STREAM)}: the absolute name, so
the resolver's search domains never apply.  getaddrinfo blocks, so it runs
on L{ResolverThreads}, a small thread pool of its own (Twisted's reactor
pool also resolves host names for C{connectTCP}; a slow resolver must not
starve it).  Each lookup is bounded by C{routing.system.timeout}; lookups
of one name in flight share one getaddrinfo call; and at most
C{routing.system.max_queued} calls may wait for a free thread -- beyond
that new names are refused, so a flood of random allowed names cannot
queue without bound.  A lookup every waiter gave up on is skipped when its
turn comes.  Nothing is cached here: the OS resolver (nscd,
systemd-resolved) does that, or not.

Not an open relay: addresses that are loopback, private (RFC 1918,
fc00::/7), link-local, unspecified, multicast, reserved or otherwise not
globally routable (100.64/10, documentation ranges, ...; IPv4-mapped IPv6
addresses are judged as the IPv4 address they carry) are dropped unless C{allow_private} is set; unspecified and
multicast addresses are dropped always.  If some addresses remain the route
uses them (the dropped ones are named in the route's detail); if none does
the name is refused, naming them.

getaddrinfo saying the name does not exist (C{EAI_NONAME}, C{EAI_NODATA})
is "no route"; any other error, and a timeout, is a routing failure.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sniproxy.config import SystemConfig
from sniproxy.hostnames import PatternSet
from sniproxy.interfaces import Address, IResolver, Route, RouteRefused, RoutingError

__all__ = ["ResolverThreads", "SystemResolver", "refusal"]

_NO_SUCH_NAME = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None
)


class ResolverThreads:
    """
    The threads blocking resolver calls run on: one pool for the life of
    the process, started and stopped by the service (so a config reload,
    which builds new sources, keeps it).

    @ivar size: the number of threads.
    @ivar outstanding: calls submitted and not yet finished (running or
        waiting for a thread).
    """

    def __init__(self, reactor: IReactorThreads | None, size: int, name: str = "sniproxy-getaddrinfo") -> None:
        """
        @param reactor: the reactor results are delivered in.
        """
        self.reactor = reactor
        self.size = size
        self.outstanding = 0
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        """Stop the threads, waiting for calls that are running to return."""
        self.pool.stop()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Call C{function} in a thread; the L{Deferred} fires in the reactor thread."""
        self.outstanding += 1
        d = deferToThreadPool(self.reactor, self.pool, function, *args, **kwargs)
        d.addBoth(self._finished)
        return d

    def _finished(self, result: Any) -> Any:
        self.outstanding -= 1
        return result


def refusal(host: str, allow_private: bool) -> str | None:
    """
    Why a backend address from the system resolver is refused, or C{None}
    when it may be used.
    """
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if allow_private:
        return None
    for kind in ("loopback", "link_local", "private", "reserved"):
        if getattr(ip, "is_" + kind):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "not global"
    return None


class _Flight:
    """One getaddrinfo call, and the lookups waiting for it."""

    __slots__ = ("waiters", "abandoned")

    def __init__(self) -> None:
        self.waiters: list[Deferred[Any]] = []
        # Read by the worker thread: once true, nobody waits for the call.
        self.abandoned = False


@implementer(IResolver)
class SystemResolver:
    """Routes allowed names to their own addresses, from getaddrinfo."""

    name = "system"

    def __init__(
        self,
        config: SystemConfig,
        threads: ResolverThreads,
        clock: IReactorTime,
        getaddrinfo: Callable[..., list[tuple[Any, ...]]] | None = None,
    ) -> None:
        """
        @param threads: where getaddrinfo runs (the service's, shared by
            every config generation).
        @param clock: times the lookups out.
        @param getaddrinfo: what to call instead of L{socket.getaddrinfo}
            (tests hand out any address without a socket being opened).
        """
        self.config = config
        self.threads = threads
        self.clock = clock
        self.getaddrinfo = socket.getaddrinfo if getaddrinfo is None else getaddrinfo
        self.match = PatternSet(config.allow).match
        self._flights: dict[str, _Flight] = {}

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        pattern = self.match(server_name)
        if pattern is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._resolve(server_name, pattern))

    async def _resolve(self, server_name: str, pattern: str) -> Route | None:
        waiting = self._lookup(server_name)
        waiting.addTimeout(self.config.timeout, self.clock)
        try:
            infos = await waiting
        except CancelledError:
            raise
        except TimeoutError:
            raise RoutingError(
                f"getaddrinfo {server_name}. gave no answer within {self.config.timeout:g}s"
            ) from None
        except socket.gaierror as error:
            if error.errno in _NO_SUCH_NAME:
                return None
            raise RoutingError(f"getaddrinfo {server_name}. failed: {error.strerror or error}") from None
        except OSError as error:
            raise RoutingError(f"getaddrinfo {server_name}. failed: {error}") from None
        return self._route(server_name, pattern, infos)

    def _lookup(self, server_name: str) -> Deferred[Any]:
        flight = self._flights.get(server_name)
        if flight is None or flight.abandoned:
            threads = self.threads
            if threads.outstanding >= threads.size + self.config.max_queued:
                raise RoutingError(
                    f"the system resolver is busy: {threads.outstanding} getaddrinfo calls outstanding"
                )
            flight = self._flights[server_name] = _Flight()
            call = threads.run(self._call, flight, server_name)
            call.addBoth(self._landed, server_name, flight)
        waiter: Deferred[Any] = Deferred(lambda d: self._leave(flight, d))
        flight.waiters.append(waiter)
        return waiter

    def _call(self, flight: _Flight, server_name: str) -> Any:
        """In a worker thread."""
        if flight.abandoned:
            return None
        return self.getaddrinfo(server_name + ".", self.config.port, type=socket.SOCK_STREAM)

    def _leave(self, flight: _Flight, waiter: Deferred[Any]) -> None:
        flight.waiters.remove(waiter)
        if not flight.waiters:
            flight.abandoned = True

    def _landed(self, result: Any, server_name: str, flight: _Flight) -> None:
        if self._flights.get(server_name) is flight:
            del self._flights[server_name]
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _route(self, server_name: str, pattern: str, infos: list[tuple[Any, ...]]) -> Route:
        port = self.config.port
        allowed: dict[str, None] = {}
        refused: dict[str, str] = {}
        for info in infos:
            host = info[4][0]
            why = refusal(host, self.config.allow_private)
            if why is None:
                allowed[host] = None
            else:
                refused[host] = why
        shown = ", ".join(f"{host} ({why})" for host, why in refused.items())
        if not allowed:
            if not refused:
                raise RoutingError(f"getaddrinfo {server_name}. returned no addresses")
            raise RouteRefused(f"{server_name}: every address is refused: {shown}")
        backends = tuple(Address(host, port) for host in allowed)
        detail = f"{pattern} -> getaddrinfo {server_name}."
        if refused:
            detail += f" (refused: {shown})"
        return Route(
            backends=backends,
            source=self.name,
            detail=detail,
            trace=(f"getaddrinfo {server_name}. {len(allowed)} allowed, {len(refused)} refused",),
        )
