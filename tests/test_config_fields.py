"""
The config dataclasses are the one source of defaults and field docs: the
parser's defaults are theirs, every field has an C{@ivar} line (which the
manual's config reference is generated from), and L{SECTIONS} names the
dataclass of every TOML table.
"""

from __future__ import annotations

import dataclasses
import re

from twisted.trial.unittest import SynchronousTestCase

from sniproxy import config as config_module
from sniproxy.config import (
    SECTIONS,
    AppConfig,
    Config,
    ConfigError,
    ProxyConfig,
    StaticTarget,
    SubdomainPolicy,
    parse_config,
)

CONFIG_CLASSES = [
    value
    for value in vars(config_module).values()
    if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == config_module.__name__
]


def documented_fields(cls: type) -> set[str]:
    """The names given an C{@ivar name:} line with text in C{cls}'s docstring."""
    return set(re.findall(r"^\s*@ivar (\w+): \S", cls.__doc__ or "", re.MULTILINE))


class FieldDocTests(SynchronousTestCase):
    def test_every_field_documented(self):
        self.assertGreater(len(CONFIG_CLASSES), 10)
        for cls in CONFIG_CLASSES:
            fields = {f.name for f in dataclasses.fields(cls)}
            self.assertEqual(fields - documented_fields(cls), set(), cls.__name__)
            self.assertEqual(documented_fields(cls) - fields, set(), cls.__name__)

    def test_sections_name_the_table_classes(self):
        for section, cls in SECTIONS.items():
            self.assertIn(cls, CONFIG_CLASSES, section)
        # Every dataclass that is a TOML table is named (AppBackend is a
        # string in a list, Config is the whole file).
        named = set(SECTIONS.values())
        self.assertEqual({c.__name__ for c in CONFIG_CLASSES} - {c.__name__ for c in named}, {"AppBackend", "Config"})


class DefaultTests(SynchronousTestCase):
    def test_empty_file_is_the_dataclass_defaults(self):
        self.assertEqual(parse_config({}), Config())

    def test_table_defaults(self):
        config = parse_config(
            {
                "routing": {"static": {"a.example": {"app": "x"}}},
                "apps": {"x": {"backends": ["127.0.0.1"]}},
            }
        )
        target = config.routing.static["a.example"]
        self.assertEqual((target.port, target.proxy_protocol), (StaticTarget().port, StaticTarget().proxy_protocol))
        self.assertEqual(config.apps["x"].proxy_protocol, AppConfig.__dataclass_fields__["proxy_protocol"].default)

    def test_subdomain_policy_is_an_enum(self):
        config = parse_config(
            {"routing": {"sources": ["subdomain"], "subdomain": {"base_domains": ["x.example"], "non_passthrough": "passthrough"}}}
        )
        self.assertIs(config.routing.subdomain.non_passthrough, SubdomainPolicy.PASSTHROUGH)
        self.assertIs(Config().routing.subdomain.non_passthrough, SubdomainPolicy.REJECT)


class MaxLifetimeKeyTests(SynchronousTestCase):
    def test_default_is_none(self):
        self.assertEqual(ProxyConfig().max_lifetime, 0)

    def test_parsed(self):
        self.assertEqual(parse_config({"proxy": {"max_lifetime": 18000}}).proxy.max_lifetime, 18000.0)

    def test_refused(self):
        for value, problem in [(-1, "must be at least 0, got -1"), ("5h", "expected a number, got a string '5h'")]:
            error = self.assertRaises(ConfigError, parse_config, {"proxy": {"max_lifetime": value}})
            self.assertEqual(str(error), f"proxy.max_lifetime: {problem}")
