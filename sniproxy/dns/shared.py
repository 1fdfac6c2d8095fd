"""
TEMPORARY STAND-IN for the dnsshare branch's shared DNS cache (issue 14).

It satisfies the contract in CONTRACTS2.md trivially, so the workers
branch can be tested on its own: L{DNSOwner} serves the main process's one
L{CachingResolver} over AMP on a UNIX socket, and L{DNSMirror} forwards
every query to it (no local cache, so every lookup costs one IPC round
trip; the owner's cache merges in-flight lookups and keeps what it
learnt).  The dnsshare helper's module replaces this one at merge.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.names import dns
from twisted.protocols import amp

from sniproxy.dns.cache import Answer, CacheState, CachingResolver, Counters

__all__ = ["DNSMirror", "DNSOwner"]


class _Query(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"type", amp.Integer()), (b"cls", amp.Integer())]
    response = [
        (b"message", amp.String()),
        (b"negative", amp.Unicode(optional=True)),
        (b"state", amp.Unicode()),
        (b"ttl", amp.Float()),
    ]
    errors = {Exception: b"LOOKUP_FAILED"}


class _Prefetch(amp.Command):
    arguments = [(b"names", amp.ListOf(amp.Unicode())), (b"types", amp.ListOf(amp.Integer()))]
    response: list = []
    requiresAnswer = False


def _encode(answer: Answer) -> bytes:
    message = dns.Message()
    message.answers = list(answer.records)
    message.authority = list(answer.authority)
    message.additional = list(answer.additional)
    return message.toStr()


def _decode(name: str, type: int, response: dict[str, Any]) -> Answer:
    message = dns.Message()
    message.fromStr(response["message"])
    return Answer(
        name=name,
        type=type,
        records=tuple(message.answers),
        authority=tuple(message.authority),
        additional=tuple(message.additional),
        negative=response.get("negative"),
        state=CacheState(response["state"]),
        ttl=response["ttl"],
    )


class _OwnerProtocol(amp.AMP):
    def __init__(self, resolver: CachingResolver) -> None:
        super().__init__()
        self.resolver = resolver

    @_Query.responder
    def query(self, name: str, type: int, cls: int):
        def answered(answer: Answer) -> dict[str, Any]:
            return {"message": _encode(answer), "negative": answer.negative, "state": answer.state.value, "ttl": answer.ttl}

        return self.resolver.query(name, type, cls).addCallback(answered)

    @_Prefetch.responder
    def prefetch(self, names: list[str], types: list[int]):
        self.resolver.prefetch(names, types)
        return {}


class DNSOwner:
    """Serves C{resolver} to the workers' mirrors (stand-in; see the module)."""

    def __init__(self, resolver: CachingResolver, reactor: Any) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.port: Any = None

    def listen(self, path: str) -> defer.Deferred:
        """Listen on the UNIX socket C{path}; fires with the listening port."""
        factory = Factory.forProtocol(lambda: _OwnerProtocol(self.resolver))
        factory.noisy = False

        def listening(port):
            self.port = port
            return port

        return UNIXServerEndpoint(self.reactor, path, mode=0o600).listen(factory).addCallback(listening)

    def stop(self) -> defer.Deferred:
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)


class DNSMirror:
    """
    What a worker resolves with (stand-in: every query goes to the owner).

    @ivar counters: a L{Counters} that stays at zero: the owner counts.
    """

    def __init__(self, path: str, config: Any, reactor: Any, clock: Any = None) -> None:
        self.path = path
        self.reactor = reactor
        self.counters = Counters({})  # type: ignore[arg-type]
        factory = Factory.forProtocol(amp.AMP)
        factory.noisy = False
        self._service = ClientService(UNIXClientEndpoint(reactor, path), factory, clock=clock or reactor)
        self._protocol: amp.AMP | None = None

    def start(self) -> None:
        self._service.startService()
        self._service.whenConnected().addCallback(self._connected)

    def _connected(self, protocol: amp.AMP) -> None:
        self._protocol = protocol

    def query(self, name: str | bytes, type: int, cls: int = dns.IN) -> defer.Deferred[Answer]:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        text = name.rstrip(".").lower()
        d = self._service.whenConnected(failAfterFailures=1)
        d.addCallback(lambda protocol: protocol.callRemote(_Query, name=text, type=type, cls=cls))
        return d.addCallback(lambda response: _decode(text, type, response))

    def prefetch(self, names: Iterable[str], types: Iterable[int] = (dns.A, dns.AAAA)) -> defer.Deferred[None]:
        names, types = list(names), list(types)
        if self._protocol is not None and names:
            self._protocol.callRemote(_Prefetch, names=names, types=types)
        return defer.succeed(None)

    def entries_status(self, limit: int) -> tuple[int, list]:
        return 0, []

    def stop(self) -> defer.Deferred:
        return self._service.stopService()
