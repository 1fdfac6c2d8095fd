"""
TXT route records through the real DNS layer: a L{CachingResolver} and
its upstream on a L{Clock}, asking the in-process DNS server, whose log
says exactly which queries were sent, in which order.
"""

from __future__ import annotations

import timeit
import tomllib

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import parse_config
from sniproxy.dns.cache import CachingResolver
from sniproxy.dns.upstream import Upstream
from sniproxy.interfaces import Address, IResolver, RouteRefused, RoutingError
from sniproxy.sources.txt import BadValue, TXTResolver, parse_value
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer

APPS = """
[apps.myapp]
backends = ["10.0.0.2", "10.0.0.3:9000"]
proxy_protocol = 1
[apps.other]
backends = ["10.0.1.1"]
[apps.named]
backends = ["instance.apps.test"]
"""

PRIMARY = "_dstack-app-address.shop.example.com"
LEGACY = "_tapp-address.shop.example.com"
WILDCARD = "_dstack-app-address-wildcard.example.com"


class ParseValueTests(TestCase):
    def test_good(self):
        self.assertEqual(parse_value(b"myapp:443"), ("myapp", 443))
        self.assertEqual(parse_value(b"MyApp:1"), ("myapp", 1))
        self.assertEqual(parse_value(b"3327603e03f5bd1f830812ca4a789277fc31f577:65535")[1], 65535)

    def test_bad(self):
        for value in (
            b"myapp",
            b"myapp:",
            b":443",
            b"myapp:0",
            b"myapp:65536",
            b"myapp:443 ",
            b" myapp:443",
            b"myapp:+443",
            b"myapp:http",
            b"my.app:443",
            b"-myapp:443",
            b"127.0.0.1:22",
            b"[::1]:22",
            b"myapp:443:1",
            b"caf\xc3\xa9:443",
            b"",
        ):
            self.assertRaises(BadValue, parse_value, value)


class TXTTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.server.set_soa("example.com", ttl=300, minimum=30)
        upstream = Upstream([self.server.address], timeout=1.0, attempts=2, deadline=3.0, reactor=ClockReactor(reactor, self.clock))
        self.cache = CachingResolver(upstream, self.clock, max_negative_ttl=60, max_stale=0, refresh_ahead=0)
        self.addCleanup(self.cache.stop)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def source(self, txt: str = "") -> TXTResolver:
        config = parse_config(tomllib.loads(f"[routing.txt]\n{txt}\n{APPS}"))
        addresses = AddressResolver(self.cache)
        return TXTResolver(config.routing.txt, self.cache, AppRegistry(config.apps, addresses))

    def queries(self) -> list[tuple[str, str]]:
        return [(q.name, dns.QUERY_TYPES[q.type]) for q in self.server.log]

    def warnings(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace") == "sniproxy.sources.txt"]


class PrimaryTests(TXTTestCase):
    @defer.inlineCallbacks
    def test_one_query_then_none_while_cached(self):
        """
        A custom domain whose primary record exists: one query on the first
        connection, none while it is cached; never a legacy or wildcard
        query.
        """
        self.server.add_txt(PRIMARY, "myapp:8443", ttl=60)
        self.server.add_txt(LEGACY, "other:1", ttl=60)
        self.server.add_txt(WILDCARD, "other:2", ttl=60)
        source = self.source()
        verifyObject(IResolver, source)
        first = yield source.resolve("shop.example.com")
        self.assertEqual(first.backends, (Address("10.0.0.2", 8443), Address("10.0.0.3", 9000)))
        self.assertEqual((first.source, first.app, first.proxy_protocol, first.cache), ("txt", "myapp", 1, "miss"))
        self.assertEqual(first.detail, f'TXT {PRIMARY} = "myapp:8443"')
        self.assertEqual(first.trace, (f"{PRIMARY}. TXT miss ttl=60",))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])
        for _ in range(3):
            self.clock.advance(10)
            # A warm hit is answered synchronously.
            route = self.successResultOf(source.resolve("shop.example.com"))
            self.assertEqual((route.backends, route.cache), (first.backends, "hit"))
        self.assertEqual(route.trace, (f"{PRIMARY}. TXT hit ttl=30",))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])
        self.clock.advance(30)
        route = yield source.resolve("shop.example.com")
        self.assertEqual(route.cache, "miss")
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")] * 2)

    @defer.inlineCallbacks
    def test_character_strings_concatenated(self):
        self.server.add_txt(PRIMARY, "my", "app:", "443")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual(route.backends[0], Address("10.0.0.2", 443))

    @defer.inlineCallbacks
    def test_app_instances_by_host_name(self):
        """An app instance named by host name is resolved through the DNS layer."""
        self.server.add_txt(PRIMARY, "named:443")
        self.server.add_a("instance.apps.test", "10.9.9.9")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual(route.backends, (Address("10.9.9.9", 443),))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT"), ("instance.apps.test", "A")])

    @defer.inlineCallbacks
    def test_servfail_does_not_fall_through(self):
        """
        SERVFAIL on the primary is a routing failure: the legacy record,
        present, is never asked for.
        """
        self.server.set_rcode(PRIMARY, dns.ESERVER)
        self.server.add_txt(LEGACY, "myapp:443")
        error = yield self.assertFailure(self.source().resolve("shop.example.com"), RoutingError)
        self.assertEqual(str(error), f"TXT {PRIMARY} lookup failed: DNSServerError")
        self.assertNotIsInstance(error, RouteRefused)
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])

    @defer.inlineCallbacks
    def test_timeout_does_not_fall_through(self):
        self.server.add_txt(LEGACY, "myapp:443")
        self.server.outage = True
        d = self.source().resolve("shop.example.com")
        yield self.server.wait_for_queries(1)
        self.clock.advance(1)
        yield self.server.wait_for_queries(2)
        self.clock.advance(1)
        error = yield self.assertFailure(d, RoutingError)
        self.assertEqual(str(error), f"TXT {PRIMARY} lookup failed: DNSQueryTimeoutError")
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")] * 2)

    @defer.inlineCallbacks
    def test_stale_primary_keeps_routing(self):
        """With serve-stale, an upstream outage does not stop a known name."""
        self.cache._max_stale = 3600
        self.server.add_txt(PRIMARY, "myapp:443", ttl=10)
        source = self.source()
        yield source.resolve("shop.example.com")
        self.server.outage = True
        self.clock.advance(20)
        route = self.successResultOf(source.resolve("shop.example.com"))
        self.assertEqual((route.app, route.cache), ("myapp", "stale"))
        self.assertEqual(self.queries()[-1], (PRIMARY, "TXT"))
        self.clock.advance(3)  # let the background refresh time out
        yield self.cache.when_idle()


