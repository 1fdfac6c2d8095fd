"""
Tests for L{sniproxy.proxyprotocol}: headers written byte for byte as the
spec lays them out, read back whole and a byte at a time, broken ones
refused at the byte that proves them broken, and properties over random
and mutated input (only L{ProxyHeaderError} ever comes out, and a verdict
never changes as more bytes arrive).
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6, inet_pton

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.proxyprotocol import (
    MAX_TLV_BYTES,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    V1_MAX_LINE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    header,
    header_v1,
    header_v2,
    parse_proxy_header,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # spec 2.2, written out
HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # the start of a ClientHello

# The spec's version 1 example, and the same connection in version 2.
SPEC_SRC = ("192.168.0.1", 56324)
SPEC_DST = ("192.168.0.11", 443)
SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
SPEC_V2 = SIG + bytes.fromhex("21" "11" "000c" "c0a80001" "c0a8000b" "dc04" "01bb")

V6_SRC = ("2001:db8::1", 56324)
V6_DST = ("2001:db8::2", 443)
V6_V2 = SIG + bytes.fromhex(
    "21" "21" "0024" "20010db8000000000000000000000001" "20010db8000000000000000000000002" "dc04" "01bb"
)

LOCAL_V2 = SIG + bytes.fromhex("20" "00" "0000")

PROPERTY = settings(max_examples=200, deadline=None, database=None)


def v2(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    """A version 2 header with the given fixed fields around C{body}."""
    return SIG + bytes([ver_cmd, family]) + struct.pack("!H", len(body) if length is None else length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def verdict(data: bytes) -> tuple[ProxyHeader, int] | None | str:
    """The parser's answer, an error as C{"error"}."""
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError:
        return "error"


