"""
TXT route records: custom domains that point at a registered app.

For a server name C{shop.example.com} the record is looked up at
C{_dstack-app-address.shop.example.com.}; its value is C{<app-id>:<port>}.
Only when that owner has I{no record} (NXDOMAIN, NODATA, or an answer with
no TXT record in it) is the legacy owner C{_tapp-address.shop.example.com.}
asked, and only when that has none either the wildcard owner
C{_dstack-app-address-wildcard.example.com.} (the name minus its first
label).  One lookup after the other, each cached on its own by the DNS
layer.  A failed lookup (timeout, SERVFAIL, REFUSED) stops here: it never
falls through to the next owner nor to the next source.

Values:
  - a record's character-strings are concatenated;
  - C{<app-id>} is a DNS label (case-insensitive) and must name an app of
    the registry: nothing else can be routed to, so C{localhost:22} (no
    such app) and C{127.0.0.1:22} (not a label) are refused;
  - the port is 1-65535, decimal digits only.

Several TXT records at one owner: each is parsed, and of those naming a
registered app the smallest C{(app id, port)} wins, whatever order the
server sent them in.  When they disagree (or some are unusable) a warning
naming the server name is logged once per distinct record set, not per
connection.  If none is usable, the problem with the smallest value is the
routing failure.  A bad record is a decision, not "no record": the legacy
and wildcard owners are not asked.

L{Route.cache} is the cache state of the answer that decided (the legacy
answer's for a legacy route); L{Route.trace} has one entry per lookup made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from sniproxy.apps import AppRegistry
from sniproxy.config import TXTConfig
from sniproxy.deferreds import PENDING, _Pending, peek
from sniproxy.dns.cache import describe_error
from sniproxy.hostnames import show
from sniproxy.interfaces import IResolver, Route, RouteRefused, RoutingError

__all__ = ["TXTResolver", "parse_value"]

log = Logger()

_APP_ID = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")

# Decisions are remembered per (owner, record set), so a warm hit costs a
# dict lookup instead of a parse; this many at most, oldest dropped first.
_MAX_DECISIONS = 4096


class BadValue(ValueError):
    """A TXT value that is not C{<app-id>:<port>}."""


class NotAnAppId(BadValue):
    """A TXT value whose app id is not a DNS label: a host, an IP address..."""


def parse_value(value: bytes) -> tuple[str, int]:
    """
    Parse a TXT route value.

    @return: C{(app_id, port)}, the id lower-cased.
    @raise BadValue: saying what is wrong.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise BadValue("not ASCII") from None
    app_id, colon, port = text.partition(":")
    if not colon:
        raise BadValue("no ':' before a port")
    app_id = app_id.lower()
    if not _APP_ID.match(app_id):
        raise NotAnAppId(f"{show(app_id.encode())} is not an app id (a DNS label)")
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise BadValue(f"port {show(port.encode())} is not a number in 1-65535")
    return app_id, int(port)


@dataclass(frozen=True, slots=True)
class _Decision:
    """What one record set at one owner means; C{error} when it is unusable."""

    app: str = ""
    port: int = 0
    detail: str = ""
    error: str = ""
    refused: bool = False


def _trace(owner: str, answer) -> str:
    negative = f" {answer.negative}" if answer.negative else ""
    return f"{owner} TXT {answer.state}{negative} ttl={int(answer.ttl)}"


