"""
One DNS cache for every worker process: the main process's cache is the
only one that talks to DNS; each worker keeps a mirror of it that answers
hits without any IPC.

L{DNSOwner} serves the main process's L{CachingResolver} (the one
L{sniproxy.dns.build_dns} made, with its L{DNSService}: cache file,
prefetch, reloads, all unchanged) to the workers, over AMP on a UNIX
socket.  L{DNSMirror} is what a worker uses instead of a
L{CachingResolver}: it is one (the same lookup, stale, negative, LRU and
merging rules, the same L{Answer}s, counters and status), whose upstream is
the owner.

The protocol (all times are I{seconds from now}, so the processes' clocks
never need to agree):

  - C{Lookup(name, type, cls, refresh, have)}, mirror to owner: the
    owner looks the name up in its cache (a miss there asks DNS, merged
    with every other lookup of that key in flight, from any worker) and
    answers with its entry.  A mirror sends C{refresh} when it holds an
    entry for the key (one due for a refresh ahead, or a stale one) and
    C{have}, the owner's stamp of that entry: if the owner's lookup
    started (or found) a refresh, the answer waits for it; if the owner
    holds that same entry and nothing is in flight (it is backing off after
    a failure), the lookup fails with L{NotRefreshed}, so the mirror backs
    off too instead of asking on every hit.
  - C{Learned(entry)}, owner to every mirror, unanswered: sent whenever the
    owner's cache stores an upstream answer (a first answer, a refresh, a
    negative answer), so a name one worker learnt is warm in all, and every
    refresh reaches every worker.  The mirror stores it as it is (its
    expiry and refresh point included): mirror entries live and refresh
    exactly when the owner's do.
  - C{Prefetch(names, types)}, mirror to owner: the owner prefetches; the
    answers come back as C{Learned} pushes.
  - C{Sync()}, mirror to owner: answered at once; once it is, every push
    the owner sent before has arrived (for tests and tools).

An entry travels as its answer, authority and additional sections in DNS
wire format (the TTLs as they arrived) and its times: its age, seconds to
expiry and to its refresh point, whether that refresh is planned (at or
after expiry) rather than ahead, the unclamped TTL, the AA bit, whether its
upstream decays TTLs, its origin, and the owner's stamp.  A push or answer
that does not parse or is out of range is ignored with one log line.

So upstream queries do not grow with the number of workers: only the
owner asks DNS, and a mirror asks the owner only on its own miss or at an
entry's refresh point, where the owner's own lookup would have asked
anyway.

When the owner goes away a mirror keeps its entries and serves them under
the serve-stale rules; its misses (and refreshes) fail at once with
L{OwnerUnavailable}, then back off like any other DNS failure
(C{failure_backoff}); it reconnects after 0.1 s, doubling up to 5 s, and
forgets those back-offs when it is connected again.
"""

from __future__ import annotations

import math
import os
import stat
from typing import Any, Iterable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSQueryRefusedError, DNSQueryTimeoutError, DNSServerError
from twisted.protocols import amp
from twisted.python.failure import Failure

from sniproxy.config import DNSConfig
from sniproxy.dns import cache_settings
from sniproxy.dns.cache import (
    NODATA,
    NXDOMAIN,
    Answer,
    CachingResolver,
    Key,
    Origin,
    _Entry,
    describe_error,
    normalise,
)

__all__ = [
    "DNSMirror",
    "DNSOwner",
    "NotRefreshed",
    "OwnerError",
    "OwnerUnavailable",
]

log = Logger()

#: Reconnection back-off of a mirror: first delay, factor, most.
RECONNECT_INITIAL = 0.1
RECONNECT_FACTOR = 2.0
RECONNECT_MAX = 5.0

#: Names per Prefetch command (AMP values are at most 65,535 bytes).
PREFETCH_BATCH = 200

#: Entries a new mirror is sent per turn of the owner's reactor.
WARM_BATCH = 100


