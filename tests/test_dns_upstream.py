"""
Tests for L{sniproxy.dns.upstream}: resolv.conf, timeouts, attempts, the
deadline, TCP fallback and a clean stop, against the in-process DNS server
with the client's timers on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import TestCase

from sniproxy.config import DNSConfig
from sniproxy.dns.upstream import Upstream, parse_resolv_conf
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer


class ResolvConfTests(TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_nameservers(self) -> None:
        """
        Nameserver lines, IPv4 and IPv6, in order, on port 53; everything
        else (search, domain, options, comments, bad addresses) is ignored.
        """
        path = self.write(
            "# comment\n"
            "search example.com corp.example\n"
            "domain example.com\n"
            "options ndots:5 rotate\n"
            "nameserver 10.0.0.1\n"
            "nameserver   2001:db8::53  # trailing comment\n"
            "; nameserver 10.0.0.9\n"
            "nameserver fe80::1%eth0\n"
            "nameserver not-an-address\n"
            "nameserver\n"
        )
        with capturedLogs() as events:
            servers = parse_resolv_conf(path)
        self.assertEqual(servers, [("10.0.0.1", 53), ("2001:db8::53", 53), ("fe80::1%eth0", 53)])
        self.assertEqual(len(events), 1)
        self.assertIn("not-an-address", repr(events[0]))

    def test_missingOrEmpty(self) -> None:
        """
        A missing file, or one without nameservers, means 127.0.0.1:53 (as
        the C library has it), and says so in the log.
        """
        for path in (self.mktemp(), self.write("search example.com\n")):
            with capturedLogs() as events:
                servers = parse_resolv_conf(path)
            self.assertEqual(servers, [("127.0.0.1", 53)])
            self.assertEqual(len(events), 1)
            self.assertIn("127.0.0.1:53", events[0]["log_format"])


class UpstreamTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reactor = ClockReactor(reactor, self.clock)
        self.server = self.startServer()

    def startServer(self) -> DNSServer:
        server = DNSServer()
        server.start()
        self.addCleanup(server.stop)
        return server

    def upstream(self, servers: Any = None, **kwargs: Any) -> Upstream:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("attempts", 2)
        kwargs.setdefault("deadline", 30.0)
        upstream = Upstream(servers or [self.server.address], reactor=self.reactor, **kwargs)
        # Cleanups run last-in first-out: the upstream stops before the
        # server, so its stop finds its connections open.
        self.addCleanup(upstream.stop)
        return upstream


class AnswerTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_answers(self) -> None:
        """Answers and DNS errors come as Twisted's client gives them."""
        self.server.add_txt("a.test", "app:443", ttl=60)
        self.server.set_rcode("servfail.test", dns.ESERVER)
        self.server.set_rcode("refused.test", dns.EREFUSED)
        upstream = self.upstream()
        answers, authority, additional = yield upstream.lookupText("a.test")
        self.assertEqual(answers[0].payload.data, [b"app:443"])
        answers, authority, additional = yield upstream.lookupAddress("a.test")
        self.assertEqual((answers, [r.type for r in authority]), ([], [dns.SOA]))
        yield self.assertFailure(upstream.lookupText("missing.test"), DNSNameError)
        yield self.assertFailure(upstream.lookupText("servfail.test"), DNSServerError)
        yield self.assertFailure(upstream.lookupText("refused.test"), DNSQueryRefusedError)

    @defer.inlineCallbacks
    def test_tcpFallback(self) -> None:
        """
        An answer too big for UDP comes truncated; the query is asked again
        over TCP and the whole answer returned.
        """
        for i in range(20):
            self.server.add_txt("big.test", "%02d" % i + "x" * 200)
        upstream = self.upstream()
        answers, _, _ = yield upstream.lookupText("big.test")
        self.assertEqual(len(answers), 20)
        self.assertEqual([q.protocol for q in self.server.log], ["udp", "tcp"])

    @defer.inlineCallbacks
    def test_forcedTCP(self) -> None:
        """With the server truncating everything, every answer comes over TCP."""
        self.server.add_txt("a.test", "x")
        self.server.add_txt("b.test", "y")
        self.server.truncate = True
        upstream = self.upstream()
        for name in ("a.test", "b.test"):
            answers, _, _ = yield upstream.lookupText(name)
            self.assertEqual(len(answers), 1)
        self.assertEqual([q.protocol for q in self.server.log], ["udp", "tcp", "udp", "tcp"])

    @defer.inlineCallbacks
    def test_absolute(self) -> None:
        """
        Names go out as given, whatever resolv.conf's search list and ndots
        say.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search example.com\noptions ndots:5\nnameserver 127.0.0.1\n")
        host, port = self.server.address
        upstream = Upstream.from_config(
            DNSConfig(servers=(), resolv_conf=path, timeout=1.0, attempts=1), reactor=self.reactor
        )
        self.addCleanup(upstream.stop)
        self.assertEqual(upstream.servers, (("127.0.0.1", 53),))
        # Point it at the test server (resolv.conf cannot name a port).
        upstream.client.servers = [(host, port)]
        self.server.add_a("app", "10.0.0.1")
        answers, _, _ = yield upstream.lookupAddress("app")
        self.assertEqual(len(answers), 1)
        self.assertEqual([q.name for q in self.server.log], ["app"])

    def test_fromConfig(self) -> None:
        """
        C{[dns] servers} wins over resolv.conf; timeout, attempts and
        deadline are taken; nothing is scheduled (Twisted's client re-reads
        a resolv.conf it is given on a timer: it is not given one).
        """
        config = DNSConfig(servers=(("127.0.0.2", 5353),), resolv_conf="/nonexistent", timeout=0.5, attempts=3, deadline=2.0)
        upstream = Upstream.from_config(config, reactor=self.reactor)
        self.addCleanup(upstream.stop)
        self.assertEqual(upstream.servers, (("127.0.0.2", 5353),))
        self.assertEqual(upstream.client.servers, [("127.0.0.2", 5353)])
        self.assertEqual(upstream.client.timeout, (0.5, 0.5, 0.5))
        self.assertEqual(upstream.deadline, 2.0)
        self.assertIsNone(upstream.client.resolv)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(ValueError, Upstream, [])


class TimeoutTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_attempts(self) -> None:
        """
        Each attempt waits C{timeout}; after C{attempts} of them the lookup
        fails with L{DNSQueryTimeoutError}.
        """
        self.server.outage = True
        upstream = self.upstream(timeout=1.0, attempts=3)
        d = upstream.lookupText("a.test")
        yield self.server.wait_for_queries(1)
        self.clock.advance(0.999)
        self.assertEqual(len(self.server.log), 1)
        self.clock.advance(0.001)
        yield self.server.wait_for_queries(2)
        self.clock.advance(1)
        yield self.server.wait_for_queries(3)
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        yield self.assertFailure(d, DNSQueryTimeoutError)
        self.assertEqual(len(self.server.log), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_deadline(self) -> None:
        """No lookup outlives the deadline, whatever attempts remain."""
        self.server.outage = True
        upstream = self.upstream(timeout=1.0, attempts=5, deadline=2.5)
        d = upstream.lookupText("a.test")
        yield self.server.wait_for_queries(1)
        self.clock.advance(1)
        yield self.server.wait_for_queries(2)
        self.clock.advance(1.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        yield self.assertFailure(d, DNSQueryTimeoutError)

    @defer.inlineCallbacks
    def test_failover(self) -> None:
        """A server that does not answer in time is skipped for the next."""
        down = self.server
        down.outage = True
        up = self.startServer()
        up.add_txt("a.test", "x")
        upstream = self.upstream([down.address, up.address], timeout=1.0, attempts=1)
        d = upstream.lookupText("a.test")
        yield down.wait_for_queries(1)
        self.assertEqual(up.log, [])
        self.clock.advance(1)
        answers, _, _ = yield d
        self.assertEqual(len(answers), 1)
        self.assertEqual((len(down.log), len(up.log)), (1, 1))

    @defer.inlineCallbacks
    def test_cancel(self) -> None:
        """
        Cancelling one lookup leaves the query running for another of the
        same name.
        """
        self.server.add_txt("a.test", "x")
        self.server.outage = True
        upstream = self.upstream()
        first = upstream.lookupText("a.test")
        second = upstream.lookupText("a.test")
        yield self.server.wait_for_queries(1)
        first.cancel()
        yield self.assertFailure(first, defer.CancelledError)
        self.server.outage = False
        self.clock.advance(1)  # the first attempt times out, the second is answered
        answers, _, _ = yield second
        self.assertEqual(len(answers), 1)


class StopTests(UpstreamTestCase):
    @defer.inlineCallbacks
    def test_stopUDP(self) -> None:
        """
        L{Upstream.stop} fails lookups in flight, cancels their timers and
        closes their sockets; later lookups fail at once.
        """
        self.server.outage = True
        upstream = self.upstream()
        d = upstream.lookupText("a.test")
        yield self.server.wait_for_queries(1)
        yield upstream.stop()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        yield self.assertFailure(upstream.lookupText("b.test"), defer.CancelledError)

    @defer.inlineCallbacks
    def test_stopTCP(self) -> None:
        """
        Stopping with a TCP query in flight cancels its (real-time) timer and
        closes the connection, and the reactor is left clean.
        """
        self.server.truncate = True
        self.server.add_txt("a.test", "x")
        upstream = self.upstream()
        yield upstream.lookupText("a.test")  # opens the TCP connection
        d = upstream.lookupText("b.test")
        # The UDP query is answered (truncated) before this fires...
        yield self.server.wait_for_queries(1, name="b.test")
        # ...and the TCP query that follows goes unanswered.
        self.server.outage = True
        found = yield self.server.wait_for_queries(2, name="b.test")
        self.assertEqual(found[1].protocol, "tcp")
        yield upstream.stop()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(upstream.client.connections, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