class FallbackTests(TXTTestCase):
    @defer.inlineCallbacks
    def test_legacy_only_after_primary_answered(self):
        """
        Primary NXDOMAIN and a legacy record: the legacy query goes out
        only once the primary's answer has arrived, the route works, and
        the second connection sends no query.
        """
        self.server.add_txt(LEGACY, "myapp:443", ttl=300)
        self.server.set_delay(PRIMARY, 0.5)
        source = self.source()
        d = source.resolve("shop.example.com")
        yield self.server.wait_for_queries(1)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])
        self.assertNoResult(d)
        self.clock.advance(0.5)
        route = yield d
        self.assertEqual([(q.name, q.time) for q in self.server.log], [(PRIMARY, 0.0), (LEGACY, 0.5)])
        self.assertEqual((route.app, route.backends[0], route.cache), ("myapp", Address("10.0.0.2", 443), "miss"))
        self.assertEqual(route.detail, f'TXT {LEGACY} = "myapp:443"')
        self.assertEqual(route.trace, (f"{PRIMARY}. TXT miss nxdomain ttl=30", f"{LEGACY}. TXT miss ttl=300"))
        self.clock.advance(10)
        second = yield source.resolve("shop.example.com")
        self.assertEqual(second.backends, route.backends)
        self.assertEqual(second.cache, "hit")
        self.assertEqual(second.trace, (f"{PRIMARY}. TXT negative nxdomain ttl=20", f"{LEGACY}. TXT hit ttl=290"))
        self.assertEqual(len(self.server.log), 2)

    @defer.inlineCallbacks
    def test_nodata_primary_falls_back(self):
        """NODATA (the owner exists without TXT) is "no record" too."""
        self.server.add_a(PRIMARY, "10.0.0.9")
        self.server.add_txt(LEGACY, "other:443")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual(route.app, "other")
        self.assertEqual(route.trace[0], f"{PRIMARY}. TXT miss nodata ttl=30")

    @defer.inlineCallbacks
    def test_wildcard_last(self):
        self.server.add_txt(WILDCARD, "other:8443")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual((route.app, route.backends), ("other", (Address("10.0.1.1", 8443),)))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT"), (LEGACY, "TXT"), (WILDCARD, "TXT")])
        self.assertEqual(route.detail, f'TXT {WILDCARD} = "other:8443"')

    @defer.inlineCallbacks
    def test_no_record_anywhere(self):
        """Three queries, in order; then nothing while the negative answers last."""
        source = self.source()
        self.assertIsNone((yield source.resolve("shop.example.com")))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT"), (LEGACY, "TXT"), (WILDCARD, "TXT")])
        self.clock.advance(29)
        self.assertIsNone(self.successResultOf(source.resolve("shop.example.com")))
        self.assertEqual(len(self.server.log), 3)

    @defer.inlineCallbacks
    def test_single_label_has_no_wildcard(self):
        self.assertIsNone((yield self.source().resolve("localhost")))
        self.assertEqual(self.queries(), [("_dstack-app-address.localhost", "TXT"), ("_tapp-address.localhost", "TXT")])

    @defer.inlineCallbacks
    def test_legacy_and_wildcard_switched_off(self):
        self.server.add_txt(LEGACY, "myapp:443")
        self.server.add_txt(WILDCARD, "myapp:443")
        source = self.source('legacy_prefix = ""\nwildcard_prefix = ""')
        self.assertIsNone((yield source.resolve("shop.example.com")))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])

    @defer.inlineCallbacks
    def test_custom_prefixes(self):
        self.server.add_txt("_route.shop.example.com", "myapp:443")
        source = self.source('prefix = "_route"\nlegacy_prefix = "_old"\nwildcard_prefix = ""')
        self.assertIsNone((yield source.resolve("www.example.com")))
        self.assertEqual(self.queries(), [("_route.www.example.com", "TXT"), ("_old.www.example.com", "TXT")])
        self.assertEqual((yield source.resolve("shop.example.com")).app, "myapp")

    @defer.inlineCallbacks
    def test_legacy_servfail_stops(self):
        self.server.set_rcode(LEGACY, dns.ESERVER)
        self.server.add_txt(WILDCARD, "myapp:443")
        error = yield self.assertFailure(self.source().resolve("shop.example.com"), RoutingError)
        self.assertIn(LEGACY, str(error))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT"), (LEGACY, "TXT")])

    @defer.inlineCallbacks
    def test_long_names_skip_lookups_that_cannot_exist(self):
        """A legacy or wildcard owner longer than a DNS name is no record, not an error."""
        name = ".".join(["a" * 63] * 3 + ["b" * 50]) + ".com"
        self.assertLessEqual(len(name), 253)
        parent = name.partition(".")[2]
        source = self.source('prefix = "p"\nlegacy_prefix = "_tapp-address"')
        route = yield source.resolve(name)
        self.assertIsNone(route)
        self.assertEqual(self.queries(), [("p." + name, "TXT"), (f"_dstack-app-address-wildcard.{parent}", "TXT")])
        self.server.reset_log()
        # With the default prefixes only the wildcard owner fits, and its
        # negative answer is cached: nothing is sent.
        self.assertIsNone((yield self.source().resolve(name)))
        self.assertEqual(self.queries(), [])

    @defer.inlineCallbacks
    def test_cancel_abandons_the_lookup_only(self):
        """
        Cancelling a route lookup cancels its DNS wait, not the query
        another connection waits for.
        """
        self.server.add_txt(PRIMARY, "myapp:443")
        self.server.set_delay(PRIMARY, 0.5)
        source = self.source()
        first, second = source.resolve("shop.example.com"), source.resolve("shop.example.com")
        yield self.server.wait_for_queries(1)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.clock.advance(0.5)
        self.assertEqual((yield second).app, "myapp")
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])


