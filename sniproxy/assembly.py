"""
Where the parts are wired together: one place, as
C{twisted.names.client.createResolver} is for a resolver.

From a L{Config}, L{assemble} makes the address resolver, the app registry,
the route sources in config order and the L{Router} over them, and names
the host names to warm at start-up.  The process-wide parts (the DNS cache,
L{build_dns}; the getaddrinfo threads, L{build_resolver_threads}) are made
once and passed in, so a reload assembles new routing over the same cache
and threads.  L{validate} does everything a start or a reload does short of
binding ports and starting services, so a config check and a reload agree
exactly on what is a good file.

    config = validate("/etc/sniproxy/sniproxy.toml", reactor)
    dns = build_dns(config, reactor)
    threads = build_resolver_threads(config, reactor)
    parts = assemble(config, reactor, dns=dns, resolver_threads=threads)
    parts.router.route("shop.example.com")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime, IReactorUDP

from sniproxy.accesslog import cannot_open
from sniproxy.addresses import AddressResolver, is_ip_literal
from sniproxy.apps import AppRegistry
from sniproxy.config import Config, ConfigError, check_endpoint, load_config
from sniproxy import dns as dns_layer
from sniproxy.dns.cache import CachingResolver
from sniproxy.interfaces import IResolver, Route
from sniproxy.routing import Router
from sniproxy.sources.chain import FallbackChain
from sniproxy.sources.static import StaticResolver
from sniproxy.sources.subdomain import SubdomainResolver
from sniproxy.sources.system import ResolverThreads, SystemResolver
from sniproxy.sources.txt import TXTResolver

__all__ = [
    "Parts",
    "StartError",
    "assemble",
    "build_dns",
    "build_resolver_threads",
    "build_router",
    "make_source",
    "validate",
    "warm_names",
]


class StartError(Exception):
    """
    The service cannot start (a port is taken, say).  C{str(error)} is one
    line for the operator; L{sniproxy.tap} prints it without a traceback.
    """


@dataclass(frozen=True)
class Parts:
    """
    The routing side of one config, assembled.

    @ivar router: the L{Router} connections ask.
    @ivar apps: the app registry the sources share.
    @ivar addresses: the backend address resolver the sources share.
    @ivar sources: the route sources, in C{routing.sources} order.
    @ivar warm_names: the host names to resolve at start-up (see
        L{warm_names}).
    """

    router: Router
    apps: AppRegistry
    addresses: AddressResolver
    sources: tuple[IResolver, ...]
    warm_names: tuple[str, ...]


def build_dns(
    config: Config, reactor: IReactorUDP | None, clock: IReactorTime | None = None, owner: str | None = None
) -> CachingResolver:
    """
    The process's one caching DNS resolver for C{config}'s C{[dns]} table,
    with its upstream.  (The only place the cache is constructed.)

    @param clock: the cache's clock; C{reactor} when not given.
    @param owner: in a worker process (C{proxy.workers} above 1), the UNIX
        socket of the main process's cache: the result is then a started
        L{sniproxy.dns.shared.DNSMirror} of that cache, with no upstream
        of its own.
    """
    if owner is not None:
        from sniproxy.dns.shared import DNSMirror

        if reactor is None:
            from twisted.internet import reactor
        mirror = DNSMirror(owner, config.dns, reactor, clock)
        mirror.start()
        return mirror  # type: ignore[return-value]
    return dns_layer.build_dns(config.dns, reactor, clock)


def build_resolver_threads(config: Config, reactor: IReactorThreads | None) -> ResolverThreads:
    """The process's getaddrinfo threads (not started) for the C{system} source."""
    return ResolverThreads(reactor, config.routing.system.threads)


def make_source(
    name: str,
    config: Config,
    *,
    clock: IReactorTime,
    dns: Any,
    apps: AppRegistry,
    addresses: AddressResolver,
    resolver_threads: ResolverThreads | None = None,
) -> IResolver:
    """
    Build the route source C{name} (one of L{sniproxy.config.SOURCES}).

    @param dns: the process's caching DNS resolver
        (L{sniproxy.dns.cache.CachingResolver}), shared by every source.
    @param resolver_threads: the process's L{ResolverThreads}, which the
        C{system} source needs.
    @raise ValueError: for an unknown name, or a part the source needs
        and was not given.
    """
    routing = config.routing
    if name == "static":
        return StaticResolver(routing.static, apps, addresses)
    if name == "subdomain":
        return SubdomainResolver(routing.subdomain.base_domains, apps, routing.subdomain.non_passthrough)
    if name == "txt":
        if dns is None:
            raise ValueError("the txt source needs the DNS resolver")
        return TXTResolver(routing.txt, dns, apps)
    if name == "system":
        if resolver_threads is None:
            raise ValueError("the system source needs resolver threads (see build_resolver_threads)")
        return SystemResolver(routing.system, resolver_threads, clock)
    raise ValueError(f"no route source named {name!r}")


