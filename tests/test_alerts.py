"""
Tests for L{sniproxy.alerts}: the exact bytes, and that a real TLS client
(OpenSSL through pyOpenSSL) reads them as the alert meant.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from sniproxy import alerts
from sniproxy.clienthello import ClientHelloParser, HelloTooLarge, InvalidServerName, MalformedHello, NotTLS
from sniproxy.testing.clienthello import make_client_hello


def client_error_after(alert: bytes, tls_version: str = "1.3") -> str:
    """
    Start an OpenSSL client handshake in memory, answer its ClientHello
    with C{alert}, and return the error text OpenSSL reports.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if tls_version == "1.2":
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"example.com")
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    hello = client.bio_read(65536)
    assert hello[:1] == b"\x16"
    client.bio_write(alert)
    try:
        client.do_handshake()
    except SSL.Error as error:
        return str(error)
    raise AssertionError("the client accepted %r" % (alert,))


class AlertRecordTests(SynchronousTestCase):
    def test_bytes(self) -> None:
        """A fatal alert record is type 21, the version, length 2, level 2, the description."""
        self.assertEqual(alerts.alert_record(alerts.UNRECOGNIZED_NAME), b"\x15\x03\x03\x00\x02\x02\x70")
        self.assertEqual(alerts.alert_record(alerts.INTERNAL_ERROR, 0x0301), b"\x15\x03\x01\x00\x02\x02\x50")
        self.assertEqual(alerts.alert_record(alerts.DECODE_ERROR, 0x0300), b"\x15\x03\x00\x00\x02\x02\x32")

    def test_uncached(self) -> None:
        """Pairs outside the pre-built set are built the same way."""
        close = alerts.alert_record(alerts.CLOSE_NOTIFY, 0x0303, alerts.WARNING)
        self.assertEqual(close, b"\x15\x03\x03\x00\x02\x01\x00")
        self.assertEqual(alerts.alert_record(200, 0x7F1C), b"\x15\x7f\x1c\x00\x02\x02\xc8")

    def test_cached(self) -> None:
        """The common records are pre-built: the same object every time."""
        for version in (0x0301, 0x0303):
            for description in (alerts.UNRECOGNIZED_NAME, alerts.INTERNAL_ERROR, alerts.DECODE_ERROR):
                self.assertIs(alerts.alert_record(description, version), alerts.alert_record(description, version))

    def test_out_of_range(self) -> None:
        """A field that does not fit its byte(s) is refused, not truncated."""
        self.assertRaises(ValueError, alerts.alert_record, 256)
        self.assertRaises(ValueError, alerts.alert_record, -1)
        self.assertRaises(ValueError, alerts.alert_record, 112, 0x10000)
        self.assertRaises(ValueError, alerts.alert_record, 112, 0x0303, 256)

    def test_describe(self) -> None:
        self.assertEqual(alerts.describe(112), "unrecognized_name")
        self.assertEqual(alerts.describe(80), "internal_error")
        self.assertEqual(alerts.describe(50), "decode_error")
        self.assertEqual(alerts.describe(201), "alert_201")


class ClientSeesAlertTests(SynchronousTestCase):
    """OpenSSL, as a client, reports each alert for what it is."""

    def test_unrecognized_name(self) -> None:
        for tls_version in ("1.2", "1.3"):
            for record_version in (0x0301, 0x0303):
                text = client_error_after(alerts.alert_record(alerts.UNRECOGNIZED_NAME, record_version), tls_version)
                self.assertIn("unrecognized name", text)

    def test_internal_error(self) -> None:
        self.assertIn("internal error", client_error_after(alerts.alert_record(alerts.INTERNAL_ERROR, 0x0301)))

    def test_decode_error(self) -> None:
        self.assertIn("decode error", client_error_after(alerts.alert_record(alerts.DECODE_ERROR, 0x0301)))

    def test_other_alert_is_not_unrecognized_name(self) -> None:
        """The check above tells alerts apart (it would catch a wrong description byte)."""
        self.assertNotIn("unrecognized name", client_error_after(alerts.alert_record(alerts.HANDSHAKE_FAILURE)))


class ParserAlertTests(SynchronousTestCase):
    """Each ClientHelloError carries the alert the proxy sends for it."""

    def test_alerts(self) -> None:
        self.assertIsNone(NotTLS.alert)
        self.assertEqual(MalformedHello.alert, alerts.DECODE_ERROR)
        self.assertEqual(HelloTooLarge.alert, alerts.ILLEGAL_PARAMETER)
        self.assertEqual(InvalidServerName.alert, alerts.UNRECOGNIZED_NAME)

    def test_invalid_name_end_to_end(self) -> None:
        """
        A real client whose SNI is not a host name is refused with an alert
        in its own record version, and reports an unrecognized name.
        """
        hello = make_client_hello("bad name.example")
        parser = ClientHelloParser()
        error = self.assertRaises(InvalidServerName, parser.feed, hello)
        assert error.alert is not None and parser.record_version is not None
        self.assertEqual(parser.record_version, int.from_bytes(hello[1:3], "big"))
        text = client_error_after(alerts.alert_record(error.alert, parser.record_version))
        self.assertIn("unrecognized name", text)
