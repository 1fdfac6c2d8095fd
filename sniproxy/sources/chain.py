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

from sniproxy.interfaces import IResolver, Route

__all__ = ["FallbackChain"]


@implementer(IResolver)
class FallbackChain:
    name = "chain"

    def __init__(self, sources: Sequence[IResolver]) -> None:
        self.sources = tuple(sources)

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        if not self.sources:
            return succeed(None)
        first = self.sources[0].resolve(server_name)
        # Most names are answered by the first source, synchronously: take
        # that path without building a coroutine.
        if len(self.sources) == 1 or (first.called and isinstance(first.result, Route)):
            return first
        return Deferred.fromCoroutine(self._resolve(server_name, first))

    async def _resolve(self, server_name: str, first: Deferred) -> Route | None:
        route = await first
        if route is not None:
            return route
        for source in self.sources[1:]:
            route = await source.resolve(server_name)
            if route is not None:
                return route
        return None
