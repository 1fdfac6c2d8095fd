"""
The app registry: app id -> the addresses of its instances.

Route sources that name an app (a static route, a base-domain subdomain, a
TXT record) ask here, so an app's instances are declared once.  Only ids in
the registry can be routed to: a DNS-derived route can never name an
arbitrary host.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred, succeed

from sniproxy.addresses import AddressResolver, is_ip_literal
from sniproxy.config import AppConfig
from sniproxy.interfaces import Address

__all__ = ["AppRegistry"]

# (app, port) pairs remembered; TXT records choose the port, so bound it.
_MAX_FIXED = 4096


class AppRegistry:
    """The static C{[apps.*]} table of the config."""

    def __init__(self, apps: Mapping[str, AppConfig], addresses: AddressResolver) -> None:
        self.apps = dict(apps)
        self.addresses = addresses
        # Apps whose instances are all IP literals answer from a table,
        # filled per (app, port) on first use: no Deferred chain, no parsing.
        self._literal = {
            app_id for app_id, app in self.apps.items() if all(is_ip_literal(b.host) for b in app.backends)
        }
        self._fixed: dict[tuple[str, int], tuple[Address, ...]] = {}

    def __contains__(self, app_id: str) -> bool:
        return app_id in self.apps

    def proxy_protocol(self, app_id: str) -> int:
        return self.apps[app_id].proxy_protocol

    def backends(self, app_id: str, port: int) -> Deferred[tuple[Address, ...]]:
        """
        The instances of a registered app, IP literals, in config order.

        @param port: the port the route asks for; an instance declared with
            its own port keeps it.
        @raise KeyError: for an id not in the registry (check with C{in}).
        """
        key = (app_id, port)
        fixed = self._fixed.get(key)
        if fixed is not None:
            return succeed(fixed)
        backends = tuple(
            Address(backend.host, backend.port or port) for backend in self.apps[app_id].backends
        )
        if app_id not in self._literal:
            return self.addresses.expand(backends)
        if len(self._fixed) < _MAX_FIXED:
            self._fixed[key] = backends
        return succeed(backends)
