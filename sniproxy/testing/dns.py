"""
An authoritative DNS server on loopback that a test (or a benchmark)
controls: its records and TTLs, its negative answers, its failures, its
speed, and a log of what it was asked.

It is Twisted's own server (L{twisted.names.server.DNSServerFactory} over
L{dns.DNSDatagramProtocol} and L{dns.DNSProtocol}) with the answering part
replaced, listening on UDP and TCP on the same port::

    server = DNSServer()
    server.start()
    self.addCleanup(server.stop)
    server.add_txt("_dstack-app-address.shop.test", "myapp:443", ttl=60)
    resolver = client.Resolver(servers=[server.address])

How it answers a query for (name, type):
  - a CNAME at the name is followed through the server's own records (the
    whole chain goes into the answer section, like an authoritative server
    answering for its zones);
  - no records of that type: NXDOMAIN when the name (after the chain) does
    not exist, NODATA (an empty answer) when it exists with other types or
    has names below it; either way the SOA of the enclosing zone goes in the
    authority section, so RFC 2308 negative caching can be tested.  The
    server is authoritative for the root zone by default (SOA TTL 300,
    minimum 60); L{set_soa} adds zones or changes that, L{remove_soa} drops
    it (negative answers without SOA);
  - L{set_rcode} makes a name fail (SERVFAIL, REFUSED, ...);
  - L{delay} / L{set_delay} hold answers back, on C{clock} (pass a
    L{twisted.internet.task.Clock} to drive them from a test);
  - L{outage} drops every query silently, so clients time out;
  - UDP answers over 512 bytes are truncated (TC set), so clients retry
    over TCP; L{truncate} truncates every UDP answer.

Every query received, answered or not, is logged (L{log}, L{queries_for},
L{wait_for_queries}).

L{DNSServer.forward_to} turns a server into a I{caching forwarder} in front
of another (an authority), the way Unbound or systemd-resolved sit between
sniproxy and the authority: a miss asks the authority (through its
answering code, logged in its log, held back by its delays, on C{clock}),
the answer is kept until its smallest TTL runs out, and every answer is
non-authoritative (AA clear) with each record's I{remaining} TTL, rounded
down to whole seconds, as Unbound serves them (Unbound's clock counts
whole seconds: see L{_Copy}).

Run C{python -m sniproxy.testing.dns --records FILE} to serve a JSON file of
records from a child process (see L{DNSServer.load} for the format); with
C{--control} it also takes commands on standard input, one a line, each
answered with one line on standard output (see L{_Control}), and exits when
standard input closes.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.names import dns, server

__all__ = ["DNSServer", "QueryRecord"]

DEFAULT_TTL = 300

# What Twisted's client (and plain DNS without EDNS) accepts over UDP.
UDP_PAYLOAD_SIZE = 512

_TYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "CNAME": dns.CNAME,
    "TXT": dns.TXT,
    "MX": dns.MX,
    "NS": dns.NS,
    "SRV": dns.SRV,
    "PTR": dns.PTR,
}


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """
    One query as the server received it.

    @ivar name: the query name, lower case, without a trailing dot.
    @ivar type: the query type (C{dns.TXT}, ...).
    @ivar protocol: C{"udp"} or C{"tcp"}.
    @ivar time: C{clock.seconds()} when it arrived.
    """

    name: str
    type: int
    protocol: str
    time: float


class _Copy:
    """
    A caching forwarder's copy of the authority's answer, kept as Unbound
    keeps one: on a clock of whole seconds.  Fetched at time C{f}, a record
    with TTL C{t} is served with TTL C{floor(f) + t - floor(now)}, and the
    copy is dropped once C{floor(now)} passes C{floor(f)} plus its smallest
    TTL (so a TTL 0 answer is reused until the turn of the second).
    """

    __slots__ = ("response", "fetched", "expires")

    def __init__(self, response: dns.Message, fetched: float) -> None:
        self.response = response
        self.fetched = math.floor(fetched + 1e-9)
        ttls = [r.ttl for r in (*response.answers, *response.authority)]
        self.expires = self.fetched + (min(ttls) if ttls else 0)

    def valid(self, now: float) -> bool:
        return math.floor(now + 1e-9) <= self.expires


@dataclass(frozen=True, slots=True)
class _SOA:
    ttl: int
    minimum: int


def _normal(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _ancestors(name: str) -> Iterable[str]:
    """C{name} and every name above it, the root (C{""}) excluded."""
    while name:
        yield name
        name = name.partition(".")[2]


class _Factory(server.DNSServerFactory):
    """Twisted's server factory, answering from a L{DNSServer}."""

    def __init__(self, owner: DNSServer) -> None:
        super().__init__()
        self._owner = owner

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        self._owner._received(message, protocol, address)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        self._owner._connectionLost()


