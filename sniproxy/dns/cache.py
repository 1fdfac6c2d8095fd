"""
The DNS cache: answers as long as DNS says they are good, and never a
lookup's cost on a connection that a cached answer can serve.

L{CachingResolver} is a Twisted L{IResolver} (every C{lookupX} method) in
front of one upstream L{IResolver}, normally L{sniproxy.dns.upstream.Upstream},
which is injected (L{sniproxy.dns.build_dns} builds both for a C{[dns]}
table).  Per (name, type, class) it keeps one entry:

  - a positive answer lives for the smallest TTL in its answer section
    (the whole CNAME chain), clamped to [C{min_ttl}, C{max_ttl}];
  - a negative answer (NXDOMAIN, or NODATA: no record of the type) lives
    for min(SOA TTL, SOA MINIMUM) of the SOA in its authority section (RFC
    2308), or C{max_negative_ttl} when there is no SOA, and never longer
    than C{max_negative_ttl}.

An entry is fresh, then stale (RFC 8767) for C{max_stale} seconds, then
gone.  A fresh hit is answered at once.  When it is refreshed depends on
where the answer came from:

  - an authoritative answer (AA set) is refreshed ahead: a hit in the last
    C{refresh_ahead} fraction of its life starts a background refresh;
  - a non-authoritative answer (a caching resolver's copy, whose TTLs have
    decayed), or a refresh whose answer expires no later than the entry it
    refreshed, is refreshed just after it expires, when the upstream's own
    copy has expired too: the first hit after expiry is served stale at
    once and starts the refresh (refreshing earlier would only fetch the
    same decayed copy again);
  - a refresh is never planned sooner than C{min_refresh} seconds after the
    answer arrived: a TTL 0 answer (or one of 0.3 s) is kept and served,
    stale, for C{min_refresh} seconds, within C{max_stale} (with
    C{max_stale} 0 or C{min_refresh} 0 such answers are not kept).

A stale hit on any other entry starts a refresh and is answered from the
stale entry, at once or once C{stale_wait} seconds pass without a fresh
answer; if the refresh fails the stale entry keeps being served until it is
C{max_stale} past expiry.

A transient failure (timeout, SERVFAIL, REFUSED, network error) is not an
answer: it never replaces an entry, and for C{failure_backoff} seconds
after it lookups of that key that have no usable entry fail at once with
the same error instead of asking again.  One upstream query per key is in
flight at a time; every lookup (and refresh) of the key meanwhile waits for
it.  Entries (negative ones too) are bounded by C{max_entries}, the least
recently used evicted first.

L{CachingResolver.reconfigure} applies new settings (and a new upstream)
to the live cache: entries are kept and re-clamped lazily, on their next
use; a smaller C{max_entries} evicts the least recently used at once.

Time is whatever C{clock} says (the reactor, or a
L{twisted.internet.task.Clock} in tests).
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError, DomainError
from twisted.python.failure import Failure

from sniproxy.deferreds import PENDING, _Pending

__all__ = [
    "Answer",
    "CacheEntry",
    "CacheState",
    "CachingResolver",
    "Counters",
    "EntryStatus",
    "Origin",
    "SavedEntry",
    "normalise",
]

log = Logger()


class CacheState(str, enum.Enum):
    """How a lookup was answered (L{Answer.state}, L{Route.cache})."""

    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    NEGATIVE = "negative"
    MERGED = "merged"

    def __str__(self) -> str:
        # The value, in str() and f-strings alike, as the bare strings were.
        return self.value

    __format__ = str.__format__


class Origin(str, enum.Enum):
    """Where an entry came from (L{EntryStatus.origin})."""

    UPSTREAM = "upstream"
    FILE = "file"
    PREFETCH = "prefetch"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


HIT = CacheState.HIT
MISS = CacheState.MISS
STALE = CacheState.STALE
NEGATIVE = CacheState.NEGATIVE
MERGED = CacheState.MERGED

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
    @ivar state: how this lookup was answered, a L{CacheState}: C{HIT}
        (fresh from the cache), C{NEGATIVE} (a fresh cached negative
        answer), C{STALE} (an expired answer, RFC 8767), C{MISS} (this
        lookup asked upstream) or C{MERGED} (it joined a query already in
        flight).
    @ivar ttl: seconds of freshness left; 0 when stale.
    """

    name: str
    type: int
    records: tuple[dns.RRHeader, ...]
    authority: tuple[dns.RRHeader, ...]
    additional: tuple[dns.RRHeader, ...]
    negative: str | None
    state: CacheState
    ttl: float


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """
    What the cache holds for one (name, type), from L{CachingResolver.peek}
    (public API, for tests and tools: it neither counts nor reorders).

    @ivar state: C{"fresh"}, C{"negative"} (a fresh negative answer),
        C{"stale"} (expired, still servable; see C{negative}) or
        C{"absent"}.
    @ivar ttl: seconds of freshness left (0 unless fresh).
    @ivar stale_ttl: seconds it can still be served, stale included.
    @ivar refreshing: an upstream query for it is in flight.
    @ivar backoff: seconds left of the back-off after a failure (0 if none).
    @ivar origin: where the entry came from (C{""} when absent).
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
    origin: str = ""


@dataclass(frozen=True)
class EntryStatus:
    """
    One entry as the status page shows it (L{CachingResolver.entries_status}).

    @ivar name: the normalised name.
    @ivar type: the record type's mnemonic (C{"TXT"}, C{"A"}, ...).
    @ivar state: C{"fresh"}, C{"refreshing"} (a query for it is in flight),
        C{"stale"} or C{"negative"} (a fresh negative answer).
    @ivar ttl_left: seconds of freshness left; negative when stale.
    @ivar hits: lookups it answered.
    @ivar origin: C{"upstream"}, C{"file"} (loaded from the cache file and
        not refreshed since) or C{"prefetch"} (fetched by a warm-start
        lookup).
    """

    name: str
    type: str
    state: str
    ttl_left: float
    hits: int
    origin: str


@dataclass(frozen=True, slots=True)
class SavedEntry:
    """
    One entry as the cache file holds it (L{CachingResolver.saved_entries},
    L{CachingResolver.restore}).  Times are the cache clock's seconds.

    @ivar records: the answer section with the TTLs it arrived with.
    @ivar raw_ttl: the entry's lifetime before clamping (for a negative
        answer, from its SOA; C{inf} when it had none).
    @ivar fetched: when the answer arrived.
    @ivar auth: whether the answer was authoritative (AA).
    """

    name: str
    type: int
    cls: int
    records: tuple[dns.RRHeader, ...]
    authority: tuple[dns.RRHeader, ...]
    additional: tuple[dns.RRHeader, ...]
    negative: str | None
    raw_ttl: float
    fetched: float
    auth: bool
    hits: int


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
    @ivar in_flight: upstream queries in flight now.
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
    __slots__ = (*NAMES, "_entries", "_flights")

    def __init__(self, entries: OrderedDict[Key, _Entry], flights: dict[Key, Any] | None = None) -> None:
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.negative_hits = 0
        self.merged = 0
        self.evictions = 0
        self.upstream_queries = 0
        self.upstream_failures = 0
        self._entries = entries
        self._flights = {} if flights is None else flights

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (*self.NAMES, "entries", "in_flight")}

    def __repr__(self) -> str:
        return "Counters({})".format(", ".join(f"{k}={v}" for k, v in self.as_dict().items()))


class _Entry:
    """
    One cached answer.  Its answer never changes once made (a refresh
    replaces the entry); C{hits} counts up, and the times are recomputed
    when the settings change (C{generation}).

    @ivar planned: refreshed at (or after) expiry, not ahead: a hit after
        C{expires} is served stale at once, and starts the refresh once
        C{refresh} is reached.
    @ivar decays: a refresh of this key came back with the same, decayed,
        copy: its upstream caches, whatever its AA bit says, so it is not
        refreshed ahead any more.
    """

    __slots__ = (
        "records",
        "authority",
        "additional",
        "negative",
        "expires",
        "refresh",
        "planned",
        "fetched",
        "raw_ttl",
        "auth",
        "generation",
        "hits",
        "origin",
        "decays",
    )

    def __init__(
        self,
        records: tuple[dns.RRHeader, ...],
        authority: tuple[dns.RRHeader, ...],
        additional: tuple[dns.RRHeader, ...],
        negative: str | None,
        fetched: float,
        raw_ttl: float,
        auth: bool,
        origin: Origin,
    ) -> None:
        self.records = records
        self.authority = authority
        self.additional = additional
        self.negative = negative
        self.fetched = fetched
        self.raw_ttl = raw_ttl
        self.auth = auth
        self.origin = origin
        self.hits = 0
        self.generation = -1
        self.expires = fetched
        self.refresh = math.inf
        self.planned = False
        self.decays = False


class _Waiter:
    """A lookup waiting for a query in flight (and, if stale, for a deadline)."""

    __slots__ = ("deferred", "state", "stale", "timer")

    def __init__(self, state: CacheState, stale: _Entry | None) -> None:
        self.deferred: defer.Deferred[Answer]
        self.state = state
        self.stale = stale
        self.timer: IDelayedCall | None = None


class _Flight:
    """One upstream query in flight, and who waits for it."""

    __slots__ = ("waiters", "origin")

    def __init__(self, origin: Origin) -> None:
        self.waiters: list[_Waiter] = []
        self.origin = origin


# -- Twisted internals: RRHeader copies ------------------------------------
#
# Relies on dns.RRHeader keeping its whole state (name, type, cls, ttl,
# payload, auth, cachedResponse) in its instance __dict__ (no __slots__, no
# state elsewhere), true from Twisted 16 to 26.  Copying the dict is four
# times cheaper than RRHeader(...), which re-validates every field.  If a
# Twisted release changes that, _rrheader_copy_works() turns False and the
# slow, public constructor is used instead; the test suite checks both.

_new = object.__new__
_RRHeader = dns.RRHeader


def _aged_fast(records: tuple[dns.RRHeader, ...], ttl: int) -> tuple[dns.RRHeader, ...]:
    copies = []
    for record in records:
        copy = _new(_RRHeader)
        state = record.__dict__.copy()
        if state["ttl"] > ttl:
            state["ttl"] = ttl
        copy.__dict__ = state
        copies.append(copy)
    return tuple(copies)


def _aged_public(records: tuple[dns.RRHeader, ...], ttl: int) -> tuple[dns.RRHeader, ...]:
    return tuple(
        dns.RRHeader(r.name.name, r.type, r.cls, min(r.ttl, ttl), r.payload, auth=r.auth) for r in records
    )


def _rrheader_copy_works() -> bool:
    """Whether copying an L{dns.RRHeader}'s C{__dict__} copies it whole."""
    try:
        original = dns.RRHeader(b"a.test", dns.TXT, dns.IN, 60, dns.Record_TXT(b"x"), auth=True)
        [copy] = _aged_fast((original,), 10)
        return (copy.name, copy.type, copy.cls, copy.ttl, copy.payload, copy.auth) == (
            original.name,
            original.type,
            original.cls,
            10,
            original.payload,
            True,
        ) and original.ttl == 60
    except Exception:
        return False


