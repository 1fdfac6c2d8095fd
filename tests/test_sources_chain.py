"""The fallback chain: one source after another, only on a definite "no route"."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sniproxy.interfaces import Address, IResolver, Route, RoutingError
from sniproxy.sources.chain import FallbackChain


@implementer(IResolver)
class Scripted:
    """A source whose answers the test gives, recording what it was asked."""

    def __init__(self, name: str, answer=None) -> None:
        self.name = name
        self.answer = answer
        self.asked: list[str] = []
        self.pending: list[Deferred] = []
        self.cancelled: list[str] = []

    def resolve(self, server_name: str):
        self.asked.append(server_name)
        if self.answer == "wait":
            d = Deferred(lambda _: self.cancelled.append(server_name))
            self.pending.append(d)
            return d
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


def route(source: str) -> Route:
    return Route(backends=(Address("127.0.0.1", 1),), source=source)


class FallbackChainTests(SynchronousTestCase):
    def test_provides_the_interface(self):
        verifyObject(IResolver, FallbackChain([]))

    def test_first_answer_wins_and_later_sources_are_not_asked(self):
        first, second = Scripted("a", route("a")), Scripted("b", route("b"))
        result = self.successResultOf(FallbackChain([first, second]).resolve("x.example"))
        self.assertEqual(result.source, "a")
        self.assertEqual(second.asked, [])

    def test_no_route_falls_through_in_order(self):
        first, second, third = Scripted("a"), Scripted("b", route("b")), Scripted("c", route("c"))
        result = self.successResultOf(FallbackChain([first, second, third]).resolve("x.example"))
        self.assertEqual(result.source, "b")
        self.assertEqual((first.asked, second.asked, third.asked), (["x.example"], ["x.example"], []))

    def test_nothing_routes(self):
        self.assertIsNone(self.successResultOf(FallbackChain([Scripted("a"), Scripted("b")]).resolve("x")))
        self.assertIsNone(self.successResultOf(FallbackChain([]).resolve("x")))

    def test_failure_stops_the_chain(self):
        """A transient failure is not "no route": the next source is not asked."""
        second = Scripted("b", route("b"))
        d = FallbackChain([Scripted("a", RoutingError("SERVFAIL")), second]).resolve("x")
        self.assertEqual(str(self.failureResultOf(d, RoutingError).value), "SERVFAIL")
        self.assertEqual(second.asked, [])

    def test_sequential_never_parallel(self):
        """The second source is asked only once the first has answered."""
        first, second = Scripted("a", "wait"), Scripted("b", route("b"))
        d = FallbackChain([first, second]).resolve("x")
        self.assertNoResult(d)
        self.assertEqual(second.asked, [])
        first.pending[0].callback(None)
        self.assertEqual(self.successResultOf(d).source, "b")

    def test_cancel_reaches_the_running_source(self):
        first = Scripted("a", "wait")
        d = FallbackChain([Scripted("z"), first]).resolve("x")
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(first.cancelled, ["x"])
