"""
Tests for L{sniproxy.dns.cache}: the caching resolver, on a L{Clock},
in front of a real upstream and the in-process DNS server.  Query counts
come from the server's log.
"""

from __future__ import annotations

import gc
import timeit
import tracemalloc
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IResolver
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import TestCase

from sniproxy.config import DNSConfig
from sniproxy.dns import build_dns
from sniproxy.dns.cache import Answer, CachingResolver, normalise
from sniproxy.dns.service import DNSService
from sniproxy.dns.upstream import Upstream
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer


def txt(answer: Answer) -> list[bytes]:
    """The TXT strings of an answer, in order."""
    return [b"".join(r.payload.data) for r in answer.records if r.type == dns.TXT]


class CacheTestCase(TestCase):
    """
    A DNS server and an upstream whose timers, like the cache's and the
    server's delays, run on C{self.clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.upstream = Upstream(
            [self.server.address], timeout=1.0, attempts=2, deadline=3.0, reactor=ClockReactor(reactor, self.clock)
        )

    def cache(self, **kwargs: Any) -> CachingResolver:
        settings: dict[str, Any] = dict(
            min_ttl=0,
            max_ttl=86400,
            max_negative_ttl=10,
            failure_backoff=2,
            max_stale=0,
            stale_wait=0,
            refresh_ahead=0,
            max_entries=100,
        )
        settings.update(kwargs)
        cache = CachingResolver(self.upstream, self.clock, **settings)
        # Runs before the server's stop (cleanups are last in, first out).
        self.addCleanup(cache.stop)
        return cache

    def queries(self, name: str, type: int = dns.TXT) -> int:
        return len(self.server.queries_for(name, type))


class PositiveTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_hit(self) -> None:
        """
        The second lookup is answered from the cache, with TTLs decreased by
        the entry's age; the first answer is left as it was.
        """
        self.server.add_txt("a.test", "app:443", ttl=300)
        cache = self.cache()
        first = yield cache.query("a.test", dns.TXT)
        self.clock.advance(100.5)
        second = self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual((first.state, first.ttl, first.records[0].ttl), ("miss", 300, 300))
        self.assertEqual((second.state, second.ttl, second.records[0].ttl), ("hit", 199.5, 199))
        self.assertEqual(txt(second), [b"app:443"])
        self.assertIsNot(first.records[0], second.records[0])
        self.assertEqual(self.queries("a.test"), 1)

    @defer.inlineCallbacks
    def test_expiry(self) -> None:
        """An entry is fresh for its TTL, then (without serve-stale) gone."""
        self.server.add_txt("a.test", "x", ttl=30)
        cache = self.cache()
        yield cache.query("a.test", dns.TXT)
        self.clock.advance(29.9)
        self.assertEqual(self.successResultOf(cache.query("a.test", dns.TXT)).state, "hit")
        self.clock.advance(0.1)
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual(answer.state, "miss")
        self.assertEqual(self.queries("a.test"), 2)

    @defer.inlineCallbacks
    def test_cnameChain(self) -> None:
        """
        An answer lives for the smallest TTL along its CNAME chain, the
        CNAME's own included.
        """
        self.server.add_cname("short.test", "target.test", ttl=30)
        self.server.add_cname("long.test", "target.test", ttl=3000)
        self.server.add_txt("target.test", "x", ttl=300)
        cache = self.cache()
        short = yield cache.query("short.test", dns.TXT)
        long = yield cache.query("long.test", dns.TXT)
        self.assertEqual((short.ttl, long.ttl), (30, 300))
        self.assertEqual([r.type for r in short.records], [dns.CNAME, dns.TXT])
        self.clock.advance(30)
        yield cache.query("short.test", dns.TXT)
        yield cache.query("long.test", dns.TXT)
        self.assertEqual((self.queries("short.test"), self.queries("long.test")), (2, 1))

    @defer.inlineCallbacks
    def test_clamp(self) -> None:
        """
        TTLs are clamped to [min_ttl, max_ttl]; handed-out TTLs never exceed
        the record's own.
        """
        self.server.add_txt("short.test", "x", ttl=5)
        self.server.add_txt("long.test", "x", ttl=1000)
        cache = self.cache(min_ttl=60, max_ttl=100)
        short = yield cache.query("short.test", dns.TXT)
        long = yield cache.query("long.test", dns.TXT)
        self.assertEqual((short.ttl, short.records[0].ttl), (60, 5))
        self.assertEqual((long.ttl, long.records[0].ttl), (100, 100))
        self.clock.advance(59)
        self.assertEqual(self.successResultOf(cache.query("short.test", dns.TXT)).state, "hit")
        self.clock.advance(41)
        yield cache.query("long.test", dns.TXT)
        self.assertEqual((self.queries("short.test"), self.queries("long.test")), (1, 2))

    @defer.inlineCallbacks
    def test_zeroTTL(self) -> None:
        """
        A 0-TTL answer goes to every lookup that waited for it, and is not
        kept.
        """
        self.server.add_txt("a.test", "x", ttl=0)
        self.server.delay = 0.5
        cache = self.cache()
        waiting = [cache.query("a.test", dns.TXT) for _ in range(3)]
        yield self.server.wait_for_queries(1)
        self.clock.advance(0.5)
        answers = yield defer.gatherResults(waiting)
        self.assertEqual([(a.state, a.ttl, txt(a)) for a in answers], [("miss", 0, [b"x"])] + [("merged", 0, [b"x"])] * 2)
        self.assertEqual(len(cache), 0)
        d = cache.query("a.test", dns.TXT)
        yield self.server.wait_for_queries(2)
        self.clock.advance(0.5)
        self.assertEqual((yield d).state, "miss")

    @defer.inlineCallbacks
    def test_notMutated(self) -> None:
        """
        A refresh replaces the entry; answers already handed out keep their
        records and TTLs.
        """
        self.server.add_txt("a.test", "old", ttl=10)
        cache = self.cache()
        old = yield cache.query("a.test", dns.TXT)
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"new"), ttl=50)
        self.clock.advance(10)
        new = yield cache.query("a.test", dns.TXT)
        self.assertEqual((txt(old), old.records[0].ttl, old.ttl), ([b"old"], 10, 10))
        self.assertEqual((txt(new), new.records[0].ttl), ([b"new"], 50))
        self.assertRaises(AttributeError, setattr, old, "ttl", 5)


class NegativeTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_nxdomain(self) -> None:
        """
        NXDOMAIN is an answer (C{negative="nxdomain"}), cached for the SOA
        MINIMUM when it is below the SOA's TTL; later lookups are negative
        hits.
        """
        self.server.set_soa("test", ttl=60, minimum=30)
        cache = self.cache(max_negative_ttl=100)
        first = yield cache.query("missing.test", dns.TXT)
        self.assertEqual((first.negative, first.state, first.ttl, first.records), ("nxdomain", "miss", 30, ()))
        self.assertEqual([r.type for r in first.authority], [dns.SOA])
        self.clock.advance(29)
        second = self.successResultOf(cache.query("missing.test", dns.TXT))
        self.assertEqual((second.negative, second.state, second.ttl), ("nxdomain", "negative", 1))
        self.assertEqual(second.authority[0].ttl, 1)
        self.assertEqual(cache.counters.negative_hits, 1)
        self.clock.advance(1)
        yield cache.query("missing.test", dns.TXT)
        self.assertEqual(self.queries("missing.test"), 2)

    @defer.inlineCallbacks
    def test_soaTTL(self) -> None:
        """When the SOA's own TTL is the smaller, it wins."""
        self.server.set_soa("test", ttl=20, minimum=60)
        cache = self.cache(max_negative_ttl=100)
        answer = yield cache.query("missing.test", dns.TXT)
        self.assertEqual(answer.ttl, 20)

    @defer.inlineCallbacks
    def test_maxNegativeTTL(self) -> None:
        """Negative answers live at most max_negative_ttl."""
        self.server.set_soa("test", ttl=3600, minimum=3600)
        cache = self.cache(max_negative_ttl=10)
        answer = yield cache.query("missing.test", dns.TXT)
        self.assertEqual(answer.ttl, 10)

    @defer.inlineCallbacks
    def test_noSOA(self) -> None:
        """A negative answer without an SOA lives max_negative_ttl."""
        self.server.remove_soa("")
        cache = self.cache(max_negative_ttl=7)
        answer = yield cache.query("missing.test", dns.TXT)
        self.assertEqual((answer.negative, answer.ttl, answer.authority), ("nxdomain", 7, ()))

    @defer.inlineCallbacks
    def test_nodata(self) -> None:
        """
        A name without records of the type is NODATA: an answer with no
        records, cached like NXDOMAIN.
        """
        self.server.set_soa("test", ttl=60, minimum=30)
        self.server.add_a("a.test", "10.0.0.1")
        cache = self.cache(max_negative_ttl=100)
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual((answer.negative, answer.records, answer.ttl), ("nodata", (), 30))
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(cache.query("a.test", dns.TXT)).state, "negative")
        self.assertEqual(self.queries("a.test"), 1)

    @defer.inlineCallbacks
    def test_negativeReplacesPositive(self) -> None:
        """A record removed upstream is negative once its entry expires."""
        self.server.add_txt("a.test", "x", ttl=10)
        cache = self.cache()
        yield cache.query("a.test", dns.TXT)
        self.server.remove("a.test")
        self.clock.advance(10)
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual(answer.negative, "nxdomain")
        self.assertEqual(cache.peek("a.test", dns.TXT).state, "negative")


class FailureTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_servfail(self) -> None:
        """
        SERVFAIL fails the lookup with L{DNSServerError}; during the
        back-off, lookups fail at once without asking; after it, they ask
        again.
        """
        self.server.set_rcode("a.test", dns.ESERVER)
        cache = self.cache(failure_backoff=5)
        yield self.assertFailure(cache.query("a.test", dns.TXT), DNSServerError)
        self.clock.advance(4.9)
        self.failureResultOf(cache.query("a.test", dns.TXT), DNSServerError)
        self.assertAlmostEqual(cache.peek("a.test", dns.TXT).backoff, 0.1)
        self.assertEqual(self.queries("a.test"), 1)
        self.clock.advance(0.1)
        self.server.set_rcode("a.test", None)
        self.server.add_txt("a.test", "x")
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual((answer.state, self.queries("a.test")), ("miss", 2))
        self.assertEqual(cache.counters.upstream_failures, 1)

    @defer.inlineCallbacks
    def test_refused(self) -> None:
        """REFUSED fails with L{DNSQueryRefusedError}."""
        self.server.set_rcode("a.test", dns.EREFUSED)
        cache = self.cache()
        yield self.assertFailure(cache.query("a.test", dns.TXT), DNSQueryRefusedError)

    @defer.inlineCallbacks
    def test_timeout(self) -> None:
        """
        No answer fails with L{DNSQueryTimeoutError} after the upstream's
        attempts (two here, of one second each).
        """
        self.server.outage = True
        cache = self.cache()
        d = cache.query("a.test", dns.TXT)
        self.clock.advance(1)
        self.assertNoResult(d)
        self.clock.advance(1)
        yield self.assertFailure(d, DNSQueryTimeoutError)
        self.failureResultOf(cache.query("a.test", dns.TXT), DNSQueryTimeoutError)

    @defer.inlineCallbacks
    def test_failureKeepsGoodAnswer(self) -> None:
        """
        A refresh that fails leaves the entry as it was, and backs off
        before the next refresh.
        """
        self.server.add_txt("a.test", "good", ttl=100)
        cache = self.cache(refresh_ahead=0.5, failure_backoff=5)
        yield cache.query("a.test", dns.TXT)
        self.server.set_rcode("a.test", dns.ESERVER)
        self.clock.advance(60)
        self.successResultOf(cache.query("a.test", dns.TXT))  # starts a refresh
        yield cache.when_idle()
        self.assertEqual(cache.counters.upstream_failures, 1)
        hit = self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual((hit.state, txt(hit), hit.ttl), ("hit", [b"good"], 40))
        self.assertEqual(cache.counters.upstream_queries, 2)  # backing off
        self.clock.advance(5)
        self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual(cache.counters.upstream_queries, 3)
        yield cache.when_idle()


class MergeTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_hundred(self) -> None:
        """
        100 concurrent lookups of one name make one upstream query, and all
        get the answer, each with its own records.
        """
        self.server.add_txt("a.test", "x", ttl=60)
        self.server.delay = 0.5
        cache = self.cache()
        waiting = [cache.query("a.test", dns.TXT) for _ in range(100)]
        yield self.server.wait_for_queries(1)
        self.clock.advance(0.5)
        answers = yield defer.gatherResults(waiting)
        self.assertEqual([a.state for a in answers], ["miss"] + ["merged"] * 99)
        self.assertEqual({tuple(txt(a)) for a in answers}, {(b"x",)})
        self.assertEqual(len({id(a.records[0]) for a in answers}), 100)
        self.assertEqual(len(self.server.log), 1)
        self.assertEqual((cache.counters.misses, cache.counters.merged, cache.counters.upstream_queries), (1, 99, 1))

    @defer.inlineCallbacks
    def test_cancelOne(self) -> None:
        """Cancelling one lookup does not cancel the query or the others."""
        self.server.add_txt("a.test", "x")
        self.server.delay = 0.5
        cache = self.cache()
        first, second, third = (cache.query("a.test", dns.TXT) for _ in range(3))
        yield self.server.wait_for_queries(1)
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.clock.advance(0.5)
        answer = yield third
        self.assertEqual(txt(answer), [b"x"])
        self.assertEqual(len(self.server.log), 1)

    @defer.inlineCallbacks
    def test_cancelAll(self) -> None:
        """With every lookup cancelled, the answer still lands in the cache."""
        self.server.add_txt("a.test", "x")
        self.server.delay = 0.5
        cache = self.cache()
        d = cache.query("a.test", dns.TXT)
        yield self.server.wait_for_queries(1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(0.5)
        yield cache.when_idle()
        self.assertEqual(self.successResultOf(cache.query("a.test", dns.TXT)).state, "hit")
        self.assertEqual(len(self.server.log), 1)

    @defer.inlineCallbacks
    def test_refreshAndMiss(self) -> None:
        """A lookup that misses while a refresh is in flight joins it."""
        self.server.add_txt("a.test", "x", ttl=100)
        self.server.add_txt("b.test", "y", ttl=100)
        cache = self.cache(refresh_ahead=0.5, max_entries=1)
        yield cache.query("a.test", dns.TXT)
        self.clock.advance(60)
        self.server.set_delay("a.test", 0.5)
        self.successResultOf(cache.query("a.test", dns.TXT))  # starts a refresh
        yield self.server.wait_for_queries(2, name="a.test")
        yield cache.query("b.test", dns.TXT)  # evicts a.test
        self.assertEqual(cache.peek("a.test", dns.TXT).state, "absent")
        d = cache.query("a.test", dns.TXT)
        self.clock.advance(0.5)
        answer = yield d
        self.assertEqual((answer.state, self.queries("a.test")), ("merged", 2))


class RefreshAheadTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_refreshAhead(self) -> None:
        """
        A hit in the last refresh_ahead of the TTL is answered at once and
        starts exactly one background refresh, which replaces the entry.
        """
        self.server.add_txt("a.test", "x", ttl=100)
        self.server.delay = 0.5
        cache = self.cache(refresh_ahead=0.1)
        d = cache.query("a.test", dns.TXT)
        yield self.server.wait_for_queries(1)
        self.clock.advance(0.5)
        yield d
        self.clock.advance(89.4)
        self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual(cache.counters.upstream_queries, 1)
        self.clock.advance(1.0)
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"y"), ttl=200)
        hits = [self.successResultOf(cache.query("a.test", dns.TXT)) for _ in range(5)]
        self.assertEqual({(h.state, tuple(txt(h))) for h in hits}, {("hit", (b"x",))})
        self.assertTrue(cache.peek("a.test", dns.TXT).refreshing)
        yield self.server.wait_for_queries(2)
        self.clock.advance(0.5)
        yield cache.when_idle()
        self.assertEqual(len(self.server.log), 2)
        entry = cache.peek("a.test", dns.TXT)
        self.assertEqual((entry.state, entry.records[0].ttl, entry.records[0].payload.data), ("fresh", 200, [b"y"]))
        self.assertAlmostEqual(entry.ttl, 200)

    @defer.inlineCallbacks
    def test_off(self) -> None:
        """With refresh_ahead 0, hits never refresh."""
        self.server.add_txt("a.test", "x", ttl=100)
        cache = self.cache(refresh_ahead=0)
        yield cache.query("a.test", dns.TXT)
        self.clock.advance(99.9)
        self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual(cache.counters.upstream_queries, 1)


class StaleTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_servedWhileRefreshing(self) -> None:
        """
        An expired entry within max_stale is served at once (TTL 0) while a
        refresh runs.
        """
        self.server.add_txt("a.test", "old", ttl=10)
        cache = self.cache(max_stale=100)
        yield cache.query("a.test", dns.TXT)
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"new"), ttl=10)
        self.clock.advance(15)
        stale = self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual((stale.state, stale.ttl, stale.records[0].ttl, txt(stale)), ("stale", 0, 0, [b"old"]))
        self.assertEqual(cache.peek("a.test", dns.TXT).state, "stale")
        yield cache.when_idle()
        fresh = self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual((fresh.state, txt(fresh)), ("hit", [b"new"]))
        self.assertEqual((cache.counters.stale, len(self.server.log)), (1, 2))

    @defer.inlineCallbacks
    def test_waitGetsFresh(self) -> None:
        """With stale_wait, a fresh answer that arrives in time is served."""
        self.server.add_txt("a.test", "old", ttl=10)
        cache = self.cache(max_stale=100, stale_wait=0.5)
        yield cache.query("a.test", dns.TXT)
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"new"), ttl=10)
        self.server.delay = 0.2
        self.clock.advance(15)
        d = cache.query("a.test", dns.TXT)
        yield self.server.wait_for_queries(2)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        answer = yield d
        self.assertEqual((answer.state, txt(answer), answer.ttl), ("miss", [b"new"], 10))
        self.assertEqual(cache.counters.stale, 0)

    @defer.inlineCallbacks
    def test_waitGetsStale(self) -> None:
        """
        With stale_wait, the stale answer is served once stale_wait passes
        without a fresh one; the refresh still lands.
        """
        self.server.add_txt("a.test", "old", ttl=10)
        cache = self.cache(max_stale=100, stale_wait=0.5)
        yield cache.query("a.test", dns.TXT)
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"new"), ttl=10)
        self.server.delay = 0.8
        self.clock.advance(15)
        d = cache.query("a.test", dns.TXT)
        merged = cache.query("a.test", dns.TXT)
        yield self.server.wait_for_queries(2)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        answer = self.successResultOf(d)
        self.assertEqual((answer.state, txt(answer)), ("stale", [b"old"]))
        self.assertEqual(self.successResultOf(merged).state, "stale")
        self.clock.advance(0.3)
        yield cache.when_idle()
        self.assertEqual(txt(self.successResultOf(cache.query("a.test", dns.TXT))), [b"new"])
        self.assertEqual((cache.counters.stale, len(self.server.log)), (2, 2))

    @defer.inlineCallbacks
    def test_upstreamDown(self) -> None:
        """
        With the upstream down, stale answers keep flowing (positive and
        negative) until max_stale past expiry; then the failure surfaces.
        """
        self.server.add_txt("a.test", "x", ttl=10)
        self.server.set_soa("test", ttl=10, minimum=10)
        cache = self.cache(max_stale=100, failure_backoff=5)
        yield cache.query("a.test", dns.TXT)
        yield cache.query("missing.test", dns.TXT)
        self.server.outage = True
        self.clock.advance(15)
        for moment in range(15, 105, 3):
            self.clock.advance(moment - self.clock.seconds())
            positive = self.successResultOf(cache.query("a.test", dns.TXT))
            negative = self.successResultOf(cache.query("missing.test", dns.TXT))
            self.assertEqual((positive.state, txt(positive)), ("stale", [b"x"]))
            self.assertEqual((negative.state, negative.negative), ("stale", "nxdomain"))
            self.clock.advance(1)  # the refreshes' first attempts time out
            self.clock.advance(1)  # and their second
        self.assertGreater(cache.counters.upstream_failures, 2)
        self.clock.advance(110 - self.clock.seconds())
        self.assertEqual(cache.peek("a.test", dns.TXT).state, "absent")
        d = cache.query("a.test", dns.TXT)
        self.clock.advance(3)
        yield self.assertFailure(d, DNSQueryTimeoutError)

    @defer.inlineCallbacks
    def test_staleDuringBackoff(self) -> None:
        """
        During a back-off, a stale entry is served without asking again.
        """
        self.server.add_txt("a.test", "x", ttl=10)
        cache = self.cache(max_stale=100, failure_backoff=60)
        yield cache.query("a.test", dns.TXT)
        self.server.set_rcode("a.test", dns.ESERVER)
        self.clock.advance(10)
        self.successResultOf(cache.query("a.test", dns.TXT))
        yield cache.when_idle()
        for _ in range(3):
            self.clock.advance(10)
            self.assertEqual(self.successResultOf(cache.query("a.test", dns.TXT)).state, "stale")
        self.assertEqual(self.queries("a.test"), 2)


class BoundTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_lru(self) -> None:
        """
        Never more than max_entries (negative ones count); the least
        recently used goes first; peeking does not count as use.
        """
        for name in "abcd":
            self.server.add_txt(f"{name}.test", name)
        cache = self.cache(max_entries=3)
        yield cache.query("a.test", dns.TXT)
        yield cache.query("b.test", dns.TXT)
        yield cache.query("missing.test", dns.TXT)
        self.successResultOf(cache.query("a.test", dns.TXT))
        cache.peek("b.test", dns.TXT)
        yield cache.query("d.test", dns.TXT)
        self.assertEqual(len(cache), 3)
        self.assertEqual(cache.counters.evictions, 1)
        self.assertEqual(cache.peek("b.test", dns.TXT).state, "absent")
        self.assertEqual(cache.peek("a.test", dns.TXT).state, "fresh")
        yield cache.query("c.test", dns.TXT)
        self.assertEqual(cache.peek("missing.test", dns.TXT).state, "absent")
        yield cache.query("b.test", dns.TXT)
        self.assertEqual(self.queries("b.test"), 2)
        self.assertEqual((len(cache), cache.counters.entries, cache.counters.evictions), (3, 3, 3))

    def test_memory(self) -> None:
        """
        10,000 TXT entries, records decoded from the wire as the upstream
        hands them over, cost under 2 KiB each (the README quotes the
        figure this prints).
        """
        cache = CachingResolver(_WireUpstream(), self.clock, max_entries=10000)
        names = ["_dstack-app-address.app%05d.example.com" % i for i in range(10000)]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for name in names:
                cache.query(name, dns.TXT)
            gc.collect()
            perEntry = (tracemalloc.get_traced_memory()[0] - before) / len(names)
        finally:
            tracemalloc.stop()
        print(f"\nDNS cache: {perEntry:.0f} bytes per TXT entry")
        self.assertEqual(len(cache), 10000)
        self.assertLess(perEntry, 2048)

    def test_hitCost(self) -> None:
        """A hit costs a few microseconds (this prints how many)."""
        cache = CachingResolver(_WireUpstream(), self.clock, refresh_ahead=0.1)
        name = "_dstack-app-address.shop.example.com"
        cache.query(name, dns.TXT)
        self.clock.advance(5)
        runs = 20000
        seconds = min(timeit.repeat(lambda: cache.query(name, dns.TXT), number=runs, repeat=3)) / runs
        print(f"\nDNS cache: {seconds * 1e6:.2f} µs per hit")
        self.assertEqual(cache.counters.hits, 3 * runs)
        self.assertLess(seconds, 100e-6)


