"""
The DNS cache file (issue 12, part 2): saving, loading, and bad files.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import TestCase

from sniproxy.dns.cache import CacheState, CachingResolver
from sniproxy.dns.persist import FORMAT, load_cache, save_cache
from sniproxy.dns.service import DNSService
from sniproxy.dns.upstream import Upstream
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer


class PersistTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_590_000)  # Unix time, as the reactor gives it
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.server.set_soa("test", ttl=300, minimum=30)
        self.path = os.path.abspath(self.mktemp())
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def cache(self, **settings: Any) -> CachingResolver:
        upstream = Upstream([self.server.address], reactor=ClockReactor(reactor, self.clock))
        settings.setdefault("max_negative_ttl", 30)
        cache = CachingResolver(upstream, self.clock, **settings)
        self.addCleanup(cache.stop)
        return cache

    def warnings(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    @defer.inlineCallbacks
    def filled(self, **settings: Any) -> CachingResolver:
        self.server.add_txt("_dstack-app-address.a.test", "app:443", ttl=60)
        self.server.add_cname("b.test", "c.test", ttl=300)
        self.server.add_a("c.test", "127.0.0.1", ttl=10)
        cache = self.cache(**settings)
        yield cache.query("_dstack-app-address.a.test", dns.TXT)
        yield cache.query("b.test", dns.A)
        yield cache.query("missing.test", dns.TXT)
        cache.query("_dstack-app-address.a.test", dns.TXT)  # most recently used
        return cache


class SaveLoadTests(PersistTestCase):
    @defer.inlineCallbacks
    def test_round_trip(self) -> None:
        """
        Saved atomically with mode 0600, loaded in the same LRU order; the
        loaded entries answer at once, with what is left of their TTLs,
        without asking upstream.
        """
        cache = yield self.filled()
        self.assertEqual(save_cache(cache, self.path, self.clock.seconds()), 3)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(
            [n for n in os.listdir(os.path.dirname(self.path)) if n.endswith(".tmp")], []
        )
        with open(self.path) as f:
            document = json.load(f)
        self.assertEqual((document["format"], document["version"]), (FORMAT, 1))
        self.assertEqual(
            [e["name"] for e in document["entries"]], ["_dstack-app-address.a.test", "missing.test", "b.test"]
        )
        self.clock.advance(5)
        fresh = self.cache()
        self.assertEqual(load_cache(fresh, self.path, 100), 3)
        before = len(self.server.log)
        txt = self.successResultOf(fresh.query("_dstack-app-address.a.test", dns.TXT))
        self.assertEqual((txt.state, txt.ttl, [r.ttl for r in txt.records]), (CacheState.HIT, 55, [55]))
        self.assertEqual(txt.records[0].payload.data, [b"app:443"])
        chain = self.successResultOf(fresh.query("b.test", dns.A))
        self.assertEqual([(r.type, r.ttl) for r in chain.records], [(dns.CNAME, 5), (dns.A, 5)])
        negative = self.successResultOf(fresh.query("missing.test", dns.TXT))
        self.assertEqual((negative.state, negative.negative), (CacheState.NEGATIVE, "nxdomain"))
        self.assertEqual(len(self.server.log), before)
        self.assertEqual({e.name: e.origin for e in fresh.entries_status(10)[1]}["b.test"], "file")
        self.assertEqual(fresh.peek("b.test", dns.A).origin, "file")

    @defer.inlineCallbacks
    def test_expired_served_stale_then_refreshed(self) -> None:
        """
        An entry past expiry but within max_stale is served stale at once
        after loading, even with stale_wait set, while a refresh runs.
        """
        cache = yield self.filled()
        save_cache(cache, self.path, self.clock.seconds())
        self.clock.advance(120)
        fresh = self.cache(stale_wait=1.0, max_stale=3600)
        load_cache(fresh, self.path, 100)
        before = len(self.server.queries_for("_dstack-app-address.a.test"))
        answer = self.successResultOf(fresh.query("_dstack-app-address.a.test", dns.TXT))
        self.assertEqual(answer.state, CacheState.STALE)
        self.assertEqual(fresh.counters.in_flight, 1)
        yield fresh.when_idle()
        self.assertEqual(len(self.server.queries_for("_dstack-app-address.a.test")), before + 1)
        answer = self.successResultOf(fresh.query("_dstack-app-address.a.test", dns.TXT))
        self.assertEqual((answer.state, answer.ttl), (CacheState.HIT, 60))

    @defer.inlineCallbacks
    def test_past_max_stale_dropped(self) -> None:
        cache = yield self.filled(max_stale=100)
        save_cache(cache, self.path, self.clock.seconds())
        self.clock.advance(200)
        fresh = self.cache(max_stale=100)
        # Every entry expired within 60 s: 200 s on, all are past max_stale.
        self.assertEqual(load_cache(fresh, self.path, 100), 0)

    @defer.inlineCallbacks
    def test_bounded_by_max_entries(self) -> None:
        """Loading keeps the most recently used C{max_entries}."""
        cache = yield self.filled()
        save_cache(cache, self.path, self.clock.seconds())
        fresh = self.cache(max_entries=2)
        self.assertEqual(load_cache(fresh, self.path, 2), 2)
        self.assertEqual(
            {e.name for e in fresh.entries_status(10)[1]}, {"_dstack-app-address.a.test", "missing.test"}
        )

    @defer.inlineCallbacks
    def test_unwritable(self) -> None:
        """A save that cannot be written raises OSError and leaves no temporary file."""
        cache = yield self.filled()
        missing = os.path.join(self.path, "no-such-dir", "cache.json")
        self.assertRaises(OSError, save_cache, cache, missing, 0.0)


class BadFileTests(PersistTestCase):
    """Each bad file: one warning naming the file and the reason, a cold start."""

    def check(self, reason: str, max_entries: int = 100) -> None:
        cache = self.cache(max_entries=max_entries)
        self.assertEqual(load_cache(cache, self.path, max_entries), 0)
        self.assertEqual(len(cache), 0)
        [warning] = self.warnings()
        self.assertIn(self.path, warning)
        self.assertIn(reason, warning)
        self.assertNotIn("Traceback", warning)
        self.assertEqual(self.flushLoggedErrors(), [])

    def write(self, data: bytes | str) -> None:
        with open(self.path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    @defer.inlineCallbacks
    def good(self) -> dict[str, Any]:
        cache = yield self.filled()
        save_cache(cache, self.path, self.clock.seconds())
        with open(self.path) as f:
            return json.load(f)

    def test_missing(self) -> None:
        self.check("no such file")

    def test_unreadable(self) -> None:
        os.mkdir(self.path)
        self.check("cannot read it")

    @defer.inlineCallbacks
    def test_truncated(self) -> None:
        yield self.good()
        with open(self.path, "rb") as f:
            data = f.read()
        self.write(data[: len(data) // 2])
        self.events.clear()
        self.check("not valid JSON")

    def test_corrupt(self) -> None:
        self.write(b"\x00\xffgarbage{")
        self.check("not valid JSON")

    @defer.inlineCallbacks
    def test_corrupt_entries(self) -> None:
        document = yield self.good()
        cases = [
            ("name", "bad name!.test", "not a valid host name"),
            ("name", "a" * 300, "not a valid host name"),
            ("type", 0, "out of range"),
            ("type", "TXT", "type is missing or not valid"),
            ("fetched", "later", "not a finite number"),
            ("raw_ttl", -5, "out of range"),
            ("negative", "maybe", "negative is not valid"),
            ("message", "!!!", "not base64"),
            ("message", "AAAA", "does not parse"),
            ("hits", True, "hits is not valid"),
        ]
        for field, value, reason in cases:
            broken = json.loads(json.dumps(document))
            broken["entries"][1][field] = value
            self.write(json.dumps(broken))
            self.events.clear()
            self.check(reason)

    @defer.inlineCallbacks
    def test_foreign_version(self) -> None:
        document = yield self.good()
        document["version"] = 2
        self.write(json.dumps(document))
        self.events.clear()
        self.check("version 2 is not 1")
        self.write(json.dumps({"format": "other", "entries": []}))
        self.events.clear()
        self.check("not a sniproxy DNS cache file")

    @defer.inlineCallbacks
    def test_ten_times_max_entries(self) -> None:
        document = yield self.good()
        document["entries"] = document["entries"][:1] * 30
        self.write(json.dumps(document))
        self.events.clear()
        self.check("names 30 entries, more than twice dns.max_entries (3)", max_entries=3)

    def test_deep_nesting(self) -> None:
        """JSON nested past the parser's recursion limit is corrupt, not a crash."""
        self.write(b"[" * 100_000)
        self.check("not valid JSON")

    @defer.inlineCallbacks
    def test_huge_numbers(self) -> None:
        document = yield self.good()
        for field in ("fetched", "raw_ttl"):
            broken = json.loads(json.dumps(document))
            broken["entries"][1][field] = 10**400
            self.write(json.dumps(broken))
            self.events.clear()
            self.check("not a finite number")

    @defer.inlineCallbacks
    def test_saved_in_the_future(self) -> None:
        """An entry fetched after now (a clock that was ahead) is not loaded as fresh."""
        document = yield self.good()
        for item in document["entries"]:
            item["fetched"] += 30 * 86400
        self.write(json.dumps(document))
        cache = self.cache()
        self.assertEqual(load_cache(cache, self.path, 100), 0)
        self.assertEqual(len(cache), 0)

    def test_too_large(self) -> None:
        self.write(b" " * (2 << 20))
        self.check("larger than", max_entries=1)


