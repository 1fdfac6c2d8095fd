"""
The fallback chain: route sources tried one after another.

The next source runs only after the one before answered a definite "no
route"; a failure stops the chain (a timeout upstream must not quietly send
a name to a lower-priority source).  Nothing here runs in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sniproxy.deferreds import PENDING, peek
from sniproxy.interfaces import IResolver, Route

__all__ = ["FallbackChain"]


@implementer(IResolver)
class FallbackChain:
    name = "chain"

    def __init__(self, sources: Sequence[IResolver]) -> None:
        self.sources = tuple(sources)

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        # Most names are answered synchronously (static routes, warm DNS
        # cache): walk the sources without building a coroutine while their
        # answers are already there.
        for index, source in enumerate(self.sources):
            d = source.resolve(server_name)
            result = peek(d)
            if result is PENDING:
                return Deferred.fromCoroutine(self._resolve(server_name, d, index + 1))
            if result is not None:
                return d  # a route, or a failure that stops the chain
        return succeed(None)

    async def _resolve(self, server_name: str, pending: Deferred, rest: int) -> Route | None:
        route = await pending
        if route is not None:
            return route
        for source in self.sources[rest:]:
            route = await source.resolve(server_name)
            if route is not None:
                return route
        return None
