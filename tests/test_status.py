"""
The status page and C{/status.json}: rates from the sampled ring, the
snapshot from counters and providers, escaping, bounds, and the real thing
fetched with treq while connections flow through a running proxy.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from html.parser import HTMLParser

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

import sniproxy
from sniproxy.config import load_config, parse_config
from sniproxy.metrics import ProxyMetrics
from sniproxy.status import (
    MAX_INSTANCES,
    MAX_NAMES,
    OUTCOMES,
    RateSampler,
    StatusCollector,
)
from sniproxy.statuspage import render_page
from sniproxy.testing.churn import EchoBackend
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import CertificateAuthority, https_client, listen_https
from tests.test_status_browser import EchoClient, listen

EVIL = "<script>alert(1)</script>"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "status-page.rst")


class RateSamplerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.totals = [0, 0]
        self.sampler = RateSampler(lambda: tuple(self.totals), self.clock)

    def run_for(self, seconds: int, per_second: tuple[int, int]) -> None:
        for _ in range(seconds):
            self.totals[0] += per_second[0]
            self.totals[1] += per_second[1]
            self.clock.advance(1)

    def test_no_samples(self):
        """Before any sample there is no rate: 0, covering 0 s."""
        self.assertEqual(self.sampler.rates(10, 0, (5, 5)), (0.0, (0.0, 0.0)))

    def test_steady_rate(self):
        self.sampler.start()
        self.run_for(30, (5, 1))
        span, rates = self.sampler.rates(10, self.clock.seconds(), tuple(self.totals))
        self.assertEqual(span, 10)
        self.assertEqual(rates, (5.0, 1.0))
        span, rates = self.sampler.rates(300, self.clock.seconds(), tuple(self.totals))
        self.assertEqual(span, 30)
        self.assertEqual(rates, (5.0, 1.0))

    def test_burst_then_quiet(self):
        """A burst a minute ago is gone from the 10 s rate, still in the 5 min one."""
        self.sampler.start()
        self.run_for(1, (120, 0))
        self.run_for(59, (0, 0))
        now = self.clock.seconds()
        self.assertEqual(self.sampler.rates(10, now, tuple(self.totals))[1], (0.0, 0.0))
        span, rates = self.sampler.rates(300, now, tuple(self.totals))
        self.assertEqual(span, 60)
        self.assertEqual(rates, (2.0, 0.0))

    def test_between_samples(self):
        """Rates read at render time count what happened since the last sample."""
        self.sampler.start()
        self.run_for(10, (0, 0))
        self.clock.advance(0.5)
        self.totals[0] += 21
        span, rates = self.sampler.rates(10, self.clock.seconds(), tuple(self.totals))
        self.assertEqual((span, rates), (10.5, (2.0, 0.0)))

    def test_ring_is_bounded(self):
        self.sampler.start()
        self.run_for(2000, (1, 1))
        self.assertLessEqual(len(self.sampler._ring), 302)
        span, rates = self.sampler.rates(300, self.clock.seconds(), tuple(self.totals))
        self.assertEqual((span, rates), (300, (1.0, 1.0)))

    def test_one_timer(self):
        """One LoopingCall; start twice is one; stop leaves no timer."""
        self.sampler.start()
        self.sampler.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.sampler.stop()
        self.sampler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.sampler.running)


@dataclass(frozen=True)
class FakeInstance:
    app: str
    address: str
    state: str = "up"
    ejected_until: float | None = None
    live: int = 0
    total: int = 0
    connect_failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    max_connections: int = 0


class FakeBackends:
    def __init__(self, rows):
        self.rows = rows

    def instances(self):
        return list(self.rows)


@dataclass(frozen=True)
class FakeEntry:
    name: str
    type: str
    state: str
    ttl_left: float
    hits: int
    origin: str


class FakeCounters:
    hits = 30
    misses = 5
    stale = 3
    negative_hits = 2
    merged = 0
    upstream_queries = 9
    upstream_failures = 1
    in_flight = 4
    entries = 0


class FakeDNS:
    def __init__(self, entries):
        self.counters = FakeCounters()
        self.entries = entries
        self.asked: list[int] = []

    def entries_status(self, limit):
        self.asked.append(limit)
        return len(self.entries), self.entries[:limit]


class FakeService:
    def __init__(self, toml: str = "", path: str = "/etc/sniproxy/sniproxy.toml") -> None:
        import tomllib

        self.config = parse_config(tomllib.loads(toml))
        self.config_path = path
        self.loaded_at = 0.0
        self.last_reload_error = None


def collector(clock, backends=(), entries=(), service=None, live=0):
    metrics = ProxyMetrics(live=lambda: live)
    return StatusCollector(
        clock=clock,
        metrics=metrics,
        live=lambda: live,
        service=service or FakeService(),
        backends=FakeBackends(backends),
        dns=FakeDNS(list(entries)),
    )


class _Text(HTMLParser):
    """The page's text and tags, to check what a browser would see."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(page: bytes) -> _Text:
    parser = _Text()
    parser.feed(page.decode("utf-8"))
    return parser


