"""
The DNS layer's status surface (contract 3), its config keys, its guarded
Twisted internals, and reconfiguring a live cache.
"""

from __future__ import annotations

import tomllib
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import TestCase

from sniproxy.config import ConfigError, DNSConfig, parse_config
from sniproxy.dns import build_dns, reconfigure_dns
from sniproxy.dns import cache as cache_module
from sniproxy.dns.cache import CacheState, CachingResolver, EntryStatus, Origin
from sniproxy.dns.upstream import Upstream
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer


class StatusTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.network = ClockReactor(reactor, self.clock)

    def cache(self, **settings: Any) -> CachingResolver:
        upstream = Upstream([self.server.address], reactor=self.network)
        cache = CachingResolver(upstream, self.clock, **settings)
        self.addCleanup(cache.stop)
        return cache


class EntriesStatusTests(StatusTestCase):
    @defer.inlineCallbacks
    def test_entries_status(self) -> None:
        """Most used first, at most C{limit}, with state, TTL left, hits and origin."""
        self.server.add_txt("a.test", "x", ttl=60)
        self.server.add_txt("b.test", "y", ttl=5)
        cache = self.cache(refresh_ahead=0, max_stale=100, max_negative_ttl=60)
        yield cache.query("a.test", dns.TXT)
        yield cache.query("b.test", dns.TXT)
        yield cache.query("missing.test", dns.A)
        yield cache.prefetch(["c.test"], (dns.A,))
        for _ in range(3):
            cache.query("b.test", dns.TXT)
        cache.query("a.test", dns.TXT)
        self.clock.advance(10)
        total, entries = cache.entries_status(3)
        self.assertEqual(total, 4)
        self.assertEqual(
            entries[:2],
            [
                EntryStatus("b.test", "TXT", "stale", -5.0, 3, "upstream"),
                EntryStatus("a.test", "TXT", "fresh", 50.0, 1, "upstream"),
            ],
        )
        self.assertEqual(len(entries), 3)
        _, every = cache.entries_status(100)
        self.assertEqual({e.name: (e.state, e.origin) for e in every}["c.test"], ("negative", "prefetch"))
        self.assertEqual({e.name: e.state for e in every}["missing.test"], "negative")
        d = cache.query("b.test", dns.TXT)  # stale: starts a refresh
        self.assertEqual(cache.counters.in_flight, 1)
        self.assertEqual(cache.entries_status(1)[1][0].state, "refreshing")
        yield d
        yield cache.when_idle()
        self.assertEqual(cache.counters.in_flight, 0)
        self.assertEqual(cache.entries_status(0), (4, []))

    def test_enum_values(self) -> None:
        """The states are today's strings, in str() and f-strings too."""
        self.assertEqual([s.value for s in CacheState], ["hit", "miss", "stale", "negative", "merged"])
        self.assertEqual((str(CacheState.HIT), f"{CacheState.STALE}", CacheState.MISS == "miss"), ("hit", "stale", True))
        self.assertEqual([o.value for o in Origin], ["upstream", "file", "prefetch"])


class InternalsTests(TestCase):
    def test_rrheader_copy(self) -> None:
        """The fast RRHeader copy is in use on this Twisted, and agrees with the public one."""
        self.assertTrue(cache_module._rrheader_copy_works())
        self.assertIs(cache_module._aged, cache_module._aged_fast)
        record = dns.RRHeader(b"a.test", dns.TXT, dns.IN, 60, dns.Record_TXT(b"x"), auth=True)
        for aged in (cache_module._aged_fast, cache_module._aged_public):
            [copy] = aged((record,), 10)
            self.assertEqual((copy.name, copy.ttl, copy.auth, copy.payload), (record.name, 10, True, record.payload))
            self.assertEqual(record.ttl, 60)

    def test_client_internals(self) -> None:
        """Twisted's client still has what the upstream's adapters rely on."""
        from twisted.names import client

        self.assertTrue(callable(getattr(client.Resolver, "_lookup", None)))
        protocol = dns.DNSDatagramProtocol(None)
        protocol.startProtocol()
        self.assertEqual(protocol.liveMessages, {})


