"""
The config file: the documented keys work as written, and every mistake
stops the start with one line naming the key.
"""

from __future__ import annotations

import os
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from sniproxy.config import (
    Config,
    ConfigError,
    StaticTarget,
    load_config,
    parse_address,
    parse_config,
    validate_hostname,
)
from sniproxy.interfaces import Address

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, os.pardir, "etc", "sniproxy.toml")

# The config contract operators rely on (the example in docs/configuration.rst), verbatim.
DESIGN_EXAMPLE = """
[proxy]
listen = ["tcp:8443:interface=127.0.0.1"]   # Twisted endpoint strings
hello_timeout = 5.0          # seconds to receive the whole ClientHello
max_hello_bytes = 65536
connect_timeout = 5.0        # whole connect, all addresses
idle_timeout = 600.0         # no bytes either way
shutdown_timeout = 10.0      # drain on SIGTERM
fallback = ""                # "host:port" for unrouted names; "" = TLS alert and close

[routing]
sources = ["static", "subdomain", "txt", "system"]   # tried in this order; omit what you don't use

[routing.static]             # exact or "*.suffix" -> "host:port" or { app = "id", port = 443 }
"shop.example.com" = "127.0.0.1:9443"
"*.example.org" = { app = "myapp", port = 443 }

[routing.subdomain]
base_domains = ["gw.example.com"]

[routing.txt]
prefix = "_dstack-app-address"
legacy_prefix = "_tapp-address"                    # "" switches the legacy lookup off
wildcard_prefix = "_dstack-app-address-wildcard"   # "" switches the wildcard lookup off

[routing.system]
allow = ["*.svc.example"]
port = 443
allow_private = false

[apps.myapp]                 # app id -> instances; a port here overrides the route's
backends = ["10.0.0.2", "10.0.0.3:8443"]

[dns]
servers = []                 # "host:port" list; empty = /etc/resolv.conf
timeout = 1.0                # per attempt
attempts = 2
min_ttl = 0
max_ttl = 86400
max_negative_ttl = 10
max_stale = 86400
stale_wait = 0.0             # how long an expired hit waits for a fresh answer before serving stale
refresh_ahead = 0.1          # fraction of TTL left at which a hit refreshes in the background
max_entries = 10000
prefetch = []

[log]
access = "-"                 # access-log path, "-" = standard output, "" = off

[admin]
listen = "tcp:9100:interface=127.0.0.1"   # metrics and route explanations; "" = off
"""


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text))


class DocumentedConfigTests(SynchronousTestCase):
    def test_design_example_parses(self):
        config = parse(DESIGN_EXAMPLE)
        self.assertEqual(config.proxy.listen, ("tcp:8443:interface=127.0.0.1",))
        self.assertEqual(config.routing.sources, ("static", "subdomain", "txt", "system"))
        self.assertEqual(
            config.routing.static,
            {
                "shop.example.com": StaticTarget(address=Address("127.0.0.1", 9443)),
                "*.example.org": StaticTarget(app="myapp", port=443),
            },
        )
        self.assertEqual([(b.host, b.port) for b in config.apps["myapp"].backends], [("10.0.0.2", None), ("10.0.0.3", 8443)])
        self.assertEqual(config.routing.txt.legacy_prefix, "_tapp-address")
        self.assertEqual(config.dns.max_entries, 10000)
        self.assertEqual(config.admin.listen, "tcp:9100:interface=127.0.0.1")

    def test_shipped_example_parses(self):
        config = load_config(EXAMPLE)
        self.assertIn("demo.localhost", config.routing.static)

    def test_empty_file_is_all_defaults(self):
        config = parse("")
        self.assertEqual(config.proxy.hello_timeout, 5.0)
        self.assertEqual(config.proxy.max_hello_bytes, 65536)
        self.assertIsNone(config.proxy.fallback)
        self.assertEqual(config.routing.sources, ("static",))

    def test_names_are_normalised(self):
        config = parse('[routing.static]\n"Shop.Example.COM." = "127.0.0.1:1"\n')
        self.assertEqual(list(config.routing.static), ["shop.example.com"])

    def test_fallback(self):
        self.assertEqual(parse('[proxy]\nfallback = "[::1]:8443"').proxy.fallback, Address("::1", 8443))