class _Waiter:
    __slots__ = ("count", "name", "type", "deferred", "timer")

    def __init__(self, count: int, name: str | None, type: int | None) -> None:
        self.count = count
        self.name = name
        self.type = type
        self.deferred: defer.Deferred[list[QueryRecord]] = defer.Deferred()
        self.timer: IDelayedCall | None = None


class DNSServer:
    """
    An authoritative DNS server on C{interface}, UDP and TCP on one port.

    @ivar delay: seconds every answer is held back (on C{clock}).
    @ivar outage: when true, queries are logged and dropped.
    @ivar truncate: when true, every UDP answer is an empty one with TC
        set, so every client retries over TCP.
    @ivar log: every query received, oldest first.
    @ivar port: the port number, once started.
    """

    log: list[QueryRecord]

    def __init__(self, *, interface: str = "127.0.0.1", clock: Any = None, reactor: Any = None) -> None:
        """
        @param interface: the address to listen on (C{"::1"} works too).
        @param clock: the L{IReactorTime} that times L{delay} and stamps the
            log; the real reactor by default.
        @param reactor: the reactor to listen with; the global one by
            default.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.interface = interface
        self.port = 0
        self.delay = 0.0
        self.outage = False
        self.truncate = False
        self.log = []
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._factory = _Factory(self)
        self._records: dict[str, dict[int, list[tuple[int, Any]]]] = {}
        # How many names with records are at or below each name: a name
        # with a count exists, so a query for a missing type is NODATA,
        # not NXDOMAIN (empty non-terminals included).
        self._existing: collections.Counter[str] = collections.Counter()
        self._zones: dict[str, _SOA] = {"": _SOA(ttl=300, minimum=60)}
        self._rcodes: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self._sends: set[IDelayedCall] = set()
        self._waiters: list[_Waiter] = []
        self._closed: list[defer.Deferred[None]] = []
        self._udp: Any = None
        self._tcp: Any = None
        self._authority: DNSServer | None = None
        self._forward_aa = False
        self._copies: dict[tuple[str, int], _Copy] = {}
        self._fetching: dict[tuple[str, int], list[tuple[dns.Message, Any, Any]]] = {}

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """C{(host, port)}, as L{twisted.names.client.Resolver} takes it."""
        return (self.interface, self.port)

    def start(self, port: int = 0) -> None:
        """
        Listen on C{port}, or on a free port chosen by the system (the same
        number for UDP and TCP: a pick whose TCP side is taken is retried).

        @raise CannotListenError: when the port (or, after many tries, any
            port) cannot be had.
        """
        tries = 1 if port else 50
        for attempt in range(tries):
            udp = self._reactor.listenUDP(
                port, dns.DNSDatagramProtocol(self._factory), interface=self.interface, maxPacketSize=65535
            )
            number = udp.getHost().port
            try:
                tcp = self._reactor.listenTCP(number, self._factory, interface=self.interface)
            except CannotListenError:
                udp.stopListening()
                if attempt == tries - 1:
                    raise
                continue
            self._udp, self._tcp, self.port = udp, tcp, number
            return

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening, drop held-back answers, close TCP connections and
        fail pending L{wait_for_queries}.

        @return: fires when every socket is closed.
        """
        for call in self._sends:
            call.cancel()
        self._sends.clear()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiter.deferred.errback(defer.CancelledError("DNS server stopped"))
        done: list[defer.Deferred[Any]] = []
        for port in (self._udp, self._tcp):
            if port is not None:
                done.append(defer.maybeDeferred(port.stopListening))
        self._udp = self._tcp = None
        if self._factory.connections:
            closed: defer.Deferred[None] = defer.Deferred()
            self._closed.append(closed)
            done.append(closed)
            for protocol in list(self._factory.connections):
                protocol.transport.loseConnection()
        return defer.gatherResults(done).addCallback(lambda _: None)

    def _connectionLost(self) -> None:
        if not self._factory.connections:
            closed, self._closed = self._closed, []
            for d in closed:
                d.callback(None)

    # ------------------------------------------------------------ records

    def add(self, name: str, payload: Any, ttl: int = DEFAULT_TTL) -> None:
        """
        Add one record (a L{twisted.names.dns} C{Record_*} instance) at
        C{name}, beside those already there.
        """
        name = _normal(name)
        types = self._records.get(name)
        if types is None:
            types = self._records[name] = {}
            self._existing.update(_ancestors(name))
        types.setdefault(payload.TYPE, []).append((int(ttl), payload))

    def replace(self, name: str, type: int, *payloads: Any, ttl: int = DEFAULT_TTL) -> None:
        """Make C{payloads} the only records of C{type} at C{name}."""
        self.remove(name, type)
        for payload in payloads:
            if payload.TYPE != type:
                raise ValueError(f"a {dns.QUERY_TYPES.get(payload.TYPE)} record is not of type {type}")
            self.add(name, payload, ttl)

    def remove(self, name: str, type: int | None = None) -> None:
        """Remove the records of C{type} at C{name}, or all of them."""
        name = _normal(name)
        types = self._records.get(name)
        if types is None:
            return
        if type is None:
            types.clear()
        else:
            types.pop(type, None)
        if not types:
            del self._records[name]
            for above in _ancestors(name):
                self._existing[above] -= 1
                if not self._existing[above]:
                    del self._existing[above]

    def add_a(self, name: str, address: str, ttl: int = DEFAULT_TTL) -> None:
        self.add(name, dns.Record_A(address, ttl), ttl)

    def add_aaaa(self, name: str, address: str, ttl: int = DEFAULT_TTL) -> None:
        self.add(name, dns.Record_AAAA(address, ttl), ttl)

    def add_cname(self, name: str, target: str, ttl: int = DEFAULT_TTL) -> None:
        self.add(name, dns.Record_CNAME(target, ttl), ttl)

    def add_txt(self, name: str, *strings: str | bytes, ttl: int = DEFAULT_TTL) -> None:
        """
        Add one TXT record made of C{strings}, each one character-string
        (at most 255 bytes; text is UTF-8 encoded).
        """
        data = [s.encode("utf-8") if isinstance(s, str) else s for s in strings]
        for chunk in data:
            if len(chunk) > 255:
                raise ValueError("a TXT character-string holds at most 255 bytes")
        self.add(name, dns.Record_TXT(*data, ttl=ttl), ttl)

    def set_soa(self, zone: str, ttl: int = 300, minimum: int = 60) -> None:
        """
        Make C{zone} a zone (its apex exists) whose SOA record, with this
        TTL and MINIMUM, goes in the authority section of negative answers
        for names in it.
        """
        self._zones[_normal(zone)] = _SOA(int(ttl), int(minimum))

    def remove_soa(self, zone: str = "") -> None:
        """Forget a zone: negative answers for its names carry no SOA."""
        self._zones.pop(_normal(zone), None)

    def forward_to(self, authority: DNSServer | None, *, authoritative: bool = False) -> None:
        """
        Answer as a caching forwarder in front of C{authority} (see the
        module docstring); C{None} makes this server authoritative again.
        The copies start empty.

        @param authoritative: set AA on the decayed answers anyway (a
            caching server that claims authority).
        """
        self._authority = authority
        self._forward_aa = authoritative
        self._copies.clear()

    @property
    def held(self) -> int:
        """How many answers are being held back (by a delay) now."""
        return sum(1 for call in self._sends if call.active())

    def flush(self) -> None:
        """Forget the caching forwarder's copies (a restarted Unbound)."""
        self._copies.clear()

    def set_rcode(self, name: str, rcode: int | None) -> None:
        """
        Answer every query for C{name} with C{rcode} (C{dns.ESERVER},
        C{dns.EREFUSED}, ...) and nothing else; C{None} undoes it.
        """
        if rcode is None:
            self._rcodes.pop(_normal(name), None)
        else:
            self._rcodes[_normal(name)] = rcode

    def set_delay(self, name: str, seconds: float | None) -> None:
        """Hold answers for C{name} back this long (overrides L{delay})."""
        if seconds is None:
            self._delays.pop(_normal(name), None)
        else:
            self._delays[_normal(name)] = seconds

    def set_ttl(self, ttl: int, name: str | None = None) -> int:
        """
        Give every record (or every record at C{name}) this TTL.

        @return: how many records were changed.
        """
        changed = 0
        for owner, types in self._records.items():
            if name is None or owner == _normal(name):
                for kind, records in types.items():
                    types[kind] = [(int(ttl), payload) for _, payload in records]
                    changed += len(records)
        return changed

    def load(self, data: Mapping[str, Any]) -> None:
        """
        Add records from a JSON-like mapping::

            {"records": [{"name": "a.test", "type": "TXT", "value": ["app:443"], "ttl": 60},
                         {"name": "b.test", "type": "A", "value": "10.0.0.1"},
                         {"name": "c.test", "type": "CNAME", "value": "b.test"}],
             "soa": [{"zone": "test", "ttl": 60, "minimum": 10}],
             "delay": 0.3}

        A TXT C{value} is a list of character-strings (or one string).
        """
        for record in data.get("records", ()):
            name, kind = record["name"], record["type"].upper()
            value, ttl = record["value"], record.get("ttl", DEFAULT_TTL)
            if kind == "TXT":
                self.add_txt(name, *([value] if isinstance(value, str) else value), ttl=ttl)
            elif kind in ("A", "AAAA", "CNAME"):
                getattr(self, "add_" + kind.lower())(name, value, ttl=ttl)
            else:
                raise ValueError(f"unsupported record type {kind!r} (use A, AAAA, CNAME or TXT)")
        for zone in data.get("soa", ()):
            self.set_soa(zone["zone"], zone.get("ttl", 300), zone.get("minimum", 60))
        self.delay = float(data.get("delay", self.delay))

    # ------------------------------------------------------------ the log

    def queries_for(self, name: str, type: int | None = None, protocol: str | None = None) -> list[QueryRecord]:
        """The logged queries for C{name} (any case, trailing dot or not)."""
        name = _normal(name)
        return [
            q
            for q in self.log
            if q.name == name and (type is None or q.type == type) and (protocol is None or q.protocol == protocol)
        ]

    def reset_log(self) -> None:
        self.log = []

    def wait_for_queries(
        self, count: int = 1, name: str | None = None, type: int | None = None, timeout: float = 10.0
    ) -> defer.Deferred[list[QueryRecord]]:
        """
        Wait until the log holds at least C{count} queries (for C{name} and
        C{type}, when given).

        @param timeout: real seconds (on the reactor, not on C{clock}).
        @return: fires with the matching queries, or fails with
            L{defer.TimeoutError}.
        """
        waiter = _Waiter(count, None if name is None else _normal(name), type)
        if not self._check(waiter):
            self._waiters.append(waiter)
            waiter.timer = self._reactor.callLater(timeout, self._expire, waiter)
        return waiter.deferred

    def _matching(self, waiter: _Waiter) -> list[QueryRecord]:
        if waiter.name is None:
            return [q for q in self.log if waiter.type is None or q.type == waiter.type]
        return self.queries_for(waiter.name, waiter.type)

    def _check(self, waiter: _Waiter) -> bool:
        found = self._matching(waiter)
        if len(found) < waiter.count:
            return False
        if waiter.timer is not None:
            waiter.timer.cancel()
        waiter.deferred.callback(found)
        return True

    def _expire(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        waiter.deferred.errback(
            defer.TimeoutError(f"{len(self._matching(waiter))} of {waiter.count} queries arrived")
        )

    # ------------------------------------------------------------ answering

    def _received(self, message: dns.Message, protocol: Any, address: tuple[str, int] | None) -> None:
        query = message.queries[0]
        name = _normal(query.name.name)
        tcp = address is None
        self.log.append(QueryRecord(name, query.type, "tcp" if tcp else "udp", self._clock.seconds()))
        if not self.outage:
            self._respond(message, name, query.type, protocol, address)
        # Last: a waiter may go on to advance the clock, which must find the
        # answer scheduled.
        if self._waiters:
            waiting, self._waiters = self._waiters, []
            # Waiters added by a callback meanwhile are kept, after these.
            self._waiters[:0] = [w for w in waiting if not self._check(w)]

    def _respond(self, message: dns.Message, name: str, type: int, protocol: Any, address: Any) -> None:
        if self._authority is not None and name not in self._rcodes:
            self._forward(message, name, type, protocol, address)
            return
        self._deliver(self._answer(message, name, type), name, protocol, address, self._delays.get(name, self.delay))

    def _deliver(self, response: dns.Message, name: str, protocol: Any, address: Any, delay: float) -> None:
        tcp = address is None
        # dns.Message truncates to maxSize (512 by default) and sets TC; over
        # TCP that would make the client retry forever.
        response.maxSize = 0
        if not tcp:
            if self.truncate:
                response.trunc = 1
                response.answers, response.authority, response.additional = [], [], []
            else:
                # Message.encode cuts the answer to this size and sets TC.
                response.maxSize = UDP_PAYLOAD_SIZE
        if delay > 0:
            call = self._clock.callLater(delay, self._send_later, protocol, response, address)
            self._sends.add(call)
        else:
            self._send(protocol, response, address)

    # ------------------------------------------------------------ forwarding

    def _forward(self, message: dns.Message, name: str, type: int, protocol: Any, address: Any) -> None:
        key = (name, type)
        now = self._clock.seconds()
        copy = self._copies.get(key)
        if copy is not None and copy.valid(now):
            self._deliver(self._decayed(message, copy, now), name, protocol, address, self.delay)
            return
        waiting = self._fetching.get(key)
        if waiting is not None:
            waiting.append((message, protocol, address))
            return
        self._fetching[key] = [(message, protocol, address)]
        authority = self._authority
        assert authority is not None
        authority.log.append(QueryRecord(name, type, "udp", now))
        delay = authority._delays.get(name, authority.delay)
        if delay > 0:
            call = self._clock.callLater(delay, self._fetched, key, message)
            self._sends.add(call)
        else:
            self._fetched(key, message)

    def _fetched(self, key: tuple[str, int], message: dns.Message) -> None:
        self._sends = {call for call in self._sends if call.active()}
        authority = self._authority
        waiting = self._fetching.pop(key, [])
        if authority is None:
            return
        query = dns.Message(id=message.id, recDes=1)
        query.queries = [dns.Query(key[0], key[1])]
        copy = _Copy(authority._answer(query, key[0], key[1]), self._clock.seconds())
        self._copies[key] = copy
        for asked, protocol, address in waiting:
            self._deliver(self._decayed(asked, copy, self._clock.seconds()), key[0], protocol, address, self.delay)

    def _decayed(self, message: dns.Message, copy: _Copy, now: float) -> dns.Message:
        """The copy as a caching resolver serves it: AA clear, TTLs left."""
        original = copy.response
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode, recDes=message.recDes, recAv=1, auth=int(self._forward_aa))
        response.rCode = original.rCode
        response.queries = list(message.queries)
        age = math.floor(now + 1e-9) - copy.fetched

        def left(records: list[dns.RRHeader]) -> list[dns.RRHeader]:
            return [
                dns.RRHeader(r.name.name, r.type, r.cls, max(0, r.ttl - age), r.payload, auth=self._forward_aa)
                for r in records
            ]

        response.answers = left(original.answers)
        response.authority = left(original.authority)
        response.additional = left(original.additional)
        return response

    def _send_later(self, protocol: Any, response: dns.Message, address: Any) -> None:
        self._sends = {call for call in self._sends if call.active()}
        self._send(protocol, response, address)

    def _send(self, protocol: Any, response: dns.Message, address: Any) -> None:
        if protocol.transport is None:  # the port closed while we waited
            return
        if address is None:
            protocol.writeMessage(response)
        else:
            protocol.writeMessage(response, address)

    def _answer(self, message: dns.Message, name: str, type: int) -> dns.Message:
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode, recDes=message.recDes, auth=1)
        response.queries = list(message.queries)
        rcode = self._rcodes.get(name)
        if rcode is not None:
            response.rCode = rcode
            return response
        answers: list[dns.RRHeader] = []
        current = name
        for _ in range(16):
            found = self._rrs(current, type)
            if found:
                answers.extend(found)
                break
            cnames = self._rrs(current, dns.CNAME) if type != dns.CNAME else []
            if not cnames:
                break
            answers.extend(cnames)
            current = _normal(cnames[0].payload.name.name)
        else:
            response.rCode = dns.ESERVER  # a CNAME loop
            return response
        response.answers = answers
        if not found:
            soa = self._soa(current)
            if soa is not None:
                response.authority = [soa]
            if not (self._existing[current] or current in self._zones):
                response.rCode = dns.ENAME
        return response

    def _rrs(self, name: str, type: int) -> list[dns.RRHeader]:
        types = self._records.get(name, {})
        if type == dns.ALL_RECORDS:
            stored = [(t, ttl, p) for t, records in types.items() for ttl, p in records]
        else:
            stored = [(type, ttl, p) for ttl, p in types.get(type, ())]
        found = [dns.RRHeader(name, t, dns.IN, ttl, p, auth=True) for t, ttl, p in stored]
        if type in (dns.SOA, dns.ALL_RECORDS) and name in self._zones:
            found.append(self._soa_record(name))
        return found

    def _soa(self, name: str) -> dns.RRHeader | None:
        for zone in [*_ancestors(name), ""]:
            if zone in self._zones:
                return self._soa_record(zone)
        return None

    def _soa_record(self, zone: str) -> dns.RRHeader:
        soa = self._zones[zone]
        payload = dns.Record_SOA(
            mname=b"ns.test",
            rname=b"hostmaster.test",
            serial=1,
            refresh=3600,
            retry=600,
            expire=86400,
            minimum=soa.minimum,
            ttl=soa.ttl,
        )
        return dns.RRHeader(zone, dns.SOA, dns.IN, soa.ttl, payload, auth=True)


