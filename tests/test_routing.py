"""The router: fallback, the routing deadline, the bound on waiters per name."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.interfaces import Address, Route, RoutingError
from sniproxy.routing import Router
from tests.test_sources_chain import Scripted

FALLBACK = Route(backends=(Address("127.0.0.1", 9),), source="fallback")


class RouterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def test_no_route_without_fallback(self):
        router = Router(Scripted("a"), self.clock)
        self.assertIsNone(self.successResultOf(router.route("x.example")))

    def test_no_route_goes_to_fallback(self):
        router = Router(Scripted("a"), self.clock, fallback=FALLBACK)
        self.assertIs(self.successResultOf(router.route("x.example")), FALLBACK)

    def test_no_sni_goes_to_fallback_only(self):
        source = Scripted("a", Route(backends=(), source="a"))
        self.assertIsNone(self.successResultOf(Router(source, self.clock).route(None)))
        self.assertIs(self.successResultOf(Router(source, self.clock, fallback=FALLBACK).route(None)), FALLBACK)
        self.assertEqual(source.asked, [])

    def test_failure_does_not_go_to_fallback(self):
        router = Router(Scripted("a", RoutingError("SERVFAIL")), self.clock, fallback=FALLBACK)
        self.failureResultOf(router.route("x.example"), RoutingError)

    def test_deadline(self):
        source = Scripted("a", "wait")
        router = Router(source, self.clock, timeout=2.0)
        d = router.route("x.example")
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(str(self.failureResultOf(d, RoutingError).value), "no routing answer within 2s")
        # The source's lookup was cancelled, and nothing waits any more.
        self.assertEqual(source.cancelled, ["x.example"])
        self.assertEqual(router.pending, {})

    def test_bound_on_waiters_per_name(self):
        source = Scripted("a", "wait")
        router = Router(source, self.clock, max_pending_per_name=2)
        first, second = router.route("x.example"), router.route("x.example")
        third = router.route("x.example")
        self.assertIn("2 connections already wait", str(self.failureResultOf(third, RoutingError).value))
        self.assertNoResult(router.route("other.example"))
        source.pending[0].callback(Route(backends=(), source="a"))
        self.successResultOf(first)
        self.assertEqual(router.pending, {"x.example": 1, "other.example": 1})
        self.assertNoResult(router.route("x.example"))
        self.assertNoResult(second)