class SnapshotTests(SynchronousTestCase):
    def test_counts_and_rates(self):
        clock = Clock()
        status = collector(clock, live=3)
        status.sampler.start()
        relayed = status.metrics.connections.labels("relayed")
        for _ in range(20):
            relayed.inc(4)
            clock.advance(1)
        status.metrics.connections.labels("no route").inc(2)
        status.metrics.routed.labels("static", "none").inc(70)
        status.metrics.routed.labels("static", "hit").inc(5)
        status.metrics.relayed_bytes.labels("up").inc(1234)
        c = status.snapshot().connections
        self.assertEqual(c.live, 3)
        outcomes = {o.outcome: o for o in c.outcomes}
        self.assertEqual([o.outcome for o in c.outcomes], list(OUTCOMES))
        self.assertEqual(outcomes["relayed"].total, 80)
        self.assertEqual(outcomes["relayed"].rate_10s, 4.0)
        self.assertEqual(outcomes["relayed"].rate_5m, 4.0)
        self.assertEqual(outcomes["no route"].total, 2)
        self.assertEqual(outcomes["denied"].total, 0)
        self.assertEqual(c.total, 82)
        self.assertEqual(c.bytes_up, 1234)
        self.assertEqual(c.window_5m, 20)
        self.assertEqual(status.snapshot().sources[0].decisions, 75)

    def test_sources_in_routing_order(self):
        service = FakeService(
            '[routing]\nsources = ["txt", "static"]\n[proxy]\nfallback = "127.0.0.1:9"\n'
        )
        status = collector(Clock(), service=service)
        status.metrics.routed.labels("fallback", "none").inc(2)
        status.metrics.routed.labels("txt", "hit").inc(7)
        status.metrics.routed.labels("system", "none").inc(1)  # dropped by a reload
        sources = [(s.name, s.decisions) for s in status.snapshot().sources]
        self.assertEqual(sources, [("txt", 7), ("static", 0), ("fallback", 2), ("system", 1)])

    def test_dns(self):
        entries = [FakeEntry(f"n{i}.example", "TXT", "fresh", 10.0, 100 - i, "upstream") for i in range(30)]
        status = collector(Clock(), entries=entries)
        d = status.snapshot().dns
        self.assertEqual(status.dns.asked, [MAX_NAMES])
        self.assertEqual(len(d.names), 20)
        self.assertTrue(d.truncated)
        self.assertEqual(d.entries, 30)
        self.assertEqual(d.lookups, 40)
        self.assertEqual(d.hit_rate, 35 / 40)
        self.assertEqual((d.stale, d.in_flight, d.upstream_queries, d.upstream_failures), (3, 4, 9, 1))

    def test_header(self):
        clock = Clock()
        service = FakeService()
        service.loaded_at = 0.0
        status = collector(clock, service=service)
        clock.advance(90)
        service.last_reload_error = "apps.x.backends: bad address"
        before = time.time()
        h = status.snapshot().header
        self.assertEqual(h.version, sniproxy.__version__)
        self.assertEqual(h.uptime, 90)
        self.assertEqual(h.config_path, "/etc/sniproxy/sniproxy.toml")
        self.assertLess(abs(h.loaded_at - (before - 90)), 5)
        self.assertEqual(h.last_reload_error, "apps.x.backends: bad address")

    def test_health(self):
        clock = Clock()
        clock.advance(1000)
        rows = [
            FakeInstance("a", "127.0.0.1:1", "ejected", ejected_until=1030.0, connect_failures=5),
            FakeInstance("a", "127.0.0.1:2", "probing", ejected_until=990.0),
            FakeInstance("a", "127.0.0.1:3", "up", live=2, total=9, bytes_up=10, bytes_down=20, max_connections=50),
        ]
        status = collector(clock, backends=rows)
        before = time.time()
        ejected, probing, up = status.snapshot().apps.instances
        self.assertEqual(ejected.ejected_for, 30)
        self.assertLess(abs(ejected.ejected_until - (before + 30)), 5)
        self.assertIsNone(probing.ejected_until)
        self.assertEqual((up.live, up.total, up.bytes_up, up.bytes_down, up.max_connections), (2, 9, 10, 20, 50))
        page = render_page(status.snapshot()).decode()
        self.assertIn("ejected until", page)
        self.assertIn('<td class="probing">probing</td>', page)
        self.assertIn(">50</td>", page)

    def test_health_enum(self):
        """A str-valued enum state (the board's HealthState) reads as its value."""
        import enum

        class HealthState(str, enum.Enum):
            UP = "up"
            EJECTED = "ejected"

        rows = [FakeInstance("a", "127.0.0.1:1", HealthState.EJECTED, ejected_until=5.0)]
        [row] = collector(Clock(), backends=rows).snapshot().apps.instances
        self.assertEqual(row.state, "ejected")
        self.assertEqual(json.loads(json.dumps(collector(Clock(), backends=rows).snapshot().as_json()))["apps"]["instances"][0]["state"], "ejected")


