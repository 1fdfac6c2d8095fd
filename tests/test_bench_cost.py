"""
Smoke tests of the cost benchmark's reference relays (L{bench.floor},
L{bench.floor_twisted}): they route by SNI, replay the ClientHello byte for
byte, relay both ways with half-close, carry a bulk stream intact, and
close a name without a route.  Real loopback sockets, a few connections,
seconds.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bench import floor_twisted, peers
from bench.cost import PLANS, goals, parse_strace_summary
from bench.harness import cpu_ns
from bench.peers import PEERS
from bench.floor import EdgeFloor, Floor, listener, parse_sni
from sniproxy.testing.clienthello import make_client_hello, split_records

TIMEOUT = 5.0


def _backend() -> socket.socket:
    sock = listener("127.0.0.1:0")
    sock.settimeout(TIMEOUT)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _recv_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def exchange(port: int, backend: socket.socket, hello: bytes) -> dict:
    """
    A client sends C{hello} + C{ping} through the relay on C{port}; the
    backend checks what arrives, answers C{pong} and ends its stream; the
    client reads to the end, then ends its own, which the backend must see.
    """
    client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        client.sendall(hello + b"ping")
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            arrived = _recv_exact(conn, len(hello) + 4)
            conn.sendall(b"pong")
            conn.shutdown(socket.SHUT_WR)
            answer = _recv_all(client)
            client.shutdown(socket.SHUT_WR)
            end = conn.recv(1)
        return {"arrived": arrived, "answer": answer, "end": end}
    finally:
        client.close()


def refused(port: int, hello: bytes) -> bytes:
    """What a client whose hello is refused reads before the relay closes (nothing, or a timeout raises)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(hello)
        return _recv_all(client)


def upload(port: int, backend: socket.socket, hello: bytes, size: int) -> tuple[str, str]:
    """C{size} random bytes client to backend through the relay; the digests sent and received."""
    payload = os.urandom(size)
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a small window: the relay must queue
    client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    received = hashlib.sha256()
    try:
        client.sendall(hello)

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            _recv_exact(conn, len(hello))
            while chunk := conn.recv(1 << 16):
                received.update(chunk)
                time.sleep(0.0002)  # a slow reader: the relay must hold back, not lose bytes
        sender.join(TIMEOUT)
    finally:
        client.close()
    return hashlib.sha256(payload).hexdigest(), received.hexdigest()


class ParseSNITests(SynchronousTestCase):
    def test_names(self) -> None:
        """The SNI of a real ClientHello, lower-cased, trailing dot gone; TLS 1.2 and 1.3 clients."""
        self.assertEqual(parse_sni(make_client_hello("Static.Bench.Test")), "static.bench.test")
        self.assertEqual(parse_sni(make_client_hello("a.example", tls_version="1.2")), "a.example")

    def test_fragmented(self) -> None:
        """A hello across several records parses; a partial one asks for more."""
        hello = split_records(make_client_hello("frag.example"), 100)
        self.assertEqual(parse_sni(hello), "frag.example")
        self.assertIsNone(parse_sni(hello[: len(hello) - 1]))
        self.assertIsNone(parse_sni(hello[:3]))

    def test_rejects(self) -> None:
        """Not a handshake record, or no SNI: rejected."""
        self.assertIs(parse_sni(b"GET / HTTP/1.1\r\n\r\n"), False)
        self.assertIs(parse_sni(make_client_hello(None)), False)


