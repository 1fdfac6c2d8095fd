"""
The DNS layer in the real daemon (C{twistd -n sniproxy} as a child
process): a warm cache across a restart, no log line per upstream query,
and C{[dns]} changes on SIGHUP.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.process import Twistd
from sniproxy.testing.tls import Collect


class Greeter(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello from the backend")


class Client(Collect):
    @inlineCallbacks
    def until(self, n: int, timeout: float = 10.0):
        waited = 0.0
        while len(b"".join(self.chunks)) < n:
            if self.done.called or waited > timeout:
                return b"".join(self.chunks)
            yield deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
        return b"".join(self.chunks)


GREETING = b"hello from the backend"


class DaemonDNSTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        factory = Factory.forProtocol(Greeter)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.backend = port.getHost().port
        self.dns = self.dns_server()
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.config = os.path.join(self.dir, "sniproxy.toml")
        self.access = os.path.join(self.dir, "access.log")
        self.cache_file = os.path.join(self.dir, "dns-cache.json")

    def dns_server(self) -> DNSServer:
        server = DNSServer()
        server.start()
        self.addCleanup(server.stop)
        return server

    def write_config(self, servers: list[DNSServer], extra: str = "") -> None:
        listed = ", ".join(f'"127.0.0.1:{s.port}"' for s in servers)
        with open(self.config, "w") as f:
            f.write(
                f"""
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
[routing]
sources = ["txt"]
[apps.myapp]
backends = ["127.0.0.1:{self.backend}"]
[dns]
servers = [{listed}]
timeout = 0.5
attempts = 1
deadline = 1.0
{extra}
[log]
access = "{self.access}"
"""
            )

    @inlineCallbacks
    def start(self, wait_for: bytes = b"") -> Twistd:
        child = Twistd(self.config)
        self.addCleanup(child.stop)
        seen = child.wait_for(wait_for) if wait_for else None
        yield child.start(reactor)
        if seen is not None:
            yield seen
        return child

    @inlineCallbacks
    def connect(self, port: int, name: str):
        """Send a ClientHello for C{name}; the bytes that came back, and the seconds it took."""
        client = Client()
        started = time.monotonic()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(make_client_hello(name))
        data = yield client.until(len(GREETING))
        elapsed = time.monotonic() - started
        protocol.transport.loseConnection()
        yield client.done
        return data, elapsed

    @inlineCallbacks
    def records(self, count: int):
        """The first C{count} access-log records, once written."""
        for _ in range(500):
            if os.path.exists(self.access):
                with open(self.access) as f:
                    lines = [json.loads(line) for line in f if line.strip()]
                if len(lines) >= count:
                    return lines
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"fewer than {count} access-log records")

    def add_route(self, server: DNSServer, name: str) -> None:
        server.add_txt(f"_dstack-app-address.{name}", "myapp:443", ttl=300)

    @inlineCallbacks
    def test_restart_keeps_the_cache_warm(self):
        """
        After a graceful restart with a cache file, the first connections to
        names seen before take no upstream round trip, though upstream now
        takes 2 s to answer.
        """
        names = ["shop.example.com", "blog.example.com"]
        for name in names:
            self.add_route(self.dns, name)
        self.write_config([self.dns], f'cache_file = "{self.cache_file}"\ncache_save_interval = 3600')
        child = yield self.start()
        for name in names:
            data, _ = yield self.connect(child.port, name)
            self.assertEqual(data, GREETING)
        code = yield child.stop()
        self.assertEqual(code, 0, child.output.decode(errors="replace"))
        self.assertTrue(os.path.exists(self.cache_file), child.output.decode(errors="replace"))
        self.dns.delay = 2.0
        self.dns.reset_log()
        again = yield self.start(b"loaded 2 of 2 entries")
        for name in names:
            data, elapsed = yield self.connect(again.port, name)
            self.assertEqual(data, GREETING)
            self.assertLess(elapsed, 1.0)
        records = yield self.records(4)
        self.assertEqual([r["cache"] for r in records[2:]], ["hit", "hit"])
        self.assertEqual([r["outcome"] for r in records], ["relayed"] * 4)
        self.assertNotIn(b"Traceback", again.output)

    @inlineCallbacks
    def test_cold_names_log_nothing(self):
        """50 cold names (50 upstream queries) add no line to the daemon's log."""
        names = [f"app{i:02d}.example.com" for i in range(50)]
        for name in names:
            self.add_route(self.dns, name)
        self.write_config([self.dns])
        child = yield self.start()
        data, _ = yield self.connect(child.port, "warmup.example.com")  # no route: the first query
        yield deferLater(reactor, 0.2, lambda: None)
        before = child.output
        queried = len(self.dns.log)
        for name in names:
            data, _ = yield self.connect(child.port, name)
            self.assertEqual(data, GREETING)
        yield self.records(51)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertGreaterEqual(len(self.dns.log) - queried, 50)
        self.assertEqual(child.output[len(before):].decode(errors="replace"), "")
        # Failures still log.
        self.dns.outage = True
        failed = child.wait_for(b"DNS lookup of _dstack-app-address.down.example.com TXT failed")
        yield self.connect(child.port, "down.example.com")
        yield failed

    @inlineCallbacks
    def test_reload_changes_servers(self):
        """
        SIGHUP with dns.servers changed from a dead server to a live one:
        lookups succeed without a restart, and the cache is kept.
        """
        first = self.dns
        self.add_route(first, "kept.example.com")
        self.write_config([first])
        child = yield self.start()
        data, _ = yield self.connect(child.port, "kept.example.com")
        self.assertEqual(data, GREETING)
        first.outage = True  # now dead
        data, _ = yield self.connect(child.port, "new.example.com")
        self.assertNotEqual(data, GREETING)
        live = self.dns_server()
        self.add_route(live, "new.example.com")
        self.write_config([live])
        reloaded = child.wait_for(b"reloaded " + self.config.encode())
        child.signal("HUP")
        yield reloaded
        self.assertNotIn(b"take effect at the next restart", child.output)
        data, _ = yield self.connect(child.port, "new.example.com")
        self.assertEqual(data, GREETING)
        data, _ = yield self.connect(child.port, "kept.example.com")
        self.assertEqual(data, GREETING)
        records = yield self.records(4)
        self.assertEqual(
            [(r["sni"], r["cache"]) for r in records],
            [
                ("kept.example.com", "miss"),
                ("new.example.com", None),
                ("new.example.com", "miss"),
                ("kept.example.com", "hit"),
            ],
        )
        self.assertEqual([q.name for q in live.log], ["_dstack-app-address.new.example.com"])
