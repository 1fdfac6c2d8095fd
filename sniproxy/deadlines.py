"""
Coarse deadlines for every connection of a factory, on one timer.

A connection's hello timeout, a relay's idle timeout and a rejected
connection's linger need no precision finer than a tenth of a second, and
almost all of them are cancelled long before they are due.  A
C{DelayedCall} for each costs a heap insert, a cancel and the reactor's
bookkeeping per connection; here a deadline is a key in a bucket of a
tenth of a second, and the one C{DelayedCall} of the whole structure is
set for the earliest bucket that has been filled.  Adding a deadline
later than that one (the usual case) touches no timer at all, and
cancelling one never does: the timer stays, and when it finds its bucket
empty it skips every empty bucket after it, so an idle factory wakes at
most once per deadline span (e.g. once per hello timeout) until nothing is
left, then not at all.

Precision: a deadline fires at the first bucket boundary (a multiple of
L{Deadlines.resolution} in clock seconds) at or after the time asked for,
so within C{resolution} (0.1 s) late, never early.  With a
L{twisted.internet.task.Clock} the firing times are exactly those
boundaries, so tests stay deterministic.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines", "RESOLUTION"]

# Seconds per bucket.
RESOLUTION = 0.1

log = Logger()

# Float slack when turning times into bucket numbers: 1.1 / 0.1 is
# 11.000000000000002, which must be bucket 11, not 12.
_SLACK = 1e-6


class Deadlines:
    """
    Callables to call once their time comes, in buckets of L{resolution}
    seconds, swept by a single C{DelayedCall}.

    A deadline is the pair (bucket, callable): L{add} returns the bucket,
    and L{cancel} takes both (an equal callable, e.g. the same bound
    method, is the same deadline; adding it twice to one bucket keeps one).

    @ivar resolution: seconds per bucket.
    """

    def __init__(self, clock: IReactorTime, resolution: float = RESOLUTION) -> None:
        self.clock = clock
        self.resolution = resolution
        self._buckets: dict[int, dict[Callable[[], object], None]] = {}
        self._ticks: list[int] = []
        self._call: IDelayedCall | None = None
        self._call_tick: int | None = None
        self._sweeping: int | None = None
        self._pending = 0

    def __len__(self) -> int:
        """How many deadlines are pending."""
        return self._pending

    def add(self, when: float, expired: Callable[[], object]) -> int:
        """
        Call C{expired()} once the clock reaches C{when} (rounded up to a
        bucket boundary).

        @return: the bucket, for L{cancel}.
        """
        tick = math.ceil(when / self.resolution - _SLACK)
        sweeping = self._sweeping
        if sweeping is not None and tick <= sweeping:
            # Added by a deadline being run: the next bucket, so that one
            # re-armed for "now" cannot keep the sweep going for ever.
            tick = sweeping + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if sweeping is None and (self._call_tick is None or tick < self._call_tick):
                self._schedule(tick)
        if expired not in bucket:
            bucket[expired] = None
            self._pending += 1
        return tick

    def cancel(self, tick: int, expired: Callable[[], object]) -> None:
        """Forget the deadline C{expired} in bucket C{tick}, if it is still pending."""
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop(expired, bucket) is not bucket:
            # The timer stays: cancelling costs no timer work, and a timer
            # that finds its bucket empty skips every empty one after it.
            self._pending -= 1

    def stop(self) -> None:
        """Forget every deadline and stop the timer."""
        self._buckets.clear()
        self._ticks.clear()
        self._pending = 0
        call, self._call, self._call_tick = self._call, None, None
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, tick: int) -> None:
        delay = max(tick * self.resolution - self.clock.seconds(), 0.0)
        call = self._call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._call = self.clock.callLater(delay, self._sweep)
        self._call_tick = tick

    def _sweep(self) -> None:
        self._call = None
        self._call_tick = None
        current = math.floor(self.clock.seconds() / self.resolution + _SLACK)
        ticks, buckets = self._ticks, self._buckets
        self._sweeping = current
        try:
            while ticks and ticks[0] <= current:
                tick = ticks[0]
                bucket = buckets.get(tick)
                # One at a time, in the order added, and still in place:
                # a deadline run may cancel another of the same bucket.
                while bucket:
                    expired = next(iter(bucket))
                    del bucket[expired]
                    self._pending -= 1
                    try:
                        expired()
                    except Exception:
                        log.failure("deadline {expired!r} failed", expired=expired)
                if ticks and ticks[0] == tick:  # (a deadline run may have stopped us)
                    heapq.heappop(ticks)
                buckets.pop(tick, None)
        finally:
            self._sweeping = None
        # Empty buckets (every deadline in them cancelled) are dropped here
        # too, so the next timer is for a bucket that had a deadline.
        while ticks and not buckets.get(ticks[0]):
            buckets.pop(heapq.heappop(ticks), None)
        if ticks:
            self._schedule(ticks[0])
