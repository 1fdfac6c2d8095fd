"""The coarse deadlines: one timer for every connection's hello, linger and idle deadlines."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired: list[str] = []

    def mark(self, name):
        def expired():
            self.fired.append((name, round(self.clock.seconds(), 6)))

        return expired

    def test_fires_at_the_bucket_boundary_never_early(self):
        self.deadlines.add(1.0, self.mark("a"))
        self.deadlines.add(1.03, self.mark("b"))
        self.clock.advance(0.99)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.fired, [("a", 1.0)])
        self.clock.advance(0.05)
        self.assertEqual(self.fired, [("a", 1.0)])
        self.clock.advance(0.05)
        self.assertEqual(self.fired, [("a", 1.0), ("b", 1.1)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_float_boundaries(self):
        # 1.1 / 0.1 is 11.000000000000002: still the bucket at 1.1.
        self.deadlines.add(1.1, self.mark("a"))
        self.clock.advance(1.1)
        self.assertEqual(self.fired, [("a", 1.1)])

    def test_one_timer_for_many(self):
        for i in range(100):
            self.deadlines.add(5.0 + i / 1000, self.mark(str(i)))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 100)
        self.clock.advance(5.1)
        self.assertEqual(len(self.fired), 100)
        self.assertEqual([name for name, _ in self.fired], [str(i) for i in range(100)])  # in order added

    def test_earlier_deadline_moves_the_timer(self):
        self.deadlines.add(5.0, self.mark("late"))
        self.deadlines.add(1.0, self.mark("early"))
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [("early", 1.0)])
        self.clock.advance(4.0)
        self.assertEqual(self.fired, [("early", 1.0), ("late", 5.0)])

    def test_cancel(self):
        a, b = self.mark("a"), self.mark("b")
        ta = self.deadlines.add(1.0, a)
        self.deadlines.add(2.0, b)
        self.deadlines.cancel(ta, a)
        self.deadlines.cancel(ta, a)  # twice is harmless
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [])
        self.clock.advance(1)
        self.assertEqual(self.fired, [("b", 2.0)])

    def test_nothing_pending_means_no_timer_once_swept(self):
        a = self.mark("a")
        tick = self.deadlines.add(1.0, a)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.cancel(tick, a)
        self.assertEqual(len(self.deadlines), 0)
        # Cancelling touches no timer; the one left finds nothing and ends.
        self.clock.advance(1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.fired, [])

    def test_cancelled_buckets_do_not_wake(self):
        a = self.mark("a")
        tick = self.deadlines.add(1.0, a)
        self.deadlines.add(3.0, self.mark("b"))
        self.deadlines.cancel(tick, a)
        self.clock.advance(1.0)  # the timer for 1.0 finds nothing
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 3.0)

    def test_rearming_for_now_goes_to_the_next_bucket(self):
        def again():
            self.fired.append(self.clock.seconds())
            if len(self.fired) < 3:
                self.deadlines.add(self.clock.seconds(), again)

        self.deadlines.add(1.0, again)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [1.0])
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.assertEqual([round(t, 6) for t in self.fired], [1.0, 1.1, 1.2])

    def test_a_deadline_may_cancel_another_of_its_bucket(self):
        b = self.mark("b")
        tb = self.deadlines.add(1.0, b)

        def a():
            self.fired.append("a")
            self.deadlines.cancel(tb, b)

        self.deadlines.add(1.0, a)
        # a was added second; make it run first by giving b a later slot in its bucket.
        self.deadlines.cancel(tb, b)
        tb = self.deadlines.add(1.0, b)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, ["a"])

    def test_a_failing_deadline_does_not_stop_the_others(self):
        def broken():
            raise RuntimeError("boom")

        self.deadlines.add(1.0, broken)
        self.deadlines.add(1.0, self.mark("b"))
        self.deadlines.add(2.0, self.mark("c"))
        self.clock.advance(2.0)
        self.assertEqual([n for n, _ in self.fired], ["b", "c"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop(self):
        self.deadlines.add(1.0, self.mark("a"))
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2)
        self.assertEqual(self.fired, [])
