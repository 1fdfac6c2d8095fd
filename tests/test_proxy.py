"""
The proxy end to end on real loopback sockets: real TLS clients and
backends, real bytes.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import ResponseNeverReceived
from zope.interface import implementer

from sniproxy.proxyprotocol import PP2_TYPE_AUTHORITY, ProxyHeaderError, header_v1, parse_proxy_header
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import CertificateAuthority, Collect, https_client, listen_https


def capture_logs(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def rejections(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("log_format", "").startswith("rejected ")]


@inlineCallbacks
def listen(testcase, factory):
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    testcase.addCleanup(port.stopListening)
    return port


def queued(transport) -> int:
    """The bytes C{transport} holds for its socket (a L{SocketTransport}'s queue, or a C{tcp} transport's buffers)."""
    if hasattr(transport, "queued"):
        return transport.queued
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@inlineCallbacks
def closed_port(testcase) -> int:
    """A loopback port number nobody listens on (connects are refused)."""
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
    number = port.getHost().port
    yield port.stopListening()
    return number


class HTTPSThroughProxyTests(TestCase):
    """treq, verifying the backend's certificate, through the proxy."""

    @inlineCallbacks
    def setUp(self):
        self.ca = CertificateAuthority()
        backend = yield listen_https(reactor, self.ca.issue("shop.example.com"), b"hello from shop")
        self.addCleanup(backend.stopListening)
        self.backend_port = backend.getHost().port

    @inlineCallbacks
    def test_verified_request_through_proxy(self):
        """
        The client connects to the proxy, sends SNI shop.example.com, and
        verifies a certificate for that name: the backend's, relayed intact.
        """
        _, port = running_proxy(
            self,
            f"""
            [routing.static]
            "shop.example.com" = "127.0.0.1:{self.backend_port}"
            """,
        )
        client = https_client(reactor, self.ca, "127.0.0.1", port)
        response = yield client.get("https://shop.example.com/")
        body = yield response.content()
        self.assertEqual((response.code, body), (200, b"hello from shop"))

    @inlineCallbacks
    def test_wildcard_route(self):
        """A C{*.suffix} route takes names one or more labels below it."""
        _, port = running_proxy(
            self,
            f"""
            [routing.static]
            "*.example.com" = "127.0.0.1:{self.backend_port}"
            """,
        )
        client = https_client(reactor, self.ca, "127.0.0.1", port)
        response = yield client.get("https://shop.example.com/")
        self.assertEqual((yield response.content()), b"hello from shop")

    @inlineCallbacks
    def test_unknown_name_gets_unrecognized_name(self):
        """
        A name with no route makes the client's TLS library report the
        C{unrecognized_name} alert, and the proxy logs one line naming the
        client, the SNI and the reason.
        """
        events = capture_logs(self)
        _, port = running_proxy(
            self,
            f"""
            [routing.static]
            "shop.example.com" = "127.0.0.1:{self.backend_port}"
            """,
        )
        client = https_client(reactor, self.ca, "127.0.0.1", port)
        error = yield self.assertFailure(client.get("https://nowhere.example.com/"), ResponseNeverReceived)
        [reason] = error.reasons
        self.assertTrue(reason.check(SSL.Error))
        self.assertIn("unrecognized name", str(reason.value))
        [line] = rejections(events)
        self.assertEqual((line["sni"], line["outcome"]), ("nowhere.example.com", "no route"))
        self.assertTrue(line["client"].startswith("127.0.0.1:"))

    @inlineCallbacks
    def test_fallback_takes_unrouted_names(self):
        """With C{fallback} set, a name with no route goes there instead."""
        _, port = running_proxy(
            self,
            f"""
            [proxy]
            listen = ["tcp:0:interface=127.0.0.1"]
            fallback = "127.0.0.1:{self.backend_port}"
            """,
        )
        client = https_client(reactor, self.ca, "127.0.0.1", port)
        response = yield client.get("https://shop.example.com/")
        self.assertEqual((yield response.content()), b"hello from shop")


