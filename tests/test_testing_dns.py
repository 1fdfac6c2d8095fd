"""
Tests for L{sniproxy.testing.dns} (the in-process DNS server) and
L{sniproxy.testing.clock} (the reactor on a clock), with raw DNS messages
over real loopback sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IReactorUDP
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError
from twisted.trial.unittest import TestCase

import sniproxy
from sniproxy.testing.clock import ClockReactor
from sniproxy.testing.dns import DNSServer, QueryRecord


class _Controller:
    """Just enough of a controller for a client-side L{dns.DNSProtocol}."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self, protocol: Any) -> None:
        pass

    def connectionLost(self, protocol: Any) -> None:
        self.lost.callback(None)

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        pass


class ServerTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = DNSServer(clock=self.clock)
        self.server.start()
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def udp(self, name: str, type: int, clock: Any = None) -> Any:
        """Ask over UDP; the whole response L{dns.Message}."""
        protocol = dns.DNSDatagramProtocol(None, reactor=ClockReactor(reactor, clock) if clock else reactor)
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        try:
            return (yield protocol.query(self.server.address, [dns.Query(name, type)], timeout=10))
        finally:
            yield port.stopListening()

    @defer.inlineCallbacks
    def tcp(self, name: str, type: int) -> Any:
        """Ask over TCP; the whole response L{dns.Message}."""
        controller = _Controller()
        endpoint = TCP4ClientEndpoint(reactor, *self.server.address)
        protocol = yield connectProtocol(endpoint, dns.DNSProtocol(controller))
        try:
            return (yield protocol.query([dns.Query(name, type)], timeout=10))
        finally:
            protocol.transport.loseConnection()
            yield controller.lost


class AnswerTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_samePortUDPAndTCP(self) -> None:
        """The server answers on UDP and TCP on one port number."""
        self.server.add_a("a.test", "10.0.0.1")
        self.assertEqual(self.server.address, ("127.0.0.1", self.server.port))
        self.assertNotEqual(self.server.port, 0)
        udp = yield self.udp("a.test", dns.A)
        tcp = yield self.tcp("a.test", dns.A)
        self.assertEqual(udp.answers[0].payload.dottedQuad(), "10.0.0.1")
        self.assertEqual(tcp.answers[0].payload.dottedQuad(), "10.0.0.1")
        self.assertEqual([q.protocol for q in self.server.log], ["udp", "tcp"])

    @defer.inlineCallbacks
    def test_records(self) -> None:
        """
        A, AAAA and TXT records come back with their TTLs; a TXT record
        keeps its character-strings apart; several records of a type all
        come back.
        """
        self.server.add_a("Host.Test.", "10.0.0.1", ttl=30)
        self.server.add_a("host.test", "10.0.0.2", ttl=40)
        self.server.add_aaaa("host.test", "2001:db8::1", ttl=50)
        self.server.add_txt("host.test", "first", b"second", ttl=60)
        a = yield self.udp("host.test", dns.A)
        aaaa = yield self.udp("HOST.test", dns.AAAA)
        txt = yield self.udp("host.test.", dns.TXT)
        self.assertEqual(
            [(r.payload.dottedQuad(), r.ttl) for r in a.answers], [("10.0.0.1", 30), ("10.0.0.2", 40)]
        )
        self.assertEqual(aaaa.answers[0].ttl, 50)
        self.assertEqual(aaaa.answers[0].payload.address, bytes.fromhex("20010db8" + "0" * 23 + "1"))
        self.assertEqual(txt.answers[0].payload.data, [b"first", b"second"])
        self.assertEqual(txt.answers[0].ttl, 60)
        self.assertTrue(txt.auth)

    @defer.inlineCallbacks
    def test_cnameChain(self) -> None:
        """A CNAME chain is followed, the whole chain in the answer."""
        self.server.add_cname("a.test", "b.test", ttl=10)
        self.server.add_cname("b.test", "c.test", ttl=20)
        self.server.add_txt("c.test", "end", ttl=30)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual(
            [(r.name.name, r.type, r.ttl) for r in message.answers],
            [(b"a.test", dns.CNAME, 10), (b"b.test", dns.CNAME, 20), (b"c.test", dns.TXT, 30)],
        )
        cname = yield self.udp("a.test", dns.CNAME)
        self.assertEqual([r.type for r in cname.answers], [dns.CNAME])

    @defer.inlineCallbacks
    def test_nxdomain(self) -> None:
        """
        A name that does not exist is NXDOMAIN, with the SOA of the closest
        zone (TTL and MINIMUM as set) in the authority section.
        """
        self.server.set_soa("test", ttl=40, minimum=20)
        message = yield self.udp("missing.test", dns.TXT)
        self.assertEqual(message.rCode, dns.ENAME)
        self.assertEqual(message.answers, [])
        [soa] = message.authority
        self.assertEqual((soa.name.name, soa.type, soa.ttl, soa.payload.minimum), (b"test", dns.SOA, 40, 20))
        outside = yield self.udp("missing.example", dns.TXT)
        self.assertEqual(outside.rCode, dns.ENAME)
        self.assertEqual(outside.authority[0].name.name, b"")

    @defer.inlineCallbacks
    def test_nodata(self) -> None:
        """
        A name with other types, a zone apex, or a name with names below it
        is NODATA: no error, no answer, the SOA in the authority section.
        """
        self.server.set_soa("test", ttl=40, minimum=20)
        self.server.add_a("a.b.test", "10.0.0.1")
        for name in ("a.b.test", "b.test", "test"):
            message = yield self.udp(name, dns.TXT)
            self.assertEqual((message.rCode, message.answers), (dns.OK, []), name)
            self.assertEqual(message.authority[0].type, dns.SOA)
        # A CNAME to a name without the type: the chain, no error.
        self.server.add_cname("c.test", "a.b.test")
        message = yield self.udp("c.test", dns.TXT)
        self.assertEqual((message.rCode, [r.type for r in message.answers]), (dns.OK, [dns.CNAME]))

    @defer.inlineCallbacks
    def test_removeSOA(self) -> None:
        """Without a zone, negative answers carry no SOA."""
        self.server.remove_soa("")
        message = yield self.udp("missing.test", dns.TXT)
        self.assertEqual((message.rCode, message.authority), (dns.ENAME, []))

    @defer.inlineCallbacks
    def test_soaQuery(self) -> None:
        """The SOA of a zone is a record at its apex."""
        self.server.set_soa("test", ttl=40, minimum=20)
        message = yield self.udp("test", dns.SOA)
        self.assertEqual([r.type for r in message.answers], [dns.SOA])

    @defer.inlineCallbacks
    def test_replaceAndRemove(self) -> None:
        """
        L{DNSServer.replace} swaps the records of a type; L{DNSServer.remove}
        takes a type or the whole name away (then it is NXDOMAIN).
        """
        self.server.add_txt("a.test", "old")
        self.server.add_a("a.test", "10.0.0.1")
        self.server.replace("a.test", dns.TXT, dns.Record_TXT(b"new"), ttl=5)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual([(r.payload.data, r.ttl) for r in message.answers], [([b"new"], 5)])
        self.server.remove("a.test", dns.TXT)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual((message.rCode, message.answers), (dns.OK, []))
        self.server.remove("a.test")
        message = yield self.udp("a.test", dns.A)
        self.assertEqual(message.rCode, dns.ENAME)
        self.assertRaises(ValueError, self.server.replace, "a.test", dns.TXT, dns.Record_A("10.0.0.1"))

    @defer.inlineCallbacks
    def test_rcode(self) -> None:
        """L{DNSServer.set_rcode} makes a name fail, until undone."""
        self.server.add_txt("a.test", "x")
        self.server.set_rcode("a.test", dns.ESERVER)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual((message.rCode, message.answers), (dns.ESERVER, []))
        self.server.set_rcode("a.test", dns.EREFUSED)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual(message.rCode, dns.EREFUSED)
        self.server.set_rcode("a.test", None)
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual((message.rCode, len(message.answers)), (dns.OK, 1))


class TruncationTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_bigAnswer(self) -> None:
        """
        Over UDP an answer over 512 bytes is cut short with TC set; over TCP
        it comes whole.
        """
        for i in range(10):
            self.server.add_txt("big.test", "%02d" % i + "x" * 200)
        udp = yield self.udp("big.test", dns.TXT)
        tcp = yield self.tcp("big.test", dns.TXT)
        self.assertTrue(udp.trunc)
        self.assertLess(len(udp.answers), 10)
        self.assertFalse(tcp.trunc)
        self.assertEqual(len(tcp.answers), 10)

    @defer.inlineCallbacks
    def test_truncateSwitch(self) -> None:
        """With L{DNSServer.truncate}, every UDP answer is empty with TC."""
        self.server.add_txt("a.test", "small")
        self.server.truncate = True
        udp = yield self.udp("a.test", dns.TXT)
        tcp = yield self.tcp("a.test", dns.TXT)
        self.assertEqual((udp.trunc, udp.answers), (1, []))
        self.assertEqual(len(tcp.answers), 1)


class TimingTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_delay(self) -> None:
        """
        With a delay, the answer leaves when the server's clock has moved
        that far; a per-name delay overrides the server-wide one.
        """
        self.server.add_txt("a.test", "x")
        self.server.delay = 2.0
        d = self.udp("a.test", dns.TXT)
        yield self.server.wait_for_queries(1)
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        message = yield d
        self.assertEqual(len(message.answers), 1)

        self.server.set_delay("a.test", 0.5)
        d = self.udp("a.test", dns.TXT)
        yield self.server.wait_for_queries(2)
        self.clock.advance(0.5)
        yield d
        self.server.set_delay("a.test", None)
        self.server.delay = 0
        yield self.udp("a.test", dns.TXT)

    @defer.inlineCallbacks
    def test_outage(self) -> None:
        """During an outage queries are logged and dropped: clients time out."""
        self.server.add_txt("a.test", "x")
        self.server.outage = True
        clientClock = Clock()
        d = self.udp("a.test", dns.TXT, clock=clientClock)
        yield self.server.wait_for_queries(1)
        clientClock.advance(10)
        yield self.assertFailure(d, DNSQueryTimeoutError)
        self.server.outage = False
        message = yield self.udp("a.test", dns.TXT)
        self.assertEqual(len(message.answers), 1)

    @defer.inlineCallbacks
    def test_stopDropsDelayedAnswers(self) -> None:
        """
        L{DNSServer.stop} cancels answers held back and closes TCP
        connections (the test's clean reactor checks that).
        """
        self.server.delay = 5.0
        clientClock = Clock()
        d = self.udp("a.test", dns.TXT, clock=clientClock)
        yield self.server.wait_for_queries(1)
        controller = _Controller()
        yield connectProtocol(TCP4ClientEndpoint(reactor, *self.server.address), dns.DNSProtocol(controller))
        yield self.server.stop()
        yield controller.lost
        self.assertEqual(self.clock.getDelayedCalls(), [])
        clientClock.advance(10)
        yield self.assertFailure(d, DNSQueryTimeoutError)


class LogTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_log(self) -> None:
        """
        Every query is logged with its normalised name, type, protocol and
        the clock's time; L{DNSServer.queries_for} filters the log;
        L{DNSServer.reset_log} empties it.
        """
        self.clock.advance(7)
        self.server.add_a("a.test", "10.0.0.1")
        yield self.udp("A.Test.", dns.A)
        yield self.udp("a.test", dns.TXT)
        yield self.tcp("b.test", dns.A)
        self.assertEqual(
            self.server.log,
            [
                QueryRecord("a.test", dns.A, "udp", 7.0),
                QueryRecord("a.test", dns.TXT, "udp", 7.0),
                QueryRecord("b.test", dns.A, "tcp", 7.0),
            ],
        )
        self.assertEqual(len(self.server.queries_for("A.TEST.")), 2)
        self.assertEqual(len(self.server.queries_for("a.test", dns.TXT)), 1)
        self.assertEqual(len(self.server.queries_for("b.test", protocol="udp")), 0)
        self.server.reset_log()
        self.assertEqual(self.server.log, [])

    @defer.inlineCallbacks
    def test_waitForQueries(self) -> None:
        """
        L{DNSServer.wait_for_queries} fires once enough matching queries
        arrived, and fails after its (real) timeout.
        """
        d = self.server.wait_for_queries(2, name="a.test", type=dns.A)
        yield self.udp("a.test", dns.A)
        yield self.udp("a.test", dns.TXT)
        self.assertNoResult(d)
        yield self.udp("a.test", dns.A)
        found = yield d
        self.assertEqual(len(found), 2)
        yield self.assertFailure(self.server.wait_for_queries(5, timeout=0.01), defer.TimeoutError)