class PageTests(SynchronousTestCase):
    def evil_status(self):
        service = FakeService(path=f"/etc/{EVIL}.toml")
        service.last_reload_error = f"routing.static.{EVIL}: bad"
        rows = [FakeInstance(EVIL, f"{EVIL}:443", EVIL)]
        entries = [FakeEntry(f"{EVIL}.example", EVIL, EVIL, 5.0, 3, EVIL)]
        return collector(Clock(), backends=rows, entries=entries, service=service)

    def test_escaped(self):
        """Names, TXT-derived values, app ids, addresses, paths and errors from outside are escaped."""
        page = render_page(self.evil_status().snapshot())
        text = page.decode()
        self.assertNotIn(EVIL, text)
        self.assertNotIn("alert(1)</script>", text)
        self.assertGreaterEqual(text.count("&lt;script&gt;alert(1)&lt;/script&gt;"), 8)
        parsed = parse(page)
        # The one script element is the page's own.
        self.assertEqual(parsed.tags.count("script"), 1)
        self.assertIn(f"{EVIL}.example", "".join(parsed.text))

    def test_json_is_plain_data(self):
        data = self.evil_status().snapshot().as_json()
        self.assertEqual(data["apps"]["instances"][0]["app"], EVIL)
        self.assertEqual(data["dns"]["names"][0]["name"], f"{EVIL}.example")

    def test_self_contained(self):
        page = render_page(collector(Clock()).snapshot()).decode()
        self.assertNotRegex(page, r'(src|href)="(https?:)?//')
        self.assertNotIn("<link rel=\"stylesheet\"", page)
        self.assertIn('<p id="self-check" data-errors="0"', page)
        for section in ("overview", "connections", "apps", "dns", "sources"):
            self.assertIn(f'id="{section}"', page)

    def test_refresh_switch(self):
        status = collector(Clock())
        on = render_page(status.snapshot()).decode()
        self.assertIn('data-refresh="2"', on)
        self.assertIn('<meta http-equiv="refresh" content="2">', on)
        self.assertIn('href="?refresh=0"', on)
        off = render_page(status.snapshot(), refresh=0).decode()
        self.assertIn('data-refresh="0"', off)
        self.assertNotIn("http-equiv", off)
        self.assertIn('href="?refresh=2"', off)

    def test_big_and_bounded(self):
        """
        1,000 instances and 10,000 cache entries: the lists are bounded, the
        page says so, and a snapshot plus a render stays well under 50 ms.
        """
        rows = [FakeInstance(f"app{i // 4}", f"10.0.{i // 250}.{i % 250}:443", total=i) for i in range(1000)]
        entries = [FakeEntry(f"name{i}.example.com", "TXT", "fresh", 60.0, 10000 - i, "upstream") for i in range(10000)]
        status = collector(Clock(), backends=rows, entries=entries)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            page = render_page(status.snapshot())
            best = min(best, time.perf_counter() - started)
        self.assertLess(best, 0.05)
        text = page.decode()
        self.assertEqual(text.count("10.0."), MAX_INSTANCES)
        self.assertIn(f"Showing the first {MAX_INSTANCES} of 1000 instances", text)
        self.assertIn('id="apps-truncated"', text)
        self.assertEqual(text.count(".example.com</td>"), MAX_NAMES)
        self.assertIn("The 20 most used of 10000 entries", text)
        data = status.snapshot().as_json()
        self.assertEqual(len(data["apps"]["instances"]), MAX_INSTANCES)
        self.assertEqual(data["apps"]["total_instances"], 1000)
        self.assertTrue(data["apps"]["truncated"])
        self.assertEqual(len(data["dns"]["names"]), MAX_NAMES)
        self.assertTrue(data["dns"]["truncated"])

    def test_not_truncated(self):
        status = collector(Clock(), backends=[FakeInstance("a", "127.0.0.1:1")])
        text = render_page(status.snapshot()).decode()
        self.assertNotIn("apps-truncated", text)
        self.assertFalse(status.snapshot().as_json()["apps"]["truncated"])


