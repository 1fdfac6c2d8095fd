"""The static map: exact names, wildcards, most specific first, apps."""

from __future__ import annotations

import tomllib

from twisted.trial.unittest import SynchronousTestCase

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import parse_config
from sniproxy.interfaces import Address, Route
from sniproxy.sources.static import StaticResolver


def static(toml: str) -> StaticResolver:
    config = parse_config(tomllib.loads(toml))
    addresses = AddressResolver(None)
    return StaticResolver(config.routing.static, AppRegistry(config.apps, addresses), addresses)


MAP = """
[routing.static]
"example.com" = "127.0.0.1:1"
"*.example.com" = "127.0.0.1:2"
"*.deep.example.com" = "127.0.0.1:3"
"exact.deep.example.com" = { backend = "127.0.0.1:4", proxy_protocol = 2 }
"*.app.example" = { app = "web", port = 8443 }
[apps.web]
backends = ["127.0.0.2", "127.0.0.3:9000"]
proxy_protocol = 1
"""


class StaticResolverTests(SynchronousTestCase):
    def setUp(self):
        self.source = static(MAP)

    def route(self, name: str) -> Route | None:
        return self.successResultOf(self.source.resolve(name))

    def test_exact(self):
        route = self.route("example.com")
        self.assertEqual(route.backends, (Address("127.0.0.1", 1),))
        self.assertEqual((route.source, route.detail), ("static", "example.com"))

    def test_wildcard_one_label(self):
        self.assertEqual(self.route("www.example.com").backends, (Address("127.0.0.1", 2),))

    def test_wildcard_many_labels(self):
        self.assertEqual(self.route("a.b.example.com").backends, (Address("127.0.0.1", 2),))

    def test_longest_wildcard_wins(self):
        self.assertEqual(self.route("x.deep.example.com").backends, (Address("127.0.0.1", 3),))
        self.assertEqual(self.route("y.x.deep.example.com").backends, (Address("127.0.0.1", 3),))

    def test_exact_beats_wildcard(self):
        route = self.route("exact.deep.example.com")
        self.assertEqual((route.backends, route.proxy_protocol), ((Address("127.0.0.1", 4),), 2))

    def test_wildcard_does_not_match_its_own_suffix(self):
        self.assertEqual(self.route("deep.example.com").backends, (Address("127.0.0.1", 2),))
        self.assertIsNone(self.route("app.example"))

    def test_no_match(self):
        self.assertIsNone(self.route("example.org"))
        self.assertIsNone(self.route("com"))
        self.assertIsNone(self.route("notexample.com"))

    def test_app_instances_with_port_override(self):
        route = self.route("api.app.example")
        self.assertEqual(route.backends, (Address("127.0.0.2", 8443), Address("127.0.0.3", 9000)))
        self.assertEqual((route.app, route.proxy_protocol), ("web", 1))

    def test_fixed_routes_are_shared(self):
        """A route to an IP literal is built once, not per connection."""
        self.assertIs(self.route("example.com"), self.route("example.com"))
