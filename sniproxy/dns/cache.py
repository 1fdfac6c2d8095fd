"""
The DNS cache: answers as long as DNS says they are good, and never a
lookup's cost on a connection that a cached answer can serve.

L{CachingResolver} is a Twisted L{IResolver} (every C{lookupX} method) in
front of one upstream L{IResolver}, normally L{sniproxy.dns.upstream.Upstream}.
Per (name, type, class) it keeps one entry:

  - a positive answer lives for the smallest TTL in its answer section
    (the whole CNAME chain), clamped to [C{min_ttl}, C{max_ttl}];
  - a negative answer (NXDOMAIN, or NODATA: no record of the type) lives
    for min(SOA TTL, SOA MINIMUM) of the SOA in its authority section (RFC
    2308), or C{max_negative_ttl} when there is no SOA, and never longer
    than C{max_negative_ttl};
  - a lifetime of 0 answers the lookups that were waiting for it and is not
    kept.

An entry is fresh, then stale (RFC 8767) for C{max_stale} seconds, then
gone.  A fresh hit is answered at once; in the last C{refresh_ahead}
fraction of its life it also starts a background refresh.  A stale hit
starts a refresh and is answered from the stale entry, at once or once
C{stale_wait} seconds pass without a fresh answer; if the refresh fails the
stale entry keeps being served until it is C{max_stale} past expiry.

A transient failure (timeout, SERVFAIL, REFUSED, network error) is not an
answer: it never replaces an entry, and for C{failure_backoff} seconds
after it lookups of that key that have no usable entry fail at once with
the same error instead of asking again.  One upstream query per key is in
flight at a time; every lookup (and refresh) of the key meanwhile waits for
it.  Entries (negative ones too) are bounded by C{max_entries}, the least
recently used evicted first.

Time is whatever C{clock} says (the reactor, or a
L{twisted.internet.task.Clock} in tests).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError, DomainError
from twisted.python.failure import Failure

from sniproxy.config import DNSConfig
from sniproxy.dns.upstream import Upstream

__all__ = ["Answer", "CacheEntry", "CachingResolver", "Counters", "normalise"]

log = Logger()

HIT = "hit"
MISS = "miss"
STALE = "stale"
NEGATIVE = "negative"
MERGED = "merged"

NXDOMAIN = "nxdomain"
NODATA = "nodata"

Key = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Answer:
    """
    What L{CachingResolver.query} says about one (name, type).

    @ivar name: the normalised query name (lower case, no trailing dot).
    @ivar type: the query type.
    @ivar records: the answer section (a CNAME chain included), each record
        a new L{dns.RRHeader} whose TTL is what is left of it (0 when
        stale).  Payloads are shared with the cache: treat them as
        read-only.
    @ivar authority: the authority section, likewise (the SOA of a negative
        answer).
    @ivar additional: the additional section, likewise.
    @ivar negative: C{None} for a positive answer, C{"nxdomain"}, or
        C{"nodata"} (no record of this type; C{records} may still hold the
        CNAME chain that led there).
    @ivar state: how this lookup was answered: C{"hit"} (fresh from the
        cache), C{"negative"} (a fresh cached negative answer), C{"stale"}
        (an expired answer, RFC 8767), C{"miss"} (this lookup asked
        upstream) or C{"merged"} (it joined a query already in flight).
    @ivar ttl: seconds of freshness left; 0 when stale.
    """

    name: str
    type: int
    records: tuple[dns.RRHeader, ...]
    authority: tuple[dns.RRHeader, ...]
    additional: tuple[dns.RRHeader, ...]
    negative: str | None
    state: str
    ttl: float


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """
    What the cache holds for one (name, type), from L{CachingResolver.peek}.

    @ivar state: C{"fresh"}, C{"negative"} (a fresh negative answer),
        C{"stale"} (expired, still servable; see C{negative}) or
        C{"absent"}.
    @ivar ttl: seconds of freshness left (0 unless fresh).
    @ivar stale_ttl: seconds it can still be served, stale included.
    @ivar refreshing: an upstream query for it is in flight.
    @ivar backoff: seconds left of the back-off after a failure (0 if none).
    """

    name: str
    type: int
    state: str
    records: tuple[dns.RRHeader, ...]
    authority: tuple[dns.RRHeader, ...]
    additional: tuple[dns.RRHeader, ...]
    negative: str | None
    ttl: float
    stale_ttl: float
    refreshing: bool
    backoff: float


class Counters:
    """
    The cache's counters, for metrics.  Every lookup counts once, in
    C{hits}, C{negative_hits}, C{stale}, C{misses} (no usable entry; this
    lookup asked upstream or failed at once during a back-off) or
    C{merged} (joined a query in flight).

    @ivar evictions: entries dropped to stay within C{max_entries}.
    @ivar upstream_queries: queries sent upstream (refreshes included).
    @ivar upstream_failures: those that failed (timeout, SERVFAIL, ...).
    @ivar entries: entries held now.
    """

    NAMES = (
        "hits",
        "misses",
        "stale",
        "negative_hits",
        "merged",
        "evictions",
        "upstream_queries",
        "upstream_failures",
    )
    __slots__ = (*NAMES, "_entries")

    def __init__(self, entries: OrderedDict[Key, _Entry]) -> None:
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.negative_hits = 0
        self.merged = 0
        self.evictions = 0
        self.upstream_queries = 0
        self.upstream_failures = 0
        self._entries = entries

    @property
    def entries(self) -> int:
        return len(self._entries)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (*self.NAMES, "entries")}

    def __repr__(self) -> str:
        return "Counters({})".format(", ".join(f"{k}={v}" for k, v in self.as_dict().items()))


class _Entry:
    """One cached answer; never changed once made (a refresh replaces it)."""

    __slots__ = ("records", "authority", "additional", "negative", "expires", "refresh")

    def __init__(
        self,
        records: tuple[dns.RRHeader, ...],
        authority: tuple[dns.RRHeader, ...],
        additional: tuple[dns.RRHeader, ...],
        negative: str | None,
        expires: float,
        refresh: float,
    ) -> None:
        self.records = records
        self.authority = authority
        self.additional = additional
        self.negative = negative
        self.expires = expires
        self.refresh = refresh


class _Waiter:
    """A lookup waiting for a query in flight (and, if stale, for a deadline)."""

    __slots__ = ("deferred", "state", "stale", "timer")

    def __init__(self, state: str, stale: _Entry | None) -> None:
        self.deferred: defer.Deferred[Answer]
        self.state = state
        self.stale = stale
        self.timer: IDelayedCall | None = None


class _Flight:
    """One upstream query in flight, and who waits for it."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []


_new = object.__new__
_RRHeader = dns.RRHeader


def _aged(records: tuple[dns.RRHeader, ...], ttl: int) -> tuple[dns.RRHeader, ...]:
    """
    New headers for C{records}, with TTLs at most C{ttl}.  They share the
    payloads and names, which nobody changes.
    """
    copies = []
    for record in records:
        copy = _new(_RRHeader)
        state = record.__dict__.copy()
        if state["ttl"] > ttl:
            state["ttl"] = ttl
        copy.__dict__ = state
        copies.append(copy)
    return tuple(copies)


def normalise(name: str | bytes) -> str:
    """
    The cache key form of a name: ASCII (IDNA for non-ASCII text), lower
    case, without its trailing dot.

    @raise ValueError: for bytes that are not ASCII or text IDNA rejects.
    """
    text = name.decode("ascii") if isinstance(name, bytes) else name
    if not text.isascii():
        text = text.encode("idna").decode("ascii")
    text = text.lower()
    return text[:-1] if text[-1:] == "." else text


def describe_error(error: BaseException) -> str:
    """A DNS lookup's failure in a few words, for a log line or a reason."""
    # DNS errors carry a whole message object; their class name says it all.
    if isinstance(error, (DomainError, defer.TimeoutError, defer.CancelledError)) or not str(error):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"


