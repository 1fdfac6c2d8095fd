"""
What happened to one connection, as one value built when it closes.

The access log, the metrics and the backend board read this record rather
than the connection's attributes.  (Minimal version on the backends
branch; the house branch defines the full record.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sniproxy.interfaces import Address

__all__ = ["ConnectionRecord", "Outcome"]


class Outcome(str, enum.Enum):
    """How a connection ended; the values are the strings logs and metrics use."""

    RELAYED = "relayed"
    NO_ROUTE = "no route"
    MALFORMED = "malformed"
    HELLO_TIMEOUT = "hello timeout"
    ROUTING_FAILED = "routing failed"
    BACKEND_UNREACHABLE = "backend unreachable"
    CLIENT_CLOSED = "client closed"
    OVER_LIMIT = "over limit"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal error"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """
    One closed connection.

    @ivar client: the client's IP address as text (the one a trusted load
        balancer's PROXY header names, when there is one).
    @ivar sni: the normalised server name, or C{None}.
    @ivar outcome: how it ended.
    @ivar reason: the close reason or rejection detail.
    @ivar source: the route source that answered, or C{None}.
    @ivar app: the registered app the route named, or C{None}.
    @ivar backend: the instance actually connected, or C{None}.
    @ivar cache: the DNS cache state behind the route, C{""} for none.
    @ivar bytes_up: bytes relayed client to backend.
    @ivar bytes_down: bytes relayed backend to client.
    @ivar started: reactor seconds at accept.
    @ivar duration: seconds from accept to close.
    """

    client: str
    sni: str | None
    outcome: Outcome
    reason: str
    source: str | None
    app: str | None
    backend: Address | None
    cache: str
    bytes_up: int
    bytes_down: int
    started: float
    duration: float
