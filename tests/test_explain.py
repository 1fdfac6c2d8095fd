"""
Route explanations: the function (against the in-process DNS server) and
the command line (a child process, against a config file).
"""

from __future__ import annotations

import json
import os
import tomllib

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from sniproxy.config import parse_config
from sniproxy.dns import build_dns
from sniproxy.explain import explain, render
from sniproxy.assembly import build_router
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.process import child_environment

CONFIG = """
[routing]
sources = ["static", "txt"]
[routing.static]
"static.example.com" = "127.0.0.1:9"
[apps.myapp]
backends = ["127.0.0.1:8443"]
[dns]
servers = ["127.0.0.1:{port}"]
"""


class ExplainTests(TestCase):
    def setUp(self):
        self.dns = DNSServer()
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.dns.set_soa("example.com", ttl=300, minimum=60)
        self.dns.add_txt("_dstack-app-address.shop.example.com", "myapp:443", ttl=120)
        self.dns.add_txt("_dstack-app-address.bad.example.com", "localhost:22", ttl=120)
        self.config = parse_config(tomllib.loads(CONFIG.format(port=self.dns.port)))
        self.resolver = build_dns(self.config.dns, reactor)
        self.addCleanup(self.resolver.stop)

    def explain(self, name: str):
        return explain(lambda dns: build_router(self.config, reactor, dns), self.resolver, name)

    @inlineCallbacks
    def test_txt_route_with_records_and_cache_state(self):
        result = yield self.explain("Shop.Example.com")
        self.assertEqual(result["server_name"], "shop.example.com")
        self.assertEqual([step["answer"] for step in result["steps"]], ["no route", "route"])
        [lookup] = result["dns"]
        self.assertEqual((lookup["query"], lookup["type"], lookup["state"]), ("_dstack-app-address.shop.example.com.", "TXT", "miss"))
        self.assertEqual(lookup["records"][0]["data"], "'myapp:443'")
        self.assertEqual(lookup["records"][0]["ttl"], 120)
        self.assertEqual(result["route"]["app"], "myapp")
        self.assertEqual(result["route"]["backends"], ["127.0.0.1:8443"])
        self.assertEqual(result["decision"], "app myapp via txt: connect to 127.0.0.1:8443")
        again = yield self.explain("shop.example.com")
        self.assertEqual(again["dns"][0]["state"], "hit")
        self.assertIn("shop.example.com", render(again))
        json.dumps(again)

    @inlineCallbacks
    def test_refused_record(self):
        result = yield self.explain("bad.example.com")
        self.assertIsNone(result["route"])
        self.assertEqual(result["steps"][-1]["answer"], "refused")
        self.assertIn("localhost", result["decision"])
        self.assertTrue(result["decision"].endswith("the client gets internal_error"))

    @inlineCallbacks
    def test_no_route(self):
        result = yield self.explain("nowhere.example.com")
        self.assertEqual([note["negative"] for note in result["dns"]], ["nxdomain", "nxdomain", "nxdomain"])
        self.assertEqual(result["decision"], "no route: the client gets unrecognized_name")

    @inlineCallbacks
    def test_invalid_name(self):
        result = yield self.explain("bad name.example.com")
        self.assertIsNone(result["server_name"])
        self.assertIn("invalid server name", result["decision"])

    @inlineCallbacks
    def test_command_line(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(CONFIG.format(port=self.dns.port))
        argv = ["-m", "sniproxy.explain", "shop.example.com", "--config", path]
        import sys

        out, err, code = yield getProcessOutputAndValue(sys.executable, argv, env=child_environment())
        self.assertEqual(code, 0, err)
        self.assertIn(b"txt        route: TXT _dstack-app-address.shop.example.com", out)
        self.assertIn(b"decision: app myapp via txt: connect to 127.0.0.1:8443", out)
        out, err, code = yield getProcessOutputAndValue(sys.executable, argv[:2] + ["nowhere.example.com", "--config", path, "--json"], env=child_environment())
        self.assertEqual(code, 1, err)
        self.assertIsNone(json.loads(out)["route"])
