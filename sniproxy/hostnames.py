"""
Host names: the one rule for what is a valid one, the one way a name
pattern matches, and the one way an untrusted value is shown in a log line.

The config (L{sniproxy.config.validate_hostname}) and the ClientHello
parser (L{sniproxy.clienthello.normalise_server_name}) both check names
with L{host_name_problem}, so a name the config accepts is never refused as
SNI, nor the other way round.  The static map and the system source's
allow-list both match with L{PatternSet}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["PatternSet", "host_name_problem", "match_host_name", "show"]

# A label: letters, digits, hyphens and underscores, 1-63 long, no hyphen at
# either end.  The underscore is not a host name character (RFC 952/1123)
# and RFC 6066 says SNI carries host names, but real clients send it for
# real hosts (service-style names, some CDN and intranet names) and
# OpenSSL, Go and the backends accept it; refusing it would break those
# clients for nothing.  Owner names such as C{_dstack-app-address} need it
# in the config too.
_LABEL = rb"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rb"(?:%s\.)*%s\Z" % (_LABEL, _LABEL))
_LABEL_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")

MAX_NAME = 253


def show(value: bytes, limit: int = 100) -> str:
    """
    A value from the network (a server name, a TXT string), quoted, escaped
    and bounded, for a one-line message: C{"shop\\x00"...}.
    """
    text = value[:limit].decode("utf-8", "backslashreplace")
    return json.dumps(text) + ("..." if len(value) > limit else "")


def match_host_name(name: bytes) -> bool:
    """
    Whether C{name} (already lower case, its one trailing dot stripped) is a
    valid host name: labels of 1-63 letters, digits, hyphens or
    underscores, not starting or ending with a hyphen, 253 characters at
    most, ASCII only.  The fast check; L{host_name_problem} says why not.
    """
    # The length test comes first so the regex never sees a long input.
    return len(name) <= MAX_NAME and _HOSTNAME.match(name) is not None


def host_name_problem(name: bytes) -> str | None:
    """
    Why C{name} (already lower case, its one trailing dot stripped) is not
    a valid host name (see L{match_host_name}), or C{None} when it is.
    """
    if match_host_name(name):
        return None
    if not name:
        return "empty name"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if b"\x00" in name:
        return "contains NUL"
    if not name.isascii():
        return "not ASCII"
    for label in name.split(b"."):
        if not label:
            return "empty label"
        if len(label) > 63:
            return f"label {show(label, 20)} longer than 63 characters"
        if label[:1] == b"-" or label[-1:] == b"-":
            return f"label {show(label)} starts or ends with a hyphen"
        if not _LABEL_CHARS.issuperset(label):
            return f"label {show(label)} has a character outside [a-z0-9-_]"
    return "invalid"  # pragma: no cover - the regex and these rules agree


class PatternSet:
    """
    Name patterns: exact host names and C{*.suffix} wildcards, where the
    wildcard stands for one or more labels (C{*.example.com} matches
    C{a.example.com} and C{a.b.example.com}, not C{example.com}).  The most
    specific pattern wins: the exact name, else the longest suffix.
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self._exact = frozenset(p for p in patterns if not p.startswith("*."))
        self._suffixes = frozenset(p[2:] for p in patterns if p.startswith("*."))

    def match(self, name: str) -> str | None:
        """The pattern C{name} (a normalised host name) matches, or C{None}."""
        if name in self._exact:
            return name
        rest = name.partition(".")[2]
        suffixes = self._suffixes
        while rest:
            if rest in suffixes:
                return "*." + rest
            rest = rest.partition(".")[2]
        return None