class OwnerError(Exception):
    """The DNS owner could not answer a lookup; C{str()} says why."""


class OwnerUnavailable(OwnerError):
    """A worker's mirror has no connection to the DNS owner."""


class NotRefreshed(OwnerError):
    """The owner holds the same entry and is not refreshing it (it backs off)."""


class BadEntry(ValueError):
    """A pushed or answered entry that does not parse or is out of range."""


_ENTRY = [
    (b"name", amp.Unicode()),
    (b"type", amp.Integer()),
    (b"cls", amp.Integer()),
    (b"message", amp.String()),
    (b"negative", amp.Unicode()),
    (b"age", amp.Float()),
    (b"expires_in", amp.Float()),
    (b"refresh_in", amp.Float()),
    (b"planned", amp.Boolean()),
    (b"raw_ttl", amp.Float()),
    (b"auth", amp.Boolean()),
    (b"decays", amp.Boolean()),
    (b"origin", amp.Unicode()),
    (b"stamp", amp.Float()),
]

_ERRORS = {
    DNSQueryTimeoutError: b"TIMEOUT",
    DNSServerError: b"SERVFAIL",
    DNSQueryRefusedError: b"REFUSED",
    NotRefreshed: b"NOT_REFRESHED",
    OwnerError: b"OWNER_ERROR",
}


class Lookup(amp.Command):
    """Mirror to owner: the owner's entry for a key (waiting for its refresh when C{refresh})."""

    arguments = [
        (b"name", amp.Unicode()),
        (b"type", amp.Integer()),
        (b"cls", amp.Integer()),
        (b"refresh", amp.Boolean()),
        (b"have", amp.Float()),
    ]
    response = _ENTRY
    errors = _ERRORS


class Learned(amp.Command):
    """Owner to mirror, unanswered: an entry the owner's cache just stored."""

    arguments = _ENTRY
    requiresAnswer = False


class Prefetch(amp.Command):
    """Mirror to owner: prefetch these names (answered when the owner's lookups are done)."""

    arguments = [(b"names", amp.ListOf(amp.Unicode())), (b"types", amp.ListOf(amp.Integer()))]
    response: list[Any] = []


class Warm(amp.Command):
    """Mirror to owner: push me your C{limit} most recently used entries."""

    arguments = [(b"limit", amp.Integer())]
    response: list[Any] = []


class Sync(amp.Command):
    """Mirror to owner, answered at once: a barrier behind every earlier push."""

    arguments: list[Any] = []
    response: list[Any] = []


# -- entries on the wire ------------------------------------------------------


def _message(records: Iterable[dns.RRHeader], authority: Iterable[dns.RRHeader], additional: Iterable[dns.RRHeader], auth: bool) -> bytes:
    message = dns.Message(answer=1, auth=int(auth))
    message.answers = list(records)
    message.authority = list(authority)
    message.additional = list(additional)
    return message.toStr()


def encode_entry(key: Key, entry: _Entry, now: float) -> dict[str, Any]:
    """The AMP arguments for one of the owner's entries, at C{now}."""
    return {
        "name": key[0],
        "type": key[1],
        "cls": key[2],
        "message": _message(entry.records, entry.authority, entry.additional, entry.auth),
        "negative": entry.negative or "",
        "age": float(max(0.0, now - entry.fetched)),
        "expires_in": float(entry.expires - now),
        "refresh_in": float(entry.refresh - now),
        "planned": bool(entry.planned),
        "raw_ttl": float(entry.raw_ttl),
        "auth": bool(entry.auth),
        "decays": bool(entry.decays),
        "origin": entry.origin.value,
        "stamp": float(entry.fetched),
    }


