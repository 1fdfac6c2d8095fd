"""
Property suites (hypothesis) for the inputs sniproxy takes from others:
the config loader (documents and files), the TXT route value parser and
the TXT source over arbitrary record sets, and what the ClientHello
parser's suite in tests/test_clienthello.py does not already cover
(hellos generated field by field, read back exactly; hostile server
names; the size bound).

Profiles (tests/__init__.py): "ci" by default (200 examples a test);
C{HYPOTHESIS_PROFILE=fuzz} is the documented long run, 100,000 examples a
test::

    HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_fuzz.py tests/test_clienthello.py -k "Property or Fuzz"
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import re
import string
import tempfile
import tomllib

from hypothesis import example, given, strategies as st
from twisted.internet.defer import succeed
from twisted.names import dns
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.clienthello import (
    ClientHello,
    ClientHelloParser,
    HelloTooLarge,
    InvalidServerName,
    MalformedHello,
    normalise_server_name,
)
from sniproxy.config import ConfigError, load_config, parse_config, validate_hostname
from sniproxy.interfaces import Route, RoutingError
from sniproxy.testing.clienthello import (
    alpn_extension,
    build_client_hello,
    sni_extension,
    supported_versions_extension,
)

# ---------------------------------------------------------------- the config loader

TOP = ("proxy", "routing", "apps", "dns", "log", "admin")

# Any TOML value (what tomllib can hand parse_config).
toml_scalars = (
    st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc))
    | st.dates()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

# Plausible values for the real keys: right and wrong types, edge values.
numbers = st.sampled_from(
    [0, 0.0, -1, 1, 0.001, 5.0, 1e9, 2**31, -0.0, 512, 65536, 16 * 1024 * 1024 + 1, 10**400]
) | st.floats(allow_nan=True, allow_infinity=True)
names = st.sampled_from(
    [
        "example.com",
        "*.example.org",
        "a..b",
        "-bad.example",
        "xn--bcher-kva.example",
        "UPPER.Example.",
        "*",
        "*.",
        "a" * 64,
        "é.example",
        "",
        "localhost",
    ]
)
addresses = st.sampled_from(
    [
        "127.0.0.1:9443",
        "[::1]:443",
        "::1",
        "10.0.0.2",
        "host.example:0",
        "host.example:65536",
        "host:port",
        "[::1",
        "1.2.3.4:x",
        "name.example:443",
        "",
    ]
)
endpoints = st.sampled_from(
    [
        "tcp:0:interface=127.0.0.1",
        "tcp6:port=0:interface=\\:\\:1",
        "tcp:notaport",
        "nosuch:1",
        "systemd:domain=INET:index=7",
        "unix:/tmp/sniproxy-fuzz.sock",
        "ssl:0",
        "",
    ]
)
networks = st.sampled_from(["127.0.0.0/8", "10.0.0.1/8", "::1/128", "not a network", "300.0.0.0/8"])


def plausible(key: str) -> st.SearchStrategy:
    """Values near what C{key} takes."""
    if key in ("listen",):
        return st.lists(endpoints, max_size=3) | endpoints
    if key in ("sources",):
        return st.lists(st.sampled_from(["static", "subdomain", "txt", "system", "bogus"]), max_size=5)
    if key in ("base_domains", "allow", "prefetch"):
        return st.lists(names, max_size=3)
    if key in ("backends",):
        return st.lists(addresses, max_size=3)
    if key in ("servers",):
        return st.lists(addresses | st.sampled_from(["8.8.8.8", "[2001:db8::1]:53", "dns.example"]), max_size=3)
    if key in ("accept_proxy_from",):
        return st.lists(networks, max_size=3)
    if key in ("fallback",):
        return addresses
    if key in ("prefix", "legacy_prefix", "wildcard_prefix", "access", "resolv_conf", "non_passthrough"):
        return names | st.sampled_from(["reject", "passthrough", "_dstack-app-address"])
    if key in ("allow_private", "splice"):
        return st.booleans()
    if key in ("proxy_protocol", "fallback_proxy_protocol"):
        return st.sampled_from([0, 1, 2, 3, True, "1"])
    return numbers


KEYS = {
    "proxy": [
        "listen",
        "hello_timeout",
        "max_hello_bytes",
        "routing_timeout",
        "connect_timeout",
        "connect_stagger",
        "idle_timeout",
        "shutdown_timeout",
        "fallback",
        "fallback_proxy_protocol",
        "max_connections",
        "max_connections_per_client",
        "max_pending_per_name",
        "accept_proxy_from",
        "splice",
    ],
    "dns": [
        "servers",
        "resolv_conf",
        "timeout",
        "attempts",
        "deadline",
        "min_ttl",
        "max_ttl",
        "max_negative_ttl",
        "failure_backoff",
        "max_stale",
        "stale_wait",
        "refresh_ahead",
        "max_entries",
        "prefetch",
    ],
    "log": ["access"],
    "admin": ["listen"],
}
ROUTING = {
    "subdomain": ["base_domains", "non_passthrough"],
    "txt": ["prefix", "legacy_prefix", "wildcard_prefix"],
    "system": ["allow", "port", "allow_private", "timeout", "threads", "max_queued"],
}


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, one_in: int = 6) -> st.SearchStrategy:
    """C{good}, but C{bad} about once in C{one_in} draws."""
    # Not a bound of the range: hypothesis draws those more often.
    return st.integers(min_value=0, max_value=one_in + 1).flatmap(lambda i: bad if i == 2 else good)


@st.composite
def table(draw: st.DrawFn, keys: list[str]) -> dict:
    """A table with some of C{keys} (plausible or arbitrary values) and perhaps a stray key."""
    data = draw(st.fixed_dictionaries({}, optional={key: mostly(plausible(key), toml_values) for key in keys}))
    if draw(mostly(st.just(False), st.just(True), 10)):
        data[draw(st.text(max_size=10))] = draw(toml_values)
    return data


static_targets = mostly(
    addresses
    | st.fixed_dictionaries(
        {},
        optional={
            "backend": addresses,
            "app": st.sampled_from(["myapp", "nosuchapp", "My.App", ""]),
            "port": numbers,
            "proxy_protocol": plausible("proxy_protocol"),
        },
    ),
    toml_values,
)


@st.composite
def documents(draw: st.DrawFn) -> dict:
    """A config document: the real tables with plausible or broken contents."""
    doc: dict = {}
    for name in ("proxy", "dns", "log", "admin"):
        if draw(st.booleans()):
            doc[name] = draw(mostly(table(KEYS[name]), toml_values))
    if draw(st.booleans()):
        routing = draw(table(["sources"]))
        for name, keys in ROUTING.items():
            if draw(st.booleans()):
                routing[name] = draw(mostly(table(keys), toml_values))
        if draw(st.booleans()):
            routing["static"] = draw(
                mostly(st.dictionaries(names | st.text(max_size=10), static_targets, max_size=3), toml_values)
            )
        doc["routing"] = draw(mostly(st.just(routing), toml_values))
    if draw(st.booleans()):
        doc["apps"] = draw(
            st.dictionaries(
                st.sampled_from(["myapp", "other", "Bad.Id", "-x", ""]) | st.text(max_size=8),
                mostly(table(["backends", "proxy_protocol"]), toml_values),
                max_size=3,
            )
            | toml_values
        )
    if draw(mostly(st.just(False), st.just(True), 10)):
        doc[draw(st.text(max_size=8))] = draw(toml_values)
    return doc


def names_a_key_of(key: str, doc: dict) -> bool:
    """
    Whether the key path of a message (C{a.b}, C{"a.b".c}, C{a[0]}; a
    quoted first part when it has spaces, quotes or unprintable characters)
    starts with a top-level key of C{doc}.
    """
    if key.startswith('"'):
        return json.JSONDecoder().raw_decode(key)[0] in doc
    return any(key == k or key.startswith((k + ".", k + "[")) for k in doc)


def to_toml(value) -> str:
    """A TOML rendering of a value (inline tables for tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(
                c
                if c.isprintable() and c not in '"\\'
                else "\\u%04x" % ord(c)
                if ord(c) < 0x10000
                else "\\U%08x" % ord(c)
                for c in value
            )
            + '"'
        )
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_toml(str(k))} = {to_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def document_text(doc: dict) -> str:
    return "".join(f"{to_toml(str(k))} = {to_toml(v)}\n" for k, v in doc.items())


class ConfigFuzzTests(SynchronousTestCase):
    """
    Whatever the document, the config loader gives a L{Config} or one
    L{ConfigError} whose message names a key of that document (or the
    file): never another exception.
    """

    def assertNamesAKey(self, error: ConfigError, doc: dict | None, path: str = "") -> None:
        text = str(error)
        self.assertTrue(error.key, text)
        self.assertTrue(text.startswith(error.key + ": "), text)
        self.assertNotIn("\n", text)
        if error.key == path:
            return
        if doc is not None:
            self.assertTrue(names_a_key_of(error.key, doc), (text, list(doc)))

    @given(documents())
    def test_documents(self, doc: dict) -> None:
        try:
            parse_config(doc)
        except ConfigError as error:
            self.assertNamesAKey(error, doc)

    @given(st.dictionaries(st.text(max_size=10), toml_values, max_size=5))
    def test_arbitrary_tables(self, doc: dict) -> None:
        try:
            parse_config(doc)
        except ConfigError as error:
            self.assertNamesAKey(error, doc)

    @given(
        documents(),
        st.lists(
            st.tuples(st.integers(min_value=0), st.sampled_from(["delete", "insert", "replace"]), st.text(max_size=4)),
            max_size=4,
        ),
        st.sampled_from(["utf-8", "latin-1"]),
    )
    @example({}, [], "utf-8")
    @example({"proxy": {"hello_timeout": 1.0}}, [(0, "insert", "\xff")], "latin-1")
    @example({"proxy": {}}, [(9, "insert", "[" * 5000)], "utf-8")
    def test_files(self, doc: dict, edits, encoding: str) -> None:
        """
        The document as a TOML file, then damaged (bytes deleted, inserted,
        replaced; non-UTF-8 encodings): L{load_config} gives a L{Config}
        or a L{ConfigError} naming the file or a key.
        """
        text = document_text(doc)
        for at, kind, chunk in edits:
            at = at % (len(text) + 1)
            if kind == "delete":
                text = text[:at] + text[at + len(chunk) + 1 :]
            elif kind == "insert":
                text = text[:at] + chunk + text[at:]
            else:
                text = text[:at] + chunk + text[at + len(chunk) :]
        with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as f:
            f.write(text.encode(encoding, "replace"))
        self.addCleanup(os.unlink, f.name)
        try:
            load_config(f.name)
        except ConfigError as error:
            try:
                parsed = tomllib.loads(text.encode(encoding, "replace").decode("utf-8"))
            except (ValueError, RecursionError):
                parsed = None
            if parsed is None:
                self.assertEqual(error.key, f.name)
            self.assertNamesAKey(error, parsed, f.name)

    def test_well_formed_documents_load(self) -> None:
        """The generators are not all noise: the plain documents they start from load."""
        config = parse_config(
            tomllib.loads(document_text({"proxy": {"hello_timeout": 2.5, "listen": ["tcp:0:interface=127.0.0.1"]}}))
        )
        self.assertEqual(config.proxy.hello_timeout, 2.5)


# ---------------------------------------------------------------- TXT values

try:
    from sniproxy.sources import txt as _txt

    parse_value = _txt.parse_value
    BadValue = _txt.BadValue
except (ImportError, AttributeError):  # pragma: no cover - the TXT source is not there yet
    parse_value = None

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
labels = st.from_regex(r"\A[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
ports = st.integers(min_value=1, max_value=65535)

# Values near the grammar: its pieces, joined and broken in every way.
txt_pieces = st.sampled_from(
    [
        b"myapp",
        b"MyApp",
        b":",
        b"443",
        b"0",
        b"65535",
        b"65536",
        b"localhost",
        b"127.0.0.1",
        b"[::1]",
        b"::1",
        b".",
        b"-",
        b"_",
        b" ",
        b"\x00",
        b"\n",
        b"\xff",
        b"\xc3\xa9",
        b"+1",
        b"0x1bb",
        b"\xef\xbc\x91",
    ]
)
txt_values = st.binary(max_size=80) | st.lists(txt_pieces | st.binary(max_size=4), max_size=8).map(b"".join)


def _skip_without_txt(test):
    if parse_value is None:
        test.skip = "sniproxy.sources.txt.parse_value is not there"
    return test


class TXTValueFuzzTests(SynchronousTestCase):
    """
    L{sniproxy.sources.txt.parse_value}: anything in, C{(app id, port)} or
    a C{BadValue} out, the app id always a lower-case DNS label (never a
    host, never an IP literal), the reason printable and bounded.
    """

    @_skip_without_txt
    @given(txt_values)
    @example(b"127.0.0.1:22")
    @example(b"[::1]:22")
    @example(b"localhost:22")
    @example(b"myapp:\xef\xbc\x94\xef\xbc\x94\xef\xbc\x93")  # fullwidth digits
    @example(b"myapp:\xd9\xa4")  # an Arabic-Indic digit
    @example(b"my\xe2\x80\x8bapp:443")  # a zero-width space
    def test_anything(self, value: bytes) -> None:
        try:
            app, port = parse_value(value)
        except BadValue as error:
            reason = str(error)
            self.assertTrue(reason)
            self.assertTrue(reason.isprintable(), reason)
            self.assertLess(len(reason), 400)
            return
        self.assertRegex(app, _LABEL)
        self.assertNotIn(".", app)
        self.assertRaises(ValueError, ipaddress.ip_address, app)
        self.assertTrue(1 <= port <= 65535)
        text = value.decode("ascii")
        self.assertEqual(text.lower().partition(":")[0], app)
        self.assertEqual(int(text.partition(":")[2]), port)
        self.assertTrue(set(text.partition(":")[2]) <= set(string.digits))

    @_skip_without_txt
    @given(labels, ports, st.booleans())
    def test_round_trip(self, label: str, port: int, upper: bool) -> None:
        value = f"{label.upper() if upper else label}:{port}".encode()
        self.assertEqual(parse_value(value), (label.lower(), port))

    @_skip_without_txt
    @given(labels, ports, st.sampled_from([" ", ".x", ":1", "\x00", "/", "@"]), st.integers(min_value=0, max_value=2))
    def test_near_misses(self, label: str, port: int, junk: str, where: int) -> None:
        """A valid value with anything added is refused, never read differently."""
        parts = [label, ":", str(port)]
        parts.insert(where * 2 if where < 2 else 3, junk)
        value = "".join(parts).encode()
        try:
            result = parse_value(value)
        except BadValue:
            return
        # Only an addition that leaves a valid value (a junk "." inside the
        # label, ...) may parse, and then to exactly what it says.
        app, _, number = value.decode().lower().partition(":")
        self.assertEqual(result, (app, int(number)))


class _FakeDNS:
    """Answers TXT queries from a table, at once (as a warm cache does)."""

    def __init__(self, records: dict[str, list[list[bytes]]]) -> None:
        self.records = records
        self.queries: list[str] = []

    def query(self, name: str, type: int):
        from sniproxy.dns.cache import Answer

        self.queries.append(name)
        key = name.rstrip(".").lower()
        found = self.records.get(key)
        if not found:
            return succeed(Answer(key, type, (), (), (), "nxdomain", "hit", 30.0))
        rrs = tuple(
            dns.RRHeader(name=key, type=dns.TXT, ttl=30, payload=dns.Record_TXT(*strings, ttl=30)) for strings in found
        )
        return succeed(Answer(key, type, rrs, (), (), None, "hit", 30.0))


txt_strings = st.lists(txt_values.map(lambda v: v[:255]), min_size=1, max_size=3)
record_sets = st.lists(txt_strings, max_size=4)


class TXTSourceFuzzTests(SynchronousTestCase):
    """
    The TXT source over arbitrary record sets at all three owners: it
    routes only to a registered app's instances, or fails with a
    L{RoutingError}, or says "no route" -- nothing else, never a crash.
    """

    @_skip_without_txt
    @given(record_sets, record_sets, record_sets, st.sampled_from(["shop.example.com", "a.b.c.example", "single"]))
    @example([[b"localhost:22"]], [], [], "shop.example.com")
    @example([], [[b"127.0.0.1:443"]], [[b"myapp:443"]], "shop.example.com")
    def test_routes_only_to_registered_apps(self, primary, legacy, wildcard, name) -> None:
        from sniproxy.addresses import AddressResolver
        from sniproxy.apps import AppRegistry
        from sniproxy.sources.txt import TXTResolver

        config = parse_config(
            tomllib.loads('[apps.myapp]\nbackends = ["127.0.0.1"]\n[apps.other]\nbackends = ["::1:8443"]\n')
        )
        parent = name.partition(".")[2]
        fake = _FakeDNS(
            {
                f"_dstack-app-address.{name}": primary,
                f"_tapp-address.{name}": legacy,
                f"_dstack-app-address-wildcard.{parent}": wildcard,
            }
        )
        source = TXTResolver(config.routing.txt, fake, AppRegistry(config.apps, AddressResolver(fake)))
        d = source.resolve(name)
        self.assertTrue(d.called, "a warm answer must not wait")
        result = d.result
        d.addErrback(lambda _: None)
        if isinstance(result, Failure):
            self.assertTrue(result.check(RoutingError), result.getTraceback())
            self.assertTrue(str(result.value).isprintable())
            return
        if result is None:
            # No usable record anywhere: each owner had no TXT record.
            self.assertFalse(primary, "a record at the primary owner is a decision")
            return
        self.assertIsInstance(result, Route)
        self.assertIn(result.app, ("myapp", "other"))
        expected = {"myapp": "127.0.0.1", "other": "::1"}[result.app]
        self.assertEqual({b.host for b in result.backends}, {expected})


# ---------------------------------------------------------------- ClientHello: what test_clienthello.py lacks

host_labels = st.from_regex(r"\A[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,20}[A-Za-z0-9_])?\Z")
host_names = st.lists(host_labels, min_size=1, max_size=5).map(".".join).filter(lambda n: len(n) <= 253)
alpn_names = st.binary(min_size=1, max_size=20)
other_extensions = st.lists(
    st.tuples(
        # Any type but those the parser reads or checks (pre_shared_key, 41,
        # must come last) (moved aside, not filtered:
        # hypothesis draws small numbers often).
        st.integers(min_value=0, max_value=0xFFFF).map(lambda k: k ^ 0x100 if k in (0, 16, 41, 43, 0xFE0D) else k),
        st.binary(max_size=60),
    ),
    max_size=6,
    unique_by=lambda e: e[0],
)


@st.composite
def hellos(draw: st.DrawFn):
    """A valid ClientHello built field by field, with what the parser must read from it."""
    name = draw(st.none() | host_names)
    trailing_dot = draw(st.booleans())
    alpn = draw(st.none() | st.lists(alpn_names, min_size=1, max_size=4))
    versions = draw(st.none() | st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=10))
    ech = draw(st.booleans())
    extensions = draw(other_extensions)
    if name is not None:
        extensions.append(sni_extension([name + ("." if trailing_dot else "")]))
    if alpn is not None:
        extensions.append(alpn_extension(alpn))
    if versions is not None:
        extensions.append(supported_versions_extension(versions))
    if ech:
        extensions.append((0xFE0D, draw(st.binary(max_size=40))))
    extensions = draw(st.permutations(extensions))
    no_extensions = not extensions and draw(st.booleans())
    record_version = draw(st.sampled_from([0x0300, 0x0301, 0x0302, 0x0303]))
    session_id = draw(st.binary(max_size=32))
    suites = draw(st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=30))
    # Any methods, null among them (a hello without null is malformed).
    others = draw(st.binary(max_size=3))
    at = draw(st.integers(min_value=0, max_value=len(others)))
    compression = others[:at] + b"\x00" + others[at:]
    record_size = draw(st.integers(min_value=1, max_value=1 << 14))
    stream = build_client_hello(
        None if no_extensions else extensions,
        record_version=record_version,
        record_size=record_size,
        session_id=session_id,
        cipher_suites=suites,
        compression_methods=compression,
        legacy_version=draw(st.sampled_from([0x0301, 0x0303])),
    )
    expected = dict(
        server_name=name.lower() if name is not None else None,
        alpn=tuple(alpn or ()),
        ech=ech,
        record_version=record_version,
        supported_versions=tuple(versions or ()),
    )
    return stream, expected


