"""
The configuration reference, generated from L{sniproxy.config}'s dataclasses.

C{.. sniproxy-config::} renders one section per TOML table.  Each key is a
field of the table's dataclass: its name, its TOML type and its default come
from C{dataclasses.fields}, its meaning from the class docstring's epytext
C{@ivar <field>: <text>} line (continuation lines indented).  So the
reference follows the code: a new key appears as soon as it has a field, and
a field without an C{@ivar} line is reported.

The tables are found by walking L{sniproxy.config.Config}: a field whose
type is a dataclass is a table, a C{Mapping[str, <dataclass>]} field is a
table of tables (C{[apps.<id>]}).  C{sniproxy.config.SECTIONS} (TOML table
name -> dataclass), when the module has one, names them (see L{sections}).

Config values in C{conf.py}:

    - C{sniproxy_config_strict} (default C{False}): when true, an
      undocumented field (or an C{@ivar} naming no field) is a Sphinx warning,
      which fails C{sphinx-build -W}; when false it is an informational
      message and the key is rendered as "(not documented yet)".

The functions that read the dataclasses (L{sections}, L{field_docs},
L{render}) need no Sphinx, so the test suite can check them without it.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Iterator

# A field whose TOML key is not its name: (class name, field name) -> key.
# The parser (sniproxy.config._static_target) reads C{backend} into
# StaticTarget.address.  A field's own metadata ({"toml_key": ...}) wins.
TOML_KEYS: dict[tuple[str, str], str] = {
    ("StaticTarget", "address"): "backend",
}

# Tables of tables, by their name: (the heading, the sentence that says what
# their keys are).  Others get a generic sentence.
TABLES_OF_TABLES: dict[str, tuple[str, str]] = {
    "apps": ("apps.<id>", "One table per app, named by the app's id (a DNS label), with these keys."),
    "routing.static": (
        "routing.static",
        "Each key is a name or a ``*.suffix`` pattern, and its value a table with these keys.",
    ),
}

_FIELD = re.compile(r"^@(\w+)(?:\s+([A-Za-z_][\w.]*))?\s*:\s?(.*)$")


@dataclasses.dataclass(frozen=True)
class Key:
    """
    One key of a TOML table, as the reference shows it.

    @ivar name: the TOML key.
    @ivar field: the dataclass field it fills.
    @ivar type: the TOML type in words (reST).
    @ivar default: the default as reST (a TOML literal, or words).
    @ivar doc: the C{@ivar} text as reST, or C{None} when there is none.
    @ivar table: the name of the table this key opens, when its value is one.
    """

    name: str
    field: str
    type: str
    default: str
    doc: str | None
    table: str | None = None


@dataclasses.dataclass(frozen=True)
class Table:
    """
    One TOML table of the reference.

    @ivar name: its dotted TOML name (C{"routing.subdomain"}, C{"apps.<id>"}).
    @ivar cls: the dataclass behind it.
    @ivar intro: the class docstring's description, as reST.
    @ivar keys: its keys, in field order.
    @ivar undocumented: fields with no C{@ivar} line (a field that is a
        table of its own needs none: its section documents it).
    @ivar stale: C{@ivar} lines naming no field.
    @ivar many: a table of tables (C{[apps.<id>]}): the config has one per
        key of a C{Mapping} field.
    """

    name: str
    cls: type
    intro: str
    keys: tuple[Key, ...]
    undocumented: tuple[str, ...]
    stale: tuple[str, ...]
    many: bool = False


# ---------------------------------------------------------------- epytext


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """
    Split an epytext docstring into its description and its C{@ivar} texts.

    A field starts with C{@ivar name:} at the start of a line; every
    following line indented deeper than the field, or blank and followed by
    such a line, continues it.  Other fields (C{@type}, C{@param}, ...) end
    the previous one and are ignored.

    @return: the description (the text before the first field) and a
        mapping of field name to its text with the lines joined.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    ivars: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent = 0
    in_fields = False
    for line in lines:
        stripped = line.strip()
        match = _FIELD.match(stripped)
        if match:
            in_fields = True
            current = None
            kind, name, text = match.groups()
            if kind in ("ivar", "var", "cvar") and name:
                current = ivars.setdefault(name, [])
                if text.strip():
                    current.append(text.strip())
                indent = len(line) - len(line.lstrip())
            continue
        if not in_fields:
            description.append(line)
            continue
        if current is not None and stripped and len(line) - len(line.lstrip()) > indent:
            current.append(stripped)
        elif stripped:
            # Text back at the field's indentation that is not a field:
            # epytext would call it a new paragraph of the description,
            # which a docstring should not do; keep it with nothing.
            current = None
    text = "\n".join(description).strip()
    return text, {name: " ".join(parts) for name, parts in ivars.items()}


