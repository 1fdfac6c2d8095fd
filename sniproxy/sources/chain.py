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
        # Each source's synchronous answer (C{resolve_now}), or None for a
        # source that has none.
        self._nows = tuple(getattr(source, "resolve_now", None) for source in self.sources)

    def decide(self, server_name: str) -> Route | None | Deferred[Route | None]:
        """
        Like L{resolve}, but without a L{Deferred} while the sources answer
        synchronously (C{resolve_now}: static IP-literal routes, known
        subdomains, fresh TXT entries, names nothing matches).  From the
        first source that cannot, the chain goes on asynchronously from
        that source: no source before it is asked twice.

        @return: a L{Route}, C{None}, or a L{Deferred} as L{resolve} gives.
        """
        for index, now in enumerate(self._nows):
            if now is None:
                return self._walk(server_name, index)
            route = now(server_name)
            if route is PENDING:
                return self._walk(server_name, index)
            if route is not None:
                return route
        return None

    def resolve_now(self, server_name: str) -> Route | None | _Pending:
        """
        The chain's answer without a L{Deferred}, when the sources decide
        it synchronously; L{PENDING} when L{resolve} must be asked (see
        L{decide}, which goes on from there instead).
        """
        for now in self._nows:
            if now is None:
                return PENDING
            route = now(server_name)
            if route is not None:
                return route  # a route, or PENDING
        return None

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        return self._walk(server_name, 0)

    def _walk(self, server_name: str, start: int) -> Deferred[Route | None]:
        # Most names are answered synchronously (static routes, warm DNS
        # cache): walk the sources without building a coroutine while their
        # answers are already there.
        sources = self.sources
        for index in range(start, len(sources)):
            d = sources[index].resolve(server_name)
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