@implementer(IResolver)
class TXTResolver:
    """
    Routes names by their TXT route records (module docstring), through
    the process's caching DNS resolver.
    """

    name = "txt"

    def __init__(self, config: TXTConfig, dns_resolver, apps: AppRegistry) -> None:
        """
        @param dns_resolver: the caching resolver
            (L{sniproxy.dns.cache.CachingResolver}, or anything with its
            C{query} method).
        """
        self.dns = dns_resolver
        self.apps = apps
        self.prefix = config.prefix + "."
        self.legacy_prefix = config.legacy_prefix + "." if config.legacy_prefix else ""
        self.wildcard_prefix = config.wildcard_prefix + "." if config.wildcard_prefix else ""
        self._decisions: dict[tuple[str, tuple[bytes, ...]], _Decision] = {}
        self._answer_now = getattr(dns_resolver, "answer_now", None)

    def owners(self, server_name: str) -> list[str]:
        """The owner names asked for C{server_name}, in order."""
        owners = [self.prefix + server_name + "."]
        if self.legacy_prefix:
            owners.append(self.legacy_prefix + server_name + ".")
        if self.wildcard_prefix and "." in server_name:
            owners.append(self.wildcard_prefix + server_name.partition(".")[2] + ".")
        return owners

    def resolve_now(self, server_name: str) -> Route | None | _Pending:
        """
        The answer without a L{Deferred} when every record it needs is a
        fresh cache entry (L{CachingResolver.answer_now}) and the app's
        addresses are known; L{PENDING} otherwise (a miss, a stale entry,
        a broken or refused record: L{resolve} answers those, and says
        why).
        """
        answer_now = self._answer_now
        if answer_now is None:
            return PENDING
        trace: list[str] = []
        for owner in self.owners(server_name):
            if len(owner) > 254:
                return PENDING
            answer = answer_now(owner, dns.TXT)
            if answer is PENDING:
                return PENDING
            trace.append(_trace(owner, answer))
            decision = self._decide(server_name, owner, answer)
            if decision is not None:
                if decision.error:
                    return PENDING
                backends = peek(self.apps.backends(decision.app, decision.port))
                if type(backends) is not tuple:
                    return PENDING
                return self._route(decision, answer, tuple(trace), backends)
        return None

    def resolve(self, server_name: str) -> Deferred[Route | None]:
        owners = self.owners(server_name)
        trace: list[str] = []
        # The common case, warm cache entries: walk the owners without a
        # coroutine while their answers are already there.
        for index, owner in enumerate(owners):
            if len(owner) > 254:
                break
            d = self.dns.query(owner, dns.TXT)
            answer = peek(d)
            if answer is PENDING or isinstance(answer, Failure):
                return Deferred.fromCoroutine(self._resolve(server_name, owners[index:], d, trace))
            trace.append(_trace(owner, answer))
            decision = self._decide(server_name, owner, answer)
            if decision is not None:
                return self._answer(decision, answer, tuple(trace))
        else:
            return succeed(None)
        return Deferred.fromCoroutine(self._resolve(server_name, owners[index:], None, trace))

    async def _resolve(self, server_name: str, owners: list[str], first: Deferred | None, trace: list[str]) -> Route | None:
        d = first
        for owner in owners:
            answer = await self._lookup(owner, d, trace)
            d = None
            decision = self._decide(server_name, owner, answer)
            if decision is not None:
                return await self._answer(decision, answer, tuple(trace))
        return None

    async def _lookup(self, owner: str, d: Deferred | None, trace: list[str]):
        if d is None:
            if len(owner) > 254:
                # Longer than a DNS name can be: no such record, no query.
                trace.append(f"{owner} TXT skipped: name too long")
                return None
            d = self.dns.query(owner, dns.TXT)
        try:
            answer = await d
        except CancelledError:
            raise
        except Exception as error:
            raise RoutingError(f"TXT {owner[:-1]} lookup failed: {describe_error(error)}") from None
        trace.append(_trace(owner, answer))
        return answer

    def _answer(self, decision: _Decision, answer, trace: tuple[str, ...]) -> Deferred[Route]:
        if decision.error:
            return fail((RouteRefused if decision.refused else RoutingError)(decision.error))
        backends = self.apps.backends(decision.app, decision.port)
        resolved = peek(backends)
        if type(resolved) is tuple:
            return succeed(self._route(decision, answer, trace, resolved))
        return backends.addCallback(lambda resolved: self._route(decision, answer, trace, resolved))

    def _route(self, decision: _Decision, answer, trace: tuple[str, ...], backends) -> Route:
        return Route(
            backends=backends,
            source=self.name,
            app=decision.app,
            proxy_protocol=self.apps.proxy_protocol(decision.app),
            cache=answer.state,
            detail=decision.detail,
            trace=trace,
        )

    def _decide(self, server_name: str, owner: str, answer) -> _Decision | None:
        """What the TXT records of C{answer} say, or C{None} for no record."""
        if answer is None:
            return None
        values = tuple(b"".join(r.payload.data) for r in answer.records if r.type == dns.TXT)
        if not values:
            return None
        # Servers may rotate a record set's order: one key per set.
        key = (owner, values if len(values) == 1 else tuple(sorted(set(values))))
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide_values(server_name, owner, values)
            if len(self._decisions) >= _MAX_DECISIONS:
                del self._decisions[next(iter(self._decisions))]
            self._decisions[key] = decision
        return decision

    def _decide_values(self, server_name: str, owner: str, values: tuple[bytes, ...]) -> _Decision:
        record = owner[:-1]
        usable: list[tuple[tuple[str, int], bytes]] = []
        problems: list[_Decision] = []
        distinct = sorted(set(values))
        for value in distinct:
            where = f"TXT {record} = {show(value)}"
            try:
                app, port = parse_value(value)
            except BadValue as error:
                refused = isinstance(error, NotAnAppId)
                problems.append(_Decision(error=f"{where}: not <app-id>:<port>: {error}", refused=refused))
                continue
            if app not in self.apps:
                problems.append(
                    _Decision(error=f"{where}: app {app!r} is not registered (only [apps] ids can be routed to)", refused=True)
                )
                continue
            usable.append(((app, port), value))
        if not usable:
            return problems[0]
        (app, port), value = min(usable)
        if problems or len({parsed for parsed, _ in usable}) > 1:
            log.warn(
                "{sni}: {count} different TXT records at {owner}: {values}; using {chosen}",
                sni=server_name,
                count=len(distinct),
                owner=record,
                values=", ".join(show(v) for v in distinct),
                chosen=show(value),
            )
        return _Decision(app=app, port=port, detail=f"TXT {record} = {show(value)}")