class WriteV1Tests(SynchronousTestCase):
    """L{header_v1} writes the text line the spec describes."""

    def test_spec_example(self) -> None:
        self.assertEqual(header_v1(SPEC_SRC, SPEC_DST), SPEC_V1)

    def test_tcp6(self) -> None:
        self.assertEqual(header_v1(V6_SRC, V6_DST), b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n")

    def test_tcp6_canonical(self) -> None:
        """IPv6 is written in canonical form, however the caller spelled it."""
        self.assertEqual(
            header_v1(("2001:0DB8:0:0:0:0:0:1", 1), ("2001:db8::0:2", 2)),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
        )

    def test_unknown(self) -> None:
        self.assertEqual(header_v1(None, None), b"PROXY UNKNOWN\r\n")
        self.assertEqual(header_v1(SPEC_SRC, None), b"PROXY UNKNOWN\r\n")
        self.assertEqual(header_v1(None, SPEC_DST), b"PROXY UNKNOWN\r\n")

    def test_mapped(self) -> None:
        """A dual-stack listener's IPv4 client is written as IPv4."""
        self.assertEqual(
            header_v1(("::ffff:192.0.2.1", 1), ("::FFFF:c000:202", 2)),
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        )

    def test_mixed_families(self) -> None:
        """Two families: both IPv6, the IPv4 one mapped, the client kept."""
        self.assertEqual(
            header_v1(("192.0.2.1", 1), ("2001:db8::2", 2)),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n",
        )
        self.assertEqual(
            header_v1(("2001:db8::1", 1), ("::ffff:192.0.2.2", 2)),
            b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.2 1 2\r\n",
        )

    def test_scope_id_dropped(self) -> None:
        self.assertEqual(
            header_v1(("fe80::1%eth0", 1), ("fe80::2%2", 2)),
            b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n",
        )

    def test_port_range(self) -> None:
        self.assertEqual(
            header_v1(("0.0.0.0", 0), ("255.255.255.255", 65535)),
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        )

    def test_longest(self) -> None:
        longest = ("1111:2222:3333:4444:5555:6666:7777:8888", 65535)
        self.assertEqual(len(header_v1(longest, longest)), 104)

    def test_bad_input(self) -> None:
        """Bad addresses and ports are the caller's bug: ValueError."""
        for source in [
            ("example.com", 1),
            ("192.0.2", 1),
            ("01.2.3.4", 1),
            ("1.2.3.4 ", 1),
            ("2001:db8::g", 1),
            ("", 1),
            ("1.2.3.4", -1),
            ("1.2.3.4", 65536),
            ("1.2.3.4", "80"),
            ("1.2.3.4", 80.0),
            ("1.2.3.4", True),
        ]:
            with self.assertRaises(ValueError, msg=repr(source)):
                header_v1(source, SPEC_DST)  # type: ignore[arg-type]
            with self.assertRaises(ValueError, msg=repr(source)):
                header_v1(SPEC_DST, source)  # type: ignore[arg-type]


class WriteV2Tests(SynchronousTestCase):
    """L{header_v2} writes the binary header the spec describes."""

    def test_ipv4(self) -> None:
        self.assertEqual(header_v2(SPEC_SRC, SPEC_DST), SPEC_V2)

    def test_ipv6(self) -> None:
        self.assertEqual(header_v2(V6_SRC, V6_DST), V6_V2)

    def test_local(self) -> None:
        self.assertEqual(header_v2(None, None), LOCAL_V2)
        self.assertEqual(header_v2(SPEC_SRC, None), LOCAL_V2)
        self.assertEqual(header_v2(None, SPEC_DST), LOCAL_V2)

    def test_mapped(self) -> None:
        self.assertEqual(header_v2(("::ffff:192.168.0.1", 56324), ("::ffff:192.168.0.11", 443)), SPEC_V2)

    def test_mixed_families(self) -> None:
        self.assertEqual(
            header_v2(("192.0.2.1", 1), ("2001:db8::2", 2)),
            SIG
            + bytes.fromhex(
                "21" "21" "0024" "00000000000000000000ffffc0000201" "20010db8000000000000000000000002" "0001" "0002"
            ),
        )

    def test_authority(self) -> None:
        """The server name goes in a PP2_TYPE_AUTHORITY TLV, counted in the length."""
        self.assertEqual(
            header_v2(SPEC_SRC, SPEC_DST, authority="shop.example.com"),
            SIG
            + bytes.fromhex("21" "11" "001f" "c0a80001" "c0a8000b" "dc04" "01bb" "02" "0010")
            + b"shop.example.com",
        )

    def test_authority_utf8(self) -> None:
        written = header_v2(None, None, authority="caf\u00e9")
        self.assertEqual(written, SIG + bytes.fromhex("20" "00" "0008" "02" "0005") + b"caf\xc3\xa9")

    def test_no_authority(self) -> None:
        self.assertEqual(header_v2(SPEC_SRC, SPEC_DST, authority=None), SPEC_V2)
        self.assertEqual(header_v2(SPEC_SRC, SPEC_DST, authority=""), SPEC_V2)

    def test_tlvs(self) -> None:
        """TLVs follow the address block in the order given, the authority first."""
        tlvs = [(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_NOOP, b""), (0xE0, b"\x00\xff")]
        written = header_v2(V6_SRC, V6_DST, authority="a.example", tlvs=tlvs)
        tail = tlv(2, b"a.example") + tlv(1, b"h2") + tlv(4, b"") + tlv(0xE0, b"\x00\xff")
        # Type, 16-bit length, value: written out by hand.
        self.assertEqual(tail, b"\x02\x00\x09a.example" + bytes.fromhex("0100026832" "040000" "e0000200ff"))
        self.assertEqual(written, SIG + bytes.fromhex("2121") + struct.pack("!H", 36 + len(tail)) + V6_V2[16:] + tail)

    def test_local_with_tlvs(self) -> None:
        self.assertEqual(
            header_v2(None, None, tlvs=[(PP2_TYPE_NOOP, b"xyz")]),
            SIG + bytes.fromhex("20" "00" "0006" "04" "0003") + b"xyz",
        )

    def test_tlv_limits(self) -> None:
        header_v2(None, None, tlvs=[(0, b""), (255, b"x" * 65529)])  # exactly 0xFFFF bytes
        for tlvs in [[(256, b"")], [(-1, b"")], [(1, b"x" * 65536)], [(1, b"x" * 65533)]]:
            with self.assertRaises(ValueError):
                header_v2(None, None, tlvs=tlvs)
        with self.assertRaises(ValueError):
            header_v2(SPEC_SRC, SPEC_DST, tlvs=[(1, b"x" * (0xFFFF - 12 - 3 + 1))])
        header_v2(SPEC_SRC, SPEC_DST, tlvs=[(1, b"x" * (0xFFFF - 12 - 3))])
        with self.assertRaises(ValueError):
            header_v2(SPEC_SRC, SPEC_DST, authority="a" * 65536)

    def test_bad_input(self) -> None:
        for source in [("example.com", 1), ("1.2.3.4", 65536), ("1.2.3.4", -1)]:
            with self.assertRaises(ValueError):
                header_v2(source, SPEC_DST)
            with self.assertRaises(ValueError):
                header_v2(SPEC_SRC, source)


class HeaderTests(SynchronousTestCase):
    """L{header} picks the writer for a route's setting."""

    def test_versions(self) -> None:
        self.assertEqual(header(0, SPEC_SRC, SPEC_DST, authority="x"), b"")
        self.assertEqual(header(1, SPEC_SRC, SPEC_DST), SPEC_V1)
        self.assertEqual(header(1, SPEC_SRC, SPEC_DST, authority="x", tlvs=[(1, b"h2")]), SPEC_V1)
        self.assertEqual(header(2, SPEC_SRC, SPEC_DST), SPEC_V2)
        self.assertEqual(
            header(2, None, None, authority="x", tlvs=[(1, b"h2")]),
            header_v2(None, None, authority="x", tlvs=[(1, b"h2")]),
        )
        for version in (-1, 3, 20):
            with self.assertRaises(ValueError):
                header(version, SPEC_SRC, SPEC_DST)


class ParseTests(SynchronousTestCase):
    """Valid headers are read back whole, with what follows left alone."""

    def assertParses(self, data: bytes, expected: ProxyHeader) -> None:
        """C{data} then a ClientHello parses as C{expected}, every proper prefix as None."""
        self.assertEqual(parse_proxy_header(data + HELLO), (expected, len(data)))
        self.assertEqual(parse_proxy_header(data), (expected, len(data)))
        self.assertEqual(parse_proxy_header(bytearray(data)), (expected, len(data)))
        for end in range(len(data)):
            self.assertIsNone(parse_proxy_header(data[:end]), data[:end])

    def test_v1_spec_example(self) -> None:
        self.assertParses(SPEC_V1, ProxyHeader(1, "PROXY", SPEC_SRC, SPEC_DST, ()))

    def test_v1_tcp6(self) -> None:
        self.assertParses(
            b"PROXY TCP6 2001:DB8:0::1 ::ffff:192.0.2.1 0 65535\r\n",
            ProxyHeader(1, "PROXY", ("2001:db8::1", 0), ("::ffff:192.0.2.1", 65535), ()),
        )

    def test_v1_unknown(self) -> None:
        unknown = ProxyHeader(1, "PROXY", None, None, ())
        self.assertParses(b"PROXY UNKNOWN\r\n", unknown)
        # Whatever follows UNKNOWN up to the CRLF is ignored.
        self.assertParses(b"PROXY UNKNOWN ffff::1 ::2 1 2\r\n", unknown)
        self.assertParses(b"PROXY UNKNOWN junk\x00\xff\r\n", unknown)

    def test_v1_longest(self) -> None:
        """107 bytes, CRLF included, is the longest line; the next length is refused."""
        line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LINE - 16) + b"\r\n"
        self.assertEqual(len(line), V1_MAX_LINE)
        self.assertParses(line, ProxyHeader(1, "PROXY", None, None, ()))
        longer = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LINE - 15) + b"\r\n"
        self.assertIsNone(parse_proxy_header(longer[: V1_MAX_LINE - 1]))
        self.assertRaises(ProxyHeaderError, parse_proxy_header, longer[:V1_MAX_LINE])
        self.assertRaises(ProxyHeaderError, parse_proxy_header, longer)

    def test_v2_ipv4(self) -> None:
        self.assertParses(SPEC_V2, ProxyHeader(2, "PROXY", SPEC_SRC, SPEC_DST, ()))

    def test_v2_ipv6(self) -> None:
        self.assertParses(V6_V2, ProxyHeader(2, "PROXY", V6_SRC, V6_DST, ()))

    def test_v2_local(self) -> None:
        self.assertParses(LOCAL_V2, ProxyHeader(2, "LOCAL", None, None, ()))

    def test_v2_local_ignores_addresses(self) -> None:
        """LOCAL: the address block is skipped, the real endpoints stand."""
        self.assertParses(v2(0x20, 0x11, SPEC_V2[16:]), ProxyHeader(2, "LOCAL", None, None, ()))

    def test_v2_tlvs(self) -> None:
        tlvs = tlv(2, b"shop.example.com") + tlv(4, b"") + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))
        parsed = ProxyHeader(
            2,
            "PROXY",
            SPEC_SRC,
            SPEC_DST,
            ((2, b"shop.example.com"), (4, b""), (0x20, b"\x01\x00\x00\x00\x00\x21\x00\x07TLSv1.3")),
        )
        self.assertParses(v2(0x21, 0x11, SPEC_V2[16:] + tlvs), parsed)
        self.assertEqual(parsed.tlv(PP2_TYPE_AUTHORITY), b"shop.example.com")
        self.assertEqual(parsed.tlv(PP2_TYPE_NOOP), b"")
        self.assertIsNone(parsed.tlv(PP2_TYPE_ALPN))

    def test_v2_tlv_limit(self) -> None:
        """Exactly MAX_TLV_BYTES of TLVs is accepted."""
        tlvs = tlv(4, b"\x00" * (MAX_TLV_BYTES - 3))
        result = parse_proxy_header(v2(0x21, 0x11, SPEC_V2[16:] + tlvs))
        assert result is not None
        self.assertEqual(result[1], 16 + 12 + MAX_TLV_BYTES)

    def test_v2_other_families(self) -> None:
        """UDP, UNIX and UNSPEC carry no address the proxy can use."""
        blocks = {0x12: SPEC_V2[16:], 0x22: V6_V2[16:], 0x31: b"/a".ljust(216, b"\0"), 0x32: bytes(216), 0x00: b""}
        for family, block in blocks.items():
            expected = ProxyHeader(2, "PROXY", None, None, ((1, b"h2"),))
            self.assertParses(v2(0x21, family, block + tlv(1, b"h2")), expected)

    def test_v2_large_length_waits(self) -> None:
        """A valid length is waited for, not refused."""
        data = v2(0x21, 0x11, b"", length=12 + MAX_TLV_BYTES)
        self.assertIsNone(parse_proxy_header(data + bytes(12 + MAX_TLV_BYTES - 1)))


