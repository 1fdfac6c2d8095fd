"""
The router: where a server name goes, decided within a deadline.

It runs the configured route sources as one fallback chain, sends names
with no route to the fallback backend when one is configured, bounds how
long a decision may take, and bounds how many connections may wait on one
name's answer at a time.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from sniproxy.deferreds import PENDING
from sniproxy.interfaces import IResolver, Route, RoutingError

__all__ = ["Router"]


class Router:
    """
    @ivar source: the route source (usually a
        L{sniproxy.sources.chain.FallbackChain}).
    @ivar fallback: the route for names nothing else routes, or C{None}.
    """

    def __init__(
        self,
        source: IResolver,
        clock: IReactorTime,
        timeout: float = 5.0,
        fallback: Route | None = None,
        max_pending_per_name: int = 0,
    ) -> None:
        self.source = source
        self.clock = clock
        self.timeout = timeout
        self.fallback = fallback
        self.max_pending_per_name = max_pending_per_name
        self.pending: dict[str, int] = {}
        self._now = getattr(source, "resolve_now", None)
        self._decide = getattr(source, "decide", None)

    def decide(self, server_name: str | None) -> Route | None | Deferred[Route | None]:
        """
        Like L{route}, but without a L{Deferred} when the source answers
        synchronously (C{resolve_now}: static IP-literal routes, a name
        nothing matches): then the L{Route} (or C{None}) itself.

        @return: a L{Route}, C{None}, or the L{Deferred} of L{route}.
        """
        if server_name is None:
            return self.fallback
        decide = self._decide
        if decide is not None:
            # The chain goes on asynchronously from the first source that
            # cannot answer at once: nothing is asked twice.
            decided = decide(server_name)
            if isinstance(decided, Deferred):
                return self._finish(server_name, decided)
            return self.fallback if decided is None else decided
        now = self._now
        if now is not None:
            route = now(server_name)
            if route is not PENDING:
                return self.fallback if route is None else route
        return self.route(server_name)

    def route(self, server_name: str | None) -> Deferred[Route | None]:
        """
        Decide where C{server_name} goes.

        @param server_name: a normalised name, or C{None} when the client
            sent no SNI (only the fallback can take it).
        @return: a L{Deferred} firing with a L{Route}, or C{None} when
            nothing routes the name and there is no fallback; failing with
            L{RoutingError} when a source fails or refuses, or no answer
            came within the deadline.
        """
        if server_name is None:
            return succeed(self.fallback)
        return self._finish(server_name, self.source.resolve(server_name))

    def _finish(self, server_name: str, d: Deferred[Route | None]) -> Deferred[Route | None]:
        """A source's answer for C{server_name}, with the fallback, the deadline and the bound on waiters."""
        if d.called:
            # The common case (static routes, warm cache): no timer, no
            # bookkeeping.
            if self.fallback is not None:
                d.addCallback(self._or_fallback)
            return d
        waiting = self.pending.get(server_name, 0)
        if self.max_pending_per_name and waiting >= self.max_pending_per_name:
            d.cancel()
            d.addErrback(lambda _: None)
            return fail(RoutingError(f"{waiting} connections already wait for this name's route"))
        self.pending[server_name] = waiting + 1
        d.addBoth(self._done_waiting, server_name)
        if self.fallback is not None:
            d.addCallback(self._or_fallback)
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(self._timed_out)
        return d

    def _done_waiting(self, result, server_name: str):
        left = self.pending[server_name] - 1
        if left:
            self.pending[server_name] = left
        else:
            del self.pending[server_name]
        return result

    def _or_fallback(self, route: Route | None) -> Route | None:
        return self.fallback if route is None else route

    def _timed_out(self, failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            return Failure(RoutingError(f"no routing answer within {self.timeout:g}s"))
        return failure

