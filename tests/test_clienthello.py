"""
Tests for L{sniproxy.clienthello}: real ClientHellos from OpenSSL however
they are cut into reads and records, hand-made broken ones refused at the
byte that proves them broken, name normalisation, and a property test that
nothing but a ClientHelloError ever comes out.
"""

from __future__ import annotations

import random

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.clienthello import (
    ClientHello,
    ClientHelloError,
    ClientHelloParser,
    HelloTooLarge,
    InvalidServerName,
    MalformedHello,
    NotTLS,
    normalise_server_name,
)
from sniproxy.config import validate_hostname
from sniproxy.testing.clienthello import (
    alpn_extension,
    build_client_hello,
    client_hello_body,
    make_client_hello,
    sni_extension,
    split_records,
    supported_versions_extension,
    u8,
    u16,
    u24,
    vector,
)

# Hypothesis profiles: see tests/__init__.py.



# Offsets in a single-record hello: record header (5), handshake header (4).
BODY = 9
FIXED = u16(0x0303) + bytes(32)  # legacy_version and random
# The hand-made body up to the extensions block (the builder's defaults:
# empty session_id, three cipher suites, the null compression method).
PRE_EXTENSIONS = client_hello_body(None)


def feed_pieces(parser: ClientHelloParser, data: bytes, sizes: list[int]) -> tuple[ClientHello | None, int]:
    """
    Feed C{data} in pieces of the given sizes (the last piece takes the
    rest).  Returns the result and how many bytes were fed when it came;
    fails if a piece before the last returned a result.
    """
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        piece = data[pos : pos + size]
        pos += len(piece)
        result = parser.feed(piece)
        if result is not None:
            return result, pos
    if pos < len(data):
        result = parser.feed(data[pos:])
        return result, len(data)
    return None, pos


def rejected_at(data: bytes, max_bytes: int = 65536) -> tuple[ClientHelloError, int]:
    """
    Feed C{data} a byte at a time; return the error and the number of bytes
    fed when it was raised.  Also checks that one-shot feeding gives the
    same error.
    """
    parser = ClientHelloParser(max_bytes)
    for count in range(1, len(data) + 1):
        try:
            result = parser.feed(data[count - 1 : count])
        except ClientHelloError as error:
            whole = ClientHelloParser(max_bytes)
            try:
                whole.feed(data)
            except ClientHelloError as other:
                assert (type(other), str(other)) == (type(error), str(error)), (other, error)
            else:
                raise AssertionError("one-shot feeding did not fail like bytewise feeding (%r)" % (error,))
            return error, count
        assert result is None, "no error, and a result: %r" % (result,)
    raise AssertionError("no error after all %d bytes" % (len(data),))


def random_sizes(rng: random.Random, total: int, largest: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.randint(1, largest))
    return sizes