class FloorTests(SynchronousTestCase):
    """The bare-epoll relay, run by a thread of the test for a bounded time."""

    floor_class = Floor

    def setUp(self) -> None:
        self.backend = _backend()
        self.addCleanup(self.backend.close)
        routes = {"static.bench.test": self.backend.getsockname()}
        self.floor = self.floor_class(listener("127.0.0.1:0"), routes)
        self.port = self.floor.listener.getsockname()[1]
        self.stop = threading.Event()
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()

        def stop() -> None:
            self.stop.set()
            thread.join(TIMEOUT)
            for side in list(self.floor.sides.values()):
                side.sock.close()
            self.floor.listener.close()
            self.floor.epoll.close()

        self.addCleanup(stop)

    def _serve(self) -> None:
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.floor.poll_once(0.02)

    def test_relays(self) -> None:
        """Routed by SNI: the hello and what follows arrive byte for byte, the answer comes back, half-closes pass."""
        hello = make_client_hello("static.bench.test")
        result = exchange(self.port, self.backend, hello)
        self.assertEqual(result, {"arrived": hello + b"ping", "answer": b"pong", "end": b""})

    def test_no_route(self) -> None:
        """A name without a route is closed, and nothing reaches the backend."""
        self.assertEqual(refused(self.port, make_client_hello("nowhere.example")), b"")
        self.backend.settimeout(0.2)
        self.assertRaises(socket.timeout, self.backend.accept)

    def test_bulk(self) -> None:
        """A stream larger than any buffer, to a slow reader, arrives intact."""
        sent, received = upload(self.port, self.backend, make_client_hello("static.bench.test"), 8 << 20)
        self.assertEqual(sent, received)
        self.assertEqual(self.floor.connections, 1)


class EdgeFloorTests(FloorTests):
    """The same, edge-triggered (L{EdgeFloor}): no event may be lost."""

    floor_class = EdgeFloor

    def test_sequential(self) -> None:
        """Several connections one after the other: every socket closed, none left in the relay."""
        hello = make_client_hello("static.bench.test")
        for _ in range(5):
            self.assertEqual(exchange(self.port, self.backend, hello)["answer"], b"pong")
        deadline = time.monotonic() + TIMEOUT
        while self.floor.sides and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual((self.floor.sides, self.floor.connections), ({}, 5))


