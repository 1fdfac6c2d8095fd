"""
L{sniproxy.assembly}: the one place the parts are wired, and the one
validation a start, a reload and a config check share.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.assembly import Parts, StartError, assemble, build_dns, build_resolver_threads, validate, warm_names
from sniproxy.config import ConfigError, RoutingConfig, parse_config
from sniproxy.dns.cache import CachingResolver
from sniproxy.interfaces import Address
from sniproxy.service import ProxyService
from sniproxy.sources.static import StaticResolver
from sniproxy.sources.system import SystemResolver
from sniproxy.sources.txt import TXTResolver

GOOD = """
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
fallback = "fallback.internal:443"
[routing]
sources = ["static", "txt", "system"]
[routing.static]
"shop.example.com" = "backend.internal:8443"
"api.example.com" = { app = "api" }
[routing.system]
allow = ["*.example.org"]
[apps.api]
backends = ["127.0.0.1:9000", "api.internal"]
[dns]
servers = ["127.0.0.1:53"]
prefetch = ["warm.example.net"]
[log]
access = ""
"""


def write(testcase, text: str) -> str:
    path = testcase.mktemp()
    with open(path, "w") as f:
        f.write(text)
    return path


class AssembleTests(SynchronousTestCase):
    def test_parts(self):
        config = parse_config(tomllib.loads(GOOD))
        clock = Clock()
        dns = object()
        threads = build_resolver_threads(config, clock)
        parts = assemble(config, clock, dns=dns, resolver_threads=threads)
        self.assertIsInstance(parts, Parts)
        self.assertEqual([type(s) for s in parts.sources], [StaticResolver, TXTResolver, SystemResolver])
        self.assertEqual(list(parts.router.source.sources), list(parts.sources))
        self.assertEqual(parts.router.fallback.backends, (Address("fallback.internal", 443),))
        self.assertIs(parts.addresses.dns, dns)
        self.assertEqual(
            parts.warm_names, ("warm.example.net", "backend.internal", "api.internal", "fallback.internal")
        )
        self.assertEqual(parts.warm_names, warm_names(config))
        self.assertEqual(threads.size, config.routing.system.threads)

    def test_txt_needs_dns(self):
        config = parse_config(tomllib.loads(GOOD))
        with self.assertRaises(ValueError):
            assemble(config, Clock(), dns=None, resolver_threads=build_resolver_threads(config, Clock()))

    def test_build_dns(self):
        config = parse_config(tomllib.loads(GOOD))
        resolver = build_dns(config, MemoryReactorClock())
        self.assertIsInstance(resolver, CachingResolver)


class ValidateTests(SynchronousTestCase):
    def test_good_file(self):
        path = write(self, GOOD)
        config = validate(path, MemoryReactorClock())
        self.assertEqual(config.path, path)

    def test_config_object(self):
        config = parse_config(tomllib.loads(GOOD))
        self.assertIs(validate(config), config)

    def test_bad_key(self):
        error = self.assertRaises(ConfigError, validate, write(self, "[proxy]\nhello_timeout = 'soon'\n"))
        self.assertEqual(str(error), "proxy.hello_timeout: expected a number, got a string 'soon'")

    def test_missing_file(self):
        path = self.mktemp()
        error = self.assertRaises(ConfigError, validate, path)
        self.assertIn("cannot read the config file", str(error))

    def test_access_log_cannot_be_opened(self):
        directory = self.mktemp()
        os.mkdir(directory)
        bad = os.path.join(directory, "missing", "access.log")
        error = self.assertRaises(ConfigError, validate, write(self, f'[log]\naccess = "{bad}"\n'))
        self.assertTrue(str(error).startswith("log.access: cannot open"), str(error))
        self.assertNotIn("\n", str(error))

    def test_router_cannot_be_built(self):
        config = parse_config({"log": {"access": ""}})
        config = dataclasses.replace(config, routing=RoutingConfig(sources=("nowhere",)))
        error = self.assertRaises(StartError, validate, config)
        self.assertEqual(str(error), "cannot build the router: no route source named 'nowhere'")


class ServiceHookTests(SynchronousTestCase):
    """The contract's service hooks: config_path, loaded_at, last_reload_error."""

    def test_reload_hooks(self):
        path = write(self, GOOD)
        reactor = MemoryReactorClock()
        reactor.advance(100)
        service = ProxyService(validate(path), reactor=reactor)
        self.addCleanup(service.factory.stop)
        self.assertEqual((service.config_path, service.loaded_at, service.last_reload_error), (path, 100, None))
        reactor.advance(5)
        with open(path, "a") as f:
            f.write("[bogus]\n")
        self.assertFalse(service.reload())
        self.assertEqual(service.last_reload_error, "bogus: unknown key")
        self.assertEqual(service.loaded_at, 100)
        reactor.advance(5)
        with open(path, "w") as f:
            f.write(GOOD.replace("[proxy]\n", "[proxy]\nmax_lifetime = 30\n"))
        self.assertTrue(service.reload())
        self.assertEqual((service.loaded_at, service.last_reload_error), (110, None))
        self.assertEqual(service.factory.settings.max_lifetime, 30)
