"""
Base-domain subdomains, as the dstack gateway names apps:
C{<id>[-<port>][s].<base>}, exactly one label below a configured base
domain.

  - C{myapp-8443s.gw.example.com}: app C{myapp}, port 8443, TLS passthrough;
  - C{myapp-s.gw.example.com}, C{myapps.gw.example.com}: port 443, passthrough;
  - C{myapp.gw.example.com}, C{myapp-8080.gw.example.com}, and dstack's
    C{g} (HTTP/2) forms such as C{myapp-443g}: names without C{s}, which
    dstack terminates.  sniproxy never terminates TLS, so these follow
    C{routing.subdomain.non_passthrough}: C{"reject"} (refused, with a
    reason) or C{"passthrough"} (passed through like the C{s} form; the
    port still defaults to 443, the backend must speak TLS).

Which app a label names is decided with the registry, because the grammar
alone is ambiguous (C{myapps} is the app C{myapps}, or C{myapp} with C{s}).
The readings, tried in this order, the first whose id is registered wins:

  1. the whole label is an app id (not passthrough) -- dstack's reading of
     a label without a hyphen, so C{myapps} is the app C{myapps} when both
     exist;
  2. C{<id>-<port><flag>}, split at the I{last} hyphen, where the part
     after it is digits (optional, 1-65535) and an optional C{s} or C{g},
     and not empty -- dstack's reading (it splits at the first hyphen, so
     its ids have none; splitting at the last one gives the same answer
     for every name dstack accepts and lets our ids contain hyphens);
  3. C{<id>s}: the short passthrough form on port 443.

A label no reading of which names a registered app is no route (the client
gets C{unrecognized_name}, or the next source is asked).  A name two or
more labels below a base domain is refused: it cannot name an app, and no
other source should spend a lookup on a name in our own namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from sniproxy.apps import AppRegistry
from sniproxy.config import SubdomainPolicy
from sniproxy.deferreds import PENDING, _Pending, peek
from sniproxy.interfaces import IResolver, Route, RouteRefused

__all__ = ["SubdomainResolver", "readings"]

_SUFFIX = re.compile(r"([0-9]{0,5})([sg]?)\Z")


def readings(label: str) -> Iterator[tuple[str, int, bool]]:
    """
    The ways to read a label: C{(app_id, port, passthrough)}, most likely
    first (see the module docstring).
    """
    yield label, 443, False
    head, hyphen, tail = label.rpartition("-")
    if hyphen and head:
        match = _SUFFIX.match(tail)
        if match is not None and tail:
            digits, flag = match.groups()
            port = int(digits) if digits else 443
            if 1 <= port <= 65535:
                yield head, port, flag == "s"
    if len(label) > 1 and label[-1] == "s":
        yield label[:-1], 443, True


@implementer(IResolver)
class SubdomainResolver:
    """Routes C{<id>[-<port>][s].<base>} to the registered app C{<id>}."""

    name = "subdomain"

    def __init__(self, base_domains: Iterable[str], apps: AppRegistry, non_passthrough: SubdomainPolicy | str = SubdomainPolicy.REJECT) -> None:
        """
        @param non_passthrough: C{"reject"} or C{"passthrough"}.
        """
        try:
            policy = SubdomainPolicy(non_passthrough)
        except ValueError:
            raise ValueError(f"non_passthrough must be 'reject' or 'passthrough', not {non_passthrough!r}") from None
        self.base_domains = frozenset(base_domains)
        self.apps = apps
        self.reject = policy is SubdomainPolicy.REJECT

    def resolve_now(self, server_name: str) -> Route | None | _Pending:
        """
        The answer without a L{Deferred} when the app's addresses are
        known; L{PENDING} when only L{resolve} can answer (a refusal, or
        instances still to be resolved).
        """
        label, _, parent = server_name.partition(".")
        if parent not in self.base_domains:
            return None if self._base_above(parent) is None else PENDING
        for app, port, passthrough in readings(label):
            if app in self.apps:
                break
        else:
            return None
        if not passthrough and self.reject:
            return PENDING
        backends = peek(self.apps.backends(app, port))
        if type(backends) is not tuple:
            return PENDING
        detail = f"{label}.{parent} -> app {app} port {port}"
        if not passthrough:
            detail += " (no 's': passed through by routing.subdomain.non_passthrough)"
        return self._route(backends, app, detail)

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        label, _, parent = server_name.partition(".")
        if parent not in self.base_domains:
            base = self._base_above(parent)
            if base is None:
                return succeed(None)
            return fail(RouteRefused(f"{server_name} is more than one label below the base domain {base}"))
        for app, port, passthrough in readings(label):
            if app in self.apps:
                break
        else:
            return succeed(None)
        if not passthrough and self.reject:
            return fail(
                RouteRefused(
                    f"{server_name} names app {app!r} without the 's' (TLS passthrough) suffix; TLS "
                    f"termination is not supported (use {app}-{port}s.{parent} or {app}s.{parent})"
                )
            )
        detail = f"{label}.{parent} -> app {app} port {port}"
        if not passthrough:
            detail += " (no 's': passed through by routing.subdomain.non_passthrough)"
        backends = self.apps.backends(app, port)
        return backends.addCallback(self._route, app, detail)

    def _base_above(self, name: str) -> str | None:
        """The base domain C{name} is at or below, if any."""
        while name:
            if name in self.base_domains:
                return name
            name = name.partition(".")[2]
        return None

    def _route(self, backends, app: str, detail: str) -> Route:
        return Route(
            backends=backends,
            source=self.name,
            app=app,
            proxy_protocol=self.apps.proxy_protocol(app),
            detail=detail,
        )