class SpikeTests(TestCase):
    """The design spikes on the test's own reactor; the client and backend work in a thread."""

    def _start(self, mode: str) -> int:
        self.backend = _backend()
        self.addCleanup(self.backend.close)
        self.clock = Clock()
        routes = {"static.bench.test": self.backend.getsockname(), "*.wild.test": self.backend.getsockname()}
        port, state = floor_twisted.start(reactor, mode, "127.0.0.1:0", routes, clock=self.clock)
        self.state = state

        def stop() -> None:
            ours = (floor_twisted.Side, floor_twisted.DescriptorRelay, floor_twisted.InnerEpoll)
            for descriptor in reactor.getReaders() + reactor.getWriters():
                if isinstance(descriptor, ours):
                    reactor.removeReader(descriptor)
                    reactor.removeWriter(descriptor)
                    if isinstance(descriptor, floor_twisted.DescriptorRelay):
                        descriptor.sock.close()
            if isinstance(state, floor_twisted.DescriptorRelay) and state.sweeper is not None:
                state.sweeper.stop()
            if isinstance(state, Floor):
                for side in list(state.sides.values()):
                    side.sock.close()
                state.epoll.close()
                if state.twisted_port is not None:
                    return state.twisted_port.stopListening()
                state.listener.close()
            return None

        self.addCleanup(stop)
        return port

    def _relays(self, mode: str, name: str = "static.bench.test"):
        port = self._start(mode)
        hello = make_client_hello(name)

        def check(result: dict) -> None:
            self.assertEqual(result, {"arrived": hello + b"ping", "answer": b"pong", "end": b""})
            return deferToThread(refused, port, make_client_hello("nowhere.example")).addCallback(
                self.assertEqual, b""
            )

        return deferToThread(exchange, port, self.backend, hello).addCallback(check)

    def test_descriptors(self):
        """One descriptor per socket: routes, replays, relays, half-closes, refuses an unknown name."""
        return self._relays("descriptors")

    def test_lean(self):
        """With sniproxy's parser, a wildcard route, and one record per connection to the observers."""
        records = []

        def check(_):
            self.state.observers.append(records.append)
            return deferToThread(exchange, self.port, self.backend, make_client_hello("a.wild.test")).addCallback(
                checked
            )

        def checked(result):
            self.assertEqual(result["answer"], b"pong")
            self.assertEqual(self.state.outcomes, {"relayed": 2, "no route": 1})
            (record,) = records
            self.assertEqual((record.client, record.sni, record.outcome), ("127.0.0.1", "a.wild.test", "relayed"))
            hello = len(make_client_hello("a.wild.test"))
            self.assertEqual((record.bytes_up, record.bytes_down), (hello + 4, 4))
            self.assertEqual(self.state.live, set())

        d = self._relays("lean")
        self.port = self.state.sock.getsockname()[1]
        return d.addCallback(check)

    def test_lean_hello_timeout(self):
        """A client that sends no hello is closed by the coarse clock's sweep, past the hello timeout."""
        port = self._start("lean")
        client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.addCleanup(client.close)
        done = Deferred()

        def tick(deadline=time.monotonic() + TIMEOUT):
            if self.state.hello_wait:
                self.clock.advance(floor_twisted.HELLO_TIMEOUT - 1)
                self.assertEqual(len(self.state.hello_wait), 1)  # not yet
                self.clock.advance(1 + floor_twisted.SWEEP)
                done.callback(None)
            elif time.monotonic() < deadline:
                reactor.callLater(0.01, tick)
            else:
                done.errback(AssertionError("never accepted"))

        tick()

        def check(_):
            self.assertEqual(self.state.outcomes, {"hello timeout": 1})
            self.assertEqual(self.state.hello_wait, {})
            return deferToThread(client.recv, 1).addCallback(self.assertEqual, b"")

        return done.addCallback(check)

    def test_inner(self):
        """One inner epoll as a single reader: the same."""
        return self._relays("inner")

    def test_inner_et(self):
        """The inner epoll with the edge-triggered floor: the same."""
        return self._relays("inner-et")

    def test_inner_et_bulk(self):
        """A stream larger than any buffer, to a slow reader, arrives intact through the edge-triggered inner epoll."""
        port = self._start("inner-et")
        d = deferToThread(upload, port, self.backend, make_client_hello("static.bench.test"), 8 << 20)
        return d.addCallback(lambda digests: self.assertEqual(digests[0], digests[1]))

    def test_endpoint(self):
        """The inner epoll accepting on a Twisted endpoint's listening socket: the same."""
        return self._relays("endpoint")

    def test_descriptors_bulk(self):
        """A stream larger than any buffer, to a slow reader, arrives intact through the descriptors."""
        port = self._start("descriptors")
        d = deferToThread(upload, port, self.backend, make_client_hello("static.bench.test"), 8 << 20)
        return d.addCallback(lambda digests: self.assertEqual(digests[0], digests[1]))


