"""L{sniproxy.deferreds.peek}: a fired Deferred's result, without callbacks."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.deferreds import PENDING, peek


class PeekTests(SynchronousTestCase):
    def test_value(self):
        d = succeed(3)
        self.assertEqual(peek(d), 3)
        self.assertEqual(self.successResultOf(d), 3)  # not consumed

    def test_none_is_a_result(self):
        self.assertIsNone(peek(succeed(None)))

    def test_failure(self):
        d = fail(ValueError("x"))
        result = peek(d)
        self.assertIsInstance(result, Failure)
        self.failureResultOf(d, ValueError)

    def test_pending(self):
        self.assertIs(peek(Deferred()), PENDING)

    def test_chained_is_pending(self):
        inner: Deferred[int] = Deferred()
        outer = succeed(None)
        outer.addCallback(lambda _: inner)
        self.assertIs(peek(outer), PENDING)
        inner.callback(5)
        self.assertEqual(peek(outer), 5)