class RoundTripTests(SynchronousTestCase):
    """What the writers write, the parser reads back."""

    PAIRS = [
        (SPEC_SRC, SPEC_DST),
        (V6_SRC, V6_DST),
        (("0.0.0.0", 0), ("255.255.255.255", 65535)),
        (("::", 0), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
        (("::ffff:10.0.0.1", 40000), ("::ffff:10.0.0.2", 8443)),
        (("10.0.0.1", 40000), ("2001:db8::2", 8443)),
        (None, None),
    ]

    def test_round_trips(self) -> None:
        for source, destination in self.PAIRS:
            for version in (1, 2):
                for authority in (None, "shop.example.com"):
                    written = header(version, source, destination, authority=authority)
                    result = parse_proxy_header(written + HELLO)
                    assert result is not None
                    parsed, consumed = result
                    self.assertEqual(consumed, len(written))
                    self.assertEqual((written + HELLO)[consumed:], HELLO)
                    self.assertEqual(parsed.version, version)
                    if version == 2 and authority:
                        self.assertEqual(parsed.tlv(PP2_TYPE_AUTHORITY), authority.encode())
                    if source is None:
                        self.assertEqual((parsed.source, parsed.destination), (None, None))
                        self.assertEqual(parsed.command, "PROXY" if version == 1 else "LOCAL")
                    else:
                        self.assertEqual(parsed.command, "PROXY")
                        self.assertSameEndpoint(parsed.source, source)
                        self.assertSameEndpoint(parsed.destination, destination)

    def assertSameEndpoint(self, parsed: tuple[str, int] | None, written: tuple[str, int]) -> None:
        """The same port and address (IPv4 and the IPv6 that maps it count as the same)."""
        assert parsed is not None
        self.assertEqual(parsed[1], written[1])
        self.assertEqual(_address_key(parsed[0]), _address_key(written[0]))

    @given(st.data())
    @PROPERTY
    def test_round_trip_property(self, data: st.DataObject) -> None:
        family = data.draw(st.sampled_from([4, 6]))
        source = (str(data.draw(st.ip_addresses(v=family))), data.draw(st.integers(0, 65535)))
        destination = (str(data.draw(st.ip_addresses(v=family))), data.draw(st.integers(0, 65535)))
        version = data.draw(st.sampled_from([1, 2]))
        tlvs = data.draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4))
        trailing = data.draw(st.binary(max_size=20))
        written = header(version, source, destination, tlvs=tlvs)
        result = parse_proxy_header(written + trailing)
        assert result is not None
        parsed, consumed = result
        self.assertEqual(consumed, len(written))
        self.assertEqual(parsed.tlvs, tuple(tlvs) if version == 2 else ())
        self.assertSameEndpoint(parsed.source, source)
        self.assertSameEndpoint(parsed.destination, destination)
        for end in range(len(written)):
            self.assertIsNone(parse_proxy_header(written[:end]))


