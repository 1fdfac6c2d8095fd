"""Base-domain subdomains: C{<id>[-<port>][s].<base>}, dstack compatible."""

from __future__ import annotations

import tomllib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sniproxy.addresses import AddressResolver
from sniproxy.apps import AppRegistry
from sniproxy.config import parse_config
from sniproxy.interfaces import Address, IResolver, Route, RouteRefused
from sniproxy.sources.subdomain import SubdomainResolver, readings

CONFIG = """
[routing]
sources = ["subdomain"]
[routing.subdomain]
base_domains = ["gw.example.com", "apps.example.net"]
non_passthrough = "{policy}"
[apps.myapp]
backends = ["10.0.0.2", "10.0.0.3:9000"]
proxy_protocol = 2
[apps.my-app]
backends = ["10.0.1.1"]
[apps.web]
backends = ["10.0.2.1"]
[apps.web-1]
backends = ["10.0.2.2"]
[apps.api]
backends = ["10.0.3.1"]
[apps.apis]
backends = ["10.0.3.2"]
[apps.3327603e03f5bd1f830812ca4a789277fc31f577]
backends = ["10.0.4.1"]
"""


def source(policy: str = "reject") -> SubdomainResolver:
    config = parse_config(tomllib.loads(CONFIG.format(policy=policy)))
    addresses = AddressResolver(None)
    sub = config.routing.subdomain
    return SubdomainResolver(sub.base_domains, AppRegistry(config.apps, addresses), sub.non_passthrough)


class ReadingsTests(SynchronousTestCase):
    """How one label can be read, before the registry picks one."""

    def test_dstack_forms(self):
        self.assertEqual(
            list(readings("myapp-8443s")), [("myapp-8443s", 443, False), ("myapp", 8443, True), ("myapp-8443", 443, True)]
        )
        self.assertEqual(list(readings("myapp-s")), [("myapp-s", 443, False), ("myapp", 443, True), ("myapp-", 443, True)])
        self.assertEqual(list(readings("myapp-8080")), [("myapp-8080", 443, False), ("myapp", 8080, False)])
        self.assertEqual(list(readings("myapp-443g")), [("myapp-443g", 443, False), ("myapp", 443, False)])
        self.assertEqual(list(readings("myapps")), [("myapps", 443, False), ("myapp", 443, True)])
        self.assertEqual(list(readings("myapp")), [("myapp", 443, False)])

    def test_not_a_port(self):
        """A part after the hyphen that is not C{[digits][s|g]} with a port in range is part of the id."""
        self.assertEqual(list(readings("my-app")), [("my-app", 443, False)])
        self.assertEqual(list(readings("app-123456")), [("app-123456", 443, False)])
        self.assertEqual(list(readings("app-0s")), [("app-0s", 443, False), ("app-0", 443, True)])
        self.assertEqual(list(readings("app-65536s")), [("app-65536s", 443, False), ("app-65536", 443, True)])
        self.assertEqual(list(readings("app-443gs")), [("app-443gs", 443, False), ("app-443g", 443, True)])
        self.assertEqual(list(readings("app-65535")), [("app-65535", 443, False), ("app", 65535, False)])


