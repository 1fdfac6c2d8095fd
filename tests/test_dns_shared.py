"""
Tests for L{sniproxy.dns.shared}: one owner cache, mirrors in front of it,
over real UNIX sockets in this process (the real reactor), the in-process
test DNS server as the real upstream, and a L{Clock} for the caches' time
where time matters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import DNSConfig, parse_config
from sniproxy.interfaces import RoutingError
from sniproxy.sources.txt import TXTResolver
from sniproxy.dns import build_dns
from sniproxy.dns.cache import HIT, MISS, NEGATIVE, STALE, Origin, _Entry
from sniproxy.dns.shared import (
    BadEntry,
    DNSMirror,
    DNSOwner,
    Learned,
    OwnerUnavailable,
    decode_entry,
    encode_entry,
)
from sniproxy.testing.dns import DNSServer

NAME = "_dstack-app-address.shop.test"


def _txt(answer) -> list[bytes]:
    return [b"".join(r.payload.data) for r in answer.records if r.type == dns.TXT]


class _Shared:
    """One DNS server, one owner, mirrors: built for a test, torn down after it."""

    def setUp(self) -> None:
        self.server = DNSServer()
        self.server.start()
        self.addCleanup(self.server.stop)
        self.clock = Clock()
        self.clock.advance(1000.0)
        # A short path: AF_UNIX paths are at most 107 bytes.
        directory = tempfile.mkdtemp(prefix="sniproxy-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "dns.sock")
        self.config = DNSConfig(servers=(self.server.address,), timeout=0.5, attempts=1, deadline=1.0)
        self.cache = build_dns(self.config, reactor, self.clock)
        self.addCleanup(self.cache.stop)
        self.owner = DNSOwner(self.cache, reactor)

    @defer.inlineCallbacks
    def start_owner(self):
        yield self.owner.listen(self.path)
        self.addCleanup(self.owner.stop)

    @defer.inlineCallbacks
    def mirror(self, config: DNSConfig | None = None):
        mirror = DNSMirror(self.path, config or self.config, reactor, self.clock)
        mirror.start()
        self.addCleanup(mirror.stop)
        yield mirror.when_connected()
        return mirror

    @defer.inlineCallbacks
    def mirrors(self, count: int):
        made = []
        for _ in range(count):
            made.append((yield self.mirror()))
        return made

    @defer.inlineCallbacks
    def settle(self, *mirrors):
        """Wait until no query is in flight anywhere and every push has arrived."""
        for _ in range(3):
            yield self.cache.when_idle()
            for mirror in mirrors:
                yield mirror.when_idle()
            for mirror in mirrors:
                yield mirror.sync()


class SharedCacheTests(_Shared, TestCase):
    """Owner and mirrors on a real UNIX socket."""

    @defer.inlineCallbacks
    def test_cold_lookups_merge(self):
        """
        30 concurrent cold lookups of one name across 3 mirrors cause
        exactly one upstream query, and all get its answer.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=60)
        self.server.set_delay(NAME, 0.2)
        yield self.start_owner()
        mirrors = (yield self.mirrors(3))
        lookups = [mirrors[i % 3].query(NAME, dns.TXT) for i in range(30)]
        answers = yield defer.gatherResults(lookups)
        self.assertEqual([_txt(a) for a in answers], [[b"myapp:443"]] * 30)
        self.assertEqual(len(self.server.queries_for(NAME, dns.TXT)), 1)
        self.assertEqual(self.cache.counters.upstream_queries, 1)
        # One question per mirror reached the owner; the rest merged there.
        self.assertEqual(self.owner.lookups, 3)
        self.assertEqual(sum(m.counters.merged for m in mirrors), 27)

    @defer.inlineCallbacks
    def test_learnt_by_one_warm_in_another(self):
        """
        A name one mirror learnt is answered by another at once (an already
        fired Deferred), without asking the owner or DNS.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=60)
        yield self.start_owner()
        first, second = yield self.mirrors(2)
        answer = yield first.query(NAME, dns.TXT)
        self.assertEqual(answer.state, MISS)
        yield self.settle(first, second)
        lookups = self.owner.lookups
        d = second.query(NAME, dns.TXT)
        answer = self.successResultOf(d)
        self.assertEqual(answer.state, HIT)
        self.assertEqual(_txt(answer), [b"myapp:443"])
        self.assertEqual(answer.ttl, 60)
        self.assertEqual(self.owner.lookups, lookups)
        self.assertEqual(second.counters.upstream_queries, 0)
        self.assertEqual(len(self.server.queries_for(NAME)), 1)

    @defer.inlineCallbacks
    def test_warm_on_connect(self):
        """
        A mirror that connects late gets the owner's entries (at most its
        C{max_entries}, the most recently used), stale ones included: it
        answers them without asking.
        """
        for i in range(4):
            self.server.add_txt(f"n{i}.test", str(i), ttl=10)
        self.server.add_txt("late.test", "x", ttl=60)
        for i in range(4):
            yield self.cache.query(f"n{i}.test", dns.TXT)
        self.clock.advance(20)  # n0..n3 stale
        yield self.cache.query("late.test", dns.TXT)
        yield self.start_owner()
        mirror = DNSMirror(self.path, DNSConfig(servers=self.config.servers, max_entries=3), reactor, self.clock)
        self.addCleanup(mirror.stop)
        # Waiting before the first connection works too.
        warmed = mirror.warmed
        mirror.start()
        yield warmed
        self.assertEqual(len(mirror), 3)
        self.assertEqual(mirror.peek("n0.test", dns.TXT).state, "absent")
        self.assertEqual(mirror.peek("n3.test", dns.TXT).state, "stale")
        self.assertEqual(self.successResultOf(mirror.query("late.test", dns.TXT)).state, HIT)
        self.assertEqual(self.owner.lookups, 0)

    @defer.inlineCallbacks
    def test_negative_mirrored(self):
        """An NXDOMAIN learnt through one mirror is a negative hit in the other."""
        yield self.start_owner()
        first, second = yield self.mirrors(2)
        answer = yield first.query("nothing.test", dns.TXT)
        self.assertEqual(answer.negative, "nxdomain")
        yield self.settle(first, second)
        answer = self.successResultOf(second.query("nothing.test", dns.TXT))
        self.assertEqual((answer.state, answer.negative), (NEGATIVE, "nxdomain"))
        # The SOA's minimum (60) clamped to max_negative_ttl (10).
        self.assertEqual(answer.ttl, 10)
        self.assertEqual(len(self.server.queries_for("nothing.test")), 1)

    @defer.inlineCallbacks
    def test_refresh_pushed_to_all(self):
        """
        A refresh ahead, started by a hit in one mirror, is asked upstream
        once, and its answer reaches every mirror.
        """
        self.server.add_txt(NAME, "old:443", ttl=10)
        yield self.start_owner()
        mirrors = (yield self.mirrors(3))
        yield mirrors[0].query(NAME, dns.TXT)
        yield self.settle(*mirrors)
        self.server.replace(NAME, dns.TXT, dns.Record_TXT(b"new:443"), ttl=10)
        self.clock.advance(9.5)
        # Within the last 10 %: answered from the cache, refreshed behind.
        for mirror in mirrors[:2]:
            answer = self.successResultOf(mirror.query(NAME, dns.TXT))
            self.assertEqual(_txt(answer), [b"old:443"])
        yield self.settle(*mirrors)
        self.assertEqual(len(self.server.queries_for(NAME)), 2)
        for mirror in mirrors:
            entry = mirror.peek(NAME, dns.TXT)
            self.assertEqual((entry.state, entry.ttl), ("fresh", 10))
            self.assertEqual([b"".join(r.payload.data) for r in entry.records], [b"new:443"])

    @defer.inlineCallbacks
    def run_steady(self, mirrors: int, ttl: int, seconds: int, step: float):
        """Lookups every C{step} seconds through C{mirrors} mirrors; the upstream queries."""
        self.server.add_txt(NAME, "myapp:443", ttl=ttl)
        yield self.start_owner()
        ms = (yield self.mirrors(mirrors))
        slowest = 0.0
        for _ in range(int(seconds / step)):
            for mirror in ms:
                started = reactor.seconds()
                answer = yield mirror.query(NAME, dns.TXT)
                slowest = max(slowest, reactor.seconds() - started)
                self.assertEqual(_txt(answer), [b"myapp:443"])
            yield self.settle(*ms)
            self.clock.advance(step)
        return len(self.server.queries_for(NAME))

    @defer.inlineCallbacks
    def test_steady_lookups_two_mirrors(self):
        """
        Steady lookups through two mirrors over T = 60 s with TTL t = 10 s:
        at most T/t + 1 upstream queries.
        """
        queries = yield self.run_steady(2, 10, 60, 0.5)
        self.assertLessEqual(queries, 60 // 10 + 1)
        self.assertGreaterEqual(queries, 60 // 10)

    @defer.inlineCallbacks
    def test_steady_lookups_decaying_upstream(self):
        """
        The same through a caching forwarder handing out decayed TTLs:
        still at most T/t + 1.
        """
        authority = DNSServer()
        authority.start()
        self.addCleanup(authority.stop)
        authority.add_txt(NAME, "myapp:443", ttl=10)
        self.server.forward_to(authority)
        queries = yield self.run_steady(2, 10, 60, 0.5)
        self.assertLessEqual(len(authority.queries_for(NAME)), 60 // 10 + 1)
        self.assertLessEqual(queries, 60 // 10 + 2)


class SteadyOneMirrorTests(_Shared, TestCase):
    run_steady = SharedCacheTests.run_steady

    @defer.inlineCallbacks
    def test_same_as_one_mirror(self):
        """One mirror or two: the same number of upstream queries."""
        one = yield self.run_steady(1, 10, 60, 0.5)
        self.assertLessEqual(one, 60 // 10 + 1)
        self.assertEqual(one, 7)


class SteadyTwoMirrorTests(_Shared, TestCase):
    run_steady = SharedCacheTests.run_steady

    @defer.inlineCallbacks
    def test_same_as_one_mirror(self):
        """Two mirrors: as many upstream queries as with one (7 for T=60, t=10)."""
        two = yield self.run_steady(2, 10, 60, 0.5)
        self.assertEqual(two, 7)


class RoutingTests(_Shared, TestCase):
    """The route sources work on a mirror as on the cache."""

    def source(self, mirror) -> TXTResolver:
        config = parse_config(tomllib.loads('[apps.myapp]\nbackends = ["127.0.0.2"]\n'))
        return TXTResolver(config.routing.txt, mirror, AppRegistry(config.apps, AddressResolver(mirror)))

    @defer.inlineCallbacks
    def test_txt_route_through_mirrors(self):
        """
        A TXT route resolved through one worker's mirror costs the other
        worker nothing; without the owner a new name is a routing failure,
        at once.
        """
        self.server.add_txt(NAME, "myapp:8443", ttl=60)
        yield self.start_owner()
        first, second = yield self.mirrors(2)
        route = yield self.source(first).resolve("shop.test")
        self.assertEqual([(a.host, a.port) for a in route.backends], [("127.0.0.2", 8443)])
        yield self.settle(first, second)
        lookups = self.owner.lookups
        route = self.successResultOf(self.source(second).resolve("shop.test"))
        self.assertEqual([(a.host, a.port) for a in route.backends], [("127.0.0.2", 8443)])
        self.assertEqual(self.owner.lookups, lookups)
        yield self.owner.stop()
        yield second.stop()
        failure = self.failureResultOf(self.source(second).resolve("new.test"))
        failure.trap(RoutingError)
        self.assertIn("OwnerUnavailable", str(failure.value))
        self.flushLoggedErrors()


class OwnerLossTests(_Shared, TestCase):
    """The owner goes away and comes back."""

    @defer.inlineCallbacks
    def test_stale_served_misses_fail_reconnect(self):
        """
        Without the owner a mirror serves its entries, stale ones
        included, misses fail at once with L{OwnerUnavailable}, and once
        the owner is back the mirror reconnects and misses work again, its
        entries kept.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=10)
        self.server.add_txt("other.test", "x", ttl=10)
        yield self.start_owner()
        mirror = yield self.mirror()
        yield mirror.query(NAME, dns.TXT)
        yield self.owner.stop()
        for _ in range(100):
            if not mirror.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(mirror.connected)
        self.clock.advance(30)
        answer = self.successResultOf(mirror.query(NAME, dns.TXT))
        self.assertEqual((answer.state, _txt(answer)), (STALE, [b"myapp:443"]))
        failure = self.failureResultOf(mirror.query("other.test", dns.TXT))
        failure.trap(OwnerUnavailable)
        self.flushLoggedErrors()
        # The owner comes back on the same path.
        self.owner = DNSOwner(self.cache, reactor)
        yield self.start_owner()
        yield mirror.when_connected()
        for _ in range(600):
            if mirror.connected:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(mirror.connected)
        answer = yield mirror.query("other.test", dns.TXT)
        self.assertEqual(_txt(answer), [b"x"])
        self.assertEqual(len(mirror), 2)


