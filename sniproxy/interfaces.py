"""
The interfaces between sniproxy's parts, and the small value types they pass.

A connection's life runs proxy -> route sources -> DNS layer; each arrow is
one of the interfaces below, so any layer can be replaced (or faked in
tests, see L{sniproxy.testing}) without touching the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zope.interface import Attribute, Interface

__all__ = [
    "Address",
    "IResolver",
    "Route",
    "RouteRefused",
    "RoutingError",
]


@dataclass(frozen=True, slots=True)
class Address:
    """
    A backend's network address.

    @ivar host: an IP literal (no brackets) or a hostname, which is resolved
        through the DNS layer when the connection is made.
    @ivar port: 1-65535.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """
    Where a server name lives: the answer of an L{IResolver}.

    @ivar backends: the addresses to try, in order (the connector staggers
        across them and fails over).
    @ivar source: the name of the source that answered (C{"static"},
        C{"subdomain"}, C{"txt"}, C{"system"}, C{"fallback"}); it appears in
        logs and metrics.
    @ivar app: the app id when the route names a registered app.
    @ivar proxy_protocol: 0 for none, or the PROXY protocol version (1 or 2)
        whose header is written to the backend before the client's bytes.
    @ivar cache: the DNS cache state behind this answer (C{"hit"},
        C{"miss"}, C{"stale"}, C{"negative"}, C{"merged"}), or C{""} when
        no DNS was involved.
    @ivar detail: what matched, for logs and route explanations (a static
        pattern, a TXT record's name and value, ...).
    @ivar trace: the steps behind the answer, one line each, for route
        explanations only (C{/explain}, C{python -m sniproxy.explain}): the
        lookups a source made and what it kept or dropped.  Not compared:
        two routes to the same place are equal whatever their traces.
    """

    backends: tuple[Address, ...]
    source: str
    app: str | None = None
    proxy_protocol: int = 0
    cache: str = ""
    detail: str = ""
    trace: tuple[str, ...] = field(default=(), compare=False)


class RoutingError(Exception):
    """
    A source could not decide: a transient failure (a DNS timeout or
    SERVFAIL) or a broken record.  This is not "no route": the chain stops
    and the client gets a fatal C{internal_error} alert.

    C{str(error)} is the reason, written for the log line.
    """


class RouteRefused(RoutingError):
    """
    A source found a route but refuses it: a TXT record naming an app the
    registry does not know, or an address in a range the config forbids.
    """


class IResolver(Interface):
    """
    A route source: server name in, a route or a definite "no route" out.

    Sources are tried in the order the config gives; the next one runs only
    after this one answered "no route".
    """

    name = Attribute("A short name for logs and metrics, such as C{'static'}.")

    def resolve(server_name: str):
        """
        Decide where C{server_name} lives.

        @param server_name: a normalised host name (lower case, no trailing
            dot, valid per L{sniproxy.clienthello.normalise_server_name}).
        @return: a L{Deferred} firing with a L{Route}, or with C{None} for a
            definite "no route"; failing with L{RoutingError} (or
            L{RouteRefused}) when this source cannot decide or refuses.
            Cancelling it abandons the lookup without affecting others.
        """