class ConfigTests(TestCase):
    def parse(self, text: str) -> DNSConfig:
        return parse_config(tomllib.loads(text)).dns

    def test_defaults(self) -> None:
        config = self.parse("")
        self.assertEqual((config.min_refresh, config.cache_file, config.cache_save_interval), (1.0, "", 60.0))

    def test_values(self) -> None:
        config = self.parse('[dns]\nmin_refresh = 0\ncache_file = "/tmp/x.json"\ncache_save_interval = 5\n')
        self.assertEqual((config.min_refresh, config.cache_file, config.cache_save_interval), (0.0, "/tmp/x.json", 5.0))

    def test_bad_values(self) -> None:
        for text, key in [
            ("min_refresh = -1", "dns.min_refresh"),
            ('min_refresh = "1s"', "dns.min_refresh"),
            ("cache_file = 3", "dns.cache_file"),
            ("cache_save_interval = 0", "dns.cache_save_interval"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse("[dns]\n" + text)
            self.assertIn(key, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))


class ReconfigureTests(StatusTestCase):
    @defer.inlineCallbacks
    def test_reclamp_lazily(self) -> None:
        """New clamps apply to entries already held, on their next use."""
        self.server.add_txt("a.test", "x", ttl=600)
        cache = self.cache(max_ttl=600)
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual(answer.ttl, 600)
        cache.configure(max_ttl=100)
        self.clock.advance(50)
        answer = self.successResultOf(cache.query("a.test", dns.TXT))
        self.assertEqual((answer.state, answer.ttl), (CacheState.HIT, 50))
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(cache.query("a.test", dns.TXT)).state, CacheState.STALE)

    @defer.inlineCallbacks
    def test_shrink_evicts_lru(self) -> None:
        for name in "abcd":
            self.server.add_txt(f"{name}.test", name)
        cache = self.cache()
        for name in "abcd":
            yield cache.query(f"{name}.test", dns.TXT)
        cache.query("a.test", dns.TXT)  # a is now the most recently used
        cache.configure(max_entries=2)
        self.assertEqual([e.name for e in cache.entries_status(10)[1]], ["a.test", "d.test"])
        self.assertEqual(cache.counters.evictions, 2)
        self.assertRaises(ValueError, cache.configure, max_entries=0)
        self.assertRaises(ValueError, cache.configure, servers=())

    @defer.inlineCallbacks
    def test_servers_change(self) -> None:
        """
        A new server list swaps the upstream (the old one is stopped once
        idle); entries are kept.
        """
        self.server.add_txt("a.test", "x")
        dead = DNSServer(clock=self.clock)
        dead.start()
        dead.outage = True
        self.addCleanup(dead.stop)
        old = DNSConfig(servers=(dead.address,), timeout=0.5, attempts=1, deadline=1.0)
        cache = build_dns(old, self.network, self.clock)
        self.addCleanup(cache.stop)
        d = cache.query("b.test", dns.TXT)
        yield dead.wait_for_queries(1)
        self.clock.advance(1.0)
        self.failureResultOf(d)
        new = DNSConfig(servers=(self.server.address,), max_entries=5)
        first = cache.upstream
        changed = reconfigure_dns(cache, old, new, self.network)
        self.assertEqual(changed, ["servers", "timeout", "attempts", "deadline", "max_entries"])
        self.assertIsNot(cache.upstream, first)
        self.assertTrue(first._stopped)
        self.clock.advance(2.0)  # past the failure back-off
        answer = yield cache.query("a.test", dns.TXT)
        self.assertEqual(answer.state, CacheState.MISS)
        same = cache.upstream
        reconfigure_dns(cache, new, new, self.network)
        self.assertIs(cache.upstream, same)
        self.assertEqual(len(cache), 1)


class CacheFileOptionTests(TestCase):
    """twistd's --dns-cache-file (what the shipped units pass) wins over the config, reloads included."""

    def test_option_and_reload(self) -> defer.Deferred[Any]:
        from sniproxy.config import load_config
        from sniproxy.service import ProxyService
        from sniproxy.tap import Options

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[dns]\nservers = ["127.0.0.1:53"]\ncache_file = "/nonexistent/a.json"\n')
        options = Options()
        options.parseOptions(["--config", path, "--dns-cache-file", "/tmp/b.json"])
        self.assertEqual(options.loaded.dns.cache_file, "/tmp/b.json")
        plain = Options()
        plain.parseOptions(["--config", path])
        self.assertEqual(plain.loaded.dns.cache_file, "/nonexistent/a.json")
        service = ProxyService(load_config(path), dns_cache_file="/tmp/b.json")
        self.addCleanup(service.dns.stop)
        self.assertEqual(service.dns_service.cache_file, "/tmp/b.json")
        self.assertTrue(service.reload())
        self.assertEqual((service.config.dns.cache_file, service.dns_service.cache_file), ("/tmp/b.json", "/tmp/b.json"))
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in service.ports.values()])
