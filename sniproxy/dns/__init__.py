"""The DNS layer: one long-lived upstream resolver behind a cache."""

from sniproxy.dns.cache import Answer, CacheEntry, CachingResolver, Counters
from sniproxy.dns.service import DNSService
from sniproxy.dns.upstream import Upstream, parse_resolv_conf

__all__ = [
    "Answer",
    "CacheEntry",
    "CachingResolver",
    "Counters",
    "DNSService",
    "Upstream",
    "parse_resolv_conf",
]