class _Control:
    """
    The C{--control} channel: commands on standard input, one a line, each
    answered with one line on standard output::

        delay SECONDS        hold every answer back this long   -> ok delay 0.3
        outage on|off        drop every query, or answer again  -> ok outage on
        ttl SECONDS [NAME]   every record's (or NAME's) TTL     -> ok ttl 2 records=3
        stats                the log since the last reset       -> {"queries": 4, "names": {"a.test": 4}}
        reset                empty the log                      -> ok reset

    A bad command gets C{error: <why>}.  End of input stops the server.
    """

    def __init__(self, server: DNSServer, authority: DNSServer | None = None) -> None:
        """
        @param authority: for a caching forwarder, the authority behind it:
            C{delay}, C{outage} and C{ttl} act on the authority, C{stats}
            and C{reset} on the forwarder (what the proxy asked), C{stats}
            adding C{"authority_queries"}.
        """
        self.server = server
        self.authority = authority

    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error: empty command"
        verb, arguments = words[0].lower(), words[1:]
        records = self.authority or self.server
        try:
            if verb == "delay" and len(arguments) == 1:
                records.delay = max(0.0, float(arguments[0]))
                return f"ok delay {records.delay:g}"
            if verb == "outage" and arguments in (["on"], ["off"]):
                records.outage = arguments[0] == "on"
                return f"ok outage {arguments[0]}"
            if verb == "ttl" and len(arguments) in (1, 2):
                changed = records.set_ttl(int(arguments[0]), *arguments[1:])
                return f"ok ttl {int(arguments[0])} records={changed}"
            if verb == "stats" and not arguments:
                names = collections.Counter(q.name for q in self.server.log)
                stats: dict[str, Any] = {"queries": len(self.server.log), "names": dict(names)}
                if self.authority is not None:
                    stats["authority_queries"] = len(self.authority.log)
                return json.dumps(stats, sort_keys=True)
            if verb == "reset" and not arguments:
                self.server.reset_log()
                if self.authority is not None:
                    self.authority.reset_log()
                return "ok reset"
        except ValueError as error:
            return f"error: {error}"
        return f"error: unknown command {line.strip()[:80]!r}"