@implementer(IHalfCloseableProtocol)
class SlowSink(Protocol):
    """
    A peer that sends C{payload} and reads slowly: after every C{chunk}
    bytes received it stops reading for C{pause} seconds.  It keeps a hash
    of what it received.
    """

    def __init__(self, payload: bytes, chunk: int = 1 << 20, pause: float = 0.003) -> None:
        self.payload = payload
        self.chunk = chunk
        self.pause = pause
        self.received = 0
        self.hash = hashlib.sha256()
        self.head = b""
        self.done: Deferred[None] = Deferred()
        self._since_pause = 0

    def connectionMade(self) -> None:
        if self.payload:
            self.transport.write(self.payload)
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]
        self.received += len(data)
        self.hash.update(data)
        self._since_pause += len(data)
        if self._since_pause >= self.chunk:
            self._since_pause = 0
            self.transport.pauseProducing()
            reactor.callLater(self.pause, self.transport.resumeProducing)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(None)


class PortableRelayTests(TestCase):
    """
    Bytes, flow control and half-close through the relay, with the portable
    pump (the transports' own reads and writes, each the other's producer).
    """

    splice = False

    def proxy(self, routes: str):
        service, port = running_proxy(self, f"[proxy]\nsplice = {str(self.splice).lower()}\n{routes}")
        return service, port

    @inlineCallbacks
    def test_64_mib_each_way_with_slow_readers(self):
        """
        64 MiB each way arrive intact while each receiver reads slowly; the
        proxy pauses the fast sender instead of buffering, and what it
        buffers stays bounded.
        """
        size = 64 << 20
        rng = random.Random(7)
        down = rng.randbytes(size)
        hello = make_client_hello("bulk.example.com")
        up = hello + rng.randbytes(size)
        backends: list[SlowSink] = []

        def backend_protocol():
            backends.append(SlowSink(down))
            return backends[-1]

        backend = yield listen(self, Factory.forProtocol(backend_protocol))
        service, port = self.proxy(
            f"""
            [routing.static]
            "bulk.example.com" = "127.0.0.1:{backend.getHost().port}"
            """,
        )
        buffered = []

        def sample():
            for connection in service.factory.connections:
                if connection.relay is not None:
                    for transport in (connection.relay.client, connection.relay.backend):
                        buffered.append(queued(transport))

        sampler = LoopingCall(sample)
        sampler.start(0.001)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        relays = []
        original = service.factory.closed
        recorded: Deferred[None] = Deferred()

        def closed(connection):
            relays.append(connection.relay)
            original(connection)

        service.factory.closed = closed
        service.factory.record_observers.append(lambda record: recorded.called or recorded.callback(None))

        client = SlowSink(up)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.done
        yield backends[0].done
        yield recorded  # the proxy has seen both sides go
        sampler.stop()

        self.assertEqual(backends[0].received, len(up))
        self.assertEqual(backends[0].hash.digest(), hashlib.sha256(up).digest())
        self.assertEqual(backends[0].head, up[:4096])
        self.assertEqual(client.received, size)
        self.assertEqual(client.hash.digest(), hashlib.sha256(down).digest())
        [relay] = relays
        self.assertEqual(relay.pump is not None, self.splice)
        client_pauses, backend_pauses = relay.pauses
        self.assertGreater(client_pauses, 0, "the client was never paused for the slow backend")
        self.assertGreater(backend_pauses, 0, "the backend was never paused for the slow client")
        self.assertEqual((relay.up, relay.down), (len(up), size))
        self.assertLess(max(buffered), 1 << 20)

    @inlineCallbacks
    def test_half_close_passes_through(self):
        """
        The client's EOF reaches the backend as an EOF while the backend can
        still answer; the backend's answer and then its EOF reach the client.
        """

        @implementer(IHalfCloseableProtocol)
        class AnswerAfterEOF(Protocol):
            got = b""

            def dataReceived(self, data):
                self.got += data

            def readConnectionLost(self):
                self.transport.write(b"got %d bytes" % len(self.got))
                self.transport.loseConnection()

            def writeConnectionLost(self):
                pass

        backend = yield listen(self, Factory.forProtocol(AnswerAfterEOF))
        _, port = self.proxy(
            f"""
            [routing.static]
            "echo.example.com" = "127.0.0.1:{backend.getHost().port}"
            """,
        )
        hello = make_client_hello("echo.example.com")

        @implementer(IHalfCloseableProtocol)
        class Client(Collect):
            def connectionMade(self):
                self.transport.write(hello + b"x" * 1000)
                self.transport.loseWriteConnection()

            def readConnectionLost(self):
                self.transport.loseConnection()

            def writeConnectionLost(self):
                pass

        client = Client()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        answer = yield client.done
        self.assertEqual(answer, b"got %d bytes" % (len(hello) + 1000))