class ServiceTests(PersistTestCase):
    @defer.inlineCallbacks
    def test_saves_every_interval_and_at_stop(self) -> None:
        cache = yield self.filled()
        service = DNSService(cache, cache_file=self.path, save_interval=60, clock=self.clock)
        service.startService()
        self.assertEqual(service.loaded, 0)  # no file yet: a warning, a cold start
        self.assertFalse(os.path.exists(self.path))
        self.clock.advance(60)
        with open(self.path) as f:
            self.assertEqual(len(json.load(f)["entries"]), 3)
        os.unlink(self.path)
        yield service.stopService()
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_threaded_save(self) -> None:
        """With a reactor, the file is written in its thread pool; a stop waits for the write."""
        cache = yield self.filled()
        service = DNSService(cache, cache_file=self.path, save_interval=60, clock=self.clock, reactor=reactor)
        service.startService()
        first = service.save()
        second = service.save()  # waits for the first, then writes again
        self.assertEqual((yield first), True)
        self.assertEqual((yield second), True)
        os.unlink(self.path)
        yield service.stopService()
        with open(self.path) as f:
            self.assertEqual(len(json.load(f)["entries"]), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = DNSService(self.cache(), cache_file=self.path, clock=self.clock)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual(again.loaded, 3)

    @defer.inlineCallbacks
    def test_save_failure_is_one_warning(self) -> None:
        cache = yield self.filled()
        path = os.path.join(self.path, "missing-dir", "c.json")
        service = DNSService(cache, cache_file=path, clock=self.clock)
        self.assertFalse(self.successResultOf(service.save()))
        [warning] = self.warnings()
        self.assertIn(path, warning)
        self.assertEqual(self.flushLoggedErrors(), [])


class ExplainTests(PersistTestCase):
    @defer.inlineCallbacks
    def test_explain_shows_file_entries(self) -> None:
        """C{explain} says which DNS answers came from the cache file."""
        import tomllib

        from sniproxy.config import parse_config
        from sniproxy.explain import explain, render
        from sniproxy.service import build_router

        self.server.add_txt("_dstack-app-address.shop.test", "myapp:443", ttl=60)
        cache = self.cache()
        yield cache.query("_dstack-app-address.shop.test", dns.TXT)
        save_cache(cache, self.path, self.clock.seconds())
        fresh = self.cache()
        load_cache(fresh, self.path, 100)
        config = parse_config(
            tomllib.loads('[routing]\nsources = ["txt"]\n[apps.myapp]\nbackends = ["127.0.0.1:8443"]\n')
        )
        result = yield explain(lambda dns_: build_router(config, self.clock, dns_), fresh, "shop.test")
        self.assertEqual([(n["state"], n["origin"]) for n in result["dns"]], [("hit", "file")])
        self.assertIn("[hit, from the cache file, 60s left]", render(result))
