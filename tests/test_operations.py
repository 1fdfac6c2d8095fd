"""
The daemon in operation, as a child process: reload on SIGHUP, graceful
stop on SIGTERM, the access log and its reopening on SIGUSR1.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.process import Twistd
from sniproxy.testing.tls import Collect


class Echo(Protocol):
    """Says its name, then echoes."""

    def connectionMade(self):
        self.transport.write(self.factory.name)

    def dataReceived(self, data):
        self.transport.write(data)


class Client(Collect):
    """Keeps the bytes; C{until} fires once C{n} bytes have arrived."""

    def received(self) -> bytes:
        return b"".join(self.chunks)

    @inlineCallbacks
    def until(self, n: int, timeout: float = 10.0):
        waited = 0.0
        while len(self.received()) < n:
            if self.done.called or waited > timeout:
                raise AssertionError(f"got {self.received()!r}, wanted {n} bytes")
            yield deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
        return self.received()


HELLO = make_client_hello("app.example.com")


class DaemonTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def backend(self, name: bytes) -> int:
        factory = Factory.forProtocol(Echo)
        factory.name = name
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def write_config(self, path: str, backend: int, extra: str = "") -> None:
        with open(path, "w") as f:
            f.write(
                f"""
                [proxy]
                listen = ["tcp:0:interface=127.0.0.1"]
                {extra}
                [routing.static]
                "app.example.com" = "127.0.0.1:{backend}"
                [log]
                access = "{self.access}"
                """
            )

    @inlineCallbacks
    def start(self, backend: int, extra: str = "") -> Twistd:
        self.config = os.path.abspath(self.mktemp())
        self.access = os.path.abspath(self.mktemp())
        self.write_config(self.config, backend, extra)
        child = Twistd(self.config)
        self.addCleanup(child.stop)
        yield child.start(reactor)
        return child

    @inlineCallbacks
    def connect(self, port: int) -> Client:
        client = Client()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport = protocol.transport
        protocol.transport.write(HELLO)
        return client

    @inlineCallbacks
    def test_reload_on_sighup(self):
        """
        After SIGHUP new connections follow the new map, a connection open
        across the reload keeps relaying to its backend, and a broken file
        changes nothing.
        """
        old = yield self.backend(b"old:")
        new = yield self.backend(b"new:")
        child = yield self.start(old)
        before = yield self.connect(child.port)
        self.assertEqual((yield before.until(4 + len(HELLO))), b"old:" + HELLO)

        self.write_config(self.config, new)
        reloaded = child.wait_for(b"reloaded " + self.config.encode())
        child.signal("HUP")
        yield reloaded
        after = yield self.connect(child.port)
        self.assertEqual((yield after.until(4)), b"new:" + HELLO[: len(after.received()) - 4])

        before.transport.write(b"still here")
        self.assertTrue((yield before.until(4 + len(HELLO) + 10)).endswith(HELLO + b"still here"))

        with open(self.config, "w") as f:
            f.write('[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\nidle_timeout = "never"\n')
        failed = child.wait_for(b"keeping the running config")
        child.signal("HUP")
        yield failed
        self.assertIn(b"proxy.idle_timeout: expected a number", child.output)
        third = yield self.connect(child.port)
        self.assertEqual((yield third.until(4)), b"new:" + HELLO[: len(third.received()) - 4])
        for client in (before, after, third):
            client.transport.loseConnection()
        self.assertEqual((yield child.stop()), 0)

    @inlineCallbacks
    def test_sigterm_drains_then_exits_zero(self):
        """
        SIGTERM stops accepting at once; a live connection keeps relaying
        until it ends; then the process exits with status 0.
        """
        backend = yield self.backend(b"b:")
        child = yield self.start(backend)
        live = yield self.connect(child.port)
        yield live.until(2 + len(HELLO))
        stopping = child.wait_for(b"SIGTERM")
        child.signal("TERM")
        yield stopping
        yield deferLater(reactor, 0.2, lambda: None)
        yield self.assertFailure(
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", child.port), Protocol()), ConnectionRefusedError
        )
        live.transport.write(b"last words")
        self.assertTrue((yield live.until(2 + len(HELLO) + 10)).endswith(b"last words"))
        self.assertFalse(child.ended.called)
        live.transport.loseConnection()
        self.assertEqual((yield child.ended), 0)

    @inlineCallbacks
    def test_sigterm_closes_what_outlives_shutdown_timeout(self):
        backend = yield self.backend(b"b:")
        child = yield self.start(backend, extra="shutdown_timeout = 0.5")
        live = yield self.connect(child.port)
        yield live.until(2 + len(HELLO))
        child.signal("TERM")
        yield live.done
        self.assertEqual((yield child.ended), 0)
        self.assertIn(b"closing 1 connections still open at shutdown", child.output)

    @inlineCallbacks
    def test_access_log_and_reopen_on_sigusr1(self):
        backend = yield self.backend(b"b:")
        child = yield self.start(backend)
        first = yield self.connect(child.port)
        yield first.until(2 + len(HELLO))
        first.transport.loseConnection()
        yield first.done
        yield self.wait_for_lines(self.access, 1)
        with open(self.access) as f:
            [record] = [json.loads(line) for line in f]
        self.assertEqual(record["sni"], "app.example.com")
        self.assertEqual(record["source"], "static")
        self.assertEqual(record["outcome"], "relayed")
        self.assertEqual(record["backend"], f"127.0.0.1:{backend}")
        self.assertEqual(record["bytes_up"], len(HELLO))
        self.assertEqual(record["bytes_down"], 2 + len(HELLO))
        for key in ("time", "client", "cache", "route_ms", "connect_ms", "duration_ms", "reason"):
            self.assertIn(key, record)

        os.rename(self.access, self.access + ".1")
        reopened = child.wait_for(b"reopened the access log")
        child.signal("USR1")
        yield reopened
        second = yield self.connect(child.port)
        yield second.until(2 + len(HELLO))
        second.transport.loseConnection()
        yield second.done
        yield self.wait_for_lines(self.access, 1)
        with open(self.access + ".1") as f:
            self.assertEqual(len(f.readlines()), 1)

    @inlineCallbacks
    def wait_for_lines(self, path: str, count: int, timeout: float = 10.0):
        waited = 0.0
        while waited < timeout:
            if os.path.exists(path):
                with open(path) as f:
                    if len(f.readlines()) >= count:
                        return
            yield deferLater(reactor, 0.02, lambda: None)
            waited += 0.02
        raise AssertionError(f"{path} never had {count} lines")