def _address_key(host: str) -> bytes:
    """An IP literal packed, an IPv4-mapped IPv6 address as the IPv4 one."""
    if ":" not in host:
        return inet_pton(AF_INET, host)
    packed = inet_pton(AF_INET6, host)
    return packed[12:] if packed[:12] == b"\0" * 10 + b"\xff\xff" else packed


class RejectTests(SynchronousTestCase):
    """Bad input is refused at the first byte that proves it bad."""

    def assertRejectedAt(self, data: bytes, at: int) -> ProxyHeaderError:
        """The first C{at} bytes of C{data} are undecided; C{at + 1} raise, and so does all of it."""
        for end in range(at + 1):
            self.assertIsNone(parse_proxy_header(data[:end]), data[:end])
        error = self.assertRaises(ProxyHeaderError, parse_proxy_header, data[: at + 1])
        self.assertRaises(ProxyHeaderError, parse_proxy_header, data)
        return error

    def test_tls_client_hello(self) -> None:
        error = self.assertRejectedAt(HELLO, 0)
        self.assertIn("0x16", str(error))
        self.assertIn("TLS", str(error))

    def test_http(self) -> None:
        self.assertRejectedAt(b"GET / HTTP/1.1\r\n", 0)

    def test_wrong_signatures(self) -> None:
        self.assertRejectedAt(b"PROXZ TCP4", 4)
        self.assertRejectedAt(b"POST / HTTP/1.1\r\n", 1)
        self.assertRejectedAt(b"PROXY\r\n", 5)
        self.assertRejectedAt(b"PROXY\tTCP4 1.2.3.4 1.2.3.4 1 2\r\n", 5)
        self.assertRejectedAt(b"\r\n\r\n\x00\r\nQUIX\n", 10)
        self.assertRejectedAt(b"\r\n\r\nGET", 4)
        self.assertRejectedAt(b"\r\n\x16", 2)

    def test_v1_protocol(self) -> None:
        self.assertRejectedAt(b"PROXY TCP5 1.2.3.4", 9)
        self.assertRejectedAt(b"PROXY UDP4 1.2.3.4", 7)
        self.assertRejectedAt(b"PROXY  TCP4 1.2.3.4", 6)
        self.assertRejectedAt(b"PROXY UNKNOWNX\r\n", 13)
        self.assertRejectedAt(b"PROXY TCP4\r\n", 10)
        self.assertRejectedAt(b"PROXY UNKNOWN\n", 13)
        self.assertRejectedAt(b"PROXY UNKNOWN\rx", 14)
        self.assertRejectedAt(b"PROXY UNKNOWN\n\r\n", 13)

    def test_v1_fields_early(self) -> None:
        """A field's characters and length are checked as they arrive."""
        line = b"PROXY TCP4 192.0.2.1 ::1 1 2\r\n"
        self.assertRejectedAt(line, line.index(b":"))
        line = b"PROXY TCP4 1.2.3.4 1.2.3.4 080 443\r\n"
        self.assertRejectedAt(line, line.index(b"080") + 1)
        line = b"PROXY TCP4 1.2.3.4 1.2.3.4 123456 443\r\n"
        self.assertRejectedAt(line, line.index(b"123456") + 5)
        line = b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"
        self.assertRejectedAt(line, line.index(b"2 ") + 1)
        line = b"PROXY TCP4 1111.2.3.4 1.2.3.4 1 2\r\n"
        self.assertRejectedAt(line, line.index(b" 1.2.3.4"))
        line = b"PROXY TCP4 1.2.3.4.5.6.7.8.9 1.2.3.4 1 2\r\n"
        self.assertRejectedAt(line, 11 + 15)
        line = b"PROXY TCP6 2001:db8::g 1.2.3.4 1 2\r\n"
        self.assertRejectedAt(line, line.index(b"g"))
        line = b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"
        self.assertRejectedAt(line, line.index(b"%"))

    def test_v1_fields(self) -> None:
        """Each of these is refused by the time its CRLF arrives."""
        for line in [
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324  443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11  56324 443\r\n",
            b"PROXY TCP4 192.168.00.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 256.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 00\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 :: 1\r\n",
            b"PROXY TCP6 ::1 ::2 1 2\r\r\n",
            b"PROXY TCP6 :: ::ffff:01.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
        ]:
            self.assertRaises(ProxyHeaderError, parse_proxy_header, line)
            self.assertRaises(ProxyHeaderError, parse_proxy_header, line + HELLO)

    def test_v1_no_crlf(self) -> None:
        """No CRLF within 107 bytes: refused at the 107th."""
        data = b"PROXY UNKNOWN " + b"x" * 200
        self.assertRejectedAt(data, V1_MAX_LINE - 1)

    def test_v2_version_command(self) -> None:
        for ver_cmd in (0x00, 0x11, 0x12, 0x31, 0xF1, 0x22, 0x2F):
            self.assertRejectedAt(v2(ver_cmd, 0x11, SPEC_V2[16:]), 12)

    def test_v2_family(self) -> None:
        for family in (0x01, 0x10, 0x13, 0x23, 0x30, 0x41, 0xFF):
            self.assertRejectedAt(v2(0x21, family, SPEC_V2[16:]), 13)

    def test_v2_length_short_of_addresses(self) -> None:
        """The length field cannot hold the family's address block: refused at once."""
        for family, need in [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216), (0x32, 216)]:
            self.assertRejectedAt(v2(0x21, family, bytes(need - 1)), 15)
            self.assertRejectedAt(v2(0x20, family, bytes(need - 1)), 15)
            self.assertRejectedAt(v2(0x21, family, b"", length=0), 15)

    def test_v2_length_over_tlv_limit(self) -> None:
        """Too many TLV bytes announced: refused at the length, not after buffering them."""
        for family, need in [(0x00, 0), (0x11, 12), (0x21, 36), (0x31, 216)]:
            self.assertRejectedAt(v2(0x21, family, b"", length=need + MAX_TLV_BYTES + 1), 15)
        self.assertRejectedAt(v2(0x21, 0x11, b"", length=0xFFFF), 15)

    def test_v2_tlv_overflow(self) -> None:
        """A TLV's length overflowing the header, or a TLV header cut short."""
        block = SPEC_V2[16:]
        for tlvs in [
            b"\x02",
            b"\x02\x00",
            b"\x02\x00\x01",
            b"\x02\x00\x05abcd",
            b"\x02\xff\xffabc",
            tlv(2, b"ok") + b"\x04",
            tlv(2, b"ok") + b"\x04\x00\x01",
        ]:
            data = v2(0x21, 0x11, block + tlvs)
            self.assertRejectedAt(data + HELLO, len(data) - 1)
            # Also under LOCAL and the families without usable addresses.
            self.assertRaises(ProxyHeaderError, parse_proxy_header, v2(0x20, 0x00, tlvs))
            self.assertRaises(ProxyHeaderError, parse_proxy_header, v2(0x21, 0x12, block + tlvs))


