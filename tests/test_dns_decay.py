"""
The DNS cache behind a caching upstream, whose answers carry decayed TTLs
(issue 12, part 1): the in-process caching forwarder on a L{Clock}, and,
where they are installed, a real Unbound in front of a real NSD.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import TestCase

from sniproxy.dns.cache import CacheState, CachingResolver
from sniproxy.dns.upstream import Upstream
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer

NAME = "_dstack-app-address.shop.example.com"


class DecayTestCase(TestCase):
    """An authority behind a caching forwarder, both on C{self.clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.authority = DNSServer(clock=self.clock)
        self.authority.start()
        self.addCleanup(self.authority.stop)
        self.forwarder = DNSServer(clock=self.clock)
        self.forwarder.forward_to(self.authority)
        self.forwarder.start()
        self.addCleanup(self.forwarder.stop)

    def cache(self, server: DNSServer | None = None, **settings: Any) -> CachingResolver:
        upstream = Upstream(
            [(server or self.forwarder).address],
            timeout=1.0,
            attempts=2,
            deadline=3.0,
            reactor=ClockReactor(reactor, self.clock),
        )
        cache = CachingResolver(upstream, self.clock, **settings)
        self.addCleanup(cache.stop)
        return cache

    @defer.inlineCallbacks
    def traffic(self, cache: CachingResolver, seconds: float, step: float = 0.1, name: str = NAME):
        """
        One lookup every C{step} seconds for C{seconds}, waiting (in real
        time, never on the clock) for any refresh to land before the next.

        @return: the lookups' states, and how many had to wait.
        """
        states: list[CacheState] = []
        waited = 0
        for i in range(int(round(seconds / step))):
            self.clock.advance(step if i else 0)
            d = cache.query(name, dns.TXT)
            if not d.called:
                waited += 1
            answer = yield d
            states.append(answer.state)
            yield cache.when_idle()
        return states, waited

    def upstream_queries(self, server: DNSServer, name: str = NAME) -> int:
        return len(server.queries_for(name, dns.TXT))


class ForwarderTests(DecayTestCase):
    """The test server's caching forwarder mode itself."""

    @defer.inlineCallbacks
    def test_decays_like_unbound(self) -> None:
        """
        The forwarder keeps the authority's answer, clears AA, serves the
        remaining TTL rounded down and asks again once it runs out.
        """
        self.authority.add_txt(NAME, "app:443", ttl=5)
        cache = self.cache(max_stale=0, refresh_ahead=0, min_refresh=0)
        first = yield cache.query(NAME, dns.TXT)
        self.assertEqual([r.ttl for r in first.records], [5])
        self.assertFalse(first.records[0].auth)
        self.clock.advance(3.5)
        upstream = cache.upstream
        answers, _, _ = yield upstream.query(dns.Query(NAME, dns.TXT))
        self.assertEqual([r.ttl for r in answers], [2])
        self.clock.advance(1.5)  # 5.0: TTL 0, until the turn of the second
        answers, _, _ = yield upstream.query(dns.Query(NAME, dns.TXT))
        self.assertEqual([r.ttl for r in answers], [0])
        self.assertEqual(self.upstream_queries(self.authority), 1)
        self.clock.advance(1.0)
        answers, _, _ = yield upstream.query(dns.Query(NAME, dns.TXT))
        self.assertEqual([r.ttl for r in answers], [5])
        self.assertEqual(self.upstream_queries(self.authority), 2)


class DecayedTTLTests(DecayTestCase):
    """N lookups over T seconds of a name with TTL t cost at most T/t + 1 queries."""

    @defer.inlineCallbacks
    def check_bound(self, ttl: int, seconds: float = 12.0) -> None:
        self.authority.add_txt(NAME, "app:443", ttl=ttl)
        cache = self.cache()
        states, waited = yield self.traffic(cache, seconds)
        queries = self.upstream_queries(self.forwarder)
        bound = seconds / (ttl or 1.0) + 1  # TTL 0: the 1 s refresh floor
        self.assertLessEqual(queries, math.floor(bound), states)
        # Refreshed just after the forwarder drops its copy, at the turn
        # of the second after it expires: once every t + 1 seconds.
        self.assertGreaterEqual(queries, math.floor(seconds / (ttl + 1)))
        # Only the very first lookup waited for upstream.
        self.assertEqual((waited, states[0]), (1, CacheState.MISS))
        self.assertNotIn(CacheState.MISS, states[1:])

    def test_ttl_5(self):
        return self.check_bound(5)

    def test_ttl_2(self):
        return self.check_bound(2)

    def test_ttl_0(self):
        """TTL 0 answers are kept for the refresh floor: not a query per lookup."""
        return self.check_bound(0)

    @defer.inlineCallbacks
    def test_cname_chain(self) -> None:
        """A chain 300/60/5 costs what its 5 s link costs."""
        self.authority.add_cname("shop.example.com", "shop.apps.example.net", ttl=300)
        self.authority.add_cname("shop.apps.example.net", "lb.example.org", ttl=60)
        self.authority.add_txt("lb.example.org", "app:443", ttl=5)
        cache = self.cache()
        states, waited = yield self.traffic(cache, 12.0, name="shop.example.com")
        self.assertLessEqual(self.upstream_queries(self.forwarder, "shop.example.com"), 3)
        self.assertLessEqual(self.upstream_queries(self.authority, "shop.example.com"), 3)
        self.assertEqual(waited, 1)

    @defer.inlineCallbacks
    def test_slow_authority_no_hit_waits(self) -> None:
        """
        Even when the forwarder's refetch from the authority takes 300 ms, no
        lookup but the first waits: the entry is served stale meanwhile.
        """
        self.authority.add_txt(NAME, "app:443", ttl=2)
        self.authority.delay = 0.3
        cache = self.cache()
        states: list[CacheState] = []
        waited = 0
        first = cache.query(NAME, dns.TXT)
        yield self.forwarder.wait_for_queries(1)
        self.clock.advance(0.3)
        yield first
        for _ in range(100):
            self.clock.advance(0.05)
            d = cache.query(NAME, dns.TXT)
            waited += not d.called
            states.append((yield d).state)
            if cache.counters.in_flight:
                # Let the refresh reach the forwarder (in real time); once
                # the authority's answer is no longer held, let it land.
                yield self.forwarder.wait_for_queries(cache.counters.upstream_queries)
                if not self.forwarder.held:
                    yield cache.when_idle()
        self.assertEqual(waited, 0)
        self.assertIn(CacheState.STALE, states)
        self.assertLessEqual(self.upstream_queries(self.authority), 5.3 / 2 + 1)

    @defer.inlineCallbacks
    def test_authoritative_refreshes_ahead(self) -> None:
        """Straight to the authority (AA set), refreshes still come ahead: no stale answers."""
        self.authority.add_txt(NAME, "app:443", ttl=5)
        cache = self.cache(self.authority)
        states, waited = yield self.traffic(cache, 12.0)
        self.assertNotIn(CacheState.STALE, states)
        self.assertLessEqual(self.upstream_queries(self.authority), 12 / 5 + 1)
        self.assertEqual(waited, 1)

    @defer.inlineCallbacks
    def test_decayed_refresh_waits_for_expiry(self) -> None:
        """
        A refresh-ahead whose answer expires no later than the entry it
        refreshed (a caching upstream that sets AA) triggers no other
        refresh before that expiry, and the key is refreshed at expiry from
        then on.
        """
        self.authority.add_txt(NAME, "app:443", ttl=5)
        self.forwarder.forward_to(self.authority, authoritative=True)
        cache = self.cache()
        states, waited = yield self.traffic(cache, 4.9)
        self.assertEqual(self.upstream_queries(self.forwarder), 2)  # the miss, the refresh at 4.5
        states, waited = yield self.traffic(cache, 0.5)  # to 5.3
        self.assertEqual(self.upstream_queries(self.forwarder), 2)
        states, waited = yield self.traffic(cache, 11.0)
        # At 6 and 12, when the forwarder has dropped its copy: no
        # refresh-ahead any more.
        self.assertEqual(self.upstream_queries(self.forwarder), 4)
        self.assertEqual(waited, 0)

    @defer.inlineCallbacks
    def test_zero_ttl_without_stale_serving(self) -> None:
        """With max_stale 0 (no RFC 8767 serving) a TTL 0 answer is not kept."""
        self.authority.add_txt(NAME, "app:443", ttl=0)
        cache = self.cache(self.authority, max_stale=0)
        yield cache.query(NAME, dns.TXT)
        yield cache.query(NAME, dns.TXT)
        self.assertEqual(self.upstream_queries(self.authority), 2)
        self.assertEqual(len(cache), 0)

    @defer.inlineCallbacks
    def test_zero_ttl_floor(self) -> None:
        """A TTL 0 answer is served stale until min_refresh, then refreshed in the background."""
        self.authority.add_txt(NAME, "app:443", ttl=0)
        cache = self.cache(self.authority, min_refresh=2.0)
        yield cache.query(NAME, dns.TXT)
        self.clock.advance(1.9)
        answer = self.successResultOf(cache.query(NAME, dns.TXT))
        self.assertEqual((answer.state, answer.ttl), (CacheState.STALE, 0))
        self.assertEqual(self.upstream_queries(self.authority), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(cache.query(NAME, dns.TXT)).state, CacheState.STALE)
        yield cache.when_idle()
        self.assertEqual(self.upstream_queries(self.authority), 2)