class SubdomainResolverTests(SynchronousTestCase):
    def setUp(self):
        self.source = source()

    def route(self, name: str, resolver: SubdomainResolver | None = None) -> Route | None:
        return self.successResultOf((resolver or self.source).resolve(name))

    def refused(self, name: str, resolver: SubdomainResolver | None = None) -> str:
        return str(self.failureResultOf((resolver or self.source).resolve(name), RouteRefused).value)

    def test_provides_the_interface(self):
        verifyObject(IResolver, self.source)

    def test_port_and_s(self):
        """C{<app>-8443s.<base>}: the app's instances on port 8443 (an instance's own port kept)."""
        route = self.route("myapp-8443s.gw.example.com")
        self.assertEqual(route.backends, (Address("10.0.0.2", 8443), Address("10.0.0.3", 9000)))
        self.assertEqual((route.source, route.app, route.proxy_protocol), ("subdomain", "myapp", 2))
        self.assertEqual(route.detail, "myapp-8443s.gw.example.com -> app myapp port 8443")

    def test_short_s_is_port_443(self):
        """C{<app>s.<base>} and dstack's C{<app>-s.<base>}: port 443."""
        for name in ("myapps.gw.example.com", "myapp-s.gw.example.com", "myapp-443s.apps.example.net"):
            route = self.route(name)
            self.assertEqual(route.backends, (Address("10.0.0.2", 443), Address("10.0.0.3", 9000)), name)
            self.assertEqual(route.app, "myapp")

    def test_dstack_hex_id(self):
        route = self.route("3327603e03f5bd1f830812ca4a789277fc31f577-8090s.gw.example.com")
        self.assertEqual(route.backends, (Address("10.0.4.1", 8090),))

    def test_hyphenated_id(self):
        """Ids may contain hyphens: the port part is after the last one."""
        self.assertEqual(self.route("my-app-8443s.gw.example.com").backends, (Address("10.0.1.1", 8443),))
        self.assertEqual(self.route("my-apps.gw.example.com").backends, (Address("10.0.1.1", 443),))

    def test_whole_label_id_first(self):
        """
        A label that is itself a registered id names that app (as in dstack,
        where C{myapps} is the app C{myapps}): C{web-1} is the app C{web-1},
        not C{web} on port 1; C{apis} is C{apis}, so its names without
        C{s} are refused.
        """
        self.assertIn("'web-1'", self.refused("web-1.gw.example.com"))
        self.assertIn("'apis'", self.refused("apis.gw.example.com"))
        self.assertEqual(self.route("api-s.gw.example.com").backends, (Address("10.0.3.1", 443),))
        self.assertEqual(self.route("apis-s.gw.example.com").backends, (Address("10.0.3.2", 443),))
        self.assertEqual(self.route("web-1-8443s.gw.example.com").backends, (Address("10.0.2.2", 8443),))

    def test_non_passthrough_rejected(self):
        """Without C{s} the name asks for TLS termination: refused, saying so."""
        for name in ("myapp.gw.example.com", "myapp-8443.gw.example.com", "myapp-443g.gw.example.com"):
            reason = self.refused(name)
            self.assertIn("TLS termination is not supported", reason)
            self.assertIn(name, reason)
        self.assertIn("use myapp-8443s.gw.example.com", self.refused("myapp-8443.gw.example.com"))

    def test_non_passthrough_passed_through(self):
        resolver = source("passthrough")
        route = self.route("myapp.gw.example.com", resolver)
        self.assertEqual(route.backends, (Address("10.0.0.2", 443), Address("10.0.0.3", 9000)))
        self.assertIn("non_passthrough", route.detail)
        self.assertEqual(self.route("myapp-8080.gw.example.com", resolver).backends[0], Address("10.0.0.2", 8080))

    def test_second_label_refused(self):
        reason = self.refused("a.myapps.gw.example.com")
        self.assertEqual(reason, "a.myapps.gw.example.com is more than one label below the base domain gw.example.com")
        self.refused("x.y.z.apps.example.net")

    def test_unknown_app_is_no_route(self):
        for name in ("nope-443s.gw.example.com", "nopes.gw.example.com", "app-0s.gw.example.com", "myapp-99999s.gw.example.com", "myapp-443gs.gw.example.com"):
            self.assertIsNone(self.route(name), name)

    def test_other_names_are_no_route(self):
        for name in ("gw.example.com", "example.com", "myapps.example.com", "myapps.gw.example.org", "com"):
            self.assertIsNone(self.route(name), name)

    def test_bad_policy(self):
        self.assertRaises(ValueError, SubdomainResolver, (), None, "terminate")
