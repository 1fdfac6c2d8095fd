"""
Which client networks may connect: C{[proxy] allow_clients} and
C{deny_clients}.

Both lists are CIDR networks.  An empty C{allow_clients} lets everyone in;
a non-empty one lets in only addresses inside one of its networks.  An
address inside a C{deny_clients} network is refused whatever
C{allow_clients} says (deny wins).  An IPv4-mapped IPv6 address
(C{::ffff:192.0.2.1}) is judged as the IPv4 address inside it.

The networks are turned into sorted, merged integer ranges once per
(re)load, so judging an address is one address parse, one bisection and a
comparison per list.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["ClientNetworks", "RefusalLog"]

_MAPPED = 0xFFFF << 32
_MAPPED_MASK = ((1 << 96) - 1) << 32


class _Ranges:
    """Merged, sorted integer ranges of one address family."""

    __slots__ = ("starts", "ends")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks)
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [start for start, _ in merged]
        self.ends = [end for _, end in merged]

    def __contains__(self, number: int) -> bool:
        index = bisect_right(self.starts, number) - 1
        return index >= 0 and number <= self.ends[index]

    def __bool__(self) -> bool:
        return bool(self.starts)


def _parse(host: str) -> tuple[int, int] | None:
    """C{(version, integer)} for an IP literal, IPv4-mapped as IPv4; C{None} when not one."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except OSError:
        pass
    try:
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]), "big")
    except (OSError, ValueError):
        return None
    if number & _MAPPED_MASK == _MAPPED:
        return 4, number & 0xFFFFFFFF
    return 6, number


class ClientNetworks:
    """
    The allow and deny lists, precomputed.

    @ivar allow: the C{allow_clients} networks as given (normalised text).
    @ivar deny: the C{deny_clients} networks as given (normalised text).
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        allow_nets = [ipaddress.ip_network(n, strict=False) for n in self.allow]
        deny_nets = [ipaddress.ip_network(n, strict=False) for n in self.deny]
        self._allow = {v: _Ranges(n for n in allow_nets if n.version == v) for v in (4, 6)}
        self._deny = {v: _Ranges(n for n in deny_nets if n.version == v) for v in (4, 6)}
        self._any_allow = bool(allow_nets)

    @classmethod
    def from_config(cls, allow: Iterable[str], deny: Iterable[str]) -> ClientNetworks | None:
        """The lists, or C{None} when both are empty (nothing to check, nothing to pay)."""
        allow, deny = tuple(allow), tuple(deny)
        if not allow and not deny:
            return None
        return cls(allow, deny)

    def refuses(self, host: str) -> str | None:
        """
        Judge a client address.

        @param host: the client's IP address as text.
        @return: C{None} when the client may connect, else the reason, for
            the log line (an address that is not an IP literal, such as a
            UNIX socket peer, is refused only when C{allow_clients} is set).
        """
        parsed = _parse(host)
        if parsed is None:
            return "not an IP address, and proxy.allow_clients is set" if self._any_allow else None
        version, number = parsed
        if number in self._deny[version]:
            return "in proxy.deny_clients"
        if self._any_allow and number not in self._allow[version]:
            return "not in proxy.allow_clients"
        return None


class RefusalLog:
    """
    At most one log line per C{interval} seconds for a kind of refusal; the
    lines in between are counted and the next line says how many.
    """

    def __init__(self, log, clock, interval: float = 1.0) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        self.last = float("-inf")
        self.suppressed = 0

    def counted(self) -> bool:
        """
        Count one refusal if it falls within the quiet part of the
        interval, where no line is due.

        @return: C{True} when it was counted (the caller need not build the
            line's text at all: a flood costs no formatting), C{False} when
            a line is due (call L{refused}).
        """
        if self.clock.seconds() - self.last < self.interval:
            self.suppressed += 1
            return True
        return False

    def refused(self, client: str, reason: str) -> None:
        """Log (or count) one refusal of C{client} for C{reason}."""
        now = self.clock.seconds()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            self.log.warn(
                "refused {client}: {reason} (and {suppressed} more refused since the last line)",
                client=client,
                reason=reason,
                suppressed=self.suppressed,
            )
        else:
            self.log.warn("refused {client}: {reason}", client=client, reason=reason)
        self.last = now
        self.suppressed = 0
