"""
Synchronous routing answers: a static IP-literal route, or a name nothing
matches, is decided without a Deferred; everything else takes the usual
Deferred path, with the same answer.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sniproxy.deferreds import PENDING
from sniproxy.interfaces import Address, Route
from sniproxy.routing import Router
from sniproxy.sources.chain import FallbackChain

from tests.test_sources_chain import Scripted
from tests.test_sources_static import MAP, static

FALLBACK = Route(backends=(Address("127.0.0.1", 7),), source="fallback")


class ResolveNowTests(SynchronousTestCase):
    def setUp(self):
        self.source = static(MAP)

    def test_static_literal_routes(self):
        route = self.source.resolve_now("a.example.com")
        self.assertEqual(route, self.successResultOf(self.source.resolve("a.example.com")))
        self.assertEqual(route.backends, (Address("127.0.0.1", 2),))
        self.assertEqual(self.source.resolve_now("exact.deep.example.com").proxy_protocol, 2)

    def test_static_no_match(self):
        self.assertIsNone(self.source.resolve_now("nothing.test"))

    def test_static_app_needs_resolve(self):
        self.assertIs(self.source.resolve_now("x.app.example"), PENDING)

    def test_chain_of_synchronous_sources(self):
        chain = FallbackChain([static(MAP), static('[routing.static]\n"other.test" = "127.0.0.1:5"\n')])
        self.assertEqual(chain.resolve_now("other.test").backends, (Address("127.0.0.1", 5),))
        self.assertIsNone(chain.resolve_now("nothing.test"))
        self.assertIs(chain.resolve_now("x.app.example"), PENDING)

    def test_chain_stops_at_a_source_without_resolve_now(self):
        later = Scripted("later", "wait")
        chain = FallbackChain([static(MAP), later])
        # Answered by the static map before the other source is reached.
        self.assertEqual(chain.resolve_now("a.example.com").source, "static")
        # Not answered by it: only resolve() can say; the other source is not asked here.
        self.assertIs(chain.resolve_now("nothing.test"), PENDING)
        self.assertEqual(later.asked, [])


class DecideTests(SynchronousTestCase):
    def test_synchronous_route(self):
        router = Router(FallbackChain([static(MAP)]), Clock())
        self.assertEqual(router.decide("a.example.com").backends, (Address("127.0.0.1", 2),))
        self.assertIsNone(router.decide("nothing.test"))
        self.assertEqual(router.pending, {})

    def test_fallback(self):
        router = Router(FallbackChain([static(MAP)]), Clock(), fallback=FALLBACK)
        self.assertIs(router.decide("nothing.test"), FALLBACK)
        self.assertIs(router.decide(None), FALLBACK)
        self.assertIsNone(Router(FallbackChain([static(MAP)]), Clock()).decide(None))

    def test_asynchronous_path_is_route(self):
        clock = Clock()
        later = Scripted("later", "wait")
        router = Router(FallbackChain([static(MAP), later]), clock, timeout=2.0)
        d = router.decide("nothing.test")
        self.assertIsInstance(d, Deferred)
        self.assertEqual(router.pending, {"nothing.test": 1})
        later.pending[0].callback(FALLBACK)
        self.assertIs(self.successResultOf(d), FALLBACK)

    def test_source_without_resolve_now(self):
        router = Router(Scripted("only", FALLBACK), Clock())
        d = router.decide("a.test")
        self.assertIsInstance(d, Deferred)
        self.assertIs(self.successResultOf(d), FALLBACK)


class ProxySynchronousRouteTests(SynchronousTestCase):
    """The proxy takes a synchronous answer as it would the Deferred's."""

    def harness(self):
        from tests.test_connection import ROUTE, Harness, Source

        class Now(Source):
            def resolve_now(self, server_name):
                self.asked.append(server_name)
                return self.answers.get(server_name)

        harness = Harness(self, Now({"shop.example.com": ROUTE}))
        return harness

    def test_relayed_without_resolve(self):
        from tests.test_connection import HELLO

        harness = self.harness()
        connection, client, backend = harness.relayed()
        self.assertEqual(harness.source.asked, ["shop.example.com"])  # once, by resolve_now
        self.assertEqual(backend.value(), HELLO)
        client.lose()
        backend.lose()
        [record] = harness.records
        self.assertEqual((record.outcome.value, record.source), ("relayed", "static"))
        self.assertIsNotNone(record.route_seconds)

    def test_a_bug_after_a_synchronous_answer_is_an_internal_error(self):
        from sniproxy import alerts
        from tests.test_connection import HELLO, alert

        harness = self.harness()

        class Broken:
            def admit(self, route, alpn):
                raise RuntimeError("bug")

        harness.factory.board = Broken()
        connection, client = harness.accept()
        connection.dataReceived(HELLO)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(client.disconnecting)
        client.lose()
        self.assertEqual(harness.records[0].outcome.value, "internal error")