def _serve_control(server: DNSServer, reactor: Any, authority: DNSServer | None = None) -> None:
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    control = _Control(server, authority)

    class Lines(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            answer = control.command(line.decode("utf-8", "replace"))
            self.sendLine(answer.encode("utf-8"))

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Lines())


def main(argv: Sequence[str] | None = None) -> None:
    """
    C{python -m sniproxy.testing.dns [--interface I] [--port N] [--records
    FILE.json] [--delay S] [--control] [--caching]}: serve until killed (or,
    with C{--control}, until standard input closes).  With C{--caching} the
    port is a caching forwarder's, in front of an authority (on a port of
    its own) that holds the records and takes the delay.  Prints C{"<host> <port>"}
    on a line once listening.
    """
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(prog="python -m sniproxy.testing.dns", description=main.__doc__)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (UDP and TCP)")
    parser.add_argument("--records", help="JSON file, see DNSServer.load")
    parser.add_argument("--delay", type=float, default=None, help="seconds every answer is held back")
    parser.add_argument(
        "--control",
        action="store_true",
        help="take commands on stdin (delay S, outage on|off, ttl S [NAME], stats, reset); exit at its end",
    )
    parser.add_argument(
        "--caching",
        action="store_true",
        help="serve as a caching forwarder (decayed TTLs, AA clear) in front of an authority holding the records",
    )
    options = parser.parse_args(argv)
    dns_server = DNSServer(interface=options.interface)
    records = dns_server
    if options.caching:
        records = DNSServer(interface=options.interface)
        records.start()
        dns_server.forward_to(records)
    if options.records:
        with open(options.records) as f:
            records.load(json.load(f))
    if options.delay is not None:
        records.delay = options.delay
    dns_server.start(options.port)
    print(f"{dns_server.interface} {dns_server.port}", flush=True)
    if options.control:
        _serve_control(dns_server, reactor, records if options.caching else None)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