_ESCAPES = {"lb": "{", "rb": "}", "lt": "<", "gt": ">"}


def epytext_to_rst(text: str) -> str:
    """
    Convert epytext inline markup to reST.

    C{C{x}} and C{L{x}} become literals, C{I{x}} emphasis, C{B{x}} strong,
    C{E{lb}}/C{E{rb}} braces.  Characters reST would read as markup in
    plain text (C{*}, C{`}, C{|}, C{_}, C{\\}) are escaped, so a docstring
    cannot break the build.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if i + 1 < n and text[i] in "CLIBEUMXSG" and text[i + 1] == "{" and (i == 0 or not text[i - 1].isalnum()):
            end = _closing(text, i + 1)
            if end is not None:
                kind, inner = text[i], text[i + 2 : end]
                out.append(_markup(kind, inner))
                i = end + 1
                continue
        ch = text[i]
        out.append("\\" + ch if ch in "*`|_\\" else ch)
        i += 1
    return "".join(out)


def _closing(text: str, start: int) -> int | None:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def _plain(inner: str) -> str:
    # Nested markup inside a literal: keep only the text.
    return re.sub(r"[A-Z]\{([^{}]*)\}", lambda m: _ESCAPES.get(m.group(1), m.group(1)) if m.group(0)[0] == "E" else m.group(1), inner)


def _markup(kind: str, inner: str) -> str:
    if kind == "E":
        return _ESCAPES.get(inner, inner)
    if kind in "CLUM":
        if kind == "L" and "<" in inner and inner.endswith(">"):
            inner = inner[inner.index("<") + 1 : -1]
        return literal(_plain(inner))
    converted = epytext_to_rst(inner)
    if kind == "I":
        return f"*{converted}*" if converted.strip() else converted
    if kind == "B":
        return f"**{converted}**" if converted.strip() else converted
    return converted


def literal(text: str) -> str:
    """Text as an inline reST literal, whatever it contains."""
    text = " ".join(text.split())
    if not text:
        return '``""``'
    if "``" in text or text.startswith("`") or text.endswith("`"):
        return ":literal:`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return f"``{text}``"


# ---------------------------------------------------------------- types


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_address(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and [f.name for f in dataclasses.fields(tp)] == ["host", "port"]


def _is_mapping(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return inspect.isclass(origin) and issubclass(origin, Mapping)


def _mapping_value(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[1] if len(args) == 2 else Any


def describe_type(tp: Any, plural: bool = False) -> str:
    """
    A field's annotation as the TOML type an operator writes, in words.

    @param plural: describe a list's items ("strings", not "string").
    """
    tp, _ = _unwrap_optional(tp)
    s = "s" if plural else ""
    if tp is bool:
        return f"boolean{s}"
    if tp is int:
        return f"integer{s}"
    if tp is float:
        return f"number{s}"
    if tp is str:
        return f"string{s}"
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return ("strings" if plural else "string") + ", one of " + ", ".join(
            literal(json.dumps(m.value)) for m in tp
        )
    if typing.get_origin(tp) is typing.Literal:
        return ("strings" if plural else "one") + " of " + ", ".join(
            literal(json.dumps(v)) for v in typing.get_args(tp)
        )
    if _is_address(tp) or tp == tuple[str, int]:
        return f'string{s} {literal(chr(34) + "host:port" + chr(34))}'
    origin = typing.get_origin(tp)
    if origin in (tuple, list, frozenset, set) or tp in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 or (args and all(a == args[0] for a in args) and origin is not tuple):
            return "list of " + describe_type(args[0], plural=True)
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(tp):
            return "list of " + str(len(args)) + " values"
        return "list"
    if _is_mapping(tp):
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    if tp is Any:
        return "any value"
    return literal(getattr(tp, "__name__", str(tp)))


def toml_value(value: Any) -> str | None:
    """
    A default as a TOML literal, or C{None} when it has no TOML spelling
    (C{None}, a nested table).
    """
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if dataclasses.is_dataclass(value) and _is_address(type(value)):
        host, port = value.host, value.port
        host = f"[{host}]" if ":" in str(host) else host
        return json.dumps(f"{host}:{port}" if port is not None else str(host))
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int) and not isinstance(value[1], bool):
        host = f"[{value[0]}]" if ":" in value[0] else value[0]
        return json.dumps(f"{host}:{value[1]}")
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [toml_value(item) for item in value]
        if any(item is None for item in items):
            return None
        return "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return "{}" if not value else None
    return None



def describe_default(f: dataclasses.Field) -> str:
    """A field's default, as reST."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "*required*"
    if value is None:
        return "*unset*"
    if isinstance(value, Mapping) and not value:
        return "*empty*"
    text = toml_value(value)
    if text is None:
        return "*a table*"
    return literal(text)