def _encode_answer(key: Key, answer: Answer) -> dict[str, Any]:
    """An answer the owner did not keep (TTL 0), for the lookup that asked."""
    return {
        "name": key[0],
        "type": key[1],
        "cls": key[2],
        "message": _message(answer.records, answer.authority, answer.additional, False),
        "negative": answer.negative or "",
        "age": 0.0,
        "expires_in": float(answer.ttl),
        "refresh_in": 0.0,
        "planned": False,
        "raw_ttl": float(answer.ttl),
        "auth": False,
        "decays": False,
        "origin": Origin.UPSTREAM.value,
        "stamp": -1.0,
    }


class _MirrorEntry(_Entry):
    """A mirror's entry: the cache's own, plus the owner's stamp of it."""

    __slots__ = ("stamp",)


def _check_name(name: str) -> str:
    if not name or len(name) > 253 or name != normalise(name):
        raise BadEntry(f"bad name {name!r}")
    for label in name.split("."):
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_*" for c in label):
            raise BadEntry(f"bad name {name!r}")
    return name


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise BadEntry(f"{what} is {value!r}")
    return value


def decode_entry(args: dict[str, Any], now: float, limits: tuple[float, float]) -> tuple[Key, _MirrorEntry]:
    """
    A mirror's entry from AMP arguments received at C{now} (the mirror's
    clock).

    @param limits: the longest positive and negative lifetimes the mirror
        accepts (its C{max_ttl} and C{max_negative_ttl}); longer expiries
        are cut to them.
    @raise BadEntry: for anything that does not parse or is out of range.
    """
    try:
        name = _check_name(args["name"])
        type, cls = args["type"], args["cls"]
        if not (0 < type < 65536 and 0 < cls < 65536):
            raise BadEntry(f"bad type or class {type}/{cls}")
        negative = args["negative"] or None
        if negative not in (None, NXDOMAIN, NODATA):
            raise BadEntry(f"bad negative {negative!r}")
        age = _finite(args["age"], "age")
        expires_in = _finite(args["expires_in"], "expires_in")
        refresh_in = args["refresh_in"]
        raw_ttl = args["raw_ttl"]
        if age < 0 or math.isnan(refresh_in) or math.isnan(raw_ttl) or raw_ttl < 0:
            raise BadEntry("times out of range")
        origin = Origin(args["origin"])
        stamp, planned, auth, decays = args["stamp"], bool(args["planned"]), bool(args["auth"]), bool(args["decays"])
        message = dns.Message()
        try:
            message.fromStr(args["message"])
        except Exception as error:
            raise BadEntry(f"bad DNS message ({describe_error(error)})") from None
        if negative is None and not any(r.type == type or type == dns.ALL_RECORDS for r in message.answers):
            raise BadEntry("a positive entry without a record of its type")
    except (KeyError, TypeError) as error:
        raise BadEntry(f"missing or bad argument {error}") from None
    except ValueError as error:
        raise BadEntry(str(error)) from None
    # A hostile or confused owner cannot make an entry outlive the clamps.
    expires_in = min(expires_in, (limits[0] if negative is None else limits[1]) + 2.0)
    entry = _MirrorEntry(
        tuple(message.answers),
        tuple(message.authority),
        tuple(message.additional),
        negative,
        now - age,
        raw_ttl,
        auth,
        origin,
    )
    entry.stamp = stamp
    entry.expires = now + expires_in
    entry.refresh = max(entry.expires, now + refresh_in) if planned else now + refresh_in
    entry.planned = planned
    entry.decays = decays
    return (name, type, cls), entry


# -- the owner ----------------------------------------------------------------


