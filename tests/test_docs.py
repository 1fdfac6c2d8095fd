"""
The README as a front page, the manual in docs/, and the configuration
reference generator (docs/_ext/sniproxy_config.py).

The Sphinx build itself runs in CI (C{.ci/run}, step 2), not here: the test
virtualenv has no Sphinx.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
from dataclasses import dataclass, field
from typing import Mapping

from twisted.trial.unittest import SynchronousTestCase

import sniproxy.config
from sniproxy.config import ConfigError, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.rst")
DOCS = os.path.join(ROOT, "docs")
CI_RUN = os.path.join(ROOT, ".ci", "run")


def _extension() -> types.ModuleType:
    path = os.path.join(DOCS, "_ext", "sniproxy_config.py")
    spec = importlib.util.spec_from_file_location("sniproxy_docs_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up in sys.modules while it is executed.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ext = _extension()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _literal_blocks(text: str) -> list[str]:
    """The first line of each literal block (a line ending in C{::})."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::"):
            for following in lines[i + 1 :]:
                if following.strip():
                    if following.startswith("    "):
                        blocks.append(following.strip())
                    break
    return blocks


class ReadmeTests(SynchronousTestCase):
    """
    The README is a front page whose first two commands are the ones
    operators and CI use.
    """

    def setUp(self) -> None:
        self.readme = _read(README)

    def test_short(self) -> None:
        """The README is under 20,000 characters."""
        self.assertLess(len(self.readme), 20000)

    def test_first_commands(self) -> None:
        """
        The first literal block runs the proxy with the shipped config; the
        second, under "Run the whole test suite", installs C{.[test]} into
        C{.venv} and runs pytest.
        """
        first, second = _literal_blocks(self.readme)[:2]
        self.assertIn(".venv/bin/twistd -n sniproxy --config etc/sniproxy.toml", first)
        self.assertTrue(first.startswith("python3 -m venv .venv && "))
        self.assertEqual(
            second,
            "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest",
        )
        before = self.readme[: self.readme.index(second)]
        self.assertIn("\nRun the whole test suite::\n", before)

    def test_ci_extracts_the_second_command(self) -> None:
        """
        The awk program in C{.ci/run}, run on the README, prints the second
        command.
        """
        if shutil.which("awk") is None:
            self.skipTest("no awk on this machine")
        script = _read(CI_RUN)
        match = re.search(r"^command=\$\((awk .*README\.rst)\)$", script, re.MULTILINE)
        self.assertIsNotNone(match, ".ci/run has no command=$(awk ... README.rst) line")
        out = subprocess.run(
            ["bash", "-c", match.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout
        self.assertEqual(out.strip(), _literal_blocks(self.readme)[1])

    def test_links_into_the_manual(self) -> None:
        """Every C{docs/<page>.rst} the README links to exists."""
        links = re.findall(r"<(docs/[\w-]+\.rst)>`_", self.readme)
        self.assertTrue(links)
        for link in links:
            self.assertTrue(os.path.exists(os.path.join(ROOT, link)), link)


class ManualTests(SynchronousTestCase):
    """
    The manual holds the design: nothing points at a file outside the
    repository.
    """

    def test_no_design_md(self) -> None:
        """Neither the README nor any page or file in docs/ names DESIGN.md."""
        paths = [README]
        for directory, _, files in os.walk(DOCS):
            if "_build" in directory.split(os.sep):
                continue
            paths += [os.path.join(directory, name) for name in files if name.endswith((".rst", ".py", ".txt"))]
        self.assertGreater(len(paths), 5)
        for path in paths:
            self.assertNotIn("DESIGN.md", _read(path), path)

    def test_toctree_pages_exist(self) -> None:
        """Every page in the index's toctree is a file of docs/."""
        index = _read(os.path.join(DOCS, "index.rst"))
        tree = index[index.index(".. toctree::") :]
        pages = re.findall(r"^   ([\w-]+)$", tree, re.MULTILINE)
        self.assertIn("configuration", pages)
        for page in pages:
            self.assertTrue(os.path.exists(os.path.join(DOCS, page + ".rst")), page)

    def test_example_config_parses(self) -> None:
        """The example config in the configuration page is a valid config."""
        page = _read(os.path.join(DOCS, "configuration.rst"))
        start = page.index("A config that uses most of the tables::")
        block = []
        for line in page[start:].splitlines()[2:]:
            if line and not line.startswith("    "):
                break
            block.append(line[4:])
        config = parse_config(tomllib.loads("\n".join(block)))
        self.assertEqual(config.routing.sources, ("static", "subdomain", "txt", "system"))
        self.assertEqual(config.admin.listen, "tcp:9100:interface=127.0.0.1")

    def test_strict_switch_off(self) -> None:
        """
        conf.py has the switch the lead flips once every config field is
        documented.
        """
        self.assertRegex(_read(os.path.join(DOCS, "conf.py")), r"(?m)^sniproxy_config_strict = (False|True)$")


# ---------------------------------------------------------------- fixtures


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Where:
    host: str
    port: int | None = None


@dataclass(frozen=True)
class Inner:
    """
    A nested table.

    @ivar depth: how deep,
        in metres.
    """

    depth: float = 1.5


@dataclass(frozen=True)
class Member:
    """
    @ivar places: where it goes.
    """

    places: tuple[Where, ...]


@dataclass(frozen=True)
class Outer:
    """
    The outer table, with C{code}.

    @ivar name: its name; C{*.suffix} patterns
        and I{emphasis}, with a_b and 2 * 3.
    @ivar colour: a colour.
    @ivar gone: documents nothing.
    @type name: C{str}
    """

    name: str = "x"
    colour: Colour = Colour.RED
    flags: tuple[str, ...] = ("a", "b")
    target: Where | None = None
    inner: Inner = Inner()
    members: Mapping[str, Member] = field(default_factory=dict)


@dataclass(frozen=True)
class Root:
    outer: Outer = Outer()
    path: str = ""


class DocstringTests(SynchronousTestCase):
    """
    L{ext.parse_docstring} and L{ext.epytext_to_rst} read epytext field
    docs.
    """

    def test_ivar_with_continuation(self) -> None:
        """
        An C{@ivar} line's text continues on the deeper-indented lines
        after it; other fields end it and are not C{@ivar}s.
        """
        intro, ivars = ext.parse_docstring(Outer.__doc__)
        self.assertEqual(intro, "The outer table, with C{code}.")
        self.assertEqual(
            ivars,
            {
                "name": "its name; C{*.suffix} patterns and I{emphasis}, with a_b and 2 * 3.",
                "colour": "a colour.",
                "gone": "documents nothing.",
            },
        )
        self.assertEqual(ext.parse_docstring(Inner.__doc__)[1], {"depth": "how deep, in metres."})

    def test_markup(self) -> None:
        """
        Epytext markup becomes reST; reST's own markup characters in plain
        text are escaped.
        """
        self.assertEqual(
            ext.epytext_to_rst("C{*.x} and I{it} B{bold} L{Config} E{lb}E{rb} a_b 2 * 3"),
            "``*.x`` and *it* **bold** ``Config`` {} a\\_b 2 \\* 3",
        )
        self.assertEqual(ext.epytext_to_rst("C{a{b}c}"), "``a{b}c``")
        self.assertEqual(ext.literal("a``b"), ":literal:`a\\`\\`b`")


class ReferenceTests(SynchronousTestCase):
    """
    L{ext.build_tables} and L{ext.render}: one table per TOML table, one
    key per field, type and default from the dataclass.
    """

    def module(self, **extra: object) -> types.ModuleType:
        module = types.ModuleType("fixture")
        module.Config = Root  # type: ignore[attr-defined]
        for name, value in extra.items():
            setattr(module, name, value)
        return module

    def test_walk(self) -> None:
        """
        Without C{SECTIONS}, tables are the dataclass fields of C{Config}
        and below, and the values of C{Mapping} fields.
        """
        self.assertEqual(
            ext.sections(self.module()),
            {"outer": Outer, "outer.inner": Inner, "outer.members": Member},
        )

    def test_sections_names(self) -> None:
        """
        A module's C{SECTIONS} names the tables it lists, and the tables
        below them; tables it leaves out are still shown, and a class only
        it names comes last.
        """
        module = self.module(SECTIONS={"top": Outer, "extra": Where})
        self.assertEqual(
            ext.sections(module),
            {"top": Outer, "top.inner": Inner, "top.members": Member, "extra": Where},
        )
        tables = ext.build_tables(module)
        inner_key = [k for k in tables[0].keys if k.name == "inner"][0]
        self.assertEqual(inner_key.table, "top.inner")
        module = self.module(SECTIONS={"outer": Outer, "deep": Inner})
        self.assertEqual(list(ext.sections(module)), ["outer", "deep", "outer.members"])

    def test_keys(self) -> None:
        """
        Each field is a key with its TOML type, default and converted
        documentation; undocumented fields and stale C{@ivar}s are listed.
        """
        outer, inner, members = ext.build_tables(self.module())
        keys = {k.name: k for k in outer.keys}
        self.assertEqual(list(keys), ["name", "colour", "flags", "target", "inner", "members"])
        self.assertEqual(keys["name"].default, '``"x"``')
        self.assertEqual(keys["name"].type, "string")
        self.assertEqual(keys["name"].doc, "its name; ``*.suffix`` patterns and *emphasis*, with a\\_b and 2 \\* 3.")
        self.assertEqual(keys["colour"].type, 'string, one of ``"red"``, ``"blue"``')
        self.assertEqual(keys["colour"].default, '``"red"``')
        self.assertEqual(keys["flags"].default, '``["a", "b"]``')
        self.assertEqual(keys["flags"].type, "list of strings")
        self.assertEqual(keys["target"].default, "*unset*")
        self.assertEqual(keys["target"].type, 'string ``"host:port"``')
        self.assertEqual(keys["inner"].table, "outer.inner")
        self.assertEqual(keys["members"].table, "outer.members")
        self.assertEqual(outer.undocumented, ("flags", "target"))
        self.assertEqual(outer.stale, ("gone",))
        self.assertEqual(inner.undocumented, ())
        self.assertTrue(members.many)
        self.assertFalse(outer.many)
        self.assertEqual(members.keys[0].default, "*required*")
        self.assertEqual(members.keys[0].type, 'list of strings ``"host:port"``')

    def test_render(self) -> None:
        """
        The reST has a labelled section per table and a definition list
        item per key, and docutils reads it without a warning.
        """
        text = "\n".join(ext.render(ext.build_tables(self.module())))
        self.assertIn(".. _sniproxy-config-outer-inner:", text)
        self.assertIn('``name`` = ``"x"`` : string\n    its name;', text)
        self.assertIn("``inner`` : table\n    See :ref:`sniproxy-config-outer-inner`.", text)
        self.assertIn("``flags`` = ``[\"a\", \"b\"]`` : list of strings\n    (Not documented yet.)", text)
        try:
            from docutils.core import publish_doctree
        except ImportError:
            self.skipTest("no docutils here (CI builds the manual with Sphinx)")
        # :ref: is Sphinx's; docutils alone reads it as an unknown role.
        plain = text.replace(":ref:", "")
        messages: list[str] = []
        publish_doctree(
            plain,
            settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": _Collect(messages)},
        )
        self.assertEqual(messages, [])


class _Collect:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        if text.strip():
            self.into.append(text)

    def flush(self) -> None:
        pass


class RealConfigTests(SynchronousTestCase):
    """
    The reference for the real L{sniproxy.config}: every field of every
    table is a key, and the keys and defaults it shows are what the parser
    accepts.
    """

    def setUp(self) -> None:
        self.tables = ext.build_tables(sniproxy.config)

    def table(self, cls: type) -> object:
        (table,) = [t for t in self.tables if t.cls is cls]
        return table

    def test_tables(self) -> None:
        """The reference has the tables the config file has."""
        config = sniproxy.config
        for cls in (
            config.ProxyConfig,
            config.RoutingConfig,
            config.StaticTarget,
            config.SubdomainConfig,
            config.TXTConfig,
            config.SystemConfig,
            config.AppConfig,
            config.DNSConfig,
            config.LogConfig,
            config.AdminConfig,
        ):
            self.table(cls)
        self.assertEqual(self.table(config.ProxyConfig).name, "proxy")
        self.assertEqual(self.table(config.TXTConfig).name, "routing.txt")
        self.assertTrue(self.table(config.AppConfig).many)

    def test_every_field(self) -> None:
        """Every init field of every table's dataclass is shown."""
        for table in self.tables:
            fields = [f.name for f in dataclasses.fields(table.cls) if f.init]
            self.assertEqual([k.field for k in table.keys], fields, table.name)

    def test_defaults_parse(self) -> None:
        """
        Writing a table's keys with the defaults the reference shows gives
        a config the parser accepts, with those defaults.
        """
        for table in self.tables:
            if table.many:
                continue
            lines = [f"[{table.name}]"]
            for key in table.keys:
                match = re.fullmatch(r"``(.*)``", key.default)
                if key.table is None and match:
                    lines.append(f"{key.name} = {match.group(1)}")
            document = "\n".join(lines) + "\n"
            try:
                config = parse_config(tomllib.loads(document))
            except ConfigError as error:
                self.fail(f"{document!r}: {error}")
            self.assertEqual(config, parse_config({}), document)

    def test_app_keys_parse(self) -> None:
        """The keys shown for C{[apps.<id>]} are accepted in an app's table."""
        apps = self.table(sniproxy.config.AppConfig)
        values = {"backends": '["127.0.0.1:9443"]'}
        lines = ["[apps.a]"]
        for key in apps.keys:
            match = re.fullmatch(r"``(.*)``", key.default)
            lines.append(f"{key.name} = {values.get(key.name) or match.group(1)}")
        parse_config(tomllib.loads("\n".join(lines)))

    def test_static_keys_parse(self) -> None:
        """
        The keys shown for C{[routing.static]} are the keys of a target's
        inline table.
        """
        static = self.table(sniproxy.config.StaticTarget)
        names = {k.name for k in static.keys}
        self.assertIn("backend", names)
        for name in names - {"backend"}:
            target = {"app": "a", "port": 443, "proxy_protocol": 0}
            document = {"routing": {"static": {"x.example": {"app": "a", name: target.get(name, 0)}}}}
            document["apps"] = {"a": {"backends": ["127.0.0.1"]}}
            parse_config(document)
        parse_config({"routing": {"static": {"x.example": {"backend": "127.0.0.1:1"}}}})