class MirrorLimitTests(_Shared, TestCase):
    """Bounds, prefetch, reconfiguration and hostile pushes."""

    @defer.inlineCallbacks
    def test_lru_bound(self):
        """A mirror holds at most its C{max_entries}, evicting the least recently used."""
        for i in range(5):
            self.server.add_txt(f"n{i}.test", str(i), ttl=60)
        yield self.start_owner()
        small = DNSConfig(servers=self.config.servers, max_entries=3)
        first = yield self.mirror()
        second = yield self.mirror(small)
        for i in range(5):
            yield first.query(f"n{i}.test", dns.TXT)
        yield self.settle(first, second)
        self.assertEqual(len(self.cache), 5)
        self.assertEqual(len(first), 5)
        self.assertEqual(len(second), 3)
        self.assertEqual(second.counters.evictions, 2)
        self.assertEqual(second.peek("n0.test", dns.TXT).state, "absent")
        self.assertEqual(second.peek("n4.test", dns.TXT).state, "fresh")
        second.reconfigure(DNSConfig(servers=self.config.servers, max_entries=1))
        self.assertEqual(len(second), 1)

    @defer.inlineCallbacks
    def test_prefetch_forwarded(self):
        """A mirror's prefetch is the owner's; its answers reach every mirror."""
        self.server.add_a("warm.test", "127.0.0.5")
        yield self.start_owner()
        first, second = yield self.mirrors(2)
        yield first.prefetch(["warm.test", "127.0.0.1"])
        yield self.settle(first, second)
        self.assertEqual(self.cache.peek("warm.test", dns.A).state, "fresh")
        entry = second.peek("warm.test", dns.A)
        self.assertEqual((entry.state, entry.origin), ("fresh", "prefetch"))
        self.assertEqual(self.owner.lookups, 0)

    @defer.inlineCallbacks
    def test_malformed_push_ignored(self):
        """
        Pushes that do not parse or are out of range are logged and
        ignored; the mirror keeps working.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=60)
        yield self.start_owner()
        mirror = yield self.mirror()
        yield mirror.query(NAME, dns.TXT)
        yield self.settle(mirror)
        good = encode_entry((NAME, dns.TXT, dns.IN), self.cache._entries[(NAME, dns.TXT, dns.IN)], self.clock.seconds())
        bad = [
            dict(good, message=b"\x00garbage"),
            dict(good, name="bad name!"),
            dict(good, name="Upper.Test"),
            dict(good, type=0),
            dict(good, negative="maybe"),
            dict(good, age=float("nan")),
            dict(good, expires_in=float("inf")),
            dict(good, origin="evil"),
            dict(good, type=dns.A),  # a positive entry without an A record
        ]
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        [end] = self.owner.mirrors
        for args in bad:
            end.callRemote(Learned, **args)
        # Not even AMP: a box with missing arguments.
        end.callRemoteString(b"Learned", requiresAnswer=False, name=b"x.test")
        # A huge expiry is cut to max_ttl.
        end.callRemote(Learned, **dict(good, expires_in=1e12, name="long.test"))
        yield mirror.sync()
        warnings = [e for e in events if "malformed" in e.get("log_format", "")]
        self.assertEqual(len(warnings), len(bad) + 1)
        self.assertTrue(mirror.connected)
        self.assertEqual(_txt(self.successResultOf(mirror.query(NAME, dns.TXT))), [b"myapp:443"])
        self.assertLessEqual(mirror.peek("long.test", dns.TXT).ttl, self.config.max_ttl + 2)
        self.assertEqual(mirror.peek("upper.test", dns.TXT).state, "absent")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_owner_backing_off_bounds_questions(self):
        """
        When the owner's refresh fails, the mirror serves stale and backs
        off too: hits do not each become a question to the owner.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=10)
        yield self.start_owner()
        mirror = yield self.mirror()
        yield mirror.query(NAME, dns.TXT)
        self.server.set_rcode(NAME, dns.ESERVER)
        self.clock.advance(11)
        for _ in range(20):
            answer = yield mirror.query(NAME, dns.TXT)
            self.assertEqual(answer.state, STALE)
            yield self.settle(mirror)
        self.assertLessEqual(self.owner.lookups, 3)
        self.assertEqual(len(self.server.queries_for(NAME)), 2)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_stale_wait_gets_the_refresh(self):
        """
        With C{stale_wait}, an expired hit in a mirror waits for the
        owner's refresh and gets the new answer, not the stale one.
        """
        self.server.add_txt(NAME, "old:443", ttl=10)
        yield self.start_owner()
        waiting = DNSConfig(servers=self.config.servers, stale_wait=5.0)
        mirror = yield self.mirror(waiting)
        yield mirror.query(NAME, dns.TXT)
        self.server.replace(NAME, dns.TXT, dns.Record_TXT(b"new:443"), ttl=10)
        self.clock.advance(11)
        answer = yield mirror.query(NAME, dns.TXT)
        self.assertEqual(_txt(answer), [b"new:443"])
        self.assertEqual(len(self.server.queries_for(NAME)), 2)

    @defer.inlineCallbacks
    def test_status_and_counters(self):
        """The mirror's counters and entries_status are its own view."""
        self.server.add_txt(NAME, "myapp:443", ttl=60)
        yield self.start_owner()
        mirror = yield self.mirror()
        yield mirror.query(NAME, dns.TXT)
        self.successResultOf(mirror.query(NAME, dns.TXT))
        total, [status] = mirror.entries_status(10)
        self.assertEqual((total, status.name, status.type, status.state, status.hits), (1, NAME, "TXT", "fresh", 1))
        self.assertEqual(mirror.counters.as_dict()["hits"], 1)
        self.assertEqual(mirror.counters.as_dict()["in_flight"], 0)

    def test_stop_unconnected(self):
        """A mirror that never reached an owner stops cleanly; its misses fail at once."""
        mirror = DNSMirror(self.path + ".none", self.config, reactor, self.clock)
        self.failureResultOf(mirror.query("x.test", dns.A)).trap(OwnerUnavailable)
        self.flushLoggedErrors()
        return mirror.stop()


