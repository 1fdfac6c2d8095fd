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

from sniproxy.deferreds import PENDING, _Pending, peek
from sniproxy.interfaces import IResolver, Route

__all__ = ["FallbackChain"]


@implementer(IResolver)
class FallbackChain:
    name = "chain"

    def __init__(self, sources: Sequence[IResolver]) -> None:
        self.sources = tuple(sources)
        # The sources' synchronous answers, up to the first source that has
        # none (from there on only resolve() can answer).
        nows = []
        for source in self.sources:
            now = getattr(source, "resolve_now", None)
            if now is None:
                break
            nows.append(now)
        self._nows = tuple(nows)
        self._all_now = len(nows) == len(self.sources)

    def resolve_now(self, server_name: str) -> Route | None | _Pending:
        """
        The chain's answer without a L{Deferred}, when the sources that give
        synchronous answers (C{resolve_now}) decide it; L{PENDING} when
        L{resolve} must be asked.
        """
        for now in self._nows:
            route = now(server_name)
            if route is not None:
                return route  # a route, or PENDING
        return None if self._all_now else PENDING

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