class RealHelloTests(SynchronousTestCase):
    """ClientHellos made by OpenSSL, the way real clients make them."""

    def assertDeliveries(self, hello: bytes) -> ClientHello:
        """
        C{hello} gives the same result however it is cut: one read, a byte
        per read, records of 1, 7 and 100 bytes in random-sized reads.  The
        result comes with the last byte, and C{buffered} is the input.
        """
        expected = ClientHelloParser().feed(hello)
        self.assertIsInstance(expected, ClientHello)
        rng = random.Random(hello)
        streams = [hello] + [split_records(hello, size) for size in (1, 7, 100)]
        for stream in streams:
            cuts = [[1] * len(stream), random_sizes(rng, len(stream), 50), random_sizes(rng, len(stream), 700)]
            for sizes in cuts:
                parser = ClientHelloParser()
                result, fed = feed_pieces(parser, stream, sizes)
                self.assertEqual(result, expected)
                self.assertEqual(fed, len(stream))
                self.assertEqual(parser.buffered, stream)
        assert expected is not None
        return expected

    def test_tls12(self) -> None:
        hello = make_client_hello("example.com", [b"h2", b"http/1.1"], "1.2")
        result = self.assertDeliveries(hello)
        self.assertEqual(result.server_name, "example.com")
        self.assertEqual(result.alpn, (b"h2", b"http/1.1"))
        self.assertFalse(result.ech)
        self.assertEqual(result.record_version, int.from_bytes(hello[1:3], "big"))
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertNotIn(0x0304, result.supported_versions)
        self.assertEqual(result.size, len(hello) - 5)

    def test_tls13(self) -> None:
        hello = make_client_hello("www.example.org", [b"http/1.1"], "1.3")
        result = self.assertDeliveries(hello)
        self.assertEqual(result.server_name, "www.example.org")
        self.assertEqual(result.alpn, (b"http/1.1",))
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertEqual(result.supported_versions[0], 0x0304)
        self.assertIn(0x0303, result.supported_versions)
        self.assertEqual(result.size, len(hello) - 5)

    def test_no_sni_no_alpn(self) -> None:
        for version in ("1.2", "1.3"):
            result = self.assertDeliveries(make_client_hello(None, None, version))
            self.assertIsNone(result.server_name)
            self.assertEqual(result.alpn, ())

    def test_name_normalised(self) -> None:
        """The client's upper case and trailing dot are normalised away."""
        result = ClientHelloParser().feed(make_client_hello("WWW.Example.COM."))
        assert result is not None
        self.assertEqual(result.server_name, "www.example.com")

    def test_trailing_bytes_kept(self) -> None:
        """Bytes after the hello in the same read stay in C{buffered}, untouched."""
        hello = make_client_hello("example.com", [b"h2"])
        after = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x05early"
        for stream in (hello, split_records(hello, 100)):
            for cut in (0, len(stream) - 1, len(stream) // 2):
                parser = ClientHelloParser()
                if cut:
                    self.assertIsNone(parser.feed(stream[:cut]))
                result = parser.feed(stream[cut:] + after)
                self.assertEqual(result, ClientHelloParser().feed(hello))
                self.assertEqual(parser.buffered, stream + after)

    def test_rest_of_record_ignored(self) -> None:
        """Handshake bytes after the hello inside its last record are not parsed."""
        hello = make_client_hello("example.com")
        payload = hello[5:] + b"\xff" * 40  # not a valid handshake message
        stream = b"\x16\x03\x01" + u16(len(payload)) + payload
        for sizes, at in (([len(stream)], len(stream)), ([1] * len(stream), len(hello))):
            parser = ClientHelloParser()
            result, fed = feed_pieces(parser, stream, sizes)
            self.assertEqual(result, ClientHelloParser().feed(hello))
            self.assertEqual(fed, at)
            self.assertEqual(parser.buffered, stream[:at])

    def test_record_version(self) -> None:
        """C{record_version} is known from the first record header's version bytes."""
        hello = split_records(make_client_hello(), 100)
        hello = hello[:1] + b"\x03\x03" + hello[3:]
        parser = ClientHelloParser()
        parser.feed(hello[:2])
        self.assertIsNone(parser.record_version)
        parser.feed(hello[2:3])
        self.assertEqual(parser.record_version, 0x0303)
        result = parser.feed(hello[3:])
        assert result is not None
        self.assertEqual(result.record_version, 0x0303)


class ParserContractTests(SynchronousTestCase):
    def test_feed_after_result(self) -> None:
        parser = ClientHelloParser()
        self.assertIsNotNone(parser.feed(make_client_hello()))
        self.assertRaises(ValueError, parser.feed, b"more")

    def test_feed_after_error(self) -> None:
        parser = ClientHelloParser()
        self.assertRaises(NotTLS, parser.feed, b"GET / HTTP/1.1\r\n")
        self.assertRaises(ValueError, parser.feed, b"\x16")
        self.assertEqual(parser.buffered, b"GET / HTTP/1.1\r\n")

    def test_empty_feed(self) -> None:
        parser = ClientHelloParser()
        self.assertIsNone(parser.feed(b""))
        self.assertEqual(parser.buffered, b"")
        self.assertIsNone(parser.record_version)
        self.assertIsNotNone(parser.feed(make_client_hello()))

    def test_bytearray_copied(self) -> None:
        """A mutable buffer fed in is copied: changing it later changes nothing."""
        hello = make_client_hello()
        data = bytearray(hello[:50])
        parser = ClientHelloParser()
        self.assertIsNone(parser.feed(data))
        data[:] = b"x" * 50
        self.assertIsNotNone(parser.feed(hello[50:]))
        self.assertEqual(parser.buffered, hello)

    def test_tiny_limit_refused(self) -> None:
        self.assertRaises(ValueError, ClientHelloParser, 10)


class EarlyRejectTests(SynchronousTestCase):
    """Input that is not TLS, or broken framing, is refused at once."""

    def test_http(self) -> None:
        error, fed = rejected_at(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertIsInstance(error, NotTLS)
        self.assertEqual(fed, 1)
        self.assertIsNone(error.alert)
        self.assertIn("0x47", str(error))

    def test_first_byte(self) -> None:
        """Any first byte but 0x16 is refused on that byte alone."""
        for first in (0x00, 0x14, 0x15, 0x17, 0x7F, 0x0A):
            parser = ClientHelloParser()
            self.assertRaises(NotTLS, parser.feed, bytes([first]))
            self.assertIsNone(parser.record_version)

    def test_sslv2(self) -> None:
        """An SSLv2-style hello (high bit set in the first byte) is named as such."""
        # SSLv2 CLIENT-HELLO: 2-byte header, msg type 1, version 3.1, ...
        sslv2 = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37)
        error, fed = rejected_at(sslv2)
        self.assertIsInstance(error, NotTLS)
        self.assertEqual(fed, 1)
        self.assertIn("SSLv2", str(error))

    def test_record_major_version(self) -> None:
        error, fed = rejected_at(b"\x16\x02\x00\x00\x10" + bytes(16))
        self.assertIsInstance(error, NotTLS)
        self.assertEqual(fed, 2)

    def test_record_length_zero(self) -> None:
        error, fed = rejected_at(b"\x16\x03\x01\x00\x00\x01\x00\x00\x30")
        self.assertIsInstance(error, MalformedHello)
        self.assertEqual(error.alert, 50)
        self.assertEqual(fed, 5)

    def test_record_too_long(self) -> None:
        error, fed = rejected_at(b"\x16\x03\x01\x40\x01\x01")
        self.assertIsInstance(error, MalformedHello)
        self.assertEqual(fed, 5)
        # 2^14 itself is fine (and incomplete).
        self.assertIsNone(ClientHelloParser().feed(b"\x16\x03\x01\x40\x00\x01"))

    def test_handshake_type(self) -> None:
        hello = build_client_hello(handshake_type=2)
        error, fed = rejected_at(hello)
        self.assertIsInstance(error, MalformedHello)
        self.assertEqual(fed, 6)

    def test_too_large_when_length_seen(self) -> None:
        """A handshake length over the limit is refused on its last byte."""
        hello = build_client_hello([(21, bytes(1000))])
        size = len(hello) - 5
        error, fed = rejected_at(hello, max_bytes=size - 1)
        self.assertIsInstance(error, HelloTooLarge)
        self.assertEqual(error.alert, 47)
        self.assertEqual(fed, 9)
        # At exactly the limit it is accepted.
        self.assertIsNotNone(ClientHelloParser(size).feed(hello))

    def test_too_many_record_headers(self) -> None:
        """
        Record framing may at most double the limit: a hello within it, cut
        into 1-byte records (six bytes each), is refused once twice the
        limit has been buffered.
        """
        hello = make_client_hello(tls_version="1.2")
        size = len(hello) - 5
        stream = split_records(hello, 1)
        error, fed = rejected_at(stream, max_bytes=size)
        self.assertIsInstance(error, HelloTooLarge)
        self.assertEqual(fed, 2 * size)
        # Records of 6 bytes or more fit in twice the limit.
        self.assertIsNotNone(ClientHelloParser(size).feed(split_records(hello, 6)))

    def test_other_record_type_mid_hello(self) -> None:
        """A non-handshake record before the hello is complete is malformed."""
        stream = split_records(make_client_hello(), 100)
        for intruder in (b"\x17\x03\x03\x00\x01\x00", b"\x14\x03\x03\x00\x01\x01", b"\x15\x03\x03\x00\x02\x02\x28"):
            error, fed = rejected_at(stream[:105] + intruder + stream[105:])
            self.assertIsInstance(error, MalformedHello)
            self.assertEqual(fed, 106)

    def test_later_record_header(self) -> None:
        """Later records' headers are checked too (as malformed, not "not TLS")."""
        stream = split_records(make_client_hello(), 100)
        cases = [(b"\x16\x02\x01\x00\x64", 107), (b"\x16\x03\x01\x00\x00", 110), (b"\x16\x03\x01\x40\x01", 110)]
        for header, at in cases:
            error, fed = rejected_at(stream[:105] + header + stream[110:])
            self.assertIsInstance(error, MalformedHello)
            self.assertEqual(fed, at)


class MalformedTests(SynchronousTestCase):
    """
    Hand-made hellos with one broken field each: refused with
    MalformedHello on the byte that proves it, and not before.
    """

    def assertMalformed(self, hello: bytes, at: int, reason: str = "") -> None:
        error, fed = rejected_at(hello)
        self.assertIsInstance(error, MalformedHello)
        self.assertEqual(error.alert, 50)
        self.assertEqual(fed, at, "refused after %d bytes, not %d: %s" % (fed, at, error))
        self.assertIn(reason, str(error))

    def test_valid_baseline(self) -> None:
        """The hand-made hello the cases below break is valid as it is."""
        hello = build_client_hello(
            [sni_extension(["example.com"]), alpn_extension([b"h2"]), supported_versions_extension()]
        )
        result = ClientHelloParser().feed(hello)
        assert result is not None
        self.assertEqual(
            (result.server_name, result.alpn, result.supported_versions, result.ech),
            ("example.com", (b"h2",), (0x0304, 0x0303), False),
        )
        result = ClientHelloParser().feed(build_client_hello(body=PRE_EXTENSIONS))
        assert result is not None
        self.assertEqual((result.server_name, result.alpn, result.supported_versions), (None, (), ()))

    def test_too_short_for_fixed_fields(self) -> None:
        self.assertMalformed(build_client_hello(body=FIXED), BODY, "too short")

    def test_session_id_too_long(self) -> None:
        self.assertMalformed(build_client_hello(session_id=bytes(33)), BODY + 35, "session_id")

    def test_session_id_overflow(self) -> None:
        self.assertMalformed(build_client_hello(body=FIXED + u8(20) + bytes(10)), BODY + 35, "session_id")

    def test_no_cipher_suites(self) -> None:
        self.assertMalformed(build_client_hello(body=FIXED + u8(2) + bytes(3)), BODY + 35, "cipher_suites")

    def test_cipher_suites_empty(self) -> None:
        self.assertMalformed(build_client_hello(body=FIXED + u8(0) + u16(0) + b"\x01\x00"), BODY + 37, "zero")

    def test_cipher_suites_odd(self) -> None:
        body = FIXED + u8(0) + vector(bytes(3), 2) + b"\x01\x00"
        self.assertMalformed(build_client_hello(body=body), BODY + 37, "odd")

    def test_cipher_suites_overflow(self) -> None:
        body = FIXED + u8(0) + vector(bytes(4), 2, 100) + b"\x01\x00"
        self.assertMalformed(build_client_hello(body=body), BODY + 37, "cipher_suites")

    def test_compression_empty(self) -> None:
        body = FIXED + u8(0) + vector(bytes(2), 2) + u8(0)
        self.assertMalformed(build_client_hello(body=body), BODY + 40, "compression_methods")

    def test_compression_overflow(self) -> None:
        body = FIXED + u8(0) + vector(bytes(2), 2) + vector(b"\x00", 1, 5)
        self.assertMalformed(build_client_hello(body=body), BODY + 40, "compression_methods")

    def test_one_byte_after_compression(self) -> None:
        # Proven by the compression_methods length: the message ends one
        # byte after the methods it announces.
        self.assertMalformed(build_client_hello(body=PRE_EXTENSIONS + b"\x00"), BODY + len(PRE_EXTENSIONS) - 1, "junk")

    def test_extensions_overflow(self) -> None:
        body = PRE_EXTENSIONS + vector(u16(21) + u16(0), 2, 10)
        self.assertMalformed(build_client_hello(body=body), BODY + len(PRE_EXTENSIONS) + 2, "extensions")

    def test_junk_after_extensions(self) -> None:
        """Bytes after the extensions, inside the handshake message, are malformed."""
        body = PRE_EXTENSIONS + vector(u16(21) + u16(0), 2) + b"junk"
        self.assertMalformed(build_client_hello(body=body), BODY + len(PRE_EXTENSIONS) + 2, "junk")

    def test_extension_overflow(self) -> None:
        block = u16(21) + u16(1) + b"\x00" + u16(22) + u16(9) + bytes(4)
        body = PRE_EXTENSIONS + vector(block, 2)
        self.assertMalformed(build_client_hello(body=body), BODY + len(PRE_EXTENSIONS) + 2 + 9, "extension 22")

    def test_truncated_extension_header(self) -> None:
        body = PRE_EXTENSIONS + vector(u16(21) + u16(0) + b"\x00\x17\x00", 2)
        self.assertMalformed(build_client_hello(body=body), BODY + len(PRE_EXTENSIONS) + 2 + 4, "truncated")

    def test_duplicate_extension(self) -> None:
        hello = build_client_hello([(21, b""), (23, b""), (21, b"\x00")])
        self.assertMalformed(hello, BODY + len(PRE_EXTENSIONS) + 2 + 4 + 4 + 4, "duplicate extension 21")
        hello = build_client_hello([sni_extension(["a.example"]), sni_extension(["b.example"])])
        self.assertMalformed(hello, len(hello) - len(sni_extension(["b.example"])[1]), "duplicate extension 0")

    # server_name: offsets of the extension's data in a hello whose only
    # extension it is.
    EXT = BODY + len(PRE_EXTENSIONS) + 2 + 4

    def test_sni_extension_too_short(self) -> None:
        self.assertMalformed(build_client_hello([(0, b"\x00")]), self.EXT, "server_name")

    def test_sni_list_empty(self) -> None:
        self.assertMalformed(build_client_hello([(0, u16(0))]), self.EXT + 2, "empty")

    def test_sni_list_overflow(self) -> None:
        self.assertMalformed(build_client_hello([sni_extension(["example.com"], 20)]), self.EXT + 2, "server_name_list")

    def test_sni_list_short_of_extension(self) -> None:
        self.assertMalformed(build_client_hello([sni_extension(["example.com"], 10)]), self.EXT + 2, "junk")

    def test_sni_name_overflow(self) -> None:
        entries = u8(0) + u16(50) + b"example.com"
        self.assertMalformed(build_client_hello([(0, vector(entries, 2))]), self.EXT + 5, "server name")

    def test_sni_truncated_entry(self) -> None:
        entries = u8(0) + vector(b"example.com", 2) + b"\x00\x00"
        self.assertMalformed(build_client_hello([(0, vector(entries, 2))]), self.EXT + 2 + 14, "truncated")

    def test_sni_empty_host_name(self) -> None:
        self.assertMalformed(build_client_hello([sni_extension([b""])]), self.EXT + 5, "empty host_name")

    def test_sni_only_other_name_type(self) -> None:
        # Proven by the entry's length: its contents are skipped unread.
        hello = build_client_hello([sni_extension([(1, b"example.com")])])
        self.assertMalformed(hello, self.EXT + 5, "no host_name")

    def test_sni_other_name_type_skipped(self) -> None:
        """Entries of unknown types are skipped; the host_name is the name."""
        hello = build_client_hello([sni_extension([(7, b"\x00\x01zz"), "First.example", (9, b"")])])
        result = ClientHelloParser().feed(hello)
        assert result is not None
        self.assertEqual(result.server_name, "first.example")

    def test_alpn_list_empty(self) -> None:
        self.assertMalformed(build_client_hello([(16, u16(0))]), self.EXT + 2, "empty")

    def test_alpn_extension_too_short(self) -> None:
        self.assertMalformed(build_client_hello([(16, b"\x00")]), self.EXT, "ALPN")

    def test_alpn_list_overflow(self) -> None:
        self.assertMalformed(build_client_hello([alpn_extension([b"h2"], 9)]), self.EXT + 2, "protocol_name_list")

    def test_alpn_name_empty(self) -> None:
        self.assertMalformed(build_client_hello([alpn_extension([b"h2", b""])]), self.EXT + 6, "empty ALPN")

    def test_alpn_name_overflow(self) -> None:
        ext = (16, vector(u8(9) + b"h2", 2))
        self.assertMalformed(build_client_hello([ext]), self.EXT + 3, "ALPN protocol name")

    def test_supported_versions_odd(self) -> None:
        self.assertMalformed(build_client_hello([(43, u8(3) + bytes(3))]), self.EXT + 1, "odd")

    def test_supported_versions_empty(self) -> None:
        self.assertMalformed(build_client_hello([(43, u8(0))]), self.EXT + 1, "zero")
        self.assertMalformed(build_client_hello([(43, b"")]), self.EXT, "supported_versions")

    def test_supported_versions_overflow(self) -> None:
        self.assertMalformed(build_client_hello([(43, u8(6) + bytes(4))]), self.EXT + 1, "supported_versions")
        self.assertMalformed(build_client_hello([(43, u8(2) + bytes(4))]), self.EXT + 1, "junk")

    def test_malformed_in_later_record(self) -> None:
        """A broken length is found where it is, across record boundaries."""
        hello = build_client_hello([(21, bytes(300)), sni_extension(["example.com"], 20)], record_size=7)
        error, fed = rejected_at(hello)
        self.assertIsInstance(error, MalformedHello)
        self.assertIn("server_name_list", str(error))
        # The list length's last byte, counting a 5-byte header per 7 bytes.
        offset = 4 + len(PRE_EXTENSIONS) + 2 + 4 + 300 + 4 + 2  # in the handshake message
        self.assertEqual(fed, offset + 5 * ((offset + 6) // 7))

    def test_ech(self) -> None:
        """An encrypted_client_hello extension is noticed; the SNI is the outer name."""
        hello = build_client_hello([sni_extension(["public.example"]), (0xFE0D, b"\x00\x00\x01\x00\x01\x00")])
        result = ClientHelloParser().feed(hello)
        assert result is not None
        self.assertTrue(result.ech)
        self.assertEqual(result.server_name, "public.example")

    def test_prefixes_wait(self) -> None:
        """Every proper prefix of a valid hello asks for more, and none is refused."""
        hello = build_client_hello(
            [sni_extension(["example.com"]), alpn_extension([b"h2"]), supported_versions_extension(), (21, bytes(30))],
            session_id=bytes(32),
        )
        for cut in range(len(hello)):
            self.assertIsNone(ClientHelloParser().feed(hello[:cut]))
        self.assertIsNotNone(ClientHelloParser().feed(hello))

    def test_no_extensions(self) -> None:
        """A TLS 1.2 hello may end after compression_methods."""
        result = ClientHelloParser().feed(build_client_hello(None, session_id=bytes(32)))
        assert result is not None
        self.assertIsNone(result.server_name)


class InvalidNameTests(SynchronousTestCase):
    def test_in_hello(self) -> None:
        """An invalid SNI is refused as soon as its last byte is in, naming the name."""
        hello = build_client_hello([sni_extension([b"exa mple.com"]), (21, bytes(50))])
        error, fed = rejected_at(hello)
        self.assertIsInstance(error, InvalidServerName)
        assert isinstance(error, InvalidServerName)
        self.assertEqual(error.alert, 112)
        self.assertEqual(error.name, b"exa mple.com")
        self.assertIn("exa mple.com", str(error))
        self.assertEqual(fed, MalformedTests.EXT + 5 + len(b"exa mple.com"))

    def test_hostile_name_bounded(self) -> None:
        """A huge name is refused and the reason stays short."""
        name = b"a." * 30000
        hello = build_client_hello([sni_extension([name])])
        error = self.assertRaises(InvalidServerName, ClientHelloParser().feed, hello)
        self.assertLess(len(str(error)), 200)
        self.assertIn("253", str(error))


class NormaliseTests(SynchronousTestCase):
    def assertInvalid(self, raw: bytes, reason: str) -> None:
        error = self.assertRaises(InvalidServerName, normalise_server_name, raw)
        self.assertIn(reason, str(error))
        self.assertEqual(error.name, raw)

    def test_case_and_dot(self) -> None:
        self.assertEqual(normalise_server_name(b"WWW.Example.COM"), "www.example.com")
        self.assertEqual(normalise_server_name(b"example.com."), "example.com")
        self.assertEqual(normalise_server_name(b"xn--bcher-kva.Example"), "xn--bcher-kva.example")

    def test_one_dot_only(self) -> None:
        self.assertInvalid(b"example.com..", "empty label")
        self.assertInvalid(b".", "empty")
        self.assertInvalid(b"", "empty")
        self.assertInvalid(b".example.com", "empty label")
        self.assertInvalid(b"a..b", "empty label")

    def test_characters(self) -> None:
        self.assertInvalid(b"exa mple.com", "outside")
        self.assertInvalid(b"ex\x00ample.com", "NUL")
        self.assertInvalid(b"example.com\x00", "NUL")
        self.assertInvalid(b"ex/ample.com", "outside")
        self.assertInvalid(b"ex*ample.com", "outside")
        self.assertInvalid(b"*.example.com", "outside")
        self.assertInvalid("b\u00fccher.example".encode(), "not ASCII")
        self.assertInvalid(b"\xff.example", "not ASCII")

    def test_hyphens(self) -> None:
        self.assertInvalid(b"-a.example", "hyphen")
        self.assertInvalid(b"a-.example", "hyphen")
        self.assertEqual(normalise_server_name(b"a-b--c.example"), "a-b--c.example")

    def test_underscore(self) -> None:
        """Underscores are accepted: real clients send them for real hosts."""
        self.assertEqual(normalise_server_name(b"_acme.Example.com"), "_acme.example.com")
        self.assertEqual(normalise_server_name(b"a_b.example"), "a_b.example")

    def test_label_length(self) -> None:
        self.assertEqual(normalise_server_name(b"a" * 63 + b".example"), "a" * 63 + ".example")
        self.assertInvalid(b"a" * 64 + b".example", "63")

    def test_total_length(self) -> None:
        name = b".".join([b"a" * 63] * 3 + [b"b" * 61])
        self.assertEqual(len(name), 253)
        self.assertEqual(normalise_server_name(name), name.decode())
        self.assertEqual(normalise_server_name(name + b"."), name.decode())
        self.assertInvalid(name + b"b", "253")
        self.assertInvalid(name + b"b.", "253")

    def test_digits(self) -> None:
        """Digits are letters like any other; an IP literal passes the syntax."""
        self.assertEqual(normalise_server_name(b"1.example"), "1.example")
        self.assertEqual(normalise_server_name(b"192.0.2.1"), "192.0.2.1")

    @given(st.text(alphabet="abcXYZ019-_. *\x00", max_size=20) | st.text(max_size=20))
    def test_same_rule_as_config(self, name: str) -> None:
        """For ASCII names, the SNI rule is the config file's host name rule."""
        if not name.isascii():
            self.assertRaises(InvalidServerName, normalise_server_name, name.encode())
            return
        try:
            expected: str | None = validate_hostname(name)
        except ValueError:
            expected = None
        try:
            got: str | None = normalise_server_name(name.encode())
        except InvalidServerName:
            got = None
        self.assertEqual(got, expected)


# ---------------------------------------------------------------- properties

_EXTENSIONS = [
    sni_extension(["example.com"]),
    alpn_extension([b"h2", b"http/1.1"]),
    supported_versions_extension(),
    (0xFE0D, bytes(8)),
    (51, bytes(40)),
]
SEEDS = [
    make_client_hello("example.com", [b"h2"], "1.2"),
    make_client_hello("www.example.org", None, "1.3"),
    build_client_hello(_EXTENSIONS, session_id=bytes(32)),
    build_client_hello(_EXTENSIONS, record_size=9),
    build_client_hello(None),
]


def outcome(parser: ClientHelloParser, data: bytes, sizes: list[int]) -> tuple[object, int]:
    """
    Feed C{data} in pieces; return (result or (error type, reason) or None,
    bytes fed).  Anything but a ClientHelloError propagates and fails the
    test.
    """
    try:
        return feed_pieces(parser, data, sizes)
    except ClientHelloError as error:
        if error.alert is not None:
            # An alert needs the version to write it with.
            assert parser.record_version is not None, error
        return (type(error), str(error)), -1


chunkings = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=200)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
    return bytes(data)


class PropertyTests(SynchronousTestCase):
    def assertConsistent(self, data: bytes, sizes: list[int]) -> None:
        """
        One-shot and chunked feeding agree; nothing but ClientHelloError
        escapes; C{buffered} is what was fed.
        """
        expected, _ = outcome(ClientHelloParser(), data, [len(data)])
        chunked = ClientHelloParser()
        got, fed = outcome(chunked, data, sizes)
        self.assertEqual(got, expected)
        if fed >= 0:
            self.assertEqual(chunked.buffered, data[:fed])
        self.assertEqual(outcome(ClientHelloParser(), data, [1] * len(data))[0], expected)

    @given(st.binary(max_size=300), chunkings)
    def test_random_bytes(self, data: bytes, sizes: list[int]) -> None:
        self.assertConsistent(data, sizes)

    @given(st.binary(max_size=300), chunkings)
    def test_random_after_header(self, data: bytes, sizes: list[int]) -> None:
        """Random bytes behind a plausible record and handshake header."""
        header = b"\x16\x03\x01" + u16(min(len(data) + 4, 1 << 14)) + b"\x01" + u24(len(data))
        self.assertConsistent(header + data, sizes)

    @given(mutated(), chunkings)
    def test_mutated(self, data: bytes, sizes: list[int]) -> None:
        self.assertConsistent(data, sizes)

    @given(st.sampled_from(SEEDS), st.integers(min_value=1, max_value=300), chunkings)
    def test_refragmented(self, hello: bytes, record_size: int, sizes: list[int]) -> None:
        """Valid hellos give the same result however records and reads are cut."""
        expected = ClientHelloParser().feed(hello)
        self.assertIsInstance(expected, ClientHello)
        stream = split_records(hello, record_size)
        parser = ClientHelloParser()
        self.assertEqual(feed_pieces(parser, stream, sizes), (expected, len(stream)))
        self.assertEqual(parser.buffered, stream)
