"""
L{sniproxy.dns.shared} across real processes: the owner in this process,
mirrors in child processes (as workers would run them), the in-process
test DNS server as the upstream.  Bounded: each child exits when its
standard input closes, and is killed by PID at the end of the test.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from sniproxy.config import DNSConfig
from sniproxy.dns import build_dns
from sniproxy.dns.shared import DNSOwner
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.process import child_environment

NAME = "_dstack-app-address.shop.test"

# A worker's mirror: connects, says "ready", then on each line "NAME COUNT"
# looks NAME up COUNT times at once and prints one JSON line of the states
# and values ("sync": a round trip to the owner, then "synced"); exits when
# standard input closes.
CHILD = r"""
import json, sys
from twisted.internet import reactor, stdio, defer
from twisted.protocols.basic import LineReceiver
from twisted.names import dns
from sniproxy.config import DNSConfig
from sniproxy.dns.shared import DNSMirror

mirror = DNSMirror(sys.argv[1], DNSConfig(deadline=2.0), reactor)

class Commands(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        mirror.start()
        mirror.warmed.addCallback(lambda _: self.sendLine(b"ready"))

    def lineReceived(self, line):
        if line == b"sync":
            mirror.sync().addCallback(lambda _: self.sendLine(b"synced"))
            return
        name, count = line.decode().split()
        lookups = [mirror.query(name, dns.TXT) for _ in range(int(count))]
        d = defer.gatherResults(lookups)

        def done(answers):
            self.sendLine(json.dumps([[str(a.state), b"".join(a.records[0].payload.data).decode()] for a in answers]).encode())

        d.addCallback(done)
        d.addErrback(lambda f: self.sendLine(json.dumps({"error": str(f.value)}).encode()))

    def connectionLost(self, reason):
        mirror.stop().addBoth(lambda _: reactor.stop())

stdio.StandardIO(Commands())
reactor.run()
"""


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.buffer = b""
        self.waiting: list[defer.Deferred[bytes]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.errors = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if self.waiting:
                self.waiting.pop(0).callback(line)
            else:
                self.lines.append(line)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def line(self) -> defer.Deferred[bytes]:
        if self.lines:
            return defer.succeed(self.lines.pop(0))
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append(d)
        return d.addTimeout(30, reactor)

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class ProcessTests(TestCase):
    def setUp(self) -> None:
        self.server = DNSServer()
        self.server.start()
        self.addCleanup(self.server.stop)
        directory = tempfile.mkdtemp(prefix="sniproxy-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "dns.sock")
        config = DNSConfig(servers=(self.server.address,), timeout=1.0, attempts=1, deadline=2.0)
        self.cache = build_dns(config, reactor)
        self.addCleanup(self.cache.stop)
        self.owner = DNSOwner(self.cache, reactor)

    @defer.inlineCallbacks
    def child(self):
        child = _Child()
        transport = reactor.spawnProcess(
            child, sys.executable, [sys.executable, "-c", CHILD, self.path], env=child_environment()
        )

        def stop():
            if not child.ended.called:
                transport.closeStdin()
                timer = reactor.callLater(10, lambda: child.ended.called or os.kill(transport.pid, 9))
                child.ended.addBoth(lambda _: timer.active() and timer.cancel())
            return child.ended

        self.addCleanup(stop)
        ready = yield child.line()
        self.assertEqual(ready, b"ready", child.errors.decode(errors="replace"))
        child.transport = transport
        return child

    @defer.inlineCallbacks
    def ask(self, child, name: str, count: int):
        child.transport.write(f"{name} {count}\n".encode())
        try:
            line = yield child.line()
        except defer.TimeoutError:
            self.fail(f"no answer from the child: {child.errors.decode(errors='replace')}")
        return json.loads(line)

    @defer.inlineCallbacks
    def test_two_worker_processes(self):
        """
        Two worker processes: 30 concurrent cold lookups across them cost
        one upstream query; a name one learnt costs the other neither a
        query nor a question to the owner; a process started later is
        warm.
        """
        self.server.add_txt(NAME, "myapp:443", ttl=60)
        self.server.set_delay(NAME, 0.3)
        yield self.owner.listen(self.path)
        self.addCleanup(self.owner.stop)
        first = yield self.child()
        second = yield self.child()
        results = yield defer.gatherResults([self.ask(first, NAME, 15), self.ask(second, NAME, 15)])
        self.assertNotIn("error", results[0], results)
        self.assertNotIn("error", results[1], results)
        values = [value for result in results for _, value in result]
        self.assertEqual(values, ["myapp:443"] * 30)
        self.assertEqual(len(self.server.queries_for(NAME)), 1)
        self.assertEqual(self.owner.lookups, 2)
        # Learnt through the first, asked through the second: a hit there.
        self.server.add_txt("_dstack-app-address.new.test", "other:443", ttl=60)
        [[state, value]] = yield self.ask(first, "_dstack-app-address.new.test", 1)
        self.assertEqual((state, value), ("miss", "other:443"))
        yield self.cache.when_idle()
        lookups = self.owner.lookups
        second.transport.write(b"sync\n")
        self.assertEqual((yield second.line()), b"synced")
        [[state, value]] = yield self.ask(second, "_dstack-app-address.new.test", 1)
        self.assertEqual((state, value), ("hit", "other:443"))
        self.assertEqual(self.owner.lookups, lookups)
        self.assertEqual(len(self.server.queries_for("_dstack-app-address.new.test")), 1)
        # A third process, started now, is warm at once.
        third = yield self.child()
        [[state, value]] = yield self.ask(third, NAME, 1)
        self.assertEqual((state, value), ("hit", "myapp:443"))
        self.assertEqual(self.owner.lookups, lookups)
