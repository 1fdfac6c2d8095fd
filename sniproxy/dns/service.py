"""
The DNS layer as a service: warm the cache when the process starts, stop
the upstream cleanly when it stops.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from sniproxy.dns.cache import CachingResolver

__all__ = ["DNSService"]

log = Logger()


class DNSService(Service):
    """
    Owns a L{CachingResolver} for the life of the process.

    @ivar resolver: the cache.
    @ivar prefetched: after L{startService}, a L{Deferred} that fires when
        the warm-start lookups are done (it never fails).
    """

    def __init__(self, resolver: CachingResolver, prefetch: Iterable[str] = ()) -> None:
        """
        @param prefetch: host names whose A and AAAA records are looked up
            at start-up, so that their first connections hit the cache.
        """
        self.resolver = resolver
        self.prefetch = tuple(prefetch)
        self.prefetched: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        if self.prefetch:
            log.info("Prefetching {count} DNS names", count=len(self.prefetch))
        # Start-up does not wait: a name that is slow to resolve must not
        # hold back the listening ports.
        self.prefetched = self.resolver.prefetch(self.prefetch)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return self.resolver.stop()
