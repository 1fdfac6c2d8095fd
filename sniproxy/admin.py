"""
The admin endpoint (twisted.web): C{/} the status page for people,
C{/status.json} the same for scripts, C{/metrics} for Prometheus and
C{/explain?name=NAME} for how a name routes.  Bind it to loopback: it is
for operators, not clients.

The metrics are rendered with C{prometheus_client}'s own exposition code,
in the reactor thread.  Its bundled twisted.web resource is a WSGI
application on the reactor's thread pool, bound to the global reactor at
import time: threads in a single-threaded proxy, for a page that renders
in well under a millisecond.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from prometheus_client import CollectorRegistry, exposition
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from sniproxy.status import StatusCollector
from sniproxy.statuspage import DEFAULT_REFRESH, render_page

__all__ = ["admin_site"]


def _after(refresh: Callable[[], Deferred[Any]] | None, render: Callable[[Any], bytes], request) -> Any:
    """
    C{render(request)}, or, with C{refresh} (the main process of several
    workers gathering their numbers), the same once C{refresh()} fired.
    """
    if refresh is None:
        return render(request)

    def write(_: Any) -> None:
        request.write(render(request))
        request.finish()

    def failed(failure: Failure) -> None:
        request.setResponseCode(500)
        request.write(f"cannot render this page: {failure.value}\n".encode())
        request.finish()

    refresh().addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry, refresh: Callable[[], Deferred[Any]] | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.refresh = refresh

    def render_GET(self, request):
        return _after(self.refresh, self._render, request)

    def _render(self, request) -> bytes:
        encoder, content_type = exposition.choose_encoder(request.getHeader("accept") or "")
        request.setHeader("content-type", content_type)
        return encoder(self.registry)


class ExplainPage(Resource):
    """C{GET /explain?name=NAME}: the route explanation, as JSON."""

    isLeaf = True

    def __init__(self, explain: Callable[[str], Deferred[dict[str, Any]]]) -> None:
        super().__init__()
        self.explain = explain

    def render_GET(self, request):
        names = request.args.get(b"name")
        request.setHeader("content-type", "application/json")
        if not names:
            request.setResponseCode(400)
            return b'{"error": "give the name to explain as ?name=NAME"}\n'
        d = self.explain(names[0].decode("utf-8", "replace"))
        gone: list[bool] = []

        def done(result: dict[str, Any]) -> None:
            request.write(json.dumps(result, indent=2).encode() + b"\n")
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return  # the client hung up: nobody to answer
            request.setResponseCode(500)
            request.write(json.dumps({"error": str(failure.value)}).encode() + b"\n")
            request.finish()

        def hung_up(failure: Failure) -> None:
            gone.append(True)
            d.cancel()

        d.addCallbacks(done, failed)
        request.notifyFinish().addErrback(hung_up)
        return NOT_DONE_YET


def _refresh(request) -> int:
    """C{?refresh=N}: seconds between the page's refreshes, 0 for none (1-60; default 2)."""
    values = request.args.get(b"refresh")
    if not values:
        return DEFAULT_REFRESH
    try:
        seconds = int(values[0])
    except ValueError:
        return DEFAULT_REFRESH
    return 0 if seconds <= 0 else min(seconds, 60)


class StatusJSON(Resource):
    """C{GET /status.json}: the status snapshot (schema: docs/status-page.rst)."""

    isLeaf = True

    def __init__(self, status: StatusCollector, refresh: Callable[[], Deferred[Any]] | None = None) -> None:
        super().__init__()
        self.status = status
        self.refresh = refresh

    def render_GET(self, request):
        return _after(self.refresh, self._render, request)

    def _render(self, request) -> bytes:
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        return json.dumps(self.status.snapshot().as_json(), indent=1).encode() + b"\n"


class _Index(Resource):
    """C{GET /}: the status page, or a list of the pages without one."""

    def __init__(self, status: StatusCollector | None = None, refresh: Callable[[], Deferred[Any]] | None = None) -> None:
        super().__init__()
        self.status = status
        self.refresh = refresh

    def render_GET(self, request):
        if self.status is None:
            return self._render(request)
        return _after(self.refresh, self._render, request)

    def _render(self, request) -> bytes:
        if self.status is None:
            request.setHeader("content-type", "text/plain")
            return b"sniproxy admin: /metrics, /explain?name=NAME\n"
        request.setHeader("content-type", "text/html; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        return render_page(self.status.snapshot(), _refresh(request))

    def getChild(self, path, request):
        return self if path == b"" else super().getChild(path, request)


class _QuietSite(Site):
    """A Site that keeps scrapes (one every few seconds) out of the server log."""

    noisy = False

    def log(self, request) -> None:
        pass


def admin_site(
    registry: CollectorRegistry,
    explain: Callable[[str], Deferred[dict[str, Any]]],
    status: StatusCollector | None = None,
    refresh: Callable[[], Deferred[Any]] | None = None,
) -> Site:
    """
    The admin endpoint's site.

    @param status: what C{/} and C{/status.json} show; without it C{/} only
        lists the other pages and C{/status.json} is not there.
    @param refresh: called before C{/metrics}, C{/} and C{/status.json}
        render, which wait for its Deferred (the main process of several
        workers gathers their metrics so).
    """
    root = _Index(status, refresh)
    root.putChild(b"metrics", MetricsPage(registry, refresh))
    root.putChild(b"explain", ExplainPage(explain))
    if status is not None:
        root.putChild(b"status.json", StatusJSON(status, refresh))
    return _QuietSite(root)