# ---------------------------------------------------------------- tables


def _hints(cls: type) -> dict[str, Any]:
    module = importlib.import_module(cls.__module__)
    try:
        return typing.get_type_hints(cls, vars(module))
    except Exception:
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _walk(cls: type, prefix: str) -> Iterator[tuple[str, type]]:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints.get(f.name, f.type))
        name = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp) and not _is_address(tp):
            yield name, tp
            yield from _walk(tp, name)
        elif _is_mapping(tp):
            value = _mapping_value(tp)
            if dataclasses.is_dataclass(value) and not _is_address(value):
                yield name, value


def sections(module: Any) -> dict[str, type]:
    """
    TOML table name -> dataclass, in the order of C{Config}'s fields.

    The tables are found by walking the module's C{Config} (see the module
    docstring).  When the module has C{SECTIONS}, its names win: a class it
    names is shown under that name (and the tables below it under the new
    prefix), and a class it names that the walk does not reach comes last.
    So a C{SECTIONS} that lists only the top-level tables still gets the
    nested ones shown.
    """
    declared = {
        str(name): cls
        for name, cls in dict(getattr(module, "SECTIONS", None) or {}).items()
        if dataclasses.is_dataclass(cls)
    }
    by_class = {}
    for name, cls in declared.items():
        by_class.setdefault(cls, name)
    found: dict[str, type] = {}
    renamed: dict[str, str] = {}
    for name, cls in _walk(module.Config, "") if hasattr(module, "Config") else ():
        parent, _, last = name.rpartition(".")
        final = by_class.get(cls) or (f"{renamed[parent]}.{last}" if parent in renamed else name)
        renamed[name] = final
        if final not in found and cls not in found.values():
            found[final] = cls
    for name, cls in declared.items():
        if cls not in found.values() and name not in found:
            found[name] = cls
    return found


def _key_name(cls: type, f: dataclasses.Field) -> str:
    return f.metadata.get("toml_key") or TOML_KEYS.get((cls.__name__, f.name), f.name)


def field_docs(cls: type) -> tuple[str, dict[str, str]]:
    """The class's description and C{@ivar} texts (epytext, unconverted)."""
    return parse_docstring(cls.__doc__ if cls.__doc__ and not _is_generated_doc(cls) else "")


def _is_generated_doc(cls: type) -> bool:
    # dataclass() writes "Name(field: type, ...)" when a class has no docstring.
    return bool(cls.__doc__) and cls.__doc__.startswith(cls.__name__ + "(")