class ConfigErrorTests(SynchronousTestCase):
    """Each mistake is refused with a message naming the key."""

    def assertRefused(self, text: str, message: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse(text)
        self.assertEqual(str(caught.exception), message)

    def test_unknown_table(self):
        self.assertRefused("[frobnicate]\nx = 1", "frobnicate: unknown key")

    def test_unknown_key(self):
        self.assertRefused("[proxy]\nhelo_timeout = 1", "proxy.helo_timeout: unknown key")

    def test_unknown_nested_key(self):
        self.assertRefused('[apps.web]\nbackend = ["127.0.0.1"]', "apps.web.backend: unknown key")

    def test_wrong_type(self):
        self.assertRefused(
            '[proxy]\nhello_timeout = "soon"', "proxy.hello_timeout: expected a number, got a string 'soon'"
        )

    def test_boolean_is_not_a_number(self):
        self.assertRefused("[proxy]\nidle_timeout = true", "proxy.idle_timeout: expected a number, got a boolean True")

    def test_integer_expected(self):
        self.assertRefused(
            "[proxy]\nmax_hello_bytes = 1.5", "proxy.max_hello_bytes: expected an integer, got a number 1.5"
        )

    def test_out_of_range(self):
        self.assertRefused("[proxy]\nhello_timeout = 0", "proxy.hello_timeout: must be above 0, got 0")

    def test_list_expected(self):
        self.assertRefused(
            '[proxy]\nlisten = "tcp:8443"', "proxy.listen: expected a list, got a string 'tcp:8443'"
        )

    def test_bad_endpoint(self):
        self.assertRefused(
            '[proxy]\nlisten = ["tcp:8443", "bogus:1"]',
            "proxy.listen[1]: bad endpoint 'bogus:1': Unknown endpoint type: 'bogus'",
        )

    def test_target_without_port(self):
        self.assertRefused(
            '[routing.static]\n"a.example" = "127.0.0.1"',
            "routing.static.\"a.example\": '127.0.0.1' has no port (expected 'host:port')",
        )

    def test_target_port_out_of_range(self):
        self.assertRefused(
            '[routing.static]\n"a.example" = "127.0.0.1:70000"',
            'routing.static."a.example": port 70000 is outside 1-65535',
        )

    def test_target_bad_host(self):
        self.assertRefused(
            '[routing.static]\n"a.example" = "bad host:80"',
            "routing.static.\"a.example\": label \"bad host\" has a character outside [a-z0-9-_]",
        )

    def test_target_unregistered_app(self):
        self.assertRefused(
            '[routing.static]\n"a.example" = { app = "nope" }',
            "routing.static.\"a.example\".app: names 'nope', which is not in [apps]",
        )

    def test_target_table_needs_one_of(self):
        self.assertRefused(
            '[routing.static]\n"a.example" = { port = 1 }',
            "routing.static.\"a.example\": needs exactly one of 'backend' (\"host:port\") or 'app'",
        )

    def test_bad_pattern(self):
        self.assertRefused(
            '[routing.static]\n"a.*.example" = "127.0.0.1:1"',
            "routing.static.\"a.*.example\": bad name pattern: a wildcard must be the whole first label, as in '*.example.com'",
        )

    def test_unknown_source(self):
        self.assertRefused(
            '[routing]\nsources = ["static", "carrier-pigeon"]',
            "routing.sources[1]: expected one of 'static', 'subdomain', 'txt', 'system', got 'carrier-pigeon'",
        )

    def test_source_without_its_settings(self):
        self.assertRefused(
            '[routing]\nsources = ["subdomain"]',
            "routing.subdomain.base_domains: is empty but 'subdomain' is in routing.sources",
        )

    def test_bad_fallback(self):
        self.assertRefused('[proxy]\nfallback = "nowhere"', "proxy.fallback: 'nowhere' has no port (expected 'host:port')")

    def test_dns_server_must_be_an_address(self):
        self.assertRefused(
            '[dns]\nservers = ["ns.example.com:53"]',
            "dns.servers[0]: 'ns.example.com' is not an IP address (a DNS server cannot be a name)",
        )


class LoadConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_missing_file(self):
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(str(caught.exception), f"{path}: cannot read the config file: No such file or directory")

    def test_not_toml(self):
        path = self.write("[proxy\nlisten = 1\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: not valid TOML: "))
        self.assertIn("line 1", str(caught.exception))

    def test_path_is_kept(self):
        path = self.write("")
        self.assertEqual(load_config(path).path, path)


class PrimitiveTests(SynchronousTestCase):
    def test_parse_address(self):
        self.assertEqual(parse_address("127.0.0.1:80"), ("127.0.0.1", 80))
        self.assertEqual(parse_address("[::1]:443"), ("::1", 443))
        self.assertEqual(parse_address("::1", 53), ("::1", 53))
        self.assertEqual(parse_address("Backend.Example.:8443"), ("backend.example", 8443))
        self.assertEqual(parse_address("10.0.0.2"), ("10.0.0.2", None))
        for bad in ["", "host:", "host:x", "[::1", "[nope]:1", "1.2.3.4:0", "a..b:1"]:
            with self.assertRaises(ValueError, msg=bad):
                parse_address(bad)

    def test_validate_hostname(self):
        self.assertEqual(validate_hostname("A.B.C."), "a.b.c")
        self.assertEqual(validate_hostname("a" * 63 + ".com"), "a" * 63 + ".com")
        for bad in ["", ".", "a" * 64 + ".com", "-a.com", "a-.com", "a b.com", "a\x00.com", "ä.com", ("a." * 127) + "com"]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                validate_hostname(bad)