class _WireUpstream:
    """
    An upstream that answers at once with a TXT record decoded from the
    wire, as Twisted's client would hand it over.
    """

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        name = query.name.name
        message = dns.Message(answer=1)
        message.queries = [query]
        message.answers = [dns.RRHeader(name, dns.TXT, ttl=300, payload=dns.Record_TXT(name[20:28] + b":443"))]
        decoded = dns.Message()
        decoded.fromStr(message.toStr())
        return defer.succeed((decoded.answers, decoded.authority, decoded.additional))


class NameTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_caseAndDot(self) -> None:
        """Case and a trailing dot do not split the cache."""
        self.server.add_txt("a.test", "x")
        cache = self.cache()
        first = yield cache.query("A.Test.", dns.TXT)
        second = self.successResultOf(cache.query("a.test", dns.TXT))
        third = self.successResultOf(cache.query(b"a.TEST", dns.TXT))
        self.assertEqual([a.name for a in (first, second, third)], ["a.test"] * 3)
        self.assertEqual([a.state for a in (second, third)], ["hit", "hit"])
        self.assertEqual(self.queries("a.test"), 1)

    @defer.inlineCallbacks
    def test_absolute(self) -> None:
        """A name goes out as it is: no search list, whatever the dots."""
        self.server.add_a("app", "10.0.0.1")
        cache = self.cache()
        answer = yield cache.query("app", dns.A)
        self.assertEqual(len(answer.records), 1)
        self.assertEqual([q.name for q in self.server.log], ["app"])

    def test_normalise(self) -> None:
        """Names are ASCII (IDNA), lower case, without a trailing dot."""
        self.assertEqual(normalise("WWW.Example.COM."), "www.example.com")
        self.assertEqual(normalise(b"a.test"), "a.test")
        self.assertEqual(normalise("bücher.test"), "xn--bcher-kva.test")
        self.assertEqual(normalise("."), "")
        self.assertRaises(ValueError, normalise, b"\xff.test")

    def test_badName(self) -> None:
        """A name that cannot be a DNS name fails the lookup, not the caller."""
        cache = self.cache()
        self.failureResultOf(cache.query(b"\xff.test", dns.TXT), ValueError)


class ResolverInterfaceTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_interface(self) -> None:
        """
        Through Twisted's IResolver: answers as (answers, authority,
        additional); NODATA empty; NXDOMAIN fails with L{DNSNameError}.
        """
        self.server.add_txt("a.test", "x")
        self.server.add_a("a.test", "10.0.0.1")
        self.server.add_aaaa("a.test", "2001:db8::1")
        cache = self.cache()
        self.assertTrue(IResolver.providedBy(cache))
        answers, authority, additional = yield cache.lookupText("a.test")
        self.assertEqual(answers[0].payload.data, [b"x"])
        self.assertIsInstance(answers, list)
        answers, _, _ = yield cache.lookupAddress("a.test")
        self.assertEqual(answers[0].payload.dottedQuad(), "10.0.0.1")
        answers, _, _ = yield cache.lookupIPV6Address("a.test")
        self.assertEqual(answers[0].type, dns.AAAA)
        answers, authority, _ = yield cache.lookupMailExchange("a.test")
        self.assertEqual((answers, [r.type for r in authority]), ([], [dns.SOA]))
        error = yield self.assertFailure(cache.lookupText("missing.test"), DNSNameError)
        self.assertEqual(error.args[0].authority[0].type, dns.SOA)
        # Cached too: the second NXDOMAIN is a negative hit.
        yield self.assertFailure(cache.lookupText("missing.test"), DNSNameError)
        self.assertEqual(cache.counters.negative_hits, 1)


class ServiceTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_prefetch(self) -> None:
        """
        Starting the service looks the prefetch names up (A and AAAA, IP
        literals skipped), so the first real lookups hit; a failure there
        is logged, not raised.
        """
        self.server.add_a("a.test", "10.0.0.1")
        self.server.add_aaaa("b.test", "2001:db8::1")
        self.server.set_rcode("broken.test", dns.ESERVER)
        cache = self.cache()
        service = DNSService(cache, ["a.test", "b.test", "10.0.0.9", "broken.test", "A.test"])
        service.startService()
        assert service.prefetched is not None
        yield service.prefetched
        self.assertEqual(
            sorted((q.name, q.type) for q in self.server.log),
            sorted((n, t) for n in ("a.test", "b.test", "broken.test") for t in (dns.A, dns.AAAA)),
        )
        self.assertEqual(self.successResultOf(cache.query("a.test", dns.A)).state, "hit")
        self.assertEqual(self.successResultOf(cache.query("b.test", dns.A)).state, "negative")
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        yield service.stopService()

    @defer.inlineCallbacks
    def test_stop(self) -> None:
        """
        Stopping answers whatever waits (stale if it can, else
        L{defer.CancelledError}) and leaves no timer behind.
        """
        self.server.add_txt("a.test", "x", ttl=10)
        cache = self.cache(max_stale=100, stale_wait=1.0)
        yield cache.query("a.test", dns.TXT)
        service = DNSService(cache)
        service.startService()
        self.server.outage = True
        self.clock.advance(15)
        stale = cache.query("a.test", dns.TXT)
        miss = cache.query("b.test", dns.TXT)
        yield self.server.wait_for_queries(1, name="b.test")
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        yield service.stopService()
        self.assertEqual(self.successResultOf(stale).state, "stale")
        self.failureResultOf(miss, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_fromConfig(self) -> None:
        """L{build_dns} takes every [dns] setting."""
        self.server.add_txt("a.test", "x", ttl=5)
        config = DNSConfig(servers=(self.server.address,), min_ttl=30, max_entries=1)
        cache = build_dns(config, ClockReactor(reactor, self.clock), self.clock)
        self.addCleanup(cache.stop)
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual(answer.ttl, 30)
        yield cache.query("b.test", dns.TXT)
        self.assertEqual((len(cache), cache.counters.evictions), (1, 1))


class CounterTests(CacheTestCase):
    @defer.inlineCallbacks
    def test_counters(self) -> None:
        """Every lookup counts once; upstream queries and failures count."""
        self.server.add_txt("a.test", "x", ttl=10)
        self.server.add_txt("c.test", "x", ttl=10)
        self.server.set_rcode("bad.test", dns.ESERVER)
        self.server.delay = 0.5
        cache = self.cache(max_stale=100, max_entries=2)

        def settle(*ds: defer.Deferred[Any]) -> defer.Deferred[Any]:
            self.clock.advance(0.5)
            return defer.DeferredList(list(ds), consumeErrors=True)

        first, second = cache.query("a.test", dns.TXT), cache.query("a.test", dns.TXT)  # miss, merged
        yield self.server.wait_for_queries(1)
        yield settle(first, second)
        cache.query("a.test", dns.TXT)  # hit
        d = cache.query("missing.test", dns.TXT)  # miss
        yield self.server.wait_for_queries(2)
        yield settle(d)
        cache.query("missing.test", dns.TXT)  # negative hit
        d = cache.query("bad.test", dns.TXT)  # miss, upstream failure
        yield self.server.wait_for_queries(3)
        yield settle(d)
        self.clock.advance(10)
        self.successResultOf(cache.query("a.test", dns.TXT))  # stale, refresh
        yield self.server.wait_for_queries(4)
        yield settle()
        yield cache.when_idle()
        d = cache.query("c.test", dns.TXT)  # miss, evicts missing.test
        yield self.server.wait_for_queries(5)
        yield settle(d)
        self.assertEqual(
            cache.counters.as_dict(),
            dict(
                hits=1,
                misses=4,
                stale=1,
                negative_hits=1,
                merged=1,
                evictions=1,
                upstream_queries=5,
                upstream_failures=1,
                entries=2,
                in_flight=0,
            ),
        )


class _BrokenUpstream:
    """An upstream whose answers are not Twisted's three sections."""

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.succeed("nonsense")


class RobustnessTests(TestCase):
    def test_brokenAnswer(self) -> None:
        """
        An answer the cache cannot read fails its lookups and is logged;
        nothing hangs.
        """
        cache = CachingResolver(_BrokenUpstream(), Clock())
        self.failureResultOf(cache.query("a.test", dns.TXT), ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.successResultOf(cache.when_idle())