# The documented /status.json schema (docs/status-page.rst), key by key.
SCHEMA = {
    "": {"version", "now", "uptime", "config", "connections", "apps", "dns", "sources"},
    "config": {"path", "loaded_at", "last_reload_error"},
    "connections": {"live", "total", "rate_10s", "rate_5m", "window_10s", "window_5m", "bytes_up", "bytes_down", "outcomes"},
    "connections.outcomes.*": {"total", "rate_10s", "rate_5m"},
    "apps": {"apps", "total_instances", "truncated", "instances"},
    "apps.instances[]": {
        "app",
        "address",
        "state",
        "ejected_until",
        "live",
        "total",
        "connect_failures",
        "bytes_up",
        "bytes_down",
        "max_connections",
    },
    "dns": {
        "entries",
        "lookups",
        "hit_rate",
        "hits",
        "negative_hits",
        "stale",
        "misses",
        "merged",
        "upstream_queries",
        "upstream_failures",
        "in_flight",
        "truncated",
        "names",
    },
    "dns.names[]": {"name", "type", "state", "ttl_left", "hits", "origin"},
    "sources[]": {"name", "decisions"},
}


class SchemaTests(SynchronousTestCase):
    def test_keys(self):
        """The JSON has exactly the documented keys."""
        status = collector(
            Clock(),
            backends=[FakeInstance("a", "127.0.0.1:1")],
            entries=[FakeEntry("a.example", "A", "fresh", 1.0, 1, "file")],
        )
        data = json.loads(json.dumps(status.snapshot().as_json()))
        self.assertEqual(set(data), SCHEMA[""])
        self.assertEqual(set(data["config"]), SCHEMA["config"])
        self.assertEqual(set(data["connections"]), SCHEMA["connections"])
        self.assertEqual(list(data["connections"]["outcomes"]), list(OUTCOMES))
        for value in data["connections"]["outcomes"].values():
            self.assertEqual(set(value), SCHEMA["connections.outcomes.*"])
        self.assertEqual(set(data["apps"]), SCHEMA["apps"])
        self.assertEqual(set(data["apps"]["instances"][0]), SCHEMA["apps.instances[]"])
        self.assertEqual(set(data["dns"]), SCHEMA["dns"])
        self.assertEqual(set(data["dns"]["names"][0]), SCHEMA["dns.names[]"])
        self.assertEqual(set(data["sources"][0]), SCHEMA["sources[]"])

    def test_documented(self):
        """Every key, and every outcome, is in docs/status-page.rst's schema."""
        with open(DOCS, encoding="utf-8") as f:
            docs = f.read()
        documented = set(re.findall(r"^\s*``([a-z_0-9\[\]\.\* ]+)``", docs, re.M))
        for section, keys in SCHEMA.items():
            for key in keys:
                path = f"{section}.{key}" if section else key
                self.assertIn(path, documented, f"{path} is not documented in {DOCS}")
        for outcome in OUTCOMES:
            self.assertIn(f"``{outcome}``", docs)