_aged = _aged_fast if _rrheader_copy_works() else _aged_public
_aged.__doc__ = """
New headers for C{records}, with TTLs at most C{ttl}.  They share the
payloads and names, which nobody changes.
"""


def _authoritative(records: Iterable[dns.RRHeader]) -> bool:
    """Whether these records came in an authoritative answer (AA set)."""
    for record in records:
        if not record.auth:
            return False
    return True


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


_SETTINGS = (
    "min_ttl",
    "max_ttl",
    "max_negative_ttl",
    "failure_backoff",
    "max_stale",
    "stale_wait",
    "refresh_ahead",
    "min_refresh",
    "max_entries",
)


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
    @ivar upstream: the upstream resolver.
    @ivar listeners: callables called with C{(key, entry)} whenever an
        upstream answer (a first answer, a refresh, a negative answer) is
        stored, or dropped as not worth keeping; C{key} is C{(name, type,
        cls)} and C{entry} the cache's own (read-only) record of it.  The
        shared cache (L{sniproxy.dns.shared}) pushes them to the workers.
        Nothing is called for hits, and an empty list costs nothing.
    """

    def __init__(
        self,
        upstream: Any,
        clock: IReactorTime,
        *,
        min_ttl: float = 0.0,
        max_ttl: float = 86400.0,
        max_negative_ttl: float = 10.0,
        failure_backoff: float = 2.0,
        max_stale: float = 86400.0,
        stale_wait: float = 0.0,
        refresh_ahead: float = 0.1,
        min_refresh: float = 1.0,
        max_entries: int = 10000,
    ) -> None:
        """
        @param upstream: the L{IResolver} asked on a miss, through its
            C{query} method (its stop method, if any, is called by L{stop}).
        @param clock: an L{IReactorTime} for TTLs, back-offs and
            C{stale_wait}.
        """
        super().__init__()
        self.upstream = upstream
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._flights: dict[Key, _Flight] = {}
        # Keys whose last query failed: (until, failure).  Bounded like the
        # entries, so a flood of failing names cannot grow it.
        self._backoff: OrderedDict[Key, tuple[float, BaseException]] = OrderedDict()
        self._stopped = False
        self._idle: list[defer.Deferred[None]] = []
        self._retired: list[Any] = []
        self._origin = Origin.UPSTREAM
        self._generation = 0
        self.listeners: list[Any] = []
        self.counters = Counters(self._entries, self._flights)
        self.configure(
            min_ttl=min_ttl,
            max_ttl=max_ttl,
            max_negative_ttl=max_negative_ttl,
            failure_backoff=failure_backoff,
            max_stale=max_stale,
            stale_wait=stale_wait,
            refresh_ahead=refresh_ahead,
            min_refresh=min_refresh,
            max_entries=max_entries,
        )

    def configure(self, **settings: Any) -> None:
        """
        Change settings (the keyword arguments of the constructor, but the
        upstream and the clock) on the live cache.  Entries are kept; their
        lifetimes are recomputed from the answers they hold on their next
        use.  A smaller C{max_entries} evicts the least recently used
        entries now.

        @raise ValueError: for an unknown setting or C{max_entries} below 1.
        """
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ValueError(f"unknown DNS cache settings: {', '.join(sorted(unknown))}")
        if "max_entries" in settings and settings["max_entries"] < 1:
            raise ValueError("max_entries must be at least 1")
        for name, value in settings.items():
            setattr(self, "_" + name, value)
        self._generation += 1
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.counters.evictions += 1
        while len(self._backoff) > self._max_entries:
            self._backoff.popitem(last=False)

    def replace_upstream(self, upstream: Any) -> None:
        """
        Ask C{upstream} from now on.  Queries in flight on the old one
        finish there; it is stopped once the cache is idle (or at L{stop}).
        Failure back-offs are forgotten.
        """
        old, self.upstream = self.upstream, upstream
        if old is upstream:
            return
        # Back-offs were earned by the old servers.
        self._backoff.clear()
        self._retired.append(old)
        self.when_idle().addCallback(lambda _: self._stop_retired())

    def _stop_retired(self) -> defer.Deferred[None]:
        retired, self._retired = self._retired, []
        stops = []
        for upstream in retired:
            stop = getattr(upstream, "stop", None)
            if stop is not None:
                stops.append(defer.maybeDeferred(stop))
        return defer.gatherResults(stops).addCallback(lambda _: None)

    @property
    def clock(self) -> IReactorTime:
        """The cache's clock."""
        return self._clock

    @property
    def max_entries(self) -> int:
        """The current bound on entries."""
        return self._max_entries

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
            if entry.generation != self._generation:
                self._schedule(entry)
            if now < entry.expires:
                return defer.succeed(self._fresh_hit(key, entry, now))
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

    def answer_now(self, name: str, type: int, cls: int = dns.IN) -> Answer | _Pending:
        """
        The answer of a fresh entry, without a L{Deferred}: what L{query}
        would fire with at once for a hit (counted as one, refreshed ahead
        the same way); L{PENDING} for anything else (a miss, a stale entry,
        a bad name), for which nothing is counted and nothing sent: ask
        L{query}.
        """
        try:
            key = (normalise(name), type, cls)
        except ValueError:
            return PENDING
        entry = self._entries.get(key)
        if entry is None or entry.generation != self._generation:
            return PENDING
        now = self._clock.seconds()
        if now >= entry.expires:
            return PENDING
        return self._fresh_hit(key, entry, now)

    def _fresh_hit(self, key: Key, entry: _Entry, now: float) -> Answer:
        """A hit on an entry not yet expired: counted, and refreshed ahead once due."""
        self._entries.move_to_end(key)
        entry.hits += 1
        if entry.negative is None:
            self.counters.hits += 1
            answer = self._answer(key, entry, HIT, now)
        else:
            self.counters.negative_hits += 1
            answer = self._answer(key, entry, NEGATIVE, now)
        if now >= entry.refresh and key not in self._flights and self._clear(key, now):
            self._fetch(key)
        return answer

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        return self.query(name, type, cls).addCallback(_sections)

    def _stale(self, key: Key, entry: _Entry, now: float) -> defer.Deferred[Answer]:
        self._entries.move_to_end(key)
        entry.hits += 1
        flight = self._flights.get(key)
        if entry.planned:
            # Expected to be stale for a moment (its refresh was planned
            # for now, or not before now): never wait for the refresh.
            if flight is None and now >= entry.refresh and self._clear(key, now):
                self._fetch(key)
        elif flight is None and self._clear(key, now):
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

    def _answer(self, key: Key, entry: _Entry, state: CacheState, now: float) -> Answer:
        left = entry.expires - now
        if left > 0 and state is not STALE:
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

    # ------------------------------------------------------------ lifetimes

    def _clamped(self, entry: _Entry) -> float:
        """The entry's lifetime under the current clamps."""
        if entry.negative is None:
            return min(max(entry.raw_ttl, self._min_ttl), self._max_ttl)
        return min(entry.raw_ttl, self._max_negative_ttl)

    def _schedule(self, entry: _Entry, planned: bool = False) -> None:
        """
        Set the entry's expiry and refresh point from its answer and the
        current settings.

        @param planned: refresh it at expiry, not ahead, whatever its AA
            bit says.
        """
        ttl = self._clamped(entry)
        entry.generation = self._generation
        entry.expires = entry.fetched + ttl
        floor = entry.fetched + self._min_refresh
        if planned or not entry.auth or entry.decays:
            # A caching upstream's copy: asking before it expires there
            # gets the same copy back, with a smaller TTL.  Its TTLs are
            # rounded down to whole seconds, so that copy outlives ours by
            # up to a second; caches that count whole seconds (Unbound,
            # BIND) drop it at the turn of a second.  Ask just after that.
            entry.planned = True
            entry.refresh = max(math.floor(entry.expires) + 1.0, floor)
        elif self._refresh_ahead > 0:
            entry.refresh = entry.fetched + ttl * (1 - self._refresh_ahead)
            entry.planned = entry.refresh < floor
            if entry.planned:
                entry.refresh = floor
        else:
            entry.refresh = math.inf
            entry.planned = ttl < self._min_refresh
            if entry.planned:
                entry.refresh = floor

    def _keeps(self, entry: _Entry) -> bool:
        """Whether an entry is worth keeping when it arrives."""
        if entry.expires > entry.fetched:
            return True
        # Lifetime 0: kept for stale serving until its refresh, if RFC 8767
        # serving is on and a refresh floor is set.
        return entry.planned and self._max_stale > 0 and self._min_refresh > 0

    # ------------------------------------------------------------ upstream

    def _fetch(self, key: Key, state: CacheState | None = None, stale: _Entry | None = None) -> Any:
        """
        Ask upstream; with C{state}, return a waiter's L{Deferred}.  (The
        waiter joins before the query goes out: an upstream may answer at
        once.)
        """
        flight = self._flights[key] = _Flight(self._origin)
        waiting = None if state is None else self._join(key, flight, state, stale)
        self.counters.upstream_queries += 1
        d = defer.maybeDeferred(self.upstream.query, dns.Query(key[0].encode("ascii"), key[1], key[2]))
        d.addCallbacks(self._answered, self._failed, (key, flight), None, (key, flight))
        d.addErrback(self._broken, key, flight)
        return waiting

    def _broken(self, failure: Failure, key: Key, flight: _Flight) -> None:
        """An answer this code could not handle: fail its waiters, say why."""
        log.failure("Handling the DNS answer for {name} failed", failure, name=key[0])
        for waiter in self._landed(key, flight):
            waiter.deferred.errback(failure)
        self._check_idle()

    def _join(self, key: Key, flight: _Flight, state: CacheState, stale: _Entry | None) -> defer.Deferred[Answer]:
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
            if waiter.state is MISS:
                self.counters.misses += 1
            else:
                self.counters.merged += 1

    def _or_stale(self, key: Key, waiter: _Waiter, failure: Failure, now: float) -> None:
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

    def _logs_failure(self, failure: Failure) -> bool:
        """Whether a failed upstream lookup deserves its warning (a mirror says no for its owner's absence)."""
        return True

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
        if not self._stopped and self._logs_failure(failure):
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
            self._or_stale(key, waiter, failure, now)
        self._check_idle()

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
            raw: float = min(record.ttl for record in answers)
            auth = _authoritative(answers)
        else:
            soa = next((record for record in authority if record.type == dns.SOA), None)
            if soa is None:
                # RFC 2308 says not to cache these at all; a short while
                # (max_negative_ttl) stops a flood of repeats just as well.
                raw = math.inf
            else:
                raw = min(soa.ttl, getattr(soa.payload, "minimum", soa.ttl))
            for record in answers:  # the CNAME chain that led here
                raw = min(raw, record.ttl)
            auth = _authoritative(answers) and _authoritative(authority)
        entry = _Entry(
            tuple(answers), tuple(authority), tuple(additional), negative, now, raw, auth, flight.origin
        )
        entries = self._entries
        old = entries.get(key)
        self._schedule(entry)
        if old is not None:
            entry.hits = old.hits
            if old.generation != self._generation:
                self._schedule(old)
            if now < old.expires and raw < old.raw_ttl and entry.expires < old.expires + 1.0:
                # A refresh that expires no later than what it refreshed
                # (give or take the rounding to whole seconds): the
                # upstream handed back its own, decayed, copy.  Keep the
                # old expiry, and refresh only after it, from now on.
                entry.decays = True
            elif old.decays:
                entry.decays = True
            if entry.decays:
                self._schedule(entry, planned=True)
                if old.expires > entry.expires:
                    entry.expires = old.expires
                    entry.refresh = max(entry.refresh, math.floor(old.expires) + 1.0)
        self._store(key, entry, waiters, now)

    def _store(self, key: Key, entry: _Entry, waiters: list[_Waiter], now: float) -> None:
        """
        Hold a new entry for C{key} (or drop the old one, if the new one is
        not worth keeping), tell the listeners, answer the waiters.
        """
        entries = self._entries
        self._backoff.pop(key, None)
        if self._keeps(entry):
            entries[key] = entry
            entries.move_to_end(key)
            while len(entries) > self._max_entries:
                entries.popitem(last=False)
                self.counters.evictions += 1
        else:
            # Good for the lookups that waited for it, and nothing more (an
            # older entry included).
            entries.pop(key, None)
        for listener in self.listeners:
            try:
                listener(key, entry)
            except Exception:
                log.failure("A DNS cache listener failed on {name}", name=key[0])
        for waiter in waiters:
            self._count(waiter)
            waiter.deferred.callback(self._answer(key, entry, waiter.state, now))
        self._check_idle()

    # ------------------------------------------------------------ the rest

    def peek(self, name: str | bytes, type: int, cls: int = dns.IN) -> CacheEntry:
        """
        What the cache holds for C{name} and C{type}, without counting a
        lookup, touching the LRU order or asking upstream.  Public API, for
        tests and tools.
        """
        key = (normalise(name), type, cls)
        now = self._clock.seconds()
        entry = self._entries.get(key)
        backoff = self._backoff.get(key)
        waits = max(0.0, backoff[0] - now) if backoff is not None else 0.0
        refreshing = key in self._flights
        if entry is not None and entry.generation != self._generation:
            self._schedule(entry)
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
            entry.origin.value,
        )

    def entries_status(self, limit: int) -> tuple[int, list[EntryStatus]]:
        """
        The number of entries, and at most C{limit} of them, most used
        (hits) first, for a status page.  Counts and reorders nothing.
        """
        now = self._clock.seconds()
        top = heapq.nlargest(max(0, limit), self._entries.items(), key=lambda item: item[1].hits)
        statuses = []
        for key, entry in top:
            if entry.generation != self._generation:
                self._schedule(entry)
            left = entry.expires - now
            if key in self._flights:
                state = "refreshing"
            elif left <= 0:
                state = "stale"
            elif entry.negative is not None:
                state = "negative"
            else:
                state = "fresh"
            statuses.append(
                EntryStatus(key[0], dns.QUERY_TYPES.get(key[1], str(key[1])), state, left, entry.hits, entry.origin.value)
            )
        return len(self._entries), statuses

    def saved_entries(self) -> Iterator[SavedEntry]:
        """The entries still servable (stale ones too), most recently used first."""
        now = self._clock.seconds()
        for key, entry in reversed(self._entries.items()):
            if entry.generation != self._generation:
                self._schedule(entry)
            if now >= entry.expires + self._max_stale:
                continue
            yield SavedEntry(
                key[0],
                key[1],
                key[2],
                entry.records,
                entry.authority,
                entry.additional,
                entry.negative,
                entry.raw_ttl,
                entry.fetched,
                entry.auth,
                entry.hits,
            )

    def restore(self, saved: Iterable[SavedEntry]) -> int:
        """
        Add entries (most recently used first, as L{saved_entries} gives
        them) that the cache does not hold, up to C{max_entries}; those past
        C{max_stale} are skipped.  Each is served at once, stale if it
        expired, and refreshed in the background on its first use after
        its refresh point (or expiry).

        @return: how many were added.
        """
        now = self._clock.seconds()
        added: list[tuple[Key, _Entry]] = []
        room = self._max_entries - len(self._entries)
        for item in saved:
            if len(added) >= room:
                break
            key = (item.name, item.type, item.cls)
            if key in self._entries or item.fetched > now + 1:
                # Kept, or saved by a clock ahead of ours: an answer from
                # the future could be served as fresh for far too long.
                continue
            entry = _Entry(
                item.records,
                item.authority,
                item.additional,
                item.negative,
                item.fetched,
                item.raw_ttl,
                item.auth,
                Origin.FILE,
            )
            entry.hits = item.hits
            # Served stale at once after a restart, never waiting.
            self._schedule(entry, planned=not item.auth)
            entry.planned = True
            if not (entry.expires > entry.fetched or self._keeps(entry)):
                continue
            if now >= entry.expires + self._max_stale:
                continue
            added.append((key, entry))
        # Least recently used first into the LRU order.
        for key, entry in reversed(added):
            self._entries[key] = entry
            self._entries.move_to_end(key, last=False)
        return len(added)

    def prefetch(self, names: Iterable[str], types: Iterable[int] = (dns.A, dns.AAAA)) -> defer.Deferred[None]:
        """
        Look C{names} up (IP literals skipped), so that their first
        connections hit the cache.  Failures are logged, not raised.

        @return: fires when every lookup is done.
        """
        types = tuple(types)
        lookups = []
        self._origin = Origin.PREFETCH
        try:
            for name in dict.fromkeys(names):
                try:
                    ipaddress.ip_address(name)
                    continue
                except ValueError:
                    pass
                for type in types:
                    d = self.query(name, type)
                    d.addErrback(self._prefetch_failed, name, type)
                    lookups.append(d)
        finally:
            self._origin = Origin.UPSTREAM
        return defer.gatherResults(lookups).addCallback(lambda _: None)

    def _prefetch_failed(self, failure: Failure, name: str, type: int) -> None:
        log.warn(
            "Prefetching {name} {type} failed: {reason}",
            name=name,
            type=dns.QUERY_TYPES.get(type, type),
            reason=describe_error(failure.value),
        )

    def refreshed(self, name: str | bytes, type: int, cls: int = dns.IN) -> defer.Deferred[Answer] | None:
        """
        The result of the upstream query in flight for C{name} and C{type}
        (a refresh, or a miss's query), without counting a lookup; C{None}
        when none is in flight.  It fails as the query does (transient
        failures only).
        """
        flight = self._flights.get((normalise(name), type, cls))
        if flight is None:
            return None
        return self._join((normalise(name), type, cls), flight, MERGED, None)

    def when_idle(self) -> defer.Deferred[None]:
        """Fires when no upstream query is in flight (at once if none is)."""
        if not self._flights:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _check_idle(self) -> None:
        if not self._flights and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the upstream (its C{stop}, if it has one, and those of
        upstreams replaced earlier), then answer every lookup still
        waiting: stale if it has a stale entry, else with
        L{defer.CancelledError}.  No timer is left behind.  The entries
        stay.

        @return: fires when the upstreams have stopped.
        """
        self._stopped = True
        self._retired.append(self.upstream)
        stopped = self._stop_retired()
        now = self._clock.seconds()
        for key, flight in list(self._flights.items()):
            for waiter in self._landed(key, flight):
                self._or_stale(key, waiter, Failure(defer.CancelledError("DNS cache stopped")), now)
        self._check_idle()
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
