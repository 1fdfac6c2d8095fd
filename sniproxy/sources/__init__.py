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
) -> IResolver:
    """
    Build the route source C{name} (one of L{sniproxy.config.SOURCES}).

    @param dns: the process's caching DNS resolver
        (L{sniproxy.dns.cache.CachingResolver}), shared by every source.
    """
    if name == "static":
        from sniproxy.sources.static import StaticResolver

        return StaticResolver(config.routing.static, apps, addresses)
    raise ValueError(f"no route source named {name!r}")