def warm_names(config: Config) -> tuple[str, ...]:
    """The names to resolve at start-up: C{dns.prefetch} and every backend host name."""
    names = dict.fromkeys(config.dns.prefetch)
    for target in config.routing.static.values():
        if target.address is not None and not is_ip_literal(target.address.host):
            names[target.address.host] = None
    for app in config.apps.values():
        for backend in app.backends:
            if not is_ip_literal(backend.host):
                names[backend.host] = None
    if config.proxy.fallback is not None and not is_ip_literal(config.proxy.fallback.host):
        names[config.proxy.fallback.host] = None
    return tuple(names)


def assemble(
    config: Config,
    reactor: IReactorTime,
    *,
    dns: Any = None,
    resolver_threads: ResolverThreads | None = None,
) -> Parts:
    """
    Make the routing parts C{config} describes: the address resolver and
    app registry over C{dns}, the sources in order, and the L{Router} with
    its fallback and limits.

    @param reactor: the clock the router and sources time out on.
    @param dns: the process's caching DNS resolver (L{build_dns}), or
        anything with its C{query}; the C{txt} source needs it.
    @param resolver_threads: the process's getaddrinfo threads
        (L{build_resolver_threads}); the C{system} source needs them.
    @raise ValueError: when a source lacks a part it needs.
    """
    addresses = AddressResolver(dns)
    apps = AppRegistry(config.apps, addresses)
    sources = tuple(
        make_source(
            name, config, clock=reactor, dns=dns, apps=apps, addresses=addresses, resolver_threads=resolver_threads
        )
        for name in config.routing.sources
    )
    proxy = config.proxy
    fallback = None
    if proxy.fallback is not None:
        fallback = Route(
            backends=(proxy.fallback,),
            source="fallback",
            proxy_protocol=proxy.fallback_proxy_protocol,
            detail=str(proxy.fallback),
        )
    router = Router(
        FallbackChain(sources),
        reactor,
        timeout=proxy.routing_timeout,
        fallback=fallback,
        max_pending_per_name=proxy.max_pending_per_name,
    )
    return Parts(router=router, apps=apps, addresses=addresses, sources=sources, warm_names=warm_names(config))


def build_router(
    config: Config, clock: IReactorTime, dns: Any = None, resolver_threads: ResolverThreads | None = None
) -> Router:
    """The L{Router} of L{assemble}, alone (for route explanations, which build one per request)."""
    return assemble(config, clock, dns=dns, resolver_threads=resolver_threads).router


class _NoLookups:
    """A DNS resolver stand-in for L{validate}: its router is built, never asked."""

    def query(self, name, type, cls=1):  # pragma: no cover - never called
        raise AssertionError("validate() must not resolve names")


def validate(path_or_config: str | os.PathLike | Config, reactor: IReactorCore | None = None) -> Config:
    """
    Check a config file as a start or a reload would, without binding a
    port or starting anything: read and validate every key, check that the
    access log can be opened, parse every endpoint string (with
    C{reactor}, when given), and build the router.

    @param path_or_config: the config file's path, or a parsed L{Config}.
    @return: the L{Config}, good to start or reload with.
    @raise ConfigError: naming the key (or file) and the problem, in one line.
    @raise StartError: when the router cannot be built.
    """
    if isinstance(path_or_config, Config):
        config = path_or_config
    else:
        config = load_config(os.fspath(path_or_config))
    problem = cannot_open(config.log.access)
    if problem is not None:
        raise ConfigError("log.access", problem)
    for index, description in enumerate(config.proxy.listen):
        check_endpoint(f"proxy.listen[{index}]", description, reactor)
    if config.admin.listen:
        check_endpoint("admin.listen", config.admin.listen, reactor)
    try:
        assemble(config, reactor, dns=_NoLookups(), resolver_threads=build_resolver_threads(config, reactor))
    except ValueError as error:
        raise StartError(f"cannot build the router: {error}") from None
    return config