chunkings = st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=100)


def feed(parser: ClientHelloParser, stream: bytes, sizes: list[int]):
    pos = 0
    i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        i += 1
        result = parser.feed(stream[pos : pos + size])
        pos += size
        if result is not None:
            return result, min(pos, len(stream))
    return None, pos


class ClientHelloFuzzTests(SynchronousTestCase):
    @given(hellos(), chunkings)
    def test_generated_hellos_read_back(self, built, sizes) -> None:
        """
        Any valid hello, however its records and reads are cut, gives back
        exactly the fields it was built with, with its last byte, and
        C{buffered} is the stream.
        """
        stream, expected = built
        parser = ClientHelloParser(1 << 16)
        result, fed = feed(parser, stream, sizes)
        self.assertIsInstance(result, ClientHello)
        self.assertEqual(fed, len(stream))
        self.assertEqual(parser.buffered, stream)
        for field, value in expected.items():
            self.assertEqual(getattr(result, field), value, field)

    @given(hellos(), st.integers(min_value=40, max_value=4096), chunkings)
    def test_size_bound(self, built, max_bytes, sizes) -> None:
        """
        With any C{max_bytes}, a valid hello is refused as too large exactly
        when the message is over the limit or its records (headers
        included) take more than twice the limit, and the parser never
        takes in more than twice the limit.
        """
        stream, _ = built
        whole = ClientHelloParser().feed(stream)
        too_large = whole.size > max_bytes or len(stream) > 2 * max_bytes
        parser = ClientHelloParser(max_bytes)
        try:
            result, _ = feed(parser, stream, sizes)
        except HelloTooLarge:
            self.assertTrue(too_large, (whole.size, len(stream), max_bytes))
            self.assertLessEqual(parser._consumed, 2 * max_bytes)
            return
        self.assertFalse(too_large, (whole.size, len(stream), max_bytes))
        self.assertEqual(result, whole)

    @given(
        st.binary(min_size=1, max_size=300)
        | st.lists(
            st.sampled_from([b"a", b"A", b".", b"-", b"_", b"\x00", b" ", b"\xff", b"*", b"1", b"xn--"]),
            min_size=1,
            max_size=80,
        ).map(b"".join),
        chunkings,
    )
    @example(b"a." * 127, [1])
    @example(b"localhost", [7])
    @example(b"127.0.0.1", [3])
    def test_hostile_server_names(self, raw: bytes, sizes) -> None:
        """
        Any bytes as the SNI: refused as an invalid name, or read as the
        name normalised exactly as the config's host name rule does it;
        never another outcome.
        """
        stream = build_client_hello([sni_extension([raw]), (21, bytes(10))], record_size=100)
        try:
            result, _ = feed(ClientHelloParser(), stream, sizes)
        except InvalidServerName as error:
            self.assertEqual(error.name, raw)
            self.assertLess(len(str(error)), 300)
            self.assertRaises(InvalidServerName, normalise_server_name, raw)
            return
        except MalformedHello:
            self.fail("a well framed hello with a bad name is an invalid name, not malformed")
        self.assertEqual(result.server_name, validate_hostname(raw.decode("ascii")))
