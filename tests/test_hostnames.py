"""
L{sniproxy.hostnames}: one host-name rule for the config and the parser,
one pattern matcher for the static map and the system allow-list, one way
to show an untrusted value.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.clienthello import InvalidServerName, normalise_server_name
from sniproxy.config import validate_hostname
from sniproxy.hostnames import PatternSet, host_name_problem, match_host_name, show

_LABEL = st.text(alphabet="abcXYZ019-_.", min_size=0, max_size=70)
_NAME = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=5).map(".".join),
    st.text(max_size=30),
    st.just("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61),
    st.just("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62),
)


class HostNameRuleTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(_NAME)
    def test_config_and_parser_agree(self, name):
        """A name the config accepts is accepted as SNI, with the same normal form, and the other way round."""
        try:
            config = validate_hostname(name)
        except ValueError:
            config = None
        try:
            sni = normalise_server_name(name.encode("utf-8"))
        except InvalidServerName:
            sni = None
        self.assertEqual(config, sni)

    def test_problems(self):
        self.assertIsNone(host_name_problem(b"a_b.example-1.com"))
        self.assertEqual(host_name_problem(b""), "empty name")
        self.assertEqual(host_name_problem(b"a..b"), "empty label")
        self.assertEqual(host_name_problem(b"-a.b"), 'label "-a" starts or ends with a hyphen')
        self.assertEqual(host_name_problem(b"a b"), 'label "a b" has a character outside [a-z0-9-_]')
        self.assertEqual(host_name_problem(b"a\x00"), "contains NUL")
        self.assertEqual(host_name_problem(b"\xc3\xbc"), "not ASCII")
        self.assertEqual(host_name_problem(b"a" * 254), "longer than 253 characters")
        self.assertTrue(host_name_problem(b"a" * 64).endswith("longer than 63 characters"))
        self.assertFalse(match_host_name(b"A.example"))  # callers lower-case first

    def test_show(self):
        self.assertEqual(show(b"shop"), '"shop"')
        self.assertEqual(show(b'a"\x00\xff'), '"a\\"\\u0000\\\\xff"')
        self.assertEqual(show(b"x" * 120), '"' + "x" * 100 + '"...')


class PatternSetTests(SynchronousTestCase):
    def test_most_specific_wins(self):
        patterns = PatternSet(["a.example.com", "*.example.com", "*.b.example.com"])
        self.assertEqual(patterns.match("a.example.com"), "a.example.com")
        self.assertEqual(patterns.match("x.b.example.com"), "*.b.example.com")
        self.assertEqual(patterns.match("x.y.example.com"), "*.example.com")
        self.assertEqual(patterns.match("b.example.com"), "*.example.com")
        self.assertIsNone(patterns.match("example.com"))
        self.assertIsNone(patterns.match("example.org"))
        self.assertIsNone(PatternSet([]).match("a"))