class SpliceRelayTests(PortableRelayTests):
    """The same through the Linux zero-copy pump (splice(2) through pipes)."""

    splice = True

    def setUp(self):
        if not hasattr(os, "splice"):
            raise SkipTest("no splice(2) here")


class ConnectTests(TestCase):
    """Fail-over across a route's addresses."""

    @inlineCallbacks
    def test_refused_first_address_fails_over(self):
        ca = CertificateAuthority()
        backend = yield listen_https(reactor, ca.issue("app.example.com"), b"second instance")
        self.addCleanup(backend.stopListening)
        refused = yield closed_port(self)
        _, port = running_proxy(
            self,
            f"""
            [routing.static]
            "app.example.com" = {{ app = "web", port = 443 }}
            [apps.web]
            backends = ["127.0.0.1:{refused}", "127.0.0.1:{backend.getHost().port}"]
            """,
        )
        client = https_client(reactor, ca, "127.0.0.1", port)
        response = yield client.get("https://app.example.com/")
        self.assertEqual((yield response.content()), b"second instance")

    @inlineCallbacks
    def test_all_refused_closes_cleanly_with_a_log_line(self):
        events = capture_logs(self)
        first = yield closed_port(self)
        second = yield closed_port(self)
        _, port = running_proxy(
            self,
            f"""
            [routing.static]
            "app.example.com" = {{ app = "web", port = 443 }}
            [apps.web]
            backends = ["127.0.0.1:{first}", "127.0.0.1:{second}"]
            """,
        )
        client = Collect()
        transport_ready = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        (yield transport_ready).transport.write(make_client_hello("app.example.com"))
        received = yield client.done
        # A fatal internal_error alert (21, 3, x, 0, 2, 2, 80), then EOF.
        self.assertEqual(received[:1] + received[3:], b"\x15\x00\x02\x02\x50")
        [line] = rejections(events)
        self.assertEqual((line["sni"], line["outcome"]), ("app.example.com", "backend unreachable"))
        self.assertIn(f"127.0.0.1:{first}: refused", line["reason"])
        self.assertIn(f"127.0.0.1:{second}: refused", line["reason"])


class HelloTimeoutTests(TestCase):
    @inlineCallbacks
    def test_client_that_never_finishes_its_hello_is_closed(self):
        """
        A client that sends part of a hello and stops is closed at
        C{hello_timeout}, measured on the injected clock.
        """
        clock = Clock()
        events = capture_logs(self)
        service, port = running_proxy(self, "[proxy]\nhello_timeout = 3.0\n", clock=clock)
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(make_client_hello("slow.example.com")[:40])
        # Wait (on the real reactor) until the proxy holds the 40 bytes.
        while not any(c.parser is not None and c.parser.buffered for c in service.factory.connections):
            yield deferLater(reactor, 0.005, lambda: None)
        [connection] = service.factory.connections
        clock.advance(2.9)
        self.assertIsNone(connection.outcome, "closed before the timeout")
        self.assertTrue(connection.transport.connected)
        clock.advance(0.2)
        received = yield client.done
        self.assertEqual(received, b"")
        [line] = rejections(events)
        self.assertEqual(line["outcome"], "hello timeout")


