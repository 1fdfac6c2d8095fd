"""
The corpus of real ClientHellos (tests/corpus/, captured from the TLS
clients installed on a machine by tests/corpus/capture.py): each one
parses to the SNI and ALPN its sidecar names, however it is cut, and
goes through the running proxy to a raw TCP backend byte for byte.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sniproxy.clienthello import ClientHelloParser
from sniproxy.testing.clienthello import split_records
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import Collect

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def corpus() -> list[tuple[str, bytes, dict]]:
    """(name, bytes, sidecar) of every capture, by name."""
    found = []
    for path in sorted(glob.glob(os.path.join(CORPUS, "*.bin"))):
        name = os.path.basename(path)[:-4]
        with open(path, "rb") as f:
            data = f.read()
        with open(path[:-4] + ".json") as f:
            sidecar = json.load(f)
        found.append((name, data, sidecar))
    return found


class CorpusTests(SynchronousTestCase):
    def test_present(self):
        """The corpus holds captures from several implementations (see capture.py)."""
        names = [name for name, _, _ in corpus()]
        for expected in ("openssl-tls12", "openssl-tls13", "curl", "python-ssl"):
            self.assertIn(expected, names)
        self.assertGreaterEqual(len(names), 6)

    def test_sidecars_describe_the_bytes(self):
        for name, data, sidecar in corpus():
            self.assertEqual(len(data), sidecar["bytes"], name)
            self.assertEqual(hashlib.sha256(data).hexdigest(), sidecar["sha256"], name)
            self.assertTrue(sidecar["client"], name)

    def test_parses_to_the_sidecar(self):
        """The SNI and ALPN found are those the client was told to send, however the bytes are cut."""
        for name, data, sidecar in corpus():
            expected = ClientHelloParser().feed(data)
            self.assertIsNotNone(expected, name)
            self.assertEqual(expected.server_name, sidecar["sni"], name)
            self.assertEqual([p.decode() for p in expected.alpn], sidecar["alpn"], name)
            self.assertEqual(["%04x" % v for v in expected.supported_versions], sidecar["supported_versions"], name)
            rng = random.Random(name)
            for stream in (data, split_records(data, 1), split_records(data, 37)):
                for _ in range(3):
                    parser = ClientHelloParser()
                    result, pos = None, 0
                    while result is None and pos < len(stream):
                        size = rng.randint(1, 64)
                        result = parser.feed(stream[pos : pos + size])
                        pos += size
                    self.assertEqual(result, expected, name)
                    self.assertEqual(parser.buffered, stream, name)


class Keep(Protocol):
    """A raw TCP backend keeping every byte."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class CorpusThroughTheProxyTests(TestCase):
    @inlineCallbacks
    def test_backend_receives_exactly_the_bytes(self):
        """
        Each capture, sent to the running proxy, is routed by the SNI of its
        sidecar and arrives at the backend byte for byte: once in one write,
        once a few bytes per write.
        """
        captures = corpus()
        backends: list[Keep] = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: backends.append(Keep()) or backends[-1])
        )
        self.addCleanup(port.stopListening)
        routes = "\n".join(f'"{sidecar["sni"]}" = "127.0.0.1:{port.getHost().port}"' for _, _, sidecar in captures)
        service, proxy_port = running_proxy(self, "[routing.static]\n" + routes + "\n")
        for name, data, sidecar in captures:
            for piece in (len(data), 5):
                backends.clear()
                client = Collect()
                protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), client)
                for i in range(0, len(data), piece):
                    protocol.transport.write(data[i : i + piece])
                    if piece < len(data):
                        yield deferLater(reactor, 0, lambda: None)
                for _ in range(500):
                    if backends and len(backends[0].data) >= len(data):
                        break
                    yield deferLater(reactor, 0.01, lambda: None)
                self.assertEqual(len(backends), 1, name)
                self.assertEqual(backends[0].data, data, name)
                protocol.transport.loseConnection()
                yield client.done
        for _ in range(500):
            if not service.factory.connections:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(service.factory.connections, set())
