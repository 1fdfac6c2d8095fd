"""
Route sources: each one implements L{sniproxy.interfaces.IResolver}, and
L{make_source} builds the one a C{routing.sources} entry names.
"""

from __future__ import annotations

from typing import Any

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import Config
from sniproxy.interfaces import IResolver

__all__ = ["make_source"]


def make_source(
    name: str,
    config: Config,
    *,
    clock: Any,
    dns: Any,
    apps: AppRegistry,
    addresses: AddressResolver,
    resolver_threads: Any = None,
) -> IResolver:
    """
    Build the route source C{name} (one of L{sniproxy.config.SOURCES}).

    @param dns: the process's caching DNS resolver
        (L{sniproxy.dns.cache.CachingResolver}), shared by every source.
    @param resolver_threads: the process's
        L{sniproxy.sources.system.ResolverThreads}, which the C{system}
        source needs.
    """
    routing = config.routing
    if name == "static":
        from sniproxy.sources.static import StaticResolver

        return StaticResolver(routing.static, apps, addresses)
    if name == "subdomain":
        from sniproxy.sources.subdomain import SubdomainResolver

        return SubdomainResolver(routing.subdomain.base_domains, apps, routing.subdomain.non_passthrough)
    if name == "txt":
        from sniproxy.sources.txt import TXTResolver

        if dns is None:
            raise ValueError("the txt source needs the DNS resolver")
        return TXTResolver(routing.txt, dns, apps)
    if name == "system":
        from sniproxy.sources.system import SystemResolver

        if resolver_threads is None:
            raise ValueError("the system source needs resolver threads (see sniproxy.service.ProxyService)")
        return SystemResolver(routing.system, resolver_threads, clock)
    raise ValueError(f"no route source named {name!r}")