class MalformedInputTests(TestCase):
    @inlineCallbacks
    def test_plain_http_is_closed_at_once(self):
        """
        Bytes that are not TLS are refused on the first byte, without an
        alert (the client would not understand one) and without waiting for
        the hello timeout (the clock never moves here).
        """
        events = capture_logs(self)
        _, port = running_proxy(self, "", clock=Clock())
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual((yield client.done), b"")
        [line] = rejections(events)
        self.assertEqual((line["sni"], line["outcome"]), ("-", "malformed"))
        self.assertIn("not TLS", line["reason"])

    @inlineCallbacks
    def test_garbage_after_a_valid_record_header_gets_decode_error(self):
        """A hello whose inner length overflows its record gets a decode_error alert."""
        _, port = running_proxy(self, "", clock=Clock())
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        # A handshake record of 8 bytes whose ClientHello claims 0xffff bytes
        # but the config caps hellos at 64 KiB: the body length is fine, so
        # break the session id length instead (33 > 32).
        body = b"\x03\x03" + b"\x00" * 32 + b"\x21"
        message = b"\x01" + len(body).to_bytes(3, "big") + body
        protocol.transport.write(b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message)
        received = yield client.done
        self.assertEqual(received, b"\x15\x03\x01\x00\x02\x02\x32")


