"""
TLS alert records, for refusing a client before any backend is involved.

The proxy answers a rejected ClientHello with one fatal alert in plaintext
(nothing is negotiated yet), written with the record version the client
used, then closes.  The records for the usual descriptions are built once
at import, since one is written per rejected connection.
"""

from __future__ import annotations

__all__ = [
    "CLOSE_NOTIFY",
    "DECODE_ERROR",
    "FATAL",
    "HANDSHAKE_FAILURE",
    "ILLEGAL_PARAMETER",
    "INTERNAL_ERROR",
    "PROTOCOL_VERSION",
    "RECORD_OVERFLOW",
    "UNEXPECTED_MESSAGE",
    "UNRECOGNIZED_NAME",
    "WARNING",
    "alert_record",
    "describe",
]

# AlertLevel (RFC 5246 7.2; TLS 1.3 treats every alert but close_notify and
# user_canceled as fatal whatever the level says).
WARNING = 1
FATAL = 2

# AlertDescription (RFC 8446 6, RFC 6066 for unrecognized_name).
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
HANDSHAKE_FAILURE = 40
ILLEGAL_PARAMETER = 47
DECODE_ERROR = 50
PROTOCOL_VERSION = 70
INTERNAL_ERROR = 80
INAPPROPRIATE_FALLBACK = 86
USER_CANCELED = 90
UNRECOGNIZED_NAME = 112
NO_APPLICATION_PROTOCOL = 120

_NAMES: dict[int, str] = {
    CLOSE_NOTIFY: "close_notify",
    UNEXPECTED_MESSAGE: "unexpected_message",
    BAD_RECORD_MAC: "bad_record_mac",
    RECORD_OVERFLOW: "record_overflow",
    HANDSHAKE_FAILURE: "handshake_failure",
    ILLEGAL_PARAMETER: "illegal_parameter",
    DECODE_ERROR: "decode_error",
    PROTOCOL_VERSION: "protocol_version",
    INTERNAL_ERROR: "internal_error",
    INAPPROPRIATE_FALLBACK: "inappropriate_fallback",
    USER_CANCELED: "user_canceled",
    UNRECOGNIZED_NAME: "unrecognized_name",
    NO_APPLICATION_PROTOCOL: "no_application_protocol",
}

_ALERT = 0x15  # ContentType alert


def _build(description: int, version: int, level: int) -> bytes:
    return bytes((_ALERT, version >> 8, version & 0xFF, 0, 2, level, description))


# Every fatal alert the proxy sends, in every record version a ClientHello
# can carry (SSL 3.0 to TLS 1.3's legacy 0x0303, plus 0x0304 for odd clients).
_CACHE: dict[tuple[int, int, int], bytes] = {
    (description, version, FATAL): _build(description, version, FATAL)
    for description in (
        UNRECOGNIZED_NAME,
        INTERNAL_ERROR,
        DECODE_ERROR,
        HANDSHAKE_FAILURE,
        ILLEGAL_PARAMETER,
        RECORD_OVERFLOW,
        UNEXPECTED_MESSAGE,
        PROTOCOL_VERSION,
    )
    for version in range(0x0300, 0x0305)
}


def alert_record(description: int, version: int = 0x0303, level: int = FATAL) -> bytes:
    """
    The 7-byte TLS record carrying one alert: content type 21, C{version},
    length 2, C{level}, C{description}.

    @param version: the record version to write; pass the client's
        (L{sniproxy.clienthello.ClientHelloParser.record_version}).
    @raise ValueError: when a field does not fit its byte(s).
    """
    try:
        return _CACHE[description, version, level]
    except KeyError:
        pass
    if not (0 <= description <= 0xFF and 0 <= version <= 0xFFFF and 0 <= level <= 0xFF):
        raise ValueError(f"alert field out of range: description={description!r} version={version!r} level={level!r}")
    return _build(description, version, level)


def describe(description: int) -> str:
    """The RFC name of an alert description (C{"unrecognized_name"}), for logs."""
    return _NAMES.get(description, f"alert_{description}")
