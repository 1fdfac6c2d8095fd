"""
The static map: exact names and C{*.suffix} wildcards from the config.

The most specific pattern wins: an exact name, else the longest wildcard
suffix (C{*.b.example.com} before C{*.example.com}).  A wildcard stands for
one or more labels, so C{*.example.com} matches C{a.example.com} and
C{a.b.example.com} but not C{example.com} itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sniproxy.apps import AppRegistry
from sniproxy.addresses import AddressResolver, is_ip_literal
from sniproxy.config import StaticTarget
from sniproxy.deferreds import PENDING, _Pending
from sniproxy.hostnames import PatternSet
from sniproxy.interfaces import IResolver, Route

__all__ = ["StaticResolver"]


@implementer(IResolver)
class StaticResolver:
    name = "static"

    def __init__(
        self,
        routes: Mapping[str, StaticTarget],
        apps: AppRegistry,
        addresses: AddressResolver,
    ) -> None:
        self.apps = apps
        self.addresses = addresses
        self.targets = dict(routes)
        # Routes to IP literals never change: build them once, so a hit is
        # a dict lookup.
        self._fixed: dict[str, Route] = {
            pattern: Route(
                backends=(target.address,),
                source=self.name,
                proxy_protocol=target.proxy_protocol,
                detail=pattern,
            )
            for pattern, target in routes.items()
            if target.address is not None and is_ip_literal(target.address.host)
        }

        self.match = PatternSet(routes).match

    def resolve_now(self, server_name: str) -> Route | None | _Pending:
        """
        The answer without a L{Deferred} when it needs no lookup: the route
        of an IP-literal target, or C{None} when no pattern matches;
        L{PENDING} when only L{resolve} can answer (a host name or an app).
        """
        pattern = self.match(server_name)
        if pattern is None:
            return None
        return self._fixed.get(pattern, PENDING)

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        pattern = self.match(server_name)
        if pattern is None:
            return succeed(None)
        route = self._fixed.get(pattern)
        if route is not None:
            return succeed(route)
        return Deferred.fromCoroutine(self._resolve(pattern, self.targets[pattern]))

    async def _resolve(self, pattern: str, target: StaticTarget) -> Route:
        if target.app is not None:
            backends = await self.apps.backends(target.app, target.port)
            proxy_protocol = target.proxy_protocol or self.apps.proxy_protocol(target.app)
            detail = f"{pattern} -> app {target.app}"
        else:
            backends = await self.addresses.expand((target.address,))
            proxy_protocol = target.proxy_protocol
            detail = f"{pattern} -> {target.address}"
        return Route(
            backends=backends,
            source=self.name,
            app=target.app,
            proxy_protocol=proxy_protocol,
            detail=detail,
        )
