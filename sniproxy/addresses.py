"""
Host names in backend targets, turned into IP addresses.

A static route or an app instance may name its backend by host name; the
connector needs IP literals.  Names go through the process's DNS layer (the
cached resolver, so a warm name costs no round trip): A records first, AAAA
only when the name has no A records.  The two are asked one after the other
on purpose: the answer is nearly always in the cache, and a sequential miss
costs one round trip when the A records exist.
"""

from __future__ import annotations

import socket

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.names import dns

from sniproxy.dns.cache import describe_error
from sniproxy.interfaces import Address, RoutingError

__all__ = ["AddressResolver", "is_ip_literal"]


def is_ip_literal(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address rather than a name."""
    return isIPAddress(host) or isIPv6Address(host)


def _address(record: dns.RRHeader) -> str:
    if record.type == dns.A:
        return record.payload.dottedQuad()
    return socket.inet_ntop(socket.AF_INET6, record.payload.address)


class AddressResolver:
    """
    Expands backend host names to IP addresses through the caching DNS
    resolver (L{sniproxy.dns.cache.CachingResolver}, or anything with its
    C{query} method).
    """

    def __init__(self, dns_resolver) -> None:
        self.dns = dns_resolver

    def expand(self, backends: tuple[Address, ...]) -> Deferred[tuple[Address, ...]]:
        """
        Replace each backend whose host is a name by one backend per address
        of that name, keeping the order.

        @return: a L{Deferred} firing with IP-literal backends; failing with
            L{RoutingError} when a name has no address or the lookup fails.
        """
        if all(is_ip_literal(backend.host) for backend in backends):
            return succeed(backends)
        return Deferred.fromCoroutine(self._expand(backends))

    async def _expand(self, backends: tuple[Address, ...]) -> tuple[Address, ...]:
        expanded: list[Address] = []
        for backend in backends:
            if is_ip_literal(backend.host):
                expanded.append(backend)
                continue
            for ip in await self.addresses(backend.host):
                expanded.append(Address(ip, backend.port))
        return tuple(expanded)

    async def addresses(self, name: str) -> list[str]:
        """The IP addresses of C{name}: its A records, else its AAAA records."""
        if self.dns is None:
            raise RoutingError(f"backend {name!r} is a host name and no DNS resolver is configured")
        for kind in (dns.A, dns.AAAA):
            try:
                answer = await self.dns.query(name, kind)
            except CancelledError:
                raise  # the connection went away, or the routing deadline passed
            except Exception as error:
                raise RoutingError(f"backend {name!r}: {dns.QUERY_TYPES[kind]} lookup failed: {describe_error(error)}") from None
            if answer.negative == "nxdomain":
                raise RoutingError(f"backend {name!r} does not exist (NXDOMAIN)")
            found = [_address(record) for record in answer.records if record.type == kind]
            if found:
                return found
        raise RoutingError(f"backend {name!r} has no A or AAAA records")