class EncodingTests(SynchronousTestCase):
    """Entries on the wire, with a L{Clock} on each side."""

    def entry(self) -> _Entry:
        record = dns.RRHeader(NAME.encode(), dns.TXT, dns.IN, 60, dns.Record_TXT(b"myapp:443"), auth=True)
        entry = _Entry((record,), (), (), None, 100.0, 60.0, True, Origin.UPSTREAM)
        entry.expires, entry.refresh, entry.planned = 160.0, 154.0, False
        return entry

    def test_relative_times(self):
        """Times travel as seconds from now, whatever each side's clock says."""
        args = encode_entry((NAME, dns.TXT, dns.IN), self.entry(), 110.0)
        self.assertEqual((args["age"], args["expires_in"], args["refresh_in"]), (10.0, 50.0, 44.0))
        key, entry = decode_entry(args, 5000.0, (86400.0, 10.0))
        self.assertEqual(key, (NAME, dns.TXT, dns.IN))
        self.assertEqual((entry.fetched, entry.expires, entry.refresh), (4990.0, 5050.0, 5044.0))
        self.assertEqual((entry.stamp, entry.auth, entry.raw_ttl), (100.0, True, 60.0))
        self.assertEqual([r.ttl for r in entry.records], [60])
        self.assertTrue(entry.records[0].auth)

    def test_clamped(self):
        """A negative entry's expiry is cut to the mirror's max_negative_ttl."""
        entry = self.entry()
        args = dict(encode_entry((NAME, dns.TXT, dns.IN), entry, 110.0), negative="nodata")
        _, decoded = decode_entry(args, 0.0, (86400.0, 10.0))
        self.assertEqual(decoded.expires, 12.0)

    def test_missing_argument(self):
        args = encode_entry((NAME, dns.TXT, dns.IN), self.entry(), 110.0)
        del args["stamp"]
        self.assertRaises(BadEntry, decode_entry, args, 0.0, (86400.0, 10.0))