class RefusalTests(TXTTestCase):
    """Not an open relay: only registered apps, and bad values named."""

    @defer.inlineCallbacks
    def refused(self, *strings: str, error=RouteRefused) -> defer.Deferred:
        self.server.add_txt(PRIMARY, *strings)
        failure = yield self.assertFailure(self.source().resolve("shop.example.com"), error)
        return str(failure)

    @defer.inlineCallbacks
    def test_unregistered_app(self):
        reason = yield self.refused("nosuchapp:443")
        self.assertEqual(
            reason, f"TXT {PRIMARY} = \"nosuchapp:443\": app 'nosuchapp' is not registered (only [apps] ids can be routed to)"
        )

    @defer.inlineCallbacks
    def test_localhost_is_just_an_unregistered_id(self):
        reason = yield self.refused("localhost:22")
        self.assertIn('"localhost:22": app \'localhost\' is not registered', reason)

    @defer.inlineCallbacks
    def test_ip_literal(self):
        reason = yield self.refused("127.0.0.1:22")
        self.assertEqual(reason, f'TXT {PRIMARY} = "127.0.0.1:22": not <app-id>:<port>: "127.0.0.1" is not an app id (a DNS label)')

    @defer.inlineCallbacks
    def test_bad_port_is_a_routing_failure(self):
        reason = yield self.refused("myapp:0", error=RoutingError)
        self.assertEqual(reason, f'TXT {PRIMARY} = "myapp:0": not <app-id>:<port>: port "0" is not a number in 1-65535')

    @defer.inlineCallbacks
    def test_control_characters_escaped(self):
        reason = yield self.refused("myapp:443\n\x1b[31m", error=RoutingError)
        self.assertNotIn("\n", reason)
        self.assertNotIn("\x1b", reason)

    @defer.inlineCallbacks
    def test_refusal_on_a_warm_hit(self):
        """A refusal is as definite from the cache, synchronously."""
        self.server.add_txt(PRIMARY, "localhost:22")
        source = self.source()
        yield self.assertFailure(source.resolve("shop.example.com"), RouteRefused)
        self.failureResultOf(source.resolve("shop.example.com"), RouteRefused)
        self.assertEqual(len(self.server.log), 1)

    @defer.inlineCallbacks
    def test_refused_primary_does_not_fall_through(self):
        """A bad primary record is a decision: the legacy record is not asked."""
        self.server.add_txt(LEGACY, "myapp:443")
        yield self.refused("nosuchapp:443")
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])