class HeaderThenCollect(Collect):
    """A backend that parses the PROXY header, if any, and keeps the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.header = None
        self.decided: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.decided.called:
            return
        received = b"".join(self.chunks)
        try:
            parsed = parse_proxy_header(received)
        except ProxyHeaderError:
            self.decided.callback(None)
            return
        if parsed is not None:
            self.header, consumed = parsed
            self.chunks = [received[consumed:]]
            self.decided.callback(None)


class ProxyProtocolTests(TestCase):
    """PROXY headers to backends, chosen by the route; and from trusted balancers."""

    @inlineCallbacks
    def relay_one(self, routes: str, name: str, first: bytes = b"", extra: str = ""):
        backends: list[HeaderThenCollect] = []
        backend = yield listen(self, Factory.forProtocol(lambda: backends.append(HeaderThenCollect()) or backends[-1]))
        service, port = running_proxy(self, routes.format(port=backend.getHost().port) + extra)
        hello = make_client_hello(name)
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(first + hello)
        client_address = protocol.transport.getHost()
        while not backends:
            yield deferLater(reactor, 0.01, lambda: None)
        yield backends[0].decided
        while len(b"".join(backends[0].chunks)) < len(hello):
            yield deferLater(reactor, 0.01, lambda: None)
        protocol.transport.loseConnection()
        yield backends[0].done
        yield client.done
        return backends[0], client_address, port, hello

    @inlineCallbacks
    def test_v1_per_static_route(self):
        backend, client_address, port, hello = yield self.relay_one(
            '[routing.static]\n"pp.example.com" = {{ backend = "127.0.0.1:{port}", proxy_protocol = 1 }}\n',
            "pp.example.com",
        )
        self.assertEqual(backend.header.version, 1)
        self.assertEqual(backend.header.source, ("127.0.0.1", client_address.port))
        self.assertEqual(backend.header.destination, ("127.0.0.1", port))
        self.assertEqual(b"".join(backend.chunks), hello)

    @inlineCallbacks
    def test_v2_per_app_with_the_sni(self):
        backend, client_address, port, hello = yield self.relay_one(
            '[routing.static]\n"pp.example.com" = {{ app = "web" }}\n'
            '[apps.web]\nbackends = ["127.0.0.1:{port}"]\nproxy_protocol = 2\n',
            "pp.example.com",
        )
        self.assertEqual((backend.header.version, backend.header.command), (2, "PROXY"))
        self.assertEqual(backend.header.source, ("127.0.0.1", client_address.port))
        self.assertEqual(backend.header.tlv(PP2_TYPE_AUTHORITY), b"pp.example.com")
        self.assertEqual(b"".join(backend.chunks), hello)

    @inlineCallbacks
    def test_off_unless_the_route_says(self):
        """Nothing the client sends can turn the header on: off means off."""
        backend, _, _, hello = yield self.relay_one(
            '[routing.static]\n"pp.example.com" = "127.0.0.1:{port}"\n', "pp.example.com"
        )
        self.assertIsNone(backend.header)
        self.assertEqual(b"".join(backend.chunks), hello)

    @inlineCallbacks
    def test_inbound_header_from_a_trusted_balancer(self):
        """
        From a trusted network, the client's PROXY header names the real
        client: the backend's header carries it, and the inbound header is
        never forwarded.
        """
        inbound = header_v1(("203.0.113.7", 4242), ("198.51.100.1", 443))
        backend, _, _, hello = yield self.relay_one(
            '[routing.static]\n"pp.example.com" = {{ backend = "127.0.0.1:{port}", proxy_protocol = 2 }}\n',
            "pp.example.com",
            first=inbound,
            extra='[proxy]\naccept_proxy_from = ["127.0.0.0/8"]\n',
        )
        self.assertEqual(backend.header.source, ("203.0.113.7", 4242))
        self.assertEqual(backend.header.destination, ("198.51.100.1", 443))
        self.assertEqual(b"".join(backend.chunks), hello)

    @inlineCallbacks
    def test_inbound_header_from_an_untrusted_peer_is_not_tls(self):
        events = capture_logs(self)
        _, port = running_proxy(self, '[proxy]\naccept_proxy_from = ["10.0.0.0/8"]\n')
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(header_v1(("203.0.113.7", 4242), ("198.51.100.1", 443)))
        yield client.done
        [line] = rejections(events)
        self.assertIn("not TLS", line["reason"])


class InternalErrorTests(TestCase):
    @inlineCallbacks
    def test_a_bug_in_our_callbacks_closes_the_connection(self):
        """
        An exception in the proxy's own code after routing (here, the relay
        cannot start) is logged and the connection closed, not left hanging.
        """
        from sniproxy import relay

        def broken(self, *args, **kwargs):
            raise RuntimeError("boom")

        self.patch(relay.Relay, "start", broken)
        backend = yield listen(self, Factory.forProtocol(Protocol))
        service, port = running_proxy(self, f'[routing.static]\n"a.example" = "127.0.0.1:{backend.getHost().port}"\n')
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(make_client_hello("a.example"))
        yield client.done
        yield service.factory.drain(5)
        [error] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(error.value), "boom")


class NoCyclesTests(TestCase):
    """
    A connection's objects are freed by reference counting as it closes,
    never left for the cyclic garbage collector (whose passes a busy proxy
    would pay for with every connection).
    """

    @inlineCallbacks
    def check(self, splice: bool):
        class Answer(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"answer")
                self.transport.loseConnection()

        backend = yield listen(self, Factory.forProtocol(Answer))
        route = f'"a.example" = "127.0.0.1:{backend.getHost().port}"'
        service, port = running_proxy(self, f"[proxy]\nsplice = {str(splice).lower()}\n[routing.static]\n{route}\n")
        hello = {"relayed": make_client_hello("a.example"), "rejected": make_client_hello("unrouted.example")}

        @inlineCallbacks
        def connections(n: int, kind: str):
            for _ in range(n):
                client = Collect()
                protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
                protocol.transport.write(hello[kind])
                yield client.done
                yield until_closed(service)

        yield connections(3, "relayed")  # warm: whatever is built once
        gc.collect()
        self.addCleanup(gc.set_debug, 0)
        gc.set_debug(gc.DEBUG_SAVEALL)
        yield connections(10, "relayed")
        yield connections(5, "rejected")
        gc.collect()
        # The proxy's own objects (the test's clients are Twisted's tcp.Client,
        # whose cycles are not ours to judge).
        found = sorted(
            {
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.startswith("sniproxy") and not type(o).__module__.startswith("sniproxy.testing")
            }
        )
        gc.set_debug(0)
        del gc.garbage[:]
        self.assertEqual(found, [])

    def test_spliced(self):
        if not hasattr(os, "splice"):
            raise SkipTest("no splice(2) here")
        return self.check(True)

    def test_portable(self):
        return self.check(False)


@inlineCallbacks
def until_closed(service):
    for _ in range(2000):
        if not service.factory.connections:
            return
        yield deferLater(reactor, 0.001, lambda: None)
    raise AssertionError("the proxy did not close the connection")