class CachingResolver(common.ResolverBase):
    """
    A caching L{IResolver}; see the module docstring for the rules.

    Through the C{lookupX} methods (Twisted's interface) an answer comes as
    Twisted's client gives it: C{(answers, authority, additional)} lists;
    NODATA is an empty answer list, NXDOMAIN fails with L{DNSNameError}.
    L{query} says more: the L{Answer} tells the cache state, and negative
    answers are answers, not failures.

    Failures are transient ones only, and come as the upstream reports
    them: L{twisted.names.error.DNSQueryTimeoutError} for timeouts (the
    upstream's per-attempt timeouts and its deadline),
    L{twisted.names.error.DNSServerError} for SERVFAIL,
    L{twisted.names.error.DNSQueryRefusedError} for REFUSED, other
    L{twisted.names.error.DomainError}s for other response codes, and
    network errors as raised.

    The C{timeout} argument of the C{lookupX} methods is ignored: the
    upstream's timeouts apply.

    @ivar counters: the L{Counters}.
    """

    def __init__(
        self,
        upstream: Any,
        clock: Any,
        *,
        min_ttl: float = 0.0,
        max_ttl: float = 86400.0,
        max_negative_ttl: float = 10.0,
        failure_backoff: float = 2.0,
        max_stale: float = 86400.0,
        stale_wait: float = 0.0,
        refresh_ahead: float = 0.1,
        max_entries: int = 10000,
    ) -> None:
        """
        @param upstream: the L{IResolver} asked on a miss, through its
            C{query} method (its stop method, if any, is called by L{stop}).
        @param clock: an L{IReactorTime} for TTLs, back-offs and
            C{stale_wait}.
        """
        super().__init__()
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._upstream = upstream
        self._clock = clock
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._max_negative_ttl = max_negative_ttl
        self._failure_backoff = failure_backoff
        self._max_stale = max_stale
        self._stale_wait = stale_wait
        self._refresh_ahead = refresh_ahead
        self._max_entries = max_entries
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._flights: dict[Key, _Flight] = {}
        # Keys whose last query failed: (until, failure).  Bounded like the
        # entries, so a flood of failing names cannot grow it.
        self._backoff: OrderedDict[Key, tuple[float, BaseException]] = OrderedDict()
        self._stopped = False
        self._idle: list[defer.Deferred[None]] = []
        self.counters = Counters(self._entries)

    @classmethod
    def from_config(cls, config: DNSConfig, reactor: Any = None, clock: Any = None) -> CachingResolver:
        """
        The cache and its upstream (L{Upstream.from_config}) for a C{[dns]}
        table.  C{clock} defaults to C{reactor}, which defaults to the
        global reactor.
        """
        if reactor is None:
            from twisted.internet import reactor
        return cls(
            Upstream.from_config(config, reactor),
            reactor if clock is None else clock,
            min_ttl=config.min_ttl,
            max_ttl=config.max_ttl,
            max_negative_ttl=config.max_negative_ttl,
            failure_backoff=config.failure_backoff,
            max_stale=config.max_stale,
            stale_wait=config.stale_wait,
            refresh_ahead=config.refresh_ahead,
            max_entries=config.max_entries,
        )

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------ lookups

    def query(self, name: str | bytes, type: int, cls: int = dns.IN) -> defer.Deferred[Answer]:  # type: ignore[override]
        """
        Look C{name} up (an absolute name; case and a trailing dot do not
        matter).

        @return: fires with an L{Answer}, positive or negative; fails only
            for a transient failure (see the class docstring).  Cancelling
            it abandons this lookup, not the query others wait for.
        """
        try:
            key = (normalise(name), type, cls)
        except ValueError as error:
            return defer.fail(error)
        now = self._clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry.expires:
                self._entries.move_to_end(key)
                if entry.negative is None:
                    self.counters.hits += 1
                    answer = self._answer(key, entry, HIT, now)
                else:
                    self.counters.negative_hits += 1
                    answer = self._answer(key, entry, NEGATIVE, now)
                if now >= entry.refresh and key not in self._flights and self._clear(key, now):
                    self._fetch(key)
                return defer.succeed(answer)
            if now < entry.expires + self._max_stale:
                return self._stale(key, entry, now)
            del self._entries[key]
        flight = self._flights.get(key)
        if flight is not None:
            self.counters.merged += 1
            return self._join(key, flight, MERGED, None)
        self.counters.misses += 1
        if not self._clear(key, now):
            return defer.fail(Failure(self._backoff[key][1]))
        return self._fetch(key, MISS)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        return self.query(name, type, cls).addCallback(_sections)

    def _stale(self, key: Key, entry: _Entry, now: float) -> defer.Deferred[Answer]:
        self._entries.move_to_end(key)
        flight = self._flights.get(key)
        if flight is None and self._clear(key, now):
            if self._stale_wait > 0:
                return self._fetch(key, MISS, entry)
            self._fetch(key)
        elif flight is not None and self._stale_wait > 0:
            return self._join(key, flight, MERGED, entry)
        self.counters.stale += 1
        return defer.succeed(self._answer(key, entry, STALE, now))

    def _clear(self, key: Key, now: float) -> bool:
        """Whether C{key} may be asked upstream now (it is not backing off)."""
        backoff = self._backoff.get(key)
        if backoff is None:
            return True
        if now < backoff[0]:
            return False
        del self._backoff[key]
        return True

    def _answer(self, key: Key, entry: _Entry, state: str, now: float) -> Answer:
        left = entry.expires - now
        if left > 0 and state != STALE:
            # Whole seconds left, rounded down; the epsilon undoes float
            # error, so an answer just fetched keeps its full TTL.
            ttl = int(left + 1e-6)
        else:
            left = 0.0
            ttl = 0
        return Answer(
            key[0],
            key[1],
            _aged(entry.records, ttl),
            _aged(entry.authority, ttl) if entry.authority else (),
            _aged(entry.additional, ttl) if entry.additional else (),
            entry.negative,
            state,
            left,
        )

    # ------------------------------------------------------------ upstream

    def _fetch(self, key: Key, state: str | None = None, stale: _Entry | None = None) -> Any:
        """
        Ask upstream; with C{state}, return a waiter's L{Deferred}.  (The
        waiter joins before the query goes out: an upstream may answer at
        once.)
        """
        flight = self._flights[key] = _Flight()
        waiting = None if state is None else self._join(key, flight, state, stale)
        self.counters.upstream_queries += 1
        d = defer.maybeDeferred(self._upstream.query, dns.Query(key[0].encode("ascii"), key[1], key[2]))
        d.addCallbacks(self._answered, self._failed, (key, flight), None, (key, flight))
        d.addErrback(self._broken, key, flight)
        return waiting

    def _broken(self, failure: Failure, key: Key, flight: _Flight) -> None:
        """An answer this code could not handle: fail its waiters, say why."""
        log.failure("Handling the DNS answer for {name} failed", failure, name=key[0])
        for waiter in self._landed(key, flight):
            waiter.deferred.errback(failure)
        self._checkIdle()

    def _join(self, key: Key, flight: _Flight, state: str, stale: _Entry | None) -> defer.Deferred[Answer]:
        waiter = _Waiter(state, stale)
        waiter.deferred = defer.Deferred(lambda _: self._leave(flight, waiter))
        flight.waiters.append(waiter)
        if stale is not None:
            waiter.timer = self._clock.callLater(self._stale_wait, self._waited, key, flight, waiter)
        return waiter.deferred

    def _leave(self, flight: _Flight, waiter: _Waiter) -> None:
        if waiter in flight.waiters:
            flight.waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _waited(self, key: Key, flight: _Flight, waiter: _Waiter) -> None:
        """C{stale_wait} passed without a fresh answer: serve the stale one."""
        waiter.timer = None
        flight.waiters.remove(waiter)
        assert waiter.stale is not None
        self.counters.stale += 1
        waiter.deferred.callback(self._answer(key, waiter.stale, STALE, self._clock.seconds()))

    def _landed(self, key: Key, flight: _Flight) -> list[_Waiter]:
        """The query for C{key} is done: forget it, hand over its waiters."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
                waiter.timer = None
        return waiters

    def _count(self, waiter: _Waiter) -> None:
        # A waiter with a stale entry counts by how it is finally answered;
        # the others counted when they asked.
        if waiter.stale is not None:
            if waiter.state == MISS:
                self.counters.misses += 1
            else:
                self.counters.merged += 1

    def _orStale(self, key: Key, waiter: _Waiter, failure: Failure, now: float) -> None:
        """Fail a waiter, unless it has a stale entry that is still servable."""
        if waiter.stale is not None and now < waiter.stale.expires + self._max_stale:
            self.counters.stale += 1
            waiter.deferred.callback(self._answer(key, waiter.stale, STALE, now))
        else:
            self._count(waiter)
            waiter.deferred.errback(failure)

    def _answered(self, result: tuple[list[Any], list[Any], list[Any]], key: Key, flight: _Flight) -> None:
        answers, authority, additional = result
        if key[1] == dns.ALL_RECORDS:
            positive = bool(answers)
        else:
            positive = any(record.type == key[1] for record in answers)
        self._settle(key, flight, answers, authority, additional, None if positive else NODATA)

    def _failed(self, failure: Failure, key: Key, flight: _Flight) -> None:
        if failure.check(DNSNameError, AuthoritativeDomainError):
            message = failure.value.args[0] if failure.value.args else None
            self._settle(
                key,
                flight,
                getattr(message, "answers", []),
                getattr(message, "authority", []),
                getattr(message, "additional", []),
                NXDOMAIN,
            )
            return
        now = self._clock.seconds()
        waiters = self._landed(key, flight)
        self.counters.upstream_failures += 1
        if not self._stopped:
            log.warn(
                "DNS lookup of {name} {type} failed: {reason}",
                name=key[0],
                type=dns.QUERY_TYPES.get(key[1], key[1]),
                reason=describe_error(failure.value),
            )
        if self._failure_backoff > 0:
            # The error without its traceback: the frames would be kept for
            # the whole back-off.
            error = failure.value
            error.__traceback__ = None
            self._backoff[key] = (now + self._failure_backoff, error)
            self._backoff.move_to_end(key)
            if len(self._backoff) > self._max_entries:
                self._backoff.popitem(last=False)
        for waiter in waiters:
            self._orStale(key, waiter, failure, now)
        self._checkIdle()

    def _settle(
        self,
        key: Key,
        flight: _Flight,
        answers: list[Any],
        authority: list[Any],
        additional: list[Any],
        negative: str | None,
    ) -> None:
        """Cache an answer (positive or negative) and give it to the waiters."""
        now = self._clock.seconds()
        waiters = self._landed(key, flight)
        if negative is None:
            ttl = min(max(min(record.ttl for record in answers), self._min_ttl), self._max_ttl)
        else:
            soa = next((record for record in authority if record.type == dns.SOA), None)
            if soa is None:
                # RFC 2308 says not to cache these at all; a short while
                # stops a flood of repeats just as well.
                ttl = self._max_negative_ttl
            else:
                ttl = min(soa.ttl, getattr(soa.payload, "minimum", soa.ttl), self._max_negative_ttl)
            for record in answers:  # the CNAME chain that led here
                ttl = min(ttl, record.ttl)
        entry = _Entry(
            tuple(answers),
            tuple(authority),
            tuple(additional),
            negative,
            now + ttl,
            now + ttl * (1 - self._refresh_ahead) if self._refresh_ahead > 0 else math.inf,
        )
        self._backoff.pop(key, None)
        entries = self._entries
        if ttl > 0:
            entries[key] = entry
            entries.move_to_end(key)
            while len(entries) > self._max_entries:
                entries.popitem(last=False)
                self.counters.evictions += 1
        else:
            # Good for the lookups that waited for it, and nothing more (an
            # older entry included).
            entries.pop(key, None)
        for waiter in waiters:
            self._count(waiter)
            waiter.deferred.callback(self._answer(key, entry, waiter.state, now))
        self._checkIdle()

    # ------------------------------------------------------------ the rest

    def peek(self, name: str | bytes, type: int, cls: int = dns.IN) -> CacheEntry:
        """
        What the cache holds for C{name} and C{type}, without counting a
        lookup, touching the LRU order or asking upstream.
        """
        key = (normalise(name), type, cls)
        now = self._clock.seconds()
        entry = self._entries.get(key)
        backoff = self._backoff.get(key)
        waits = max(0.0, backoff[0] - now) if backoff is not None else 0.0
        refreshing = key in self._flights
        if entry is None or now >= entry.expires + self._max_stale:
            return CacheEntry(key[0], type, "absent", (), (), (), None, 0.0, 0.0, refreshing, waits)
        left = entry.expires - now
        if left > 0:
            state = "fresh" if entry.negative is None else "negative"
            answer = self._answer(key, entry, HIT, now)
        else:
            state = "stale"
            answer = self._answer(key, entry, STALE, now)
        return CacheEntry(
            key[0],
            type,
            state,
            answer.records,
            answer.authority,
            answer.additional,
            entry.negative,
            answer.ttl,
            entry.expires + self._max_stale - now,
            refreshing,
            waits,
        )

    def prefetch(self, names: Iterable[str], types: Iterable[int] = (dns.A, dns.AAAA)) -> defer.Deferred[None]:
        """
        Look C{names} up (IP literals skipped), so that their first
        connections hit the cache.  Failures are logged, not raised.

        @return: fires when every lookup is done.
        """
        types = tuple(types)
        lookups = []
        for name in dict.fromkeys(names):
            try:
                ipaddress.ip_address(name)
                continue
            except ValueError:
                pass
            for type in types:
                d = self.query(name, type)
                d.addErrback(self._prefetchFailed, name, type)
                lookups.append(d)
        return defer.gatherResults(lookups).addCallback(lambda _: None)

    def _prefetchFailed(self, failure: Failure, name: str, type: int) -> None:
        log.warn(
            "Prefetching {name} {type} failed: {reason}",
            name=name,
            type=dns.QUERY_TYPES.get(type, type),
            reason=describe_error(failure.value),
        )

    def when_idle(self) -> defer.Deferred[None]:
        """Fires when no upstream query is in flight (at once if none is)."""
        if not self._flights:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _checkIdle(self) -> None:
        if not self._flights and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the upstream (its C{stop}, if it has one), then answer every
        lookup still waiting: stale if it has a stale entry, else with
        L{defer.CancelledError}.  No timer is left behind.  The entries
        stay.

        @return: fires when the upstream has stopped.
        """
        self._stopped = True
        stop = getattr(self._upstream, "stop", None)
        stopped = defer.maybeDeferred(stop) if stop is not None else defer.succeed(None)
        now = self._clock.seconds()
        for key, flight in list(self._flights.items()):
            for waiter in self._landed(key, flight):
                self._orStale(key, waiter, Failure(defer.CancelledError("DNS cache stopped")), now)
        self._checkIdle()
        return stopped


def _sections(answer: Answer) -> tuple[list[Any], list[Any], list[Any]]:
    """An L{Answer} as Twisted's resolvers give one."""
    if answer.negative == NXDOMAIN:
        message = dns.Message(answer=1, rCode=dns.ENAME)
        message.queries = [dns.Query(answer.name, answer.type)]
        message.answers = list(answer.records)
        message.authority = list(answer.authority)
        message.additional = list(answer.additional)
        raise DNSNameError(message)
    return list(answer.records), list(answer.authority), list(answer.additional)
