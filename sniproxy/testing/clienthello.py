"""
ClientHello builders for tests: real ones from OpenSSL, and hand-made ones
whose every field can be chosen (or broken) for malformed-input tests and
fuzzing.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from OpenSSL import SSL

__all__ = [
    "alpn_extension",
    "build_client_hello",
    "client_hello_body",
    "handshake_records",
    "make_client_hello",
    "sni_extension",
    "split_records",
    "supported_versions_extension",
    "u8",
    "u16",
    "u24",
    "vector",
]


def make_client_hello(
    server_name: str | bytes | None = "example.com",
    alpn: Sequence[bytes] | None = None,
    tls_version: str = "1.3",
) -> bytes:
    """
    The bytes OpenSSL sends to open a connection: one or more TLS records
    holding its ClientHello.

    @param server_name: the SNI host name, sent as given (no normalisation,
        so upper case or odd characters can be tested); C{None} for no SNI.
    @param alpn: ALPN protocol names, or C{None} for no ALPN extension.
    @param tls_version: C{"1.3"} for a TLS 1.3 capable client (OpenSSL's
        default groups, a post-quantum key share included when the OpenSSL
        in use has one), C{"1.2"} for a client whose maximum is TLS 1.2.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if tls_version == "1.2":
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    elif tls_version == "1.3":
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
    else:
        raise ValueError("tls_version must be '1.2' or '1.3', not %r" % (tls_version,))
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if server_name is not None:
        if isinstance(server_name, str):
            server_name = server_name.encode("ascii")
        connection.set_tlsext_host_name(server_name)
    if alpn is not None:
        connection.set_alpn_protos(list(alpn))
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    output = []
    while True:
        try:
            output.append(connection.bio_read(65536))
        except SSL.WantReadError:
            break
    return b"".join(output)


def _records(stream: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(content type, version, payload) of each whole record in C{stream}."""
    pos = 0
    while pos < len(stream):
        if len(stream) - pos < 5:
            raise ValueError("truncated record header at offset %d" % (pos,))
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        payload = stream[pos + 5 : pos + 5 + length]
        if len(payload) != length:
            raise ValueError("truncated record at offset %d" % (pos,))
        yield stream[pos], int.from_bytes(stream[pos + 1 : pos + 3], "big"), payload
        pos += 5 + length


def split_records(hello: bytes, size: int) -> bytes:
    """
    Re-frame the handshake bytes of C{hello} (one or more handshake
    records) into records carrying at most C{size} bytes each, with the
    first record's version: record-layer fragmentation, as a client may do.
    """
    if size < 1:
        raise ValueError("size must be at least 1")
    payload = []
    version = None
    for kind, record_version, fragment in _records(hello):
        if kind != 0x16:
            raise ValueError("record of type %d is not a handshake record" % (kind,))
        if version is None:
            version = record_version
        payload.append(fragment)
    if version is None:
        raise ValueError("no records")
    return handshake_records(b"".join(payload), version, size)


def handshake_records(payload: bytes, record_version: int = 0x0301, size: int = 1 << 14) -> bytes:
    """Frame handshake bytes into handshake records of at most C{size} bytes each."""
    return b"".join(
        b"\x16" + u16(record_version) + u16(len(payload[i : i + size])) + payload[i : i + size]
        for i in range(0, len(payload), size)
    )


# ---------------------------------------------------------------- by hand


def u8(value: int) -> bytes:
    return value.to_bytes(1, "big")


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def u24(value: int) -> bytes:
    return value.to_bytes(3, "big")


def vector(data: bytes, width: int, length: int | None = None) -> bytes:
    """
    C{data} with its length prefix of C{width} bytes; C{length} overrides
    the prefix (to build one that lies).
    """
    return (len(data) if length is None else length).to_bytes(width, "big") + data


def sni_extension(
    names: Sequence[str | bytes | tuple[int, bytes]], list_length: int | None = None
) -> tuple[int, bytes]:
    """
    A server_name extension (type 0) listing C{names}: a str or bytes is a
    host_name entry, C{(name_type, data)} any entry.
    """
    entries = b""
    for name in names:
        if isinstance(name, tuple):
            kind, data = name
        else:
            kind, data = 0, name.encode("ascii") if isinstance(name, str) else name
        entries += u8(kind) + vector(data, 2)
    return 0, vector(entries, 2, list_length)


def alpn_extension(protocols: Sequence[bytes], list_length: int | None = None) -> tuple[int, bytes]:
    """An application_layer_protocol_negotiation extension (type 16)."""
    return 16, vector(b"".join(vector(p, 1) for p in protocols), 2, list_length)


def supported_versions_extension(versions: Sequence[int] = (0x0304, 0x0303)) -> tuple[int, bytes]:
    """A ClientHello supported_versions extension (type 43)."""
    return 43, vector(b"".join(u16(v) for v in versions), 1)


def client_hello_body(
    extensions: Sequence[tuple[int, bytes]] | None = (),
    legacy_version: int = 0x0303,
    random: bytes = bytes(range(32)),
    session_id: bytes = b"",
    cipher_suites: Sequence[int] = (0x1301, 0x1302, 0xC02F),
    compression_methods: bytes = b"\x00",
) -> bytes:
    """
    A ClientHello's body (after the 4-byte handshake header).
    C{extensions=None} leaves the extensions block out altogether.
    """
    body = (
        u16(legacy_version)
        + random
        + vector(session_id, 1)
        + vector(b"".join(u16(c) for c in cipher_suites), 2)
        + vector(compression_methods, 1)
    )
    if extensions is not None:
        body += vector(b"".join(u16(kind) + vector(data, 2) for kind, data in extensions), 2)
    return body


def build_client_hello(
    extensions: Sequence[tuple[int, bytes]] | None = (),
    record_version: int = 0x0301,
    record_size: int = 1 << 14,
    body: bytes | None = None,
    handshake_type: int = 1,
    **fields: Any,
) -> bytes:
    """
    A whole hand-made ClientHello in handshake records, as sent on the wire.
    C{body} replaces the body built from C{extensions} and C{fields} (see
    L{client_hello_body}).
    """
    if body is None:
        body = client_hello_body(extensions, **fields)
    return handshake_records(u8(handshake_type) + u24(len(body)) + body, record_version, record_size)
