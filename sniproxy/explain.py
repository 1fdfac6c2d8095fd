"""
How a name routes, explained: which source answered, the DNS records it
saw (with their TTLs and the cache's state), the backends chosen, or why
the name is refused.

From the command line, against a config file (with a cache of its own, so
every lookup shows what upstream DNS says now)::

    python -m sniproxy.explain shop.example.com --config /etc/sniproxy/sniproxy.toml [--json]

and from a running proxy, through its admin endpoint (with the live cache,
so you see what connections see)::

    curl 'http://127.0.0.1:9100/explain?name=shop.example.com'

Explaining resolves the name the way a connection would: a miss is looked
up upstream and cached.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.names import dns

from sniproxy.clienthello import InvalidServerName, normalise_server_name
from sniproxy.interfaces import Route, RoutingError, RouteRefused
from sniproxy.routing import Router

__all__ = ["explain", "main"]


def _record(record: dns.RRHeader) -> dict[str, Any]:
    payload = record.payload
    if record.type == dns.TXT:
        data = repr(b"".join(payload.data).decode("utf-8", "replace"))
    elif record.type == dns.A:
        data = payload.dottedQuad()
    elif record.type == dns.AAAA:
        data = socket.inet_ntop(socket.AF_INET6, payload.address)
    elif record.type == dns.SOA:
        data = f"{payload.mname} minimum={payload.minimum}"
    elif hasattr(payload, "name"):
        data = str(payload.name)
    else:
        data = repr(payload)
    return {"name": str(record.name), "type": dns.QUERY_TYPES.get(record.type, str(record.type)), "ttl": record.ttl, "data": data}


class _Recording:
    """
    The DNS layer as the sources see it, noting every answer they get (and
    every failure), in order.
    """

    def __init__(self, resolver) -> None:
        self.resolver = resolver
        self.seen: list[dict[str, Any]] = []

    def query(self, name, type, cls=dns.IN):
        d = self.resolver.query(name, type, cls)
        note: dict[str, Any] = {"query": str(name), "type": dns.QUERY_TYPES.get(type, str(type))}
        self.seen.append(note)

        def answered(answer):
            note.update(
                state=answer.state,
                negative=answer.negative,
                ttl=round(answer.ttl, 3),
                records=[_record(r) for r in answer.records],
            )
            peek = getattr(self.resolver, "peek", None)
            if peek is not None:
                # "file": the entry came from the cache file at start-up.
                note["origin"] = peek(name, type, cls).origin or None
            return answer

        def failed(failure):
            note.update(state="failed", error=_error(failure.value))
            return failure

        return d.addCallbacks(answered, failed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolver, name)


def _error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _route(route: Route) -> dict[str, Any]:
    return {
        "source": route.source,
        "app": route.app,
        "backends": [str(b) for b in route.backends],
        "proxy_protocol": route.proxy_protocol,
        "cache": route.cache or None,
        "detail": route.detail,
        "trace": list(route.trace),
    }


async def _explain(build: Callable[[Any], Router], dns_resolver, name: str, board=None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name}
    try:
        server_name = normalise_server_name(name.encode("utf-8", "surrogateescape"))
    except InvalidServerName as error:
        result.update(server_name=None, steps=[], dns=[], route=None)
        result["decision"] = f"refused: {error}; the client gets unrecognized_name"
        return result
    result["server_name"] = server_name
    recording = _Recording(dns_resolver)
    router = build(recording)
    steps: list[dict[str, Any]] = []
    result.update(steps=steps, dns=recording.seen, route=None)
    route: Route | None = None
    for source in getattr(router.source, "sources", (router.source,)):
        step: dict[str, Any] = {"source": source.name}
        steps.append(step)
        try:
            route = await source.resolve(server_name)
        except RouteRefused as error:
            step.update(answer="refused", reason=str(error))
            result["decision"] = f"refused by {source.name}: {error}; the client gets internal_error"
            return result
        except RoutingError as error:
            step.update(answer="failed", reason=str(error))
            result["decision"] = f"routing failed in {source.name}: {error}; the client gets internal_error"
            return result
        if route is not None:
            step.update(answer="route", detail=route.detail)
            break
        step["answer"] = "no route"
    if route is None and router.fallback is not None:
        route = router.fallback
    if route is None:
        result["decision"] = "no route: the client gets unrecognized_name"
        return result
    result["route"] = _route(route)
    if board is not None and route.app is not None:
        # Passive health of each instance (sniproxy.backends).
        result["route"]["instances"] = board.describe(route)
    who = f"app {route.app} " if route.app else ""
    result["decision"] = f"{who}via {route.source}: connect to {', '.join(str(b) for b in route.backends)}"
    return result


def explain(build: Callable[[Any], Router], dns_resolver, name: str, board=None) -> Deferred[dict[str, Any]]:
    """
    Explain how C{name} routes.

    @param build: makes a L{Router} from the config being explained, given
        the DNS resolver its sources must use (a recording wrapper around
        C{dns_resolver}).
    @return: a L{Deferred} firing with a JSON-ready dict: C{server_name}
        (normalised, or C{None} if invalid), C{steps} (each source asked,
        and its answer), C{dns} (each lookup made: state, TTL, records),
        C{route} (or C{None}) and C{decision} (one line).
    @param board: the running service's L{sniproxy.backends.BackendBoard};
        when given, an app route's C{instances} list each address's health.
    """
    return Deferred.fromCoroutine(_explain(build, dns_resolver, name, board))


def render(result: dict[str, Any]) -> str:
    """The explanation as text for a terminal."""
    lines = [f"{result['name']}" + (f" (as {result['server_name']})" if result.get("server_name") not in (None, result["name"]) else "")]
    for step in result["steps"]:
        extra = step.get("detail") or step.get("reason") or ""
        lines.append(f"  {step['source']:<10} {step['answer']}" + (f": {extra}" if extra else ""))
    for note in result["dns"]:
        state = note.get("state", "?")
        if state == "failed":
            lines.append(f"  dns {note['type']} {note['query']} failed: {note['error']}")
            continue
        what = note["negative"] or ", ".join(f"{r['data']} (ttl {r['ttl']})" for r in note["records"]) or "empty"
        origin = ", from the cache file" if note.get("origin") == "file" else ""
        lines.append(f"  dns {note['type']} {note['query']} [{state}{origin}, {note['ttl']:g}s left]: {what}")
    lines.append(f"decision: {result['decision']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """C{python -m sniproxy.explain NAME --config FILE [--json]}."""
    from twisted.internet import task

    from sniproxy.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m sniproxy.explain", description="Explain how sniproxy routes a name.")
    parser.add_argument("name", help="the server name (SNI) to explain")
    parser.add_argument("--config", "-c", default="/etc/sniproxy/sniproxy.toml", help="the TOML config file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config: {error}", file=sys.stderr)
        raise SystemExit(2)

    async def run(reactor) -> None:
        from sniproxy.assembly import build_dns, build_resolver_threads, build_router

        resolver = build_dns(config, reactor)
        threads = build_resolver_threads(config, reactor)
        threads.start()
        try:
            result = await explain(
                lambda recording: build_router(config, reactor, recording, threads), resolver, args.name
            )
        finally:
            threads.stop()
            await resolver.stop()
        print(json.dumps(result, indent=2) if args.json else render(result))
        if result["route"] is None:
            raise SystemExit(1)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
