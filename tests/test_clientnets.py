"""
Client networks: C{[proxy] allow_clients} and C{deny_clients}, judged
alone and on real loopback sockets bound to 127.x source addresses.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sniproxy.clientnets import ClientNetworks, RefusalLog
from sniproxy.proxyprotocol import header_v1
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import Collect


class JudgeTests(SynchronousTestCase):
    def test_empty_lists_cost_nothing(self):
        """Both lists empty: no object at all, so the factory checks nothing."""
        self.assertIsNone(ClientNetworks.from_config((), ()))

    def test_allow_list(self):
        nets = ClientNetworks(allow=["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"])
        for host in ("10.0.0.1", "10.255.255.255", "192.0.2.77", "2001:db8::1"):
            self.assertIsNone(nets.refuses(host), host)
        for host in ("11.0.0.0", "9.255.255.255", "192.0.3.0", "2001:db9::1", "::1"):
            self.assertEqual(nets.refuses(host), "not in proxy.allow_clients", host)

    def test_deny_wins(self):
        nets = ClientNetworks(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
        self.assertIsNone(nets.refuses("10.2.0.1"))
        self.assertEqual(nets.refuses("10.1.2.3"), "in proxy.deny_clients")

    def test_deny_only_lets_the_rest_in(self):
        nets = ClientNetworks(deny=["127.0.0.2/32"])
        self.assertIsNone(nets.refuses("127.0.0.1"))
        self.assertIsNone(nets.refuses("::1"))
        self.assertEqual(nets.refuses("127.0.0.2"), "in proxy.deny_clients")

    def test_ipv4_mapped_judged_as_ipv4(self):
        nets = ClientNetworks(allow=["192.0.2.0/24"], deny=["192.0.2.66/32"])
        self.assertIsNone(nets.refuses("::ffff:192.0.2.1"))
        self.assertEqual(nets.refuses("::ffff:192.0.2.66"), "in proxy.deny_clients")
        self.assertEqual(nets.refuses("::ffff:198.51.100.1"), "not in proxy.allow_clients")
        # An IPv6 network never matches an IPv4 client, and the other way round.
        self.assertEqual(ClientNetworks(allow=["::/0"]).refuses("192.0.2.1"), "not in proxy.allow_clients")

    def test_overlapping_and_adjacent_networks_merge(self):
        nets = ClientNetworks(allow=["10.0.0.0/24", "10.0.0.128/25", "10.0.1.0/24", "10.0.3.0/24"])
        self.assertEqual(nets._allow[4].starts, [0x0A000000, 0x0A000300])
        self.assertIsNone(nets.refuses("10.0.1.255"))
        self.assertEqual(nets.refuses("10.0.2.0"), "not in proxy.allow_clients")

    def test_not_an_ip(self):
        """A peer without an IP address (a UNIX socket) passes a deny list, not an allow list."""
        self.assertIsNone(ClientNetworks(deny=["0.0.0.0/0"]).refuses("/run/sniproxy.sock"))
        self.assertIsNotNone(ClientNetworks(allow=["0.0.0.0/0"]).refuses("/run/sniproxy.sock"))

    def test_refusal_log_rate_limited(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        from twisted.logger import Logger

        clock = Clock()
        refusals = RefusalLog(Logger(), clock)
        for _ in range(5):
            refusals.refused("127.0.0.2:1", "in proxy.deny_clients")
        clock.advance(1.0)
        refusals.refused("127.0.0.2:2", "in proxy.deny_clients")
        lines = [e for e in events if e.get("log_format", "").startswith("refused ")]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["suppressed"], 4)

    def test_counted_refusals_need_no_text(self):
        """Within the quiet interval a refusal is counted without its line's text; the next line says how many."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        from twisted.logger import Logger

        clock = Clock()
        refusals = RefusalLog(Logger(), clock)
        self.assertFalse(refusals.counted())  # a line is due
        refusals.refused("127.0.0.2:1", "over the limit")
        self.assertEqual([refusals.counted() for _ in range(3)], [True, True, True])
        clock.advance(1.0)
        self.assertFalse(refusals.counted())
        refusals.refused("127.0.0.2:2", "over the limit")
        lines = [e for e in events if e.get("log_format", "").startswith("refused ")]
        self.assertEqual([line.get("suppressed") for line in lines], [None, 3])


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class ThroughProxyTests(TestCase):
    """Real sockets: the client binds a 127.x source address."""

    @inlineCallbacks
    def setUp(self):
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        self.backend = port.getHost().port
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def proxy(self, proxy_table: str):
        return running_proxy(
            self,
            f"""
            [proxy]
            {proxy_table}
            [routing.static]
            "echo.example.com" = "127.0.0.1:{self.backend}"
            """,
        )

    @inlineCallbacks
    def send(self, port: int, source: str, data: bytes):
        """Connect from C{source}, send C{data}, close our side after a moment; return what came back."""
        collect = Collect()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
        protocol = yield connectProtocol(endpoint, collect)
        protocol.transport.write(data)
        yield deferLater(reactor, 0.2, lambda: None)
        protocol.transport.loseConnection()
        received = yield collect.done
        return received

    @inlineCallbacks
    def outcomes(self, service):
        """The outcome counters, once every connection has closed (polled, at most 2 s)."""
        for _ in range(100):
            if not service.factory.connections:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        registry = service.metrics.registry
        return {
            outcome: registry.get_sample_value("sniproxy_connections_total", {"outcome": outcome})
            for outcome in ("denied", "relayed")
        }

    @inlineCallbacks
    def test_denied_and_allowed_sources(self):
        """A denied source is closed before any byte is read; others are relayed."""
        service, port = self.proxy('deny_clients = ["127.0.0.2/32"]')
        hello = make_client_hello("echo.example.com")
        self.assertEqual((yield self.send(port, "127.0.0.2", hello)), b"")
        self.assertEqual((yield self.send(port, "127.0.0.3", hello)), hello)
        self.assertEqual((yield self.outcomes(service)), {"denied": 1.0, "relayed": 1.0})
        [line] = [e for e in self.events if e.get("log_format", "").startswith("refused ")]
        self.assertEqual(line["reason"], "in proxy.deny_clients")
        self.assertTrue(line["client"].startswith("127.0.0.2:"))

    @inlineCallbacks
    def test_allow_list(self):
        service, port = self.proxy('allow_clients = ["127.0.0.0/30"]\ndeny_clients = ["127.0.0.2/32"]')
        hello = make_client_hello("echo.example.com")
        self.assertEqual((yield self.send(port, "127.0.0.3", hello)), hello)
        self.assertEqual((yield self.send(port, "127.0.0.2", hello)), b"")
        self.assertEqual((yield self.send(port, "127.0.0.4", hello)), b"")
        self.assertEqual((yield self.outcomes(service)), {"denied": 2.0, "relayed": 1.0})

    @inlineCallbacks
    def test_trusted_balancer_judged_by_its_proxy_header(self):
        """Behind a trusted load balancer the client its PROXY header names is judged."""
        service, port = self.proxy('accept_proxy_from = ["127.0.0.1/32"]\ndeny_clients = ["198.51.100.0/24", "127.0.0.1/32"]')
        hello = make_client_hello("echo.example.com")
        denied = header_v1(("198.51.100.7", 5555), ("127.0.0.1", port))
        allowed = header_v1(("203.0.113.9", 5555), ("127.0.0.1", port))
        self.assertEqual((yield self.send(port, "127.0.0.1", denied + hello)), b"")
        self.assertEqual((yield self.send(port, "127.0.0.1", allowed + hello)), hello)
        self.assertEqual((yield self.outcomes(service)), {"denied": 1.0, "relayed": 1.0})
        [line] = [e for e in self.events if e.get("log_format", "").startswith("refused ")]
        self.assertTrue(line["client"].startswith("198.51.100.7:5555 via 127.0.0.1:"), line["client"])

    @inlineCallbacks
    def test_lists_reload(self):
        """A reload (SIGHUP) swaps both lists for new connections."""
        from sniproxy.config import load_config
        from sniproxy.service import ProxyService

        path = self.mktemp()
        text = (
            '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\nLISTS\n[log]\naccess = ""\n'
            f'[routing.static]\n"echo.example.com" = "127.0.0.1:{self.backend}"\n'
        )
        with open(path, "w") as f:
            f.write(text.replace("LISTS", 'deny_clients = ["127.0.0.2/32"]'))
        service = ProxyService(load_config(path))
        service.startService()
        self.addCleanup(service.stopService)
        port = next(iter(service.ports.values())).getHost().port
        hello = make_client_hello("echo.example.com")
        self.assertEqual((yield self.send(port, "127.0.0.2", hello)), b"")
        with open(path, "w") as f:
            f.write(text.replace("LISTS", 'allow_clients = ["127.0.0.2/32"]'))
        self.assertTrue(service.reload())
        self.assertEqual((yield self.send(port, "127.0.0.2", hello)), hello)
        self.assertEqual((yield self.send(port, "127.0.0.3", hello)), b"")