class PropertyTests(SynchronousTestCase):
    """
    Over random and mutated input, the parser says "need more", a header or
    L{ProxyHeaderError}, nothing else; and its verdict never changes as more
    bytes arrive.
    """

    def assertConsistent(self, data: bytes) -> None:
        verdicts = [verdict(data[:end]) for end in range(len(data) + 1)]
        for before, after in zip(verdicts, verdicts[1:]):
            if before == "error":
                self.assertEqual(after, "error")
            elif before is not None:
                self.assertEqual(after, before)
                assert not isinstance(after, str) and after is not None
                self.assertIsInstance(after[0], ProxyHeader)
                self.assertLessEqual(after[1], len(data))

    @given(st.binary(max_size=120))
    @PROPERTY
    def test_random_bytes(self, data: bytes) -> None:
        self.assertConsistent(data)

    prefixes = [b"P", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE, V2_SIGNATURE + b"\x21"]

    @given(st.sampled_from(prefixes), st.binary(max_size=80))
    @PROPERTY
    def test_random_after_signature(self, prefix: bytes, data: bytes) -> None:
        self.assertConsistent(prefix + data)

    @given(st.data())
    @PROPERTY
    def test_mutated_headers(self, data: st.DataObject) -> None:
        seeds = [
            SPEC_V1,
            header_v1(V6_SRC, V6_DST),
            b"PROXY UNKNOWN\r\n",
            SPEC_V2,
            V6_V2,
            LOCAL_V2,
            header_v2(SPEC_SRC, SPEC_DST, authority="shop.example.com", tlvs=[(1, b"h2")]),
            v2(0x21, 0x31, bytes(216)),
        ]
        buf = bytearray(data.draw(st.sampled_from(seeds)) + HELLO)
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
            at = data.draw(st.integers(0, len(buf)))
            if kind == "set" and at < len(buf):
                buf[at] = data.draw(st.integers(0, 255))
            elif kind == "insert":
                buf[at:at] = data.draw(st.binary(min_size=1, max_size=4))
            else:
                del buf[at : at + data.draw(st.integers(1, 4))]
        self.assertConsistent(bytes(buf))