class OutcomeOrderTests(SynchronousTestCase):
    def test_every_outcome_shown(self):
        """The page's outcome order names every Outcome once."""
        from sniproxy.record import Outcome

        self.assertEqual(sorted(OUTCOMES), sorted(outcome.value for outcome in Outcome))


class LiveTests(TestCase):
    """treq against a running proxy, with real connections through it."""

    @inlineCallbacks
    def setUp(self):
        self.echo = yield listen(self, EchoBackend())
        self.ca = CertificateAuthority()
        https = yield listen_https(reactor, self.ca.issue("secure.example.com"), b"secure body")
        self.addCleanup(https.stopListening)
        port = self.echo.getHost().port
        self.service, self.port = running_proxy(
            self,
            f"""
            [routing]
            sources = ["static"]
            [routing.static]
            "echo.example.com" = {{ app = "echo", port = {port} }}
            "secure.example.com" = "127.0.0.1:{https.getHost().port}"
            [apps.echo]
            backends = ["127.0.0.1"]
            [admin]
            listen = "tcp:0:interface=127.0.0.1"
            """,
        )
        self.admin = f"http://127.0.0.1:{self.service.admin_port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)

    @inlineCallbacks
    def status(self) -> dict:
        response = yield treq.get(self.admin + "/status.json", pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return json.loads((yield response.text()))

    @inlineCallbacks
    def page(self, query: str = "") -> str:
        response = yield treq.get(self.admin + "/" + query, pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        return (yield response.text())

    def connect(self, data: bytes, hang_up: bool = True):
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), EchoClient(data, hang_up))

    @inlineCallbacks
    def test_numbers_match_traffic(self):
        before = yield self.status()
        self.assertEqual(before["connections"]["outcomes"]["relayed"]["total"], 0)
        self.assertEqual(before["connections"]["live"], 0)
        self.assertTrue(self.service.status.sampler.running)

        sent = 0
        for size in (10, 1000, 50000):
            data = make_client_hello("echo.example.com") + b"x" * size
            client = yield self.connect(data)
            self.assertEqual((yield client.done), len(data))
            sent += len(data)
        yield self.service.factory.drain(5)
        echoed = yield self.status()
        # Relayed unchanged: the ClientHello and what followed, each way.
        self.assertEqual(echoed["connections"]["bytes_up"], sent)
        self.assertEqual(echoed["connections"]["bytes_down"], sent)
        self.assertEqual(echoed["connections"]["outcomes"]["relayed"]["total"], 3)
        unrouted = yield self.connect(make_client_hello("nowhere.example.com"))
        yield unrouted.done
        tls = https_client(reactor, self.ca, "127.0.0.1", self.port)
        response = yield tls.get("https://secure.example.com/")
        self.assertEqual((yield response.content()), b"secure body")
        held = yield self.connect(make_client_hello("echo.example.com"), hang_up=False)
        self.addCleanup(lambda: held.done)
        self.addCleanup(held.transport.loseConnection)
        while held.received == 0:  # the echo is back: the connection is relaying
            yield treq.get(self.admin + "/metrics", pool=self.pool).addCallback(treq.content)

        during = yield self.status()
        self.assertEqual(during["connections"]["live"], 1)
        held.transport.loseConnection()
        yield held.done
        yield self.service.factory.drain(5)

        after = yield self.status()
        outcomes = after["connections"]["outcomes"]
        self.assertEqual(outcomes["relayed"]["total"], 5)
        self.assertEqual(outcomes["no route"]["total"], 1)
        self.assertEqual(outcomes["denied"]["total"], 0)
        self.assertEqual(after["connections"]["live"], 0)
        self.assertEqual(after["connections"]["total"], 6)
        # Bytes: what the echo clients sent and got back, plus the TLS exchange.
        tls_up = after["connections"]["bytes_up"] - sent - len(make_client_hello("echo.example.com"))
        tls_down = after["connections"]["bytes_down"] - sent - len(make_client_hello("echo.example.com"))
        self.assertGreater(tls_up, 300)
        self.assertGreater(tls_down, 300)
        self.assertLess(tls_up, 5000)
        self.assertLess(tls_down, 5000)
        self.assertEqual(after["sources"], [{"name": "static", "decisions": 5}])
        # The backends' board: the four echo connections, on the instance
        # at the port the route chose.
        echo = f"127.0.0.1:{self.echo.getHost().port}"
        self.assertEqual(
            [(i["app"], i["address"], i["state"], i["live"], i["total"]) for i in after["apps"]["instances"]],
            [("echo", echo, "up", 0, 4)],
        )
        self.assertIsNone(after["config"]["last_reload_error"])

        page = yield self.page()
        parsed = parse(page.encode())
        self.assertEqual(parsed.tags.count("script"), 1)
        self.assertIn('<td>relayed</td><td class="n">5</td>', page)
        self.assertIn('<td>no route</td><td class="n">1</td>', page)
        self.assertIn('<td>static</td><td class="n">5</td>', page)
        self.assertIn('data-refresh="2"', page)
        self.assertIn('data-refresh="0"', (yield self.page("?refresh=0")))
        self.assertIn('data-refresh="60"', (yield self.page("?refresh=9999")))
        self.assertIn('data-refresh="2"', (yield self.page("?refresh=soon")))

    @inlineCallbacks
    def test_sampler_stops_with_the_service(self):
        """Stopping the service stops the sampler (trial would see its timer left behind)."""
        from sniproxy.service import ProxyService

        config = parse_config(
            {"proxy": {"listen": ["tcp:0:interface=127.0.0.1"]}, "log": {"access": ""}, "admin": {"listen": "tcp:0:interface=127.0.0.1"}}
        )
        service = ProxyService(config, reactor=reactor)
        service.startService()
        sampler = service.status.sampler
        self.assertTrue(sampler.running)
        yield service.stopService()
        self.assertFalse(sampler.running)