def build_tables(module: Any) -> list[Table]:
    """Every TOML table of the module's config, in order, with its keys."""
    found = sections(module)
    by_class = {}
    for name, cls in found.items():
        by_class.setdefault(cls, name)
    many = set()
    for cls in [module.Config, *found.values()]:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _unwrap_optional(hints.get(f.name, f.type))
            if _is_mapping(tp):
                many.add(_mapping_value(tp))
    tables = []
    for name, cls in found.items():
        intro, docs = field_docs(cls)
        hints = _hints(cls)
        keys = []
        names = set()
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            names.add(f.name)
            tp = hints.get(f.name, f.type)
            inner, _ = _unwrap_optional(tp)
            sub = None
            if f"{name}.{f.name}" in found:
                sub = f"{name}.{f.name}"
            if sub is None and (dataclasses.is_dataclass(inner) and not _is_address(inner)):
                sub = by_class.get(inner)
            if sub is None and _is_mapping(inner) and _mapping_value(inner) in by_class:
                sub = by_class[_mapping_value(inner)]
            doc = docs.get(f.name)
            keys.append(
                Key(
                    name=_key_name(cls, f),
                    field=f.name,
                    type=describe_type(tp),
                    default=describe_default(f),
                    doc=epytext_to_rst(doc) if doc else None,
                    table=sub,
                )
            )
        # A key that opens a table of its own is documented by that table.
        undocumented = tuple(k.field for k in keys if k.doc is None and k.table is None)
        stale = tuple(sorted(set(docs) - names))
        intro_rst = epytext_to_rst(" ".join(intro.split())) if intro else ""
        tables.append(Table(name, cls, intro_rst, tuple(keys), undocumented, stale, cls in many))
    return tables


def label(name: str) -> str:
    """The reST label of a table's section."""
    return "sniproxy-config-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def render(tables: list[Table]) -> list[str]:
    """
    The reST of the reference: a labelled section per table, and in it a
    definition list of its keys (C{name = default : type}, then the
    meaning).
    """
    lines: list[str] = []
    for table in tables:
        heading, sentence = TABLES_OF_TABLES.get(
            table.name, (table.name, "Each key of this table names a table with these keys.")
        )
        title = literal(f"[{heading}]")
        lines += [f".. _{label(table.name)}:", "", title, "-" * len(title), ""]
        if table.many or table.name in TABLES_OF_TABLES:
            lines += [sentence, ""]
        if table.intro:
            lines += [table.intro, ""]
        if not table.keys:
            lines += ["(No keys.)", ""]
        for key in table.keys:
            if key.table is not None:
                lines += [f"{literal(key.name)} : {key.type}", f"    See :ref:`{label(key.table)}`.", ""]
                if key.doc:
                    lines += ["    " + key.doc, ""]
                continue
            lines.append(f"{literal(key.name)} = {key.default} : {key.type}")
            lines.append("    " + (key.doc or "(Not documented yet.)"))
            lines.append("")
    return lines


# ---------------------------------------------------------------- Sphinx


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    logger = logging.getLogger(__name__)

    class ConfigReference(SphinxDirective):
        """C{.. sniproxy-config::} [module, default C{sniproxy.config}]"""

        has_content = False
        optional_arguments = 1
        option_spec = {"strict": directives.flag}

        def run(self) -> list[Any]:
            module_name = self.arguments[0] if self.arguments else "sniproxy.config"
            module = importlib.import_module(module_name)
            strict = self.config.sniproxy_config_strict or "strict" in self.options
            tables = build_tables(module)
            where = self.get_location()
            problems = [
                f"[{t.name}] {name} ({t.cls.__name__}.{name}) has no @ivar line"
                for t in tables
                for name in t.undocumented
            ] + [f"{t.cls.__name__} documents @ivar {name}, which is not a field" for t in tables for name in t.stale]
            if strict:
                for problem in problems:
                    logger.warning("sniproxy-config: %s", problem, location=where)
            elif problems:
                logger.info(
                    "sniproxy-config: %d config fields need an @ivar line (each is a warning with "
                    "sniproxy_config_strict = True): %s",
                    len(problems),
                    "; ".join(problems),
                    location=where,
                )
            self.env.note_dependency(module.__file__)
            container = nodes.container()
            content = StringList(render(tables), source=f"<sniproxy-config {module_name}>")
            nested_parse_with_titles(self.state, content, container)
            return container.children

    app.add_config_value("sniproxy_config_strict", False, "env", [bool])
    app.add_directive("sniproxy-config", ConfigReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
