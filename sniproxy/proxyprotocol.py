"""
The HAProxy PROXY protocol, versions 1 and 2: pure header writers and an
incremental header parser.

Spec: U{https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt}.

Writing: when a route asks for it, the proxy sends L{header}C{(version,
client, local)} to the backend before the client's buffered bytes.  The
writers take the addresses as C{(host, port)} pairs of IP literals, the way
Twisted's C{IPv4Address}/C{IPv6Address} carry them:

  - an IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}, what a dual-stack
    listener reports for an IPv4 client) is written as the IPv4 address it
    maps, so a dual-stack listener sends C{TCP4} / family C{0x11} like an
    IPv4 one;
  - two different families after that (a caller mixing a v4 peer with a v6
    local address) are both written as IPv6, the IPv4 one mapped: the
    client's address survives, which C{UNKNOWN} would lose (HAProxy does
    the same);
  - an unknown address (C{None} for either) gives C{PROXY UNKNOWN} in
    version 1 and a C{LOCAL} command with family C{UNSPEC} in version 2:
    the backend then uses the real endpoints (the proxy's);
  - an IPv6 scope id (C{fe80::1%eth0}) is dropped: the protocol has no
    place for it.

Reading: L{parse_proxy_header} is given the bytes received so far from the
start of a connection and decides as soon as they allow: a header and its
length, "need more", or L{ProxyHeaderError} at the first byte that proves
the input is not a valid header (a TLS record's first byte, 0x16, is
refused at once).  Whether to expect a header at all is the caller's
decision, made from the peer's address (the spec forbids guessing).

Cost (CPython 3.11, one core of the development machine): writing takes
about 0.7-1.6 us (figures on L{header_v1} and L{header_v2}), reading a
header about 2.5 us (version 2) or 4 us (version 1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Sequence

__all__ = [
    "MAX_TLV_BYTES",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "ProxyHeader",
    "ProxyHeaderError",
    "V1_MAX_LINE",
    "V2_SIGNATURE",
    "header",
    "header_v1",
    "header_v2",
    "parse_proxy_header",
]

Endpoint = tuple[str, int]

# Registered TLV types (spec 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05

V1_MAX_LINE = 107  # "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n", CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# The most TLV bytes a version 2 header may carry past its address block
# when we read one.  Real senders put a few hundred bytes there at most (an
# SNI, an ALPN name, a unique id of up to 128 bytes, TLS details); the
# 16-bit length would otherwise let a peer make us buffer 64 KiB before
# the ClientHello even starts.
MAX_TLV_BYTES = 4096

_V1_PREFIX = b"PROXY "
_MAPPED = b"\x00" * 10 + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6

# Version 2 fixed part: signature, version/command, family/protocol, length.
_V2_PROXY_INET = V2_SIGNATURE + b"\x21\x11"
_V2_PROXY_INET6 = V2_SIGNATURE + b"\x21\x21"
_V2_LOCAL = V2_SIGNATURE + b"\x20\x00"
_V2_INET = struct.Struct("!14sH4s4sHH")
_V2_INET6 = struct.Struct("!14sH16s16sHH")
_V2_HEAD = struct.Struct("!14sH")
_TLV_HEAD = struct.Struct("!BH")
_ADDR4 = struct.Struct("!4s4sHH")
_ADDR6 = struct.Struct("!16s16sHH")

# Family/protocol byte -> address block length.  Every combination the spec
# lists; any other byte is refused.
_ADDRESS_LENGTHS = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


class ProxyHeaderError(Exception):
    """
    The bytes are not a valid PROXY protocol header.  C{str(error)} is a
    short reason for the log line.
    """


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """
    A parsed PROXY protocol header.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"}, or C{"LOCAL"} (version 2 only: a connection
        the sender made for itself, such as a health check).
    @ivar source: the original client's C{(ip, port)}, the IP in canonical
        text form (an IPv4-mapped IPv6 address stays as sent).  C{None}
        when the header carries no usable address: version 1 C{UNKNOWN},
        version 2 C{LOCAL}, or a family other than TCP over IPv4/IPv6 (UDP,
        UNIX, UNSPEC).  C{None} means "use the real connection's peer".
    @ivar destination: the address the client connected to, likewise.
    @ivar tlvs: version 2 TLVs as C{(type, value)}, in order, unparsed
        (C{PP2_TYPE_SSL}'s sub-TLVs included, a CRC32C not verified).
    """

    version: int
    command: str
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type C{kind}, or C{None}."""
        for tlv_type, value in self.tlvs:
            if tlv_type == kind:
                return value
        return None


# ---------------------------------------------------------------- writing


def _pack(host: str) -> tuple[int, bytes]:
    """
    C{(AF_INET, 4 bytes)} or C{(AF_INET6, 16 bytes)} for an IP literal, an
    IPv4-mapped IPv6 address turned into its IPv4 address.

    @raise ValueError: when C{host} is not an IP literal.
    """
    try:
        if ":" in host:
            if "%" in host:
                host = host.partition("%")[0]
            packed = inet_pton(AF_INET6, host)
            if packed[:12] == _MAPPED:
                return AF_INET, packed[12:]
            return AF_INET6, packed
        return AF_INET, inet_pton(AF_INET, host)
    except (OSError, TypeError):
        raise ValueError("not an IP address: %r" % (host,)) from None


def _port(port: int) -> int:
    if type(port) is not int or not 0 <= port <= 0xFFFF:
        raise ValueError("not a port number: %r" % (port,))
    return port


def _addresses(source: Endpoint, destination: Endpoint) -> tuple[int, bytes, bytes, int, int]:
    """Both endpoints packed in one family: C{(family, src, dst, sport, dport)}."""
    shost, sport = source
    dhost, dport = destination
    sfamily, src = _pack(shost)
    dfamily, dst = _pack(dhost)
    if sfamily != dfamily:
        # Mixed families: write both as IPv6 rather than lose the client.
        if sfamily == AF_INET:
            src = _MAPPED + src
        else:
            dst = _MAPPED + dst
        sfamily = AF_INET6
    return sfamily, src, dst, _port(sport), _port(dport)


def header_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """
    A version 1 (text) header: C{PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n},
    C{TCP6} likewise, or C{PROXY UNKNOWN\\r\\n} when either endpoint is
    C{None}.  Addresses are written in canonical form (lower-case IPv6,
    zeros compressed); see the module docstring for mapped and mixed
    addresses.

    Cost: about 0.8 us for TCP4, 1.6 us for TCP6 (the IPv6 text is
    rewritten in canonical form, a round trip through inet_pton/inet_ntop).

    @raise ValueError: when a host is not an IP literal or a port is not an
        integer in 0-65535 (a caller's bug: transports give valid ones).
    """
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    family, src, dst, sport, dport = _addresses(source, destination)
    # From the packed form, so both versions share one reading of the
    # addresses (mapped and mixed families included) and the text is
    # canonical.
    line = "PROXY %s %s %s %d %d\r\n" % (
        "TCP4" if family == AF_INET else "TCP6",
        inet_ntop(family, src),
        inet_ntop(family, dst),
        sport,
        dport,
    )
    return line.encode("ascii")


def header_v2(
    source: Endpoint | None,
    destination: Endpoint | None,
    *,
    authority: str | None = None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """
    A version 2 (binary) header: command PROXY over TCP/IPv4 (C{0x11}) or
    TCP/IPv6 (C{0x21}); command LOCAL with family UNSPEC (no address block)
    when either endpoint is C{None}.

    @param authority: the client's server name, sent as a
        C{PP2_TYPE_AUTHORITY} TLV (UTF-8) ahead of C{tlvs}; C{None} or
        C{""} sends none.
    @param tlvs: more C{(type, value)} TLVs, written in order as given.

    Cost: about 0.7 us for IPv4, 0.9 us for IPv6; an authority adds 0.3 us.

    @raise ValueError: for a bad address or port (as L{header_v1}), a TLV
        type outside 0-255, or TLVs too long for the 16-bit length field.
    """
    extra = _tlv(PP2_TYPE_AUTHORITY, authority.encode("utf-8")) if authority else b""
    if tlvs:
        extra += b"".join([_tlv(kind, value) for kind, value in tlvs])
    if source is None or destination is None:
        return _V2_HEAD.pack(_V2_LOCAL, _length(0, extra)) + extra
    family, src, dst, sport, dport = _addresses(source, destination)
    if family == AF_INET:
        return _V2_INET.pack(_V2_PROXY_INET, _length(12, extra), src, dst, sport, dport) + extra
    return _V2_INET6.pack(_V2_PROXY_INET6, _length(36, extra), src, dst, sport, dport) + extra


def _tlv(kind: int, value: bytes) -> bytes:
    if type(kind) is not int or not 0 <= kind <= 0xFF:
        raise ValueError("TLV type %r is not in 0-255" % (kind,))
    if len(value) > 0xFFFF:
        raise ValueError("TLV 0x%02x of %d bytes is over 65535" % (kind, len(value)))
    return _TLV_HEAD.pack(kind, len(value)) + bytes(value)


def _length(address_length: int, extra: bytes) -> int:
    """The length field: the address block and the TLVs after it."""
    length = address_length + len(extra)
    if length > 0xFFFF:
        raise ValueError("%d bytes of TLVs do not fit a PROXY v2 header" % (len(extra),))
    return length


def header(
    version: int,
    source: Endpoint | None,
    destination: Endpoint | None,
    *,
    authority: str | None = None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """
    The header for a route's C{proxy_protocol} setting: C{b""} for 0,
    L{header_v1} for 1, L{header_v2} for 2.  C{authority} and C{tlvs} are
    for version 2; version 1 has no place for them and ignores them, so
    callers can pass them whatever the version.

    @raise ValueError: for another version, or as the writers do.
    """
    if version == 2:
        return header_v2(source, destination, authority=authority, tlvs=tlvs)
    if version == 1:
        return header_v1(source, destination)
    if version == 0:
        return b""
    raise ValueError("PROXY protocol version %r is not 0, 1 or 2" % (version,))


# ---------------------------------------------------------------- reading


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """
    Parse a PROXY protocol header (version 1 or 2, whichever the first byte
    says) from the bytes received so far on a connection.

    Stateless: call it again with all the bytes so far when more arrive.
    The bytes after the header are the client's own and are not looked at.

    @return: C{(header, consumed)} once the header is complete, where
        C{data[consumed:]} is what follows it; C{None} while the bytes so
        far are a valid beginning of a header.
    @raise ProxyHeaderError: as soon as the bytes so far cannot begin a
        valid header.  Once raised for some bytes, it is raised for any
        bytes that start with them.
    """
    if not data:
        return None
    first = data[0]
    if first == 0x0D:
        return _parse_v2(data)
    if first == 0x50:  # "P"
        return _parse_v1(data)
    raise ProxyHeaderError(_not_proxy(data, 0))


def _not_proxy(data: bytes, at: int) -> str:
    """The reason for bytes that match neither signature at offset C{at}."""
    if at == 0:
        if data[0] == 0x16:
            return "no PROXY header: first byte 0x16, a TLS record"
        return "no PROXY header: first byte 0x%02x" % (data[0],)
    return "no PROXY header: %s" % (_show(bytes(data[: at + 1])),)


def _show(raw: bytes, limit: int = 60) -> str:
    """Peer-supplied bytes, escaped and bounded, for a log line."""
    if len(raw) > limit:
        return repr(raw[:limit]) + "..."
    return repr(raw)


def _mismatch(data: bytes, signature: bytes) -> int:
    """The offset of the first byte of C{data} that differs from C{signature}, or -1."""
    head = data[: len(signature)]
    if signature.startswith(head):
        return -1
    for i, byte in enumerate(head):
        if byte != signature[i]:
            return i
    return -1  # pragma: no cover - startswith said they differ


# Version 2 -------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    at = _mismatch(data, V2_SIGNATURE)
    if at >= 0:
        raise ProxyHeaderError(_not_proxy(data, at))
    size = len(data)
    if size <= 12:
        return None
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2: version %d, not 2" % (ver_cmd >> 4,))
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyHeaderError("PROXY v2: unknown command %d" % (command,))
    if size <= 13:
        return None
    family = data[13]
    address_length = _ADDRESS_LENGTHS.get(family)
    if address_length is None:
        raise ProxyHeaderError("PROXY v2: unknown family/protocol 0x%02x" % (family,))
    if size < 16:
        return None
    length = data[14] << 8 | data[15]
    if length < address_length:
        raise ProxyHeaderError(
            "PROXY v2: length %d is short of the %d-byte address block of family 0x%02x"
            % (length, address_length, family)
        )
    if length - address_length > MAX_TLV_BYTES:
        raise ProxyHeaderError(
            "PROXY v2: %d bytes of TLVs, over the limit of %d" % (length - address_length, MAX_TLV_BYTES)
        )
    end = 16 + length
    if size < end:
        return None

    tlvs = _tlvs(data, 16 + address_length, end)
    source = destination = None
    if command == 1 and family in (0x11, 0x21):
        if family == 0x11:
            src, dst, sport, dport = _ADDR4.unpack_from(data, 16)
            source, destination = (inet_ntop(AF_INET, src), sport), (inet_ntop(AF_INET, dst), dport)
        else:
            src, dst, sport, dport = _ADDR6.unpack_from(data, 16)
            source, destination = (inet_ntop(AF_INET6, src), sport), (inet_ntop(AF_INET6, dst), dport)
    return ProxyHeader(2, "PROXY" if command else "LOCAL", source, destination, tlvs), end


def _tlvs(data: bytes, pos: int, end: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs in C{data[pos:end]}, which they must fill exactly."""
    found = []
    while pos < end:
        if pos + 3 > end:
            raise ProxyHeaderError("PROXY v2: truncated TLV header (%d bytes)" % (end - pos,))
        kind = data[pos]
        length = data[pos + 1] << 8 | data[pos + 2]
        pos += 3
        if pos + length > end:
            raise ProxyHeaderError(
                "PROXY v2: TLV 0x%02x length %d overflows the header (%d bytes left)" % (kind, length, end - pos)
            )
        found.append((kind, bytes(data[pos : pos + length])))
        pos += length
    return tuple(found)


# Version 1 -------------------------------------------------------------

_DIGITS = frozenset(b"0123456789")
_V4_CHARS = frozenset(b"0123456789.")
_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
# Longest address texts: "255.255.255.255" and
# "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
_V4_MAX = 15
_V6_MAX = 45


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    window = bytes(data[:V1_MAX_LINE])
    end = window.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise ProxyHeaderError("PROXY v1: no CRLF in the first %d bytes" % (V1_MAX_LINE,))
        if window[-1:] == b"\r":
            # Only the LF may follow a CR: the line is all here.
            _check_v1(window[:-1], complete=True)
        else:
            _check_v1(window, complete=False)
        return None
    parsed = _check_v1(window[:end], complete=True)
    assert parsed is not None
    return parsed, end + 2


def _check_v1(line: bytes, complete: bool) -> ProxyHeader | None:
    """
    Check a version 1 line without its CRLF, or as much of it as has
    arrived.  Every field that is followed by more is checked in full; the
    last one of a partial line only for its characters and length.
    """
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("PROXY v1: CR or LF inside the line: %s" % (_show(line),))
    at = _mismatch(line, _V1_PREFIX)
    if at >= 0:
        raise ProxyHeaderError(_not_proxy(line, at))
    rest = line[6:]
    if rest.startswith(b"UNKNOWN"):
        # The spec: ignore whatever follows UNKNOWN up to the CRLF.
        if len(rest) > 7 and rest[7] != 0x20:
            raise ProxyHeaderError("PROXY v1: unknown protocol %s" % (_show(rest.split(b" ", 1)[0]),))
        return ProxyHeader(1, "PROXY", None, None) if complete else None
    protocol = rest[:5]
    if protocol == b"TCP4 ":
        family, chars, longest = AF_INET, _V4_CHARS, _V4_MAX
    elif protocol == b"TCP6 ":
        family, chars, longest = AF_INET6, _V6_CHARS, _V6_MAX
    else:
        if not complete and any(token.startswith(rest) for token in (b"TCP4 ", b"TCP6 ", b"UNKNOWN")):
            return None
        raise ProxyHeaderError("PROXY v1: unknown protocol %s" % (_show(rest.split(b" ", 1)[0]),))

    fields = rest[5:].split(b" ")
    if len(fields) > 4 or (complete and len(fields) < 4):
        raise ProxyHeaderError("PROXY v1: %d fields after %s, not 4" % (len(fields), protocol[:4].decode()))
    values: list[str | int] = []
    for i, field in enumerate(fields):
        is_address = i < 2
        if complete or i < len(fields) - 1:
            values.append(_v1_address(field, family, protocol) if is_address else _v1_port(field))
        elif is_address:
            if len(field) > longest or not chars.issuperset(field):
                raise ProxyHeaderError("PROXY v1: bad %s address %s" % (protocol[:4].decode(), _show(field)))
        elif len(field) > 5 or not _DIGITS.issuperset(field) or (len(field) > 1 and field[0] == 0x30):
            raise ProxyHeaderError("PROXY v1: bad port %s" % (_show(field),))
    if not complete:
        return None
    src, dst, sport, dport = values
    return ProxyHeader(1, "PROXY", (src, sport), (dst, dport))  # type: ignore[arg-type]


def _v1_address(field: bytes, family: int, protocol: bytes) -> str:
    try:
        packed = inet_pton(family, field.decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError):
        # ValueError: an embedded NUL.
        raise ProxyHeaderError("PROXY v1: bad %s address %s" % (protocol[:4].decode(), _show(field))) from None
    # inet_pton accepts IPv4 in its one canonical form only (no leading
    # zeros), so only IPv6 needs rewriting.
    return field.decode("ascii") if family == AF_INET else inet_ntop(AF_INET6, packed)


def _v1_port(field: bytes) -> int:
    # No leading zeros (the spec forbids them, against octal confusion).
    if not 0 < len(field) <= 5 or not _DIGITS.issuperset(field) or (len(field) > 1 and field[0] == 0x30):
        raise ProxyHeaderError("PROXY v1: bad port %s" % (_show(field),))
    port = int(field)
    if port > 0xFFFF:
        raise ProxyHeaderError("PROXY v1: port %d is over 65535" % (port,))
    return port
