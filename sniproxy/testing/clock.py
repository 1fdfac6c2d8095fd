"""
A reactor whose time is a L{Clock} and whose network is real.

Twisted's DNS client takes one C{reactor} for both its sockets and its
timeouts.  Give it a L{ClockReactor} and its packets cross real loopback
sockets while its per-attempt timeouts fire only when a test advances the
clock: timeouts are tested without sleeping, round trips stay real.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from zope.interface import directlyProvides, implementer, providedBy

__all__ = ["ClockReactor"]


@implementer(IReactorTime)
class ClockReactor:
    """
    Time from C{clock}; everything else (C{listenUDP}, C{connectTCP},
    C{callFromThread}, ...) from C{reactor}.

    Only code that asks this object for time is on the clock.  Objects the
    real reactor creates keep using it: a TCP connector's connect timeout,
    for example, stays on real time.

    @ivar reactor: the real reactor.
    @ivar clock: the clock that supplies C{seconds}, C{callLater} and
        C{getDelayedCalls}.
    """

    def __init__(self, reactor: Any, clock: Clock) -> None:
        self.reactor = reactor
        self.clock = clock
        # Claim what the real reactor provides (IReactorUDP, IReactorTCP,
        # ...) so interface checks see a reactor.
        directlyProvides(self, providedBy(reactor), IReactorTime)

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)