class LoadTests(TestCase):
    @defer.inlineCallbacks
    def test_load(self) -> None:
        """L{DNSServer.load} reads the JSON records format."""
        server = DNSServer()
        server.load(
            {
                "records": [
                    {"name": "a.test", "type": "TXT", "value": ["app", "x:443"], "ttl": 60},
                    {"name": "b.test", "type": "A", "value": "10.0.0.1"},
                    {"name": "c.test", "type": "cname", "value": "b.test"},
                ],
                "soa": [{"zone": "test", "ttl": 30, "minimum": 5}],
                "delay": 0.25,
            }
        )
        self.assertEqual(server.delay, 0.25)
        server.delay = 0
        server.start()
        self.addCleanup(server.stop)
        from twisted.names import client

        resolver = client.Resolver(servers=[server.address])
        answers, _, _ = yield resolver.lookupText("a.test")
        self.assertEqual(answers[0].payload.data, [b"app", b"x:443"])
        answers, _, _ = yield resolver.lookupAddress("c.test")
        self.assertEqual([r.type for r in answers], [dns.CNAME, dns.A])
        self.assertRaises(ValueError, server.load, {"records": [{"name": "x", "type": "MX", "value": ""}]})

    def test_commandLine(self) -> None:
        """
        C{python -m sniproxy.testing.dns --records FILE} serves the file and
        prints where it listens.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"records": [{"name": "a.test", "type": "A", "value": "10.0.0.9"}]}, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(sniproxy.__file__)))
        child = subprocess.Popen(
            [sys.executable, "-m", "sniproxy.testing.dns", "--records", path],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))},
        )
        try:
            assert child.stdout is not None
            host, port = child.stdout.readline().split()
            message = dns.Message(id=7, recDes=1)
            message.queries = [dns.Query("a.test", dns.A)]
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)
                sock.sendto(message.toStr(), (host.decode(), int(port)))
                response = dns.Message()
                response.fromStr(sock.recv(512))
        finally:
            child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        self.assertEqual(response.answers[0].payload.dottedQuad(), "10.0.0.9")


class ClockReactorTests(TestCase):
    def test_time(self) -> None:
        """Time comes from the clock, the rest from the reactor."""
        clock = Clock()
        hybrid = ClockReactor(reactor, clock)
        calls: list[int] = []
        call = hybrid.callLater(5, calls.append, 1)
        self.assertEqual(hybrid.getDelayedCalls(), [call])
        self.assertNotIn(call, reactor.getDelayedCalls())
        clock.advance(5)
        self.assertEqual((calls, hybrid.seconds()), ([1], 5.0))
        self.assertEqual(hybrid.listenUDP, reactor.listenUDP)
        for interface in (IReactorTime, IReactorUDP, IReactorTCP):
            self.assertTrue(interface.providedBy(hybrid), interface)


class IPv6Tests(TestCase):
    @defer.inlineCallbacks
    def test_ipv6(self) -> None:
        """The server listens on IPv6 loopback too."""
        import socket

        if not socket.has_ipv6:
            raise self.skipTest("no IPv6")
        server = DNSServer(interface="::1")
        try:
            server.start()
        except Exception as error:  # no ::1 in this sandbox
            raise self.skipTest(f"cannot listen on ::1: {error}")
        self.addCleanup(server.stop)
        server.add_a("a.test", "10.0.0.1")
        from twisted.names import client

        answers, _, _ = yield client.Resolver(servers=[server.address]).lookupAddress("a.test")
        self.assertEqual(len(answers), 1)


class ControlChannelTests(ServerTestCase):
    """The C{--control} commands the benchmark drives the server with."""

    def setUp(self):
        super().setUp()
        from sniproxy.testing.dns import _Control

        self.control = _Control(self.server)

    @defer.inlineCallbacks
    def test_commands(self):
        self.server.add_txt("_x.a.test", "app:443", ttl=30)
        self.assertEqual(self.control.command("delay 0.25"), "ok delay 0.25")
        self.assertEqual(self.server.delay, 0.25)
        self.assertEqual(self.control.command("delay 0"), "ok delay 0")
        self.assertEqual(self.control.command("ttl 2 _x.a.test"), "ok ttl 2 records=1")
        response = yield self.udp("_x.a.test", dns.TXT)
        self.assertEqual(response.answers[0].ttl, 2)
        self.assertEqual(json.loads(self.control.command("stats")), {"queries": 1, "names": {"_x.a.test": 1}})
        self.assertEqual(self.control.command("reset"), "ok reset")
        self.assertEqual(json.loads(self.control.command("stats"))["queries"], 0)
        self.assertEqual(self.control.command("outage on"), "ok outage on")
        self.assertTrue(self.server.outage)
        self.assertEqual(self.control.command("outage off"), "ok outage off")

    def test_bad_commands(self):
        self.assertEqual(self.control.command(""), "error: empty command")
        self.assertEqual(self.control.command("outage maybe"), "error: unknown command 'outage maybe'")
        self.assertTrue(self.control.command("delay soon").startswith("error: "))

    @defer.inlineCallbacks
    def test_caching_forwarder_commands(self):
        """
        In front of an authority (C{--caching}), delay, outage and ttl act on
        the authority; stats and reset on the forwarder, plus the
        authority's count.
        """
        from sniproxy.testing.dns import DNSServer, _Control

        authority = DNSServer()
        authority.start()
        self.addCleanup(authority.stop)
        authority.add_txt("_x.a.test", "app:443", ttl=30)
        self.server.forward_to(authority)
        control = _Control(self.server, authority)
        self.assertEqual(control.command("delay 0.05"), "ok delay 0.05")
        self.assertEqual((authority.delay, self.server.delay), (0.05, 0.0))
        self.assertEqual(control.command("delay 0"), "ok delay 0")
        first = yield self.udp("_x.a.test", dns.TXT)
        second = yield self.udp("_x.a.test", dns.TXT)
        self.assertEqual([first.auth, second.auth, second.recAv], [0, 0, 1])
        self.assertEqual(
            json.loads(control.command("stats")),
            {"queries": 2, "names": {"_x.a.test": 2}, "authority_queries": 1},
        )
        self.assertEqual(control.command("outage on"), "ok outage on")
        self.assertEqual((authority.outage, self.server.outage), (True, False))
        self.assertEqual(control.command("reset"), "ok reset")
        self.assertEqual((len(self.server.log), len(authority.log)), (0, 0))