class ReloadTests(TestCase):
    """The header's load time and reload verdict (contract 4)."""

    def start(self, text: str):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        clock = Clock()
        service, _ = running_proxy(self, config=load_config(path), clock=clock)
        return path, clock, service

    def config_text(self, admin: bool = True, extra: str = "") -> str:
        text = '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[log]\naccess = ""\n' + extra
        if admin:
            text += '[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'
        return text

    def test_verdict(self):
        path, clock, service = self.start(self.config_text())
        self.assertEqual(service.config_path, path)
        self.assertEqual(service.loaded_at, 0)
        self.assertIsNone(service.last_reload_error)
        clock.advance(30)
        with open(path, "w") as f:
            f.write(self.config_text(extra=f'[routing.static]\n"a.example" = {{ app = "{EVIL}" }}\n'))
        self.assertFalse(service.reload())
        self.assertIn("routing.static", service.last_reload_error)
        self.assertEqual(service.loaded_at, 0)
        snapshot = service.status.snapshot()
        self.assertEqual(snapshot.as_json()["config"]["last_reload_error"], service.last_reload_error)
        page = render_page(snapshot).decode()
        self.assertIn('id="reload-error"', page)
        self.assertNotIn(EVIL, page)
        with open(path, "w") as f:
            f.write(self.config_text())
        clock.advance(5)
        self.assertTrue(service.reload())
        self.assertIsNone(service.last_reload_error)
        self.assertEqual(service.loaded_at, 35)
        self.assertIn("last reload <b class=\"ok\">ok</b>", render_page(service.status.snapshot()).decode())

    def test_sampler_follows_the_admin_endpoint(self):
        """One 1 s timer while the admin endpoint listens, none otherwise."""
        path, clock, service = self.start(self.config_text(admin=False))
        self.assertFalse(service.status.sampler.running)
        with open(path, "w") as f:
            f.write(self.config_text(admin=True))
        self.assertTrue(service.reload())
        self.assertTrue(service.status.sampler.running)
        for _ in range(3):
            clock.advance(1)
        self.assertEqual(len(service.status.sampler._ring), 4)
        with open(path, "w") as f:
            f.write(self.config_text(admin=False))
        self.assertTrue(service.reload())
        self.assertFalse(service.status.sampler.running)
