"""
Parser strictness (RFC 6066 section 3, RFC 8446 section 4.1.2 and 4.2):
each rule a TLS server enforces and a passthrough proxy can check, on a
crafted hello, whole and a byte at a time; and the real ClientHellos of the
corpus still pass.  docs/clienthello.rst lists these and what is left to
the backend.
"""

from __future__ import annotations

import pathlib

from twisted.trial.unittest import SynchronousTestCase

from sniproxy import alerts
from sniproxy.clienthello import ClientHelloError, ClientHelloParser, IllegalParameter, MalformedHello
from sniproxy.record import Outcome
from sniproxy.testing.clienthello import (
    alpn_extension,
    build_client_hello,
    sni_extension,
    supported_versions_extension,
)
from tests.test_connection import Harness

CORPUS = pathlib.Path(__file__).parent / "corpus"
PSK = (41, b"\x00\x07\x00\x01x\x00\x00\x00\x00\x00\x21\x20" + bytes(32))  # identities, binders (framing unchecked)
MODES = (45, b"\x01\x01")


def parse(hello: bytes, byte_at_a_time: bool = False):
    parser = ClientHelloParser()
    if not byte_at_a_time:
        return parser.feed(hello)
    for i in range(len(hello)):
        result = parser.feed(hello[i : i + 1])
        if result is not None:
            return result
    return None


class StrictnessTests(SynchronousTestCase):
    def assertRefused(self, hello: bytes, kind: type[ClientHelloError], alert: int, reason: str) -> None:
        for byte_at_a_time in (False, True):
            error = self.assertRaises(kind, parse, hello, byte_at_a_time)
            self.assertEqual(error.alert, alert)
            self.assertIn(reason, str(error))

    def assertAccepted(self, hello: bytes):
        result = parse(hello)
        self.assertIsNotNone(result)
        self.assertEqual(parse(hello, True), result)
        return result

    # RFC 6066 3: "The ServerNameList MUST NOT contain more than one name of the same name_type."

    def test_two_host_names(self):
        hello = build_client_hello([sni_extension(["a.example", "b.example"])])
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "two names of type 0")

    def test_the_same_host_name_twice(self):
        hello = build_client_hello([sni_extension(["a.example", "a.example"])])
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "two names of type 0")

    def test_two_names_of_another_type(self):
        hello = build_client_hello([sni_extension([(7, b"x"), "a.example", (7, b"y")])])
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "two names of type 7")

    def test_one_name_per_type_is_fine(self):
        hello = build_client_hello([sni_extension([(7, b"x"), "A.example", (8, b"")])])
        self.assertEqual(self.assertAccepted(hello).server_name, "a.example")

    # RFC 5246 7.4.1.2, RFC 8446 4.1.2: legacy_compression_methods holds null.

    def test_compression_without_null(self):
        hello = build_client_hello([sni_extension(["a.example"])], compression_methods=b"\x01")
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "compression_methods lacks null")

    def test_compression_without_null_and_no_extensions(self):
        hello = build_client_hello(None, compression_methods=b"\x01\x40")
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "compression_methods lacks null")

    def test_compression_with_null_among_others(self):
        # Valid up to TLS 1.2; a TLS 1.3 server then wants exactly [0], but
        # which version is negotiated is the backend's choice.
        self.assertAccepted(build_client_hello([sni_extension(["a.example"])], compression_methods=b"\x01\x00"))

    # RFC 8446 4.2.11: pre_shared_key is the last extension, or illegal_parameter.

    def test_pre_shared_key_not_last(self):
        hello = build_client_hello([sni_extension(["a.example"]), MODES, PSK, supported_versions_extension()])
        self.assertRefused(hello, IllegalParameter, alerts.ILLEGAL_PARAMETER, "pre_shared_key is not the last extension")

    def test_pre_shared_key_last(self):
        hello = build_client_hello([sni_extension(["a.example"]), supported_versions_extension(), MODES, PSK])
        self.assertEqual(self.assertAccepted(hello).server_name, "a.example")

    # Rules enforced before this change, kept (RFC 8446 4.2, RFC 6066 3, RFC 7301 3.1).

    def test_duplicate_extension(self):
        hello = build_client_hello([alpn_extension([b"h2"]), sni_extension(["a.example"]), alpn_extension([b"h2"])])
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "duplicate extension 16")

    def test_empty_server_name_list(self):
        hello = build_client_hello([(0, b"\x00\x00")])
        self.assertRefused(hello, MalformedHello, alerts.DECODE_ERROR, "server_name_list is empty")

    def test_extensions_length_mismatch(self):
        body_hello = build_client_hello([sni_extension(["a.example"])])
        # Announce one byte fewer in the extensions block than there is.
        at = body_hello.index(b"\x00\x00", 5 + 4 + 2 + 32 + 1 + 8 + 2)  # the SNI extension's type
        length = int.from_bytes(body_hello[at - 2 : at], "big")
        broken = body_hello[: at - 2] + (length - 1).to_bytes(2, "big") + body_hello[at:]
        self.assertRefused(broken, MalformedHello, alerts.DECODE_ERROR, "extensions")


class CorpusTests(SynchronousTestCase):
    def test_real_hellos_still_pass(self):
        hellos = sorted(CORPUS.glob("*.bin"))
        self.assertEqual(len(hellos), 9)
        for path in hellos:
            data = path.read_bytes()
            self.assertIsNotNone(parse(data), path.name)
            self.assertIsNotNone(parse(data, True), path.name)


class ThroughTheProxyTests(SynchronousTestCase):
    def test_illegal_parameter_alert_and_malformed_outcome(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(build_client_hello([sni_extension(["shop.example.com"]), PSK, MODES]))
        self.assertEqual(client.value(), alerts.alert_record(alerts.ILLEGAL_PARAMETER, 0x0301))
        connection.transport.lose()
        [record] = harness.records
        self.assertEqual(record.outcome, Outcome.MALFORMED)
        self.assertEqual(record.reason, "malformed: pre_shared_key is not the last extension")

    def test_two_host_names_get_decode_error(self):
        harness = Harness(self)
        connection, client = harness.accept()
        connection.dataReceived(build_client_hello([sni_extension(["shop.example.com", "other.example"])]))
        self.assertEqual(client.value(), alerts.alert_record(alerts.DECODE_ERROR, 0x0301))
        self.assertEqual(harness.reactor.tcpClients, [])