class _Upstream:
    """An upstream that answers when told to."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def query(self, query):
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


class CacheHookTests(SynchronousTestCase):
    """The two small hooks L{CachingResolver} gained for the shared cache."""

    def setUp(self) -> None:
        from sniproxy.dns.cache import CachingResolver

        self.clock = Clock()
        self.upstream = _Upstream()
        self.cache = CachingResolver(self.upstream, self.clock, min_refresh=0.0)
        self.seen: list = []
        self.cache.listeners.append(lambda key, entry: self.seen.append((key, entry.negative, entry.expires)))

    def answer(self, ttl: int = 60) -> None:
        record = dns.RRHeader(b"a.test", dns.A, dns.IN, ttl, dns.Record_A("127.0.0.1"), auth=True)
        self.upstream.pending.pop(0).callback(([record], [], []))

    def test_listeners_on_store(self):
        """Listeners hear each stored answer (first, refresh), not hits."""
        d = self.cache.query("a.test", dns.A)
        self.answer()
        self.successResultOf(d)
        self.assertEqual(self.seen, [(("a.test", dns.A, dns.IN), None, 60.0)])
        self.successResultOf(self.cache.query("a.test", dns.A))
        self.assertEqual(len(self.seen), 1)
        self.clock.advance(55)
        self.successResultOf(self.cache.query("a.test", dns.A))  # refresh ahead
        self.answer()
        self.assertEqual(self.seen[1], (("a.test", dns.A, dns.IN), None, 115.0))

    def test_listeners_on_negative_and_dropped(self):
        """Negative answers, and answers not worth keeping, are heard too."""
        d = self.cache.query("a.test", dns.A)
        self.upstream.pending.pop(0).callback(([], [], []))
        self.assertEqual(self.successResultOf(d).negative, "nodata")
        d = self.cache.query("b.test", dns.A)
        self.answer(ttl=0)
        self.successResultOf(d)
        self.assertEqual([negative for _, negative, _ in self.seen], ["nodata", None])
        self.assertEqual(self.cache.peek("b.test", dns.A).state, "absent")

    def test_failing_listener_logged(self):
        """A listener that raises is logged; the others and the waiters go on."""
        def broken(key, entry):
            raise RuntimeError("boom")

        self.cache.listeners.insert(0, broken)
        d = self.cache.query("a.test", dns.A)
        self.answer()
        self.successResultOf(d)
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refreshed(self):
        """C{refreshed} joins the query in flight, uncounted; C{None} without one."""
        self.assertIsNone(self.cache.refreshed("a.test", dns.A))
        d = self.cache.query("a.test", dns.A)
        joined = self.cache.refreshed("A.test.", dns.A)
        self.assertNoResult(joined)
        self.answer()
        self.assertEqual(self.successResultOf(joined).records, self.successResultOf(d).records)
        self.assertEqual(self.cache.counters.misses, 1)
        self.assertEqual(self.cache.counters.merged, 0)
