"""
The DNS cache behind a real caching resolver: Unbound (recursive, TTLs
decayed) in front of NSD (authoritative), both Debian packages, run as
this test's own child processes on loopback high ports.  Skipped, with the
reason, when either is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.trial.unittest import SkipTest, TestCase

from sniproxy.dns.cache import CacheState, CachingResolver
from sniproxy.dns.upstream import Upstream

NAME = "_dstack-app-address.shop.example.com"

ZONE = """\
$ORIGIN example.com.
$TTL 300
@       SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 60
@       NS  ns.example.com.
ns      A   127.0.0.1
_dstack-app-address.shop 300 CNAME link1
link1   60  CNAME link2
link2   5   TXT "myapp:443"
"""


def _find(program: str) -> str | None:
    return shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/sbin/{program}") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (for a moment)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class RealResolverTests(TestCase):
    timeout = 60

    def spawn(self, argv: list[str]) -> _Child:
        child = _Child()
        transport = reactor.spawnProcess(child, argv[0], argv, env={"PATH": "/usr/sbin:/usr/bin:/bin"})

        def stop():
            if not child.ended.called:
                transport.signalProcess("TERM")
            return child.ended

        self.addCleanup(stop)
        return child

    @defer.inlineCallbacks
    def wait_until_answers(self, port: int, child: _Child, what: str):
        upstream = Upstream([("127.0.0.1", port)], timeout=0.5, attempts=1, deadline=1.0)
        self.addCleanup(upstream.stop)
        for _ in range(50):
            if child.ended.called:
                raise AssertionError(f"{what} exited: {child.output.decode(errors='replace')}")
            try:
                yield upstream.query(dns.Query("ns.example.com", dns.A))
                return
            except Exception:
                yield deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"{what} does not answer: {child.output.decode(errors='replace')}")

    @defer.inlineCallbacks
    def test_unbound_in_front_of_nsd(self):
        """
        A TXT route through a CNAME chain 300/60/5, looked up every 100 ms
        for 12 s through Unbound: at most 12/5 + 1 upstream queries, and no
        lookup but the first waits for one.
        """
        nsd, unbound = _find("nsd"), _find("unbound")
        if nsd is None or unbound is None:
            raise SkipTest("needs nsd and unbound installed (apt-get install nsd unbound)")
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        nsd_port, unbound_port = _free_port(), _free_port()
        with open(os.path.join(directory, "example.com.zone"), "w") as f:
            f.write(ZONE)
        with open(os.path.join(directory, "nsd.conf"), "w") as f:
            f.write(
                f"""server:
  ip-address: 127.0.0.1
  port: {nsd_port}
  do-ip6: no
  zonesdir: "{directory}"
  zonelistfile: "{directory}/zone.list"
  database: ""
  xfrdfile: "{directory}/xfrd.state"
  pidfile: "{directory}/nsd.pid"
  logfile: "{directory}/nsd.log"
  username: ""
  chroot: ""
  server-count: 1
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: "example.com"
  zonefile: "example.com.zone"
"""
            )
        with open(os.path.join(directory, "unbound.conf"), "w") as f:
            f.write(
                f"""server:
  interface: 127.0.0.1
  port: {unbound_port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: "{directory}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  prefetch: no
remote-control:
  control-enable: no
stub-zone:
  name: "example.com"
  stub-addr: 127.0.0.1@{nsd_port}
"""
            )
        nsd_child = self.spawn([nsd, "-d", "-c", os.path.join(directory, "nsd.conf")])
        yield self.wait_until_answers(nsd_port, nsd_child, "nsd")
        unbound_child = self.spawn([unbound, "-d", "-c", os.path.join(directory, "unbound.conf")])
        yield self.wait_until_answers(unbound_port, unbound_child, "unbound")

        upstream = Upstream([("127.0.0.1", unbound_port)])
        asked: list[tuple[float, int]] = []
        plain_query = upstream.query

        def query(q, timeout=None):
            at = time.time()
            return plain_query(q, timeout).addCallback(
                lambda sections: asked.append((at, min(r.ttl for r in sections[0]))) or sections
            )

        upstream.query = query
        cache = CachingResolver(upstream, reactor)
        self.addCleanup(cache.stop)
        states = []
        waited = 0
        slowest = 0.0
        ends = time.monotonic() + 12.0
        lookups = 0
        while time.monotonic() < ends and lookups < 200:
            lookups += 1
            started = time.monotonic()
            d = cache.query(NAME, dns.TXT)
            waited += not d.called
            answer = yield d
            if lookups > 1:
                slowest = max(slowest, time.monotonic() - started)
            states.append(answer.state)
            self.assertEqual(b"".join(answer.records[-1].payload.data), b"myapp:443")
            yield deferLater(reactor, 0.1, lambda: None)
        print(
            f"\nunbound+nsd: {lookups} lookups in 12 s, {cache.counters.upstream_queries} upstream queries, "
            f"{states.count(CacheState.STALE)} served stale, slowest after the first {slowest * 1e6:.0f} µs; "
            f"(unix time, TTL): {[(round(at, 2), ttl) for at, ttl in asked]}"
        )
        self.assertEqual((waited, states[0]), (1, CacheState.MISS))
        self.assertLessEqual(cache.counters.upstream_queries, 12 / 5 + 1)
