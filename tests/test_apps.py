"""The app registry: the static C{[apps.*]} table, instance host names through the DNS layer."""

from __future__ import annotations

import tomllib

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import TestCase

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import ConfigError, parse_config
from sniproxy.dns.cache import CachingResolver
from sniproxy.dns.upstream import Upstream
from sniproxy.interfaces import Address, RoutingError
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer

APPS = """
[apps.web]
backends = ["10.0.0.2", "10.0.0.3:9000", "[2001:db8::1]", "[2001:db8::2]:9001"]
proxy_protocol = 2
[apps.Named]
backends = ["v4.apps.test", "v6.apps.test:8443"]
[apps.gone]
backends = ["missing.apps.test"]
"""


class AppRegistryTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)
        upstream = Upstream([self.server.address], reactor=ClockReactor(reactor, self.clock))
        self.cache = CachingResolver(upstream, self.clock)
        self.addCleanup(self.cache.stop)
        config = parse_config(tomllib.loads(APPS))
        self.apps = AppRegistry(config.apps, AddressResolver(self.cache))

    def test_membership(self):
        """Ids are normalised to lower case; nothing else is an app."""
        self.assertIn("web", self.apps)
        self.assertIn("named", self.apps)
        for other in ("Named", "localhost", "127.0.0.1", "", "web.example"):
            self.assertNotIn(other, self.apps)

    def test_proxy_protocol(self):
        self.assertEqual((self.apps.proxy_protocol("web"), self.apps.proxy_protocol("named")), (2, 0))

    def test_instances_in_order_their_ports_win(self):
        backends = self.successResultOf(self.apps.backends("web", 443))
        self.assertEqual(
            backends,
            (
                Address("10.0.0.2", 443),
                Address("10.0.0.3", 9000),
                Address("2001:db8::1", 443),
                Address("2001:db8::2", 9001),
            ),
        )
        self.assertEqual(self.server.log, [])

    def test_unknown_id(self):
        self.assertRaises(KeyError, self.apps.backends, "localhost", 22)

    @defer.inlineCallbacks
    def test_host_names_through_the_dns_layer(self):
        """A records, else AAAA; cached like any lookup."""
        self.server.add_a("v4.apps.test", "10.1.0.1")
        self.server.add_a("v4.apps.test", "10.1.0.2")
        self.server.add_aaaa("v6.apps.test", "2001:db8::9")
        backends = yield self.apps.backends("named", 443)
        self.assertEqual(backends, (Address("10.1.0.1", 443), Address("10.1.0.2", 443), Address("2001:db8::9", 8443)))
        queries = [(q.name, dns.QUERY_TYPES[q.type]) for q in self.server.log]
        self.assertEqual(queries, [("v4.apps.test", "A"), ("v6.apps.test", "A"), ("v6.apps.test", "AAAA")])
        self.assertEqual(self.successResultOf(self.apps.backends("named", 443)), backends)
        self.assertEqual(len(self.server.log), 3)

    @defer.inlineCallbacks
    def test_missing_instance_name(self):
        error = yield self.assertFailure(self.apps.backends("gone", 443), RoutingError)
        self.assertEqual(str(error), "backend 'missing.apps.test' does not exist (NXDOMAIN)")


class AppConfigTests(TestCase):
    def test_app_id_is_one_label(self):
        error = self.assertRaises(ConfigError, parse_config, tomllib.loads('[apps."a.b"]\nbackends = ["10.0.0.1"]'))
        self.assertEqual(str(error), "apps.a.b: bad app id: must be a single DNS label")

    def test_needs_backends(self):
        error = self.assertRaises(ConfigError, parse_config, tomllib.loads("[apps.web]\nbackends = []"))
        self.assertEqual(str(error), "apps.web.backends: needs at least one 'host' or 'host:port'")