class _OwnerProtocol(amp.AMP):
    """The owner's end of one mirror's connection."""

    def __init__(self, owner: DNSOwner) -> None:
        super().__init__()
        self.owner = owner

    def connectionMade(self) -> None:
        super().connectionMade()
        self.owner.mirrors.add(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.owner._gone(self)

    @Lookup.responder
    def lookup(self, name: str, type: int, cls: int, refresh: bool, have: float) -> defer.Deferred[dict[str, Any]]:
        return self.owner._lookup(name, type, cls, refresh, have)

    @Prefetch.responder
    def prefetch(self, names: list[str], types: list[int]) -> defer.Deferred[dict[str, Any]]:
        return self.owner._prefetch(names, types)

    @Sync.responder
    def sync(self) -> dict[str, Any]:
        return {}

    @Warm.responder
    def warm(self, limit: int) -> defer.Deferred[dict[str, Any]]:
        return self.owner._warm(self, limit)


class DNSOwner:
    """
    Serves the main process's one cache to the workers' mirrors (module
    docstring).  It only adds a listener to the cache: the cache, its
    upstream, its cache file and its reloads stay the L{DNSService}'s.

    @ivar resolver: the cache served.
    @ivar mirrors: the connected mirrors' protocols.
    @ivar lookups: C{Lookup}s answered or failed so far (every worker miss
        and refresh that reached the owner).
    @ivar pushes: entries pushed, counted once per mirror.
    """

    def __init__(self, resolver: CachingResolver, reactor: Any) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.mirrors: set[_OwnerProtocol] = set()
        self.lookups = 0
        self.pushes = 0
        self._port: IListeningPort | None = None
        self._closing: list[defer.Deferred[None]] = []

    def listen(self, path: str, mode: int = 0o600) -> defer.Deferred[IListeningPort]:
        """
        Listen on the UNIX socket C{path} (a stale socket left there by a
        crash is removed first; any other file there is an error), with
        permissions C{mode}, and start pushing the cache's answers.

        @return: fires with the listening port (asynchronously, as
            endpoints do), or fails with L{CannotListenError}.
        """
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        endpoint = UNIXServerEndpoint(self.reactor, path, mode=mode)
        factory = Factory.forProtocol(lambda: _OwnerProtocol(self))
        factory.noisy = False
        d = endpoint.listen(factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            if self._push not in self.resolver.listeners:
                self.resolver.listeners.append(self._push)
            return port

        return d.addCallback(listening)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening (the socket file goes), stop pushing, close every
        mirror's connection.  The cache is untouched.

        @return: fires when the port and every connection are closed.
        """
        if self._push in self.resolver.listeners:
            self.resolver.listeners.remove(self._push)
        waits = []
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        for mirror in list(self.mirrors):
            d: defer.Deferred[None] = defer.Deferred()
            self._closing.append(d)
            waits.append(d)
            mirror.transport.loseConnection()
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def _gone(self, mirror: _OwnerProtocol) -> None:
        self.mirrors.discard(mirror)
        if self._closing:
            self._closing.pop().callback(None)

    def _push(self, key: Key, entry: _Entry) -> None:
        """The cache stored an answer: tell every mirror."""
        if not self.mirrors:
            return
        args = encode_entry(key, entry, self.resolver.clock.seconds())
        for mirror in list(self.mirrors):
            try:
                mirror.callRemote(Learned, **args)
                self.pushes += 1
            except Exception as error:
                # An answer too big for one AMP value (64 KiB): the mirrors
                # ask for it when they need it.
                log.warn("Cannot push {name} to a DNS mirror: {reason}", name=key[0], reason=describe_error(error))

    def _lookup(self, name: str, type: int, cls: int, refresh: bool, have: float) -> defer.Deferred[dict[str, Any]]:
        self.lookups += 1
        if not (0 < type < 65536 and 0 < cls < 65536):
            return defer.fail(OwnerError(f"bad type or class {type}/{cls}"))
        try:
            key = (normalise(name), type, cls)
        except ValueError as error:
            return defer.fail(OwnerError(f"bad name: {error}"))
        d = self.resolver.query(key[0], type, cls)
        d.addCallback(self._answered, key, refresh, have)
        d.addErrback(self._failed)
        return d

    def _answered(self, answer: Answer, key: Key, refresh: bool, have: float) -> Any:
        entry = self.resolver._entries.get(key)
        if refresh and entry is not None and entry.fetched == have:
            # The mirror has this very entry: it wants the next one.
            waiting = self.resolver.refreshed(*key)
            if waiting is None:
                raise NotRefreshed("the owner is not refreshing it")
            return waiting.addCallback(self._answered, key, False, have)
        if entry is None:
            return _encode_answer(key, answer)
        return encode_entry(key, entry, self.resolver.clock.seconds())

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(*_ERRORS):
            return failure
        return Failure(OwnerError(describe_error(failure.value)))

    def _warm(self, mirror: _OwnerProtocol, limit: int) -> defer.Deferred[dict[str, Any]]:
        """
        Push the C{limit} most recently used servable entries to a mirror
        that just connected, least recently used first (so its LRU order is
        the owner's), C{WARM_BATCH} at a time between other work.
        """
        resolver = self.resolver
        keys = list(resolver._entries)[-limit:] if limit > 0 else []

        def pushes() -> Any:
            for start in range(0, len(keys), WARM_BATCH):
                if mirror not in self.mirrors:
                    return
                now = resolver.clock.seconds()
                for key in keys[start : start + WARM_BATCH]:
                    entry = resolver._entries.get(key)
                    if entry is None:
                        continue
                    if entry.generation != resolver._generation:
                        resolver._schedule(entry)
                    if now >= entry.expires + resolver._max_stale:
                        continue
                    try:
                        mirror.callRemote(Learned, **encode_entry(key, entry, now))
                        self.pushes += 1
                    except Exception as error:
                        log.warn("Cannot push {name} to a DNS mirror: {reason}", name=key[0], reason=describe_error(error))
                yield None

        return task.cooperate(pushes()).whenDone().addCallback(lambda _: {})

    def _prefetch(self, names: list[str], types: list[int]) -> defer.Deferred[dict[str, Any]]:
        if not all(0 < t < 65536 for t in types):
            return defer.fail(OwnerError("bad type"))
        return self.resolver.prefetch(names, types).addCallback(lambda _: {})


# -- the mirror ---------------------------------------------------------------


class _MirrorProtocol(amp.AMP):
    """A mirror's connection to the owner."""

    def __init__(self, mirror: DNSMirror) -> None:
        super().__init__()
        self.mirror = mirror

    def connectionMade(self) -> None:
        super().connectionMade()
        self.mirror._connected(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.mirror._disconnected(self)

    @Learned.responder
    def learned(self, **args: Any) -> dict[str, Any]:
        self.mirror._learned(args)
        return {}

    def locateResponder(self, name: bytes) -> Any:
        # A push AMP itself cannot parse (a missing or mistyped argument)
        # would drop the connection: log it and carry on instead.
        responder = super().locateResponder(name)
        if name != Learned.commandName or responder is None:
            return responder

        def lenient(box: amp.AmpBox) -> defer.Deferred[Any]:
            return defer.maybeDeferred(responder, box).addErrback(self._unparsable)

        return lenient

    def _unparsable(self, failure: Failure) -> dict[str, Any]:
        log.warn(
            "Ignoring a malformed DNS entry pushed by the owner: {reason}", reason=describe_error(failure.value)
        )
        return {}


class _OwnerLink:
    """A mirror's upstream: its lookups go to the owner."""

    def __init__(self, mirror: DNSMirror) -> None:
        self.mirror = mirror

    def query(self, query: dns.Query) -> defer.Deferred[Any]:
        return self.mirror._ask(query)


class DNSMirror(CachingResolver):
    """
    A worker's copy of the owner's cache (module docstring): a
    L{CachingResolver} whose upstream is the owner, so hits are answered
    from the worker's own entries (an already-fired L{Deferred}, no IPC)
    under the very same rules, and whose entries the owner's pushes keep
    up to date.

    Its C{counters} are the worker's own view: C{upstream_queries} and
    C{upstream_failures} count lookups asked of the owner (only the owner
    talks to DNS).  The owner applies C{[dns]} reloads (servers, timeouts);
    a mirror needs only L{reconfigure}, for its clamps, stale serving and
    size.

    @ivar path: the owner's UNIX socket.
    @ivar connected: whether the mirror is connected to the owner now.
    @ivar warmed: fires (never fails) once the owner has sent its entries
        after the latest connection: each connection starts with the
        owner's most recently used C{max_entries} entries, so a worker
        (re)started late is as warm as the others.
    """

    def __init__(self, path: str, config: DNSConfig, reactor: Any, clock: IReactorTime | None = None) -> None:
        """
        @param reactor: the network, and the reconnection timer.
        @param clock: the cache's time; C{reactor} by default.
        """
        super().__init__(_OwnerLink(self), reactor if clock is None else clock, **cache_settings(config))
        self.path = path
        self._reactor = reactor
        self._timeout = config.deadline + 1.0
        self._protocol: _MirrorProtocol | None = None
        self.warmed: defer.Deferred[None] = defer.Deferred()
        factory = Factory.forProtocol(lambda: _MirrorProtocol(self))
        factory.noisy = False
        self._service = ClientService(
            UNIXClientEndpoint(reactor, path),
            factory,
            retryPolicy=backoffPolicy(RECONNECT_INITIAL, RECONNECT_MAX, RECONNECT_FACTOR, jitter=lambda: 0.0),
            clock=reactor,
        )

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def start(self) -> None:
        """Connect to the owner (and reconnect, with back-off, whenever the connection goes)."""
        self._stopped = False
        if not self._service.running:
            self._service.startService()

    def when_connected(self) -> defer.Deferred[None]:
        """Fires once the mirror is connected to the owner (at once if it is)."""
        return self._service.whenConnected().addCallback(lambda _: None)

    def stop(self) -> defer.Deferred[None]:
        """
        Disconnect from the owner (no reconnecting), then answer every
        lookup still waiting (stale if it can be, else with
        L{defer.CancelledError}).  The entries stay.
        """
        stopping = self._service.stopService() if self._service.running else defer.succeed(None)
        stopped = super().stop()
        return defer.gatherResults([stopping, stopped]).addCallback(lambda _: None)

    def _logs_failure(self, failure: Failure) -> bool:
        # The owner's absence and its own back-off are said once, by the
        # connection and by the owner: not once per name per worker.
        if failure.check(OwnerUnavailable, NotRefreshed):
            log.debug("DNS owner: {reason}", reason=str(failure.value))
            return False
        return True

    def reconfigure(self, config: DNSConfig) -> None:
        """
        Apply a new C{[dns]} table's clamps, stale, refresh and size
        settings (as L{CachingResolver.configure}); its servers and
        timeouts are the owner's business, but for C{deadline}, which bounds
        how long a lookup waits for the owner.
        """
        self.configure(**cache_settings(config))
        self._timeout = config.deadline + 1.0

    def prefetch(self, names: Iterable[str], types: Iterable[int] = (dns.A, dns.AAAA)) -> defer.Deferred[None]:
        """
        Ask the owner to prefetch C{names}; its answers reach every mirror
        as pushes.  Without a connection to the owner this does nothing
        but a debug line: the owner prefetches the config's names itself,
        and a mirror that connects is sent the owner's entries.

        @return: fires when the owner's lookups are done (never fails).
        """
        names, types = list(dict.fromkeys(names)), list(types)
        if not names:
            return defer.succeed(None)
        protocol = self._protocol
        if protocol is None:
            log.debug("Not prefetching {count} DNS names: no connection to the DNS owner", count=len(names))
            return defer.succeed(None)
        batches = []
        for start in range(0, len(names), PREFETCH_BATCH):
            d = protocol.callRemote(Prefetch, names=names[start : start + PREFETCH_BATCH], types=types)
            batches.append(d.addErrback(self._prefetch_failed_remote))
        return defer.gatherResults(batches).addCallback(lambda _: None)

    def _prefetch_failed_remote(self, failure: Failure) -> None:
        log.warn("Prefetching through the DNS owner failed: {reason}", reason=describe_error(failure.value))

    def sync(self) -> defer.Deferred[None]:
        """
        A round trip to the owner: once it fires, every push the owner sent
        before it got this has arrived.  Fails with L{OwnerUnavailable}
        without a connection.
        """
        if self._protocol is None:
            return defer.fail(OwnerUnavailable("no connection to the DNS owner"))
        return self._protocol.callRemote(Sync).addCallback(lambda _: None)

    # -- the connection

    def _connected(self, protocol: _MirrorProtocol) -> None:
        self._protocol = protocol
        # Back-offs were earned while the owner was away.
        self._backoff.clear()
        log.info("Connected to the DNS owner at {path}", path=self.path)
        waiting = self.warmed
        self.warmed = protocol.callRemote(Warm, limit=self._max_entries).addCallbacks(
            lambda _: None, self._warm_failed
        )
        if not waiting.called:
            # Whoever waited before this connection is told too.
            self.warmed.addCallback(lambda _: waiting.callback(None))

    def _warm_failed(self, failure: Failure) -> None:
        if not self._stopped:
            log.warn("The DNS owner's entries did not all arrive: {reason}", reason=describe_error(failure.value))

    def _disconnected(self, protocol: _MirrorProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if not self._stopped:
                log.warn(
                    "Lost the DNS owner at {path}; serving cached DNS answers and reconnecting",
                    path=self.path,
                )

    def _ask(self, query: dns.Query) -> defer.Deferred[Any]:
        protocol = self._protocol
        if protocol is None:
            return defer.fail(OwnerUnavailable("no connection to the DNS owner"))
        key = (query.name.name.decode("ascii"), query.type, query.cls)
        held = self._entries.get(key)
        d = protocol.callRemote(
            Lookup,
            name=key[0],
            type=key[1],
            cls=key[2],
            refresh=held is not None,
            have=getattr(held, "stamp", -1.0),
        )
        d.addTimeout(self._timeout, self._clock)
        return d.addCallback(self._decoded)

    def _limits(self) -> tuple[float, float]:
        return (self._max_ttl, self._max_negative_ttl)

    def _decoded(self, args: dict[str, Any]) -> tuple[Key, _MirrorEntry]:
        try:
            return decode_entry(args, self._clock.seconds(), self._limits())
        except BadEntry as error:
            raise OwnerError(f"a malformed answer from the DNS owner: {error}") from None

    def _answered(self, result: Any, key: Key, flight: Any) -> None:  # type: ignore[override]
        """The owner answered a lookup: hold its entry, answer the waiters."""
        got, entry = result
        now = self._clock.seconds()
        waiters = self._landed(key, flight)
        if got != key:
            # The owner answered for another key: never file it under ours.
            for waiter in waiters:
                self._or_stale(key, waiter, Failure(OwnerError("the DNS owner answered another name")), now)
            self._check_idle()
            return
        self._hold(key, entry, waiters, now)

    def _hold(self, key: Key, entry: _MirrorEntry, waiters: list[Any], now: float) -> None:
        entry.generation = self._generation
        old = self._entries.get(key)
        if old is not None:
            entry.hits = old.hits
        self._store(key, entry, waiters, now)

    def _learned(self, args: dict[str, Any]) -> None:
        """A push from the owner: hold it (a malformed one is logged and ignored)."""
        try:
            key, entry = decode_entry(args, self._clock.seconds(), self._limits())
        except BadEntry as error:
            log.warn("Ignoring a malformed DNS entry pushed by the owner: {reason}", reason=str(error))
            return
        self._hold(key, entry, [], self._clock.seconds())
