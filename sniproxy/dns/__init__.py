"""
The DNS layer: one long-lived upstream resolver behind a cache.

L{build_dns} makes both for a C{[dns]} table; L{reconfigure_dns} applies a
new table to a running cache (a reload).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sniproxy.config import Config, DNSConfig
from sniproxy.dns.cache import (
    Answer,
    CacheEntry,
    CacheState,
    CachingResolver,
    Counters,
    EntryStatus,
    Origin,
)
from sniproxy.dns.service import DNSService
from sniproxy.dns.upstream import Upstream, parse_resolv_conf

__all__ = [
    "Answer",
    "CacheEntry",
    "CacheState",
    "CachingResolver",
    "Counters",
    "DNSService",
    "EntryStatus",
    "Origin",
    "Upstream",
    "apply_dns",
    "build_dns",
    "build_dns_service",
    "cache_settings",
    "parse_resolv_conf",
    "reconfigure_dns",
    "with_dns_cache_file",
]

log = Logger()


def cache_settings(config: DNSConfig) -> dict[str, Any]:
    """The L{CachingResolver} keyword settings a C{[dns]} table gives."""
    return dict(
        min_ttl=config.min_ttl,
        max_ttl=config.max_ttl,
        max_negative_ttl=config.max_negative_ttl,
        failure_backoff=config.failure_backoff,
        max_stale=config.max_stale,
        stale_wait=config.stale_wait,
        refresh_ahead=config.refresh_ahead,
        min_refresh=config.min_refresh,
        max_entries=config.max_entries,
    )


def build_dns(config: DNSConfig, reactor: Any = None, clock: IReactorTime | None = None) -> CachingResolver:
    """
    The process's DNS layer for a C{[dns]} table: an L{Upstream} (its
    C{servers}, else those of its C{resolv_conf}) behind a
    L{CachingResolver}.

    @param reactor: the network and the upstream's timers; the global
        reactor by default.
    @param clock: the cache's time; C{reactor} by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    return CachingResolver(
        Upstream.from_config(config, reactor),
        reactor if clock is None else clock,
        **cache_settings(config),
    )


def _upstream_settings(config: DNSConfig) -> tuple[Any, ...]:
    return (config.servers, config.resolv_conf, config.timeout, config.attempts, config.deadline)


def reconfigure_dns(resolver: CachingResolver, old: DNSConfig, new: DNSConfig, reactor: Any = None) -> list[str]:
    """
    Apply a new C{[dns]} table to a running cache: a new upstream when the
    servers (or C{resolv_conf}, which is read again), timeouts, attempts or
    deadline change; the new clamps, stale, refresh and size settings at
    once (entries are kept, re-clamped on their next use; a smaller
    C{max_entries} evicts the least recently used now).

    @return: the names of the keys that changed.
    """
    changed = [name for name in DNSConfig.__dataclass_fields__ if getattr(old, name) != getattr(new, name)]
    if reactor is None:
        from twisted.internet import reactor
    same = _upstream_settings(old) == _upstream_settings(new)
    if not same or not new.servers:
        # With servers from resolv.conf, a reload reads the file again.
        upstream = Upstream.from_config(new, reactor)
        if same and tuple(upstream.servers) == tuple(getattr(resolver.upstream, "servers", ())):
            upstream.stop()
        else:
            resolver.replace_upstream(upstream)
    resolver.configure(**cache_settings(new))
    return changed


def with_dns_cache_file(config: Config, path: str | None) -> Config:
    """
    C{config} with C{dns.cache_file} set to C{path} (twistd's
    C{--dns-cache-file}, which the shipped units pass); unchanged for
    C{None}.
    """
    if path is None:
        return config
    return dataclasses.replace(config, dns=dataclasses.replace(config.dns, cache_file=path))


def build_dns_service(
    resolver: CachingResolver, config: DNSConfig, warm_names: Iterable[str], clock: IReactorTime, reactor: Any
) -> DNSService:
    """The service that warms, saves and loads C{resolver} as C{config} says (not yet started)."""
    return DNSService(
        resolver,
        warm_names,
        cache_file=config.cache_file,
        save_interval=config.cache_save_interval,
        clock=clock,
        reactor=reactor,
    )


def apply_dns(
    resolver: CachingResolver, service: DNSService, old: DNSConfig, new: DNSConfig, warm_names: Iterable[str], reactor: Any
) -> None:
    """
    A reload's C{[dns]} table, applied to the running cache and its service
    (L{reconfigure_dns}, the cache file's settings), then the new warm
    names prefetched.
    """
    changed = reconfigure_dns(resolver, old, new, reactor)
    service.reconfigure(new.cache_file, new.cache_save_interval)
    if changed:
        log.info("reload: [dns] {keys} changed", keys=", ".join(changed))
    resolver.prefetch(warm_names)