class WarmDNSDecisionTests(TestCase):
    """
    Warm TXT routes are decided without a Deferred, against the real DNS
    layer and the in-process DNS server: each cached record is counted
    once per connection, and nothing is asked twice when the chain has to
    go on asynchronously.
    """

    def setUp(self):
        from twisted.internet import reactor

        from sniproxy.dns.cache import CachingResolver
        from sniproxy.dns.upstream import Upstream
        from sniproxy.testing.clock import ClockReactor
        from sniproxy.testing.dns import DNSServer

        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.server.set_soa("example.com", ttl=300, minimum=60)
        upstream = Upstream([self.server.address], reactor=ClockReactor(reactor, self.clock))
        self.cache = CachingResolver(upstream, self.clock)
        self.addCleanup(self.cache.stop)

    def router(self, *later):
        from sniproxy.addresses import AddressResolver
        from sniproxy.apps import AppRegistry
        from sniproxy.config import parse_config
        from sniproxy.sources.txt import TXTResolver

        config = parse_config({"apps": {"myapp": {"backends": ["127.0.0.1:9443"]}}})
        apps = AppRegistry(config.apps, AddressResolver(self.cache))
        return Router(FallbackChain([TXTResolver(config.routing.txt, self.cache, apps), *later]), self.clock)

    def test_answer_now_counts_nothing_on_a_miss(self):
        from twisted.names import dns

        before = self.cache.counters.as_dict()
        self.assertIs(self.cache.answer_now("_dstack-app-address.shop.example.com", dns.TXT), PENDING)
        self.assertEqual(self.cache.counters.as_dict(), before)
        self.assertEqual(self.server.log, [])

    @inlineCallbacks
    def test_warm_txt_route_without_a_deferred(self):
        self.server.add_txt("_dstack-app-address.shop.example.com", "myapp:443", ttl=300)
        router = self.router()
        first = yield router.route("shop.example.com")
        hits = self.cache.counters.hits
        decided = router.decide("shop.example.com")
        self.assertNotIsInstance(decided, Deferred)
        self.assertEqual(decided.backends, first.backends)
        self.assertEqual((decided.source, decided.app, decided.cache), ("txt", "myapp", "hit"))
        self.assertEqual(self.cache.counters.hits, hits + 1)

    @inlineCallbacks
    def test_chain_goes_on_without_asking_twice(self):
        """A name no TXT record routes, with a later source that has no synchronous answer: each record counted once."""
        later = Scripted("later")
        router = self.router(later)
        self.assertIsNone((yield router.route("nothing.example.com")))  # caches the three negative answers
        negative = self.cache.counters.negative_hits
        decided = router.decide("nothing.example.com")
        self.assertIsInstance(decided, Deferred)
        self.assertIsNone((yield decided))
        self.assertEqual(self.cache.counters.negative_hits, negative + 3)
        self.assertEqual(later.asked, ["nothing.example.com", "nothing.example.com"])
