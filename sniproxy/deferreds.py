"""
Peeking at a L{Deferred} that may already have fired.

Most routing answers are there at once (static routes, a warm DNS cache).
Code on the connection path looks at such a result directly instead of
adding callbacks or starting a coroutine, and takes the asynchronous path
only when the answer is not there yet.  This is the one place that reads
C{Deferred.called} and C{Deferred.result} for that.
"""

from __future__ import annotations

import enum
from typing import Literal, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["PENDING", "peek"]

T = TypeVar("T")


class _Pending(enum.Enum):
    PENDING = "pending"


PENDING = _Pending.PENDING
"""What L{peek} returns for a L{Deferred} that has not fired yet."""


def peek(d: Deferred[T]) -> Union[T, Failure, Literal[_Pending.PENDING]]:
    """
    The current result of C{d}: its value, or the L{Failure} it holds, or
    L{PENDING} while it has not fired (or waits on another Deferred).

    Peeking does not consume the result: C{d} still fires its callbacks,
    and a failure must still be handled (by returning C{d} to a caller, or
    adding an errback), as always.
    """
    if not d.called:
        return PENDING
    result = d.result
    if isinstance(result, Deferred):
        return PENDING  # chained: the real result is not here yet
    return result