class CostHelpersTests(SynchronousTestCase):
    def test_cpu_ns(self) -> None:
        """This process's on-CPU nanoseconds grow with work."""
        before = cpu_ns(os.getpid())
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        time.sleep(0.01)  # off the CPU: the kernel brings the running total up to date
        self.assertGreater(cpu_ns(os.getpid()), before + 10_000_000)

    def test_quick_plan_is_bounded(self) -> None:
        """The quick plan's loops fit the 3-minute budget: every proxy and direct, ~1 s of set-up per load loop."""
        plan = PLANS["quick"]
        targets = len(PEERS) + 1
        load = plan.load_passes * targets * (plan.load_seconds + 1.0)
        sequential = (plan.warmup_rounds + plan.rounds) * targets * 0.004
        self.assertLess(load + sequential + 20, 180)

    def test_missing_peer_is_a_note(self) -> None:
        """A peer whose program or module is missing is skipped with a note, nothing started."""
        self.patch(peers, "NGINX_MODULES", ("/nonexistent/ngx_stream_module.so",))
        nginx = next(p for p in PEERS if p.name == "nginx")
        note = peers.start_peer(nginx, None, "/nonexistent", 1, 2)  # type: ignore[arg-type]
        self.assertEqual(note, "nginx or its stream module (libnginx-mod-stream) is not installed")

    def test_peer_configs(self) -> None:
        """The generated configs route both bench names to the backend's two ports, on loopback."""
        nginx = peers.nginx_config("/d", "/m.so", 8443, 9001, 9002)
        self.assertIn("static.bench.test 127.0.0.1:9001;", nginx)
        self.assertIn("stream.bench.test 127.0.0.1:9002;", nginx)
        self.assertIn("listen 127.0.0.1:8443", nginx)
        haproxy = peers.haproxy_config(8443, 9001, 9002)
        self.assertIn("use_backend b0 if { req.ssl_sni -i static.bench.test }", haproxy)
        self.assertIn("server s1 127.0.0.1:9002", haproxy)
        self.assertIn("bind 127.0.0.1:8443", haproxy)
        sniproxy = peers.sniproxy_config(9001, 9002)
        self.assertIn('"static.bench.test" = "127.0.0.1:9001"', sniproxy)
        self.assertIn('access = ""', sniproxy)

    def test_sniproxy_config_is_valid(self) -> None:
        """sniproxy accepts the config the benchmark generates for it (so a renamed key shows here, not mid-run)."""
        import tomllib

        from sniproxy.config import parse_config

        parse_config(tomllib.loads(peers.sniproxy_config(9001, 9002)))

    def test_strace_summary(self) -> None:
        """C{strace -c}'s table, with and without an errors column, to calls by name."""
        text = (
            "% time     seconds  usecs/call     calls    errors syscall\n"
            "------ ----------- ----------- --------- --------- ----------------\n"
            " 40.00    0.000400           2       200           epoll_wait\n"
            " 30.00    0.000300           3       100        50 accept4\n"
            "------ ----------- ----------- --------- --------- ----------------\n"
            "100.00    0.001000           3       300        50 total\n"
        )
        self.assertEqual(parse_strace_summary(text), {"epoll_wait": 200, "accept4": 100, "total": 300})

    def test_goals(self) -> None:
        """Goal rows: against the mean of nginx and haproxy, each met or not."""

        def seq(p50: float, p99: float) -> dict:
            return {"summary": {"median": p50, "p99": p99}}

        results = {
            "sequential": {
                "direct": seq(0.001, 0.002),
                "sniproxy": seq(0.0019, 0.004),
                "nginx": seq(0.0012, 0.003),
                "haproxy": seq(0.0012, 0.003),
                "floor": seq(0.0011, 0.003),
            },
            "concurrent": {
                "sniproxy": {"per_second": 500, "cpu": {"us_per_conn": 700}},
                "nginx": {"per_second": 700, "cpu": {"us_per_conn": 200}},
                "haproxy": {"per_second": 700, "cpu": {"us_per_conn": 240}},
                "floor": {"per_second": 720, "cpu": {"us_per_conn": 250}},
            },
            "throughput": {"nginx": {"up": 2500, "down": 2500}, "haproxy": {"up": 2500, "down": 2500}},
        }
        rows, text = goals(results)
        by = {row["proxy"]: row for row in rows}
        self.assertEqual(set(by), {"sniproxy", "floor"})
        self.assertFalse(by["sniproxy"]["cpu_met"])
        self.assertFalse(by["sniproxy"]["rate_met"])
        self.assertFalse(by["sniproxy"]["added_met"])
        self.assertTrue(by["floor"]["cpu_met"])
        self.assertTrue(by["floor"]["rate_met"])
        self.assertTrue(by["floor"]["added_met"])
        self.assertIsNone(by["floor"]["throughput_met"])
        self.assertIn("1.25 x 220 = 275", text[0])
