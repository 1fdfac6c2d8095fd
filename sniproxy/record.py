"""
What happened to one connection, as one value.

L{sniproxy.proxy.ProxyFactory} builds one L{ConnectionRecord} as a
connection closes and hands it to each of its C{record_observers}: the
access log (L{sniproxy.accesslog.AccessLog.observe}), the metrics
(L{sniproxy.metrics.ProxyMetrics.observe}) and whatever else wants it.
They read the record only, never the connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sniproxy.interfaces import Address

__all__ = ["ConnectionRecord", "Outcome"]


class Outcome(str, enum.Enum):
    """
    How a connection ended.  The values are the strings in the access log's
    C{outcome} field and the C{outcome} label of C{sniproxy_connections}.
    """

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

    @ivar client: the client's IP address as text; when a trusted load
        balancer sent a PROXY header, the address it names.
    @ivar peer: the client as log lines name it: C{host:port}, or
        C{"host:port via balancer:port"} after a PROXY header.
    @ivar sni: the normalised server name, or C{None} (no ClientHello, or
        one without SNI).
    @ivar alpn: the ALPN protocol names the client offered.
    @ivar ech: whether the ClientHello carried Encrypted Client Hello.
    @ivar outcome: how it ended.
    @ivar reason: the close reason (a relay's C{"done"}, C{"idle timeout"},
        C{"max lifetime"}, ..., or a rejection's C{"outcome: detail"}).
    @ivar source: the route source that answered, or C{None} when the
        connection was never routed.
    @ivar app: the app id of the route, if it named one.
    @ivar backend: the backend instance actually connected, or C{None}.
    @ivar cache: the DNS cache state behind the route (C{""} when none).
    @ivar bytes_up: bytes relayed client -> backend.
    @ivar bytes_down: bytes relayed backend -> client.
    @ivar started: when it was accepted (clock seconds).
    @ivar duration: seconds from accept to close.
    @ivar route_seconds: from the complete ClientHello to the routing
        decision, or C{None} when no decision was reached.
    @ivar connect_seconds: from the routing decision to the backend
        connection, or C{None} when none was made.
    @ivar setup_seconds: from accept to the backend connection, or C{None}.
    """

    client: str
    peer: str
    sni: str | None
    alpn: tuple[str, ...]
    ech: bool
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
    route_seconds: float | None
    connect_seconds: float | None
    setup_seconds: float | None