class SeveralRecordsTests(TXTTestCase):
    @defer.inlineCallbacks
    def test_agreeing_records_no_warning(self):
        self.server.add_txt(PRIMARY, "myapp:443")
        self.server.add_txt(PRIMARY, "MyApp:443")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual(route.app, "myapp")
        self.assertEqual(self.warnings(), [])

    @defer.inlineCallbacks
    def test_smallest_wins_whatever_the_order(self):
        """
        Disagreeing records: the smallest (app id, port) wins, in either
        order; one warning naming the SNI, not one per connection.
        """
        for order in (("other:443", "myapp:8443"), ("myapp:8443", "other:443")):
            self.server.remove(PRIMARY)
            for value in order:
                self.server.add_txt(PRIMARY, value, ttl=60)
            self.events.clear()
            source = self.source()
            route = yield source.resolve("shop.example.com")
            self.assertEqual((route.app, route.backends[0].port), ("myapp", 8443))
            self.successResultOf(source.resolve("shop.example.com"))
            [warning] = self.warnings()
            self.assertEqual(warning["sni"], "shop.example.com")
            self.assertEqual(warning["values"], '"myapp:8443", "other:443"')
            self.assertEqual(warning["chosen"], '"myapp:8443"')
            self.clock.advance(60)

    @defer.inlineCallbacks
    def test_a_usable_record_beats_a_bad_one(self):
        self.server.add_txt(PRIMARY, "localhost:22")
        self.server.add_txt(PRIMARY, "other:443")
        route = yield self.source().resolve("shop.example.com")
        self.assertEqual(route.app, "other")
        self.assertEqual(len(self.warnings()), 1)

    @defer.inlineCallbacks
    def test_all_bad_names_the_first(self):
        self.server.add_txt(PRIMARY, "zzz:443")
        self.server.add_txt(PRIMARY, "aaa:443")
        failure = yield self.assertFailure(self.source().resolve("shop.example.com"), RouteRefused)
        self.assertIn('"aaa:443"', str(failure))


class WarmPathTests(TXTTestCase):
    @defer.inlineCallbacks
    def test_warm_hit_is_cheap(self):
        """
        A warm hit on the primary record (every DNS-routed connection, in
        the common case) stays in the tens of microseconds.
        """
        self.server.add_txt(PRIMARY, "myapp:443", ttl=3600)
        source = self.source()
        yield source.resolve("shop.example.com")
        number = 2000
        seconds = min(timeit.repeat(lambda: source.resolve("shop.example.com"), number=number, repeat=3)) / number
        self.assertLess(seconds, 100e-6)
