"""
DNS-routed connections end to end: the running proxy, its DNS layer asking
the in-process DNS server, real TLS clients (treq, verifying the backend's
certificate through the proxy) and real backends on loopback.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import TestCase

from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.proxy import running_proxy
from sniproxy.testing.tls import CertificateAuthority, Collect, https_client, listen_https

# A fatal alert record: type 21, version (whatever the client used), length
# 2, level fatal (2), then the description.
INTERNAL_ERROR = b"\x15\x00\x02\x02\x50"
UNRECOGNIZED_NAME = b"\x15\x00\x02\x02\x70"

PRIMARY = "_dstack-app-address.shop.example.com"
LEGACY = "_tapp-address.shop.example.com"
WILDCARD = "_dstack-app-address-wildcard.example.com"


class Counting(Factory):
    """A plain TCP backend that only counts the connections it accepts."""

    protocol = Protocol

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return super().buildProtocol(addr)


class DNSRoutingTestCase(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.dns = DNSServer()
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.dns.set_soa("example.com", ttl=300, minimum=60)
        self.ca = CertificateAuthority()
        certificate = self.ca.issue("shop.example.com", "*.gw.example.com", "app.svc.test")
        backend = yield listen_https(reactor, certificate, b"hello from the app")
        self.addCleanup(backend.stopListening)
        self.backend_port = backend.getHost().port
        self.counting = Counting()
        counted = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.counting)
        self.addCleanup(counted.stopListening)
        self.counted_port = counted.getHost().port
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def proxy(self, routing: str, apps: str = ""):
        service, port = running_proxy(
            self,
            f"""
            [dns]
            servers = ["127.0.0.1:{self.dns.port}"]
            {routing}
            [apps.myapp]
            backends = ["127.0.0.1"]
            [apps.fixed]
            backends = ["127.0.0.1:{self.backend_port}"]
            [apps.counted]
            backends = ["127.0.0.1:{self.counted_port}"]
            {apps}
            """,
        )
        self.client = https_client(reactor, self.ca, "127.0.0.1", port)
        return service, port

    @inlineCallbacks
    def get(self, url: str):
        response = yield self.client.get(url)
        body = yield response.content()
        return response.code, body

    def queries(self) -> list[tuple[str, str]]:
        return [(q.name, dns.QUERY_TYPES[q.type]) for q in self.dns.log]

    @inlineCallbacks
    def alert_for(self, port: int, name: str):
        """Send a hello for C{name}; what the proxy answers, the record version masked out."""
        client = Collect()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(make_client_hello(name))
        received = yield client.done
        return received[:1] + received[3:]

    def rejections(self) -> list[dict]:
        return [e for e in self.events if e.get("log_format", "").startswith("rejected ")]


class TXTRoutingTests(DNSRoutingTestCase):
    ROUTING = '[routing]\nsources = ["static", "txt"]'

    @inlineCallbacks
    def test_custom_domain_by_txt(self):
        """
        treq, verifying the backend's certificate through the proxy, for a
        custom domain routed by its TXT record: one query on the first
        connection, none on the next; no legacy or wildcard query.
        """
        self.dns.add_txt(PRIMARY, f"myapp:{self.backend_port}", ttl=300)
        self.dns.add_txt(LEGACY, "counted:1")
        self.proxy(self.ROUTING)
        self.assertEqual((yield self.get("https://shop.example.com/")), (200, b"hello from the app"))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])
        self.assertEqual((yield self.get("https://shop.example.com/again")), (200, b"hello from the app"))
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])

    @inlineCallbacks
    def test_legacy_record_after_primary_nxdomain(self):
        """
        The legacy query goes out only after the primary's answer came
        back (held 0.2 s here); the route works, and the second connection
        sends no query.
        """
        self.dns.add_txt(LEGACY, "fixed:1", ttl=300)
        self.dns.set_delay(PRIMARY, 0.2)
        self.proxy(self.ROUTING)
        self.assertEqual((yield self.get("https://shop.example.com/")), (200, b"hello from the app"))
        primary, legacy = self.dns.log
        self.assertEqual((primary.name, legacy.name), (PRIMARY, LEGACY))
        self.assertGreaterEqual(legacy.time - primary.time, 0.2)
        self.assertEqual((yield self.get("https://shop.example.com/")), (200, b"hello from the app"))
        self.assertEqual(len(self.dns.log), 2)

    @inlineCallbacks
    def test_servfail_primary_is_refused(self):
        """
        SERVFAIL on the primary with a legacy record present: no legacy
        query, an internal_error alert, no backend connection.
        """
        self.dns.set_rcode(PRIMARY, dns.ESERVER)
        self.dns.add_txt(LEGACY, "counted:1")
        _, port = self.proxy(self.ROUTING)
        self.assertEqual((yield self.alert_for(port, "shop.example.com")), INTERNAL_ERROR)
        self.assertEqual(self.queries(), [(PRIMARY, "TXT")])
        self.assertEqual(self.counting.connections, 0)
        [line] = self.rejections()
        self.assertEqual((line["sni"], line["outcome"]), ("shop.example.com", "routing failed"))
        self.assertIn(f"TXT {PRIMARY} lookup failed: DNSServerError", line["reason"])

    @inlineCallbacks
    def test_not_an_open_relay(self):
        """
        TXT values naming an unregistered app, C{localhost} or an IP
        address -- on the port of a live backend, so any connect would be
        counted -- are refused with an alert and one log line naming the
        record; nothing connects anywhere.
        """
        port = self.counted_port
        values = {
            "a.example.com": f"nosuchapp:{port}",
            "b.example.com": f"localhost:{port}",
            "c.example.com": f"127.0.0.1:{port}",
            "d.example.com": "localhost:22",
            "e.example.com": "127.0.0.1:22",
        }
        for name, value in values.items():
            self.dns.add_txt(f"_dstack-app-address.{name}", value)
        _, proxy_port = self.proxy(self.ROUTING)
        for name in values:
            self.assertEqual((yield self.alert_for(proxy_port, name)), INTERNAL_ERROR, name)
        self.assertEqual(self.counting.connections, 0)
        lines = self.rejections()
        self.assertEqual([line["sni"] for line in lines], list(values))
        for line, (name, value) in zip(lines, values.items()):
            self.assertIn(f'TXT _dstack-app-address.{name} = "{value}"', line["reason"])
        # Every name's primary record answered: nothing fell through.
        self.assertEqual(len(self.dns.log), len(values))

    @inlineCallbacks
    def test_no_record_is_unrecognized_name(self):
        _, port = self.proxy(self.ROUTING)
        self.assertEqual((yield self.alert_for(port, "shop.example.com")), UNRECOGNIZED_NAME)
        self.assertEqual(self.queries(), [(PRIMARY, "TXT"), (LEGACY, "TXT"), (WILDCARD, "TXT")])


class SubdomainRoutingTests(DNSRoutingTestCase):
    ROUTING = '[routing]\nsources = ["subdomain", "txt"]\n[routing.subdomain]\nbase_domains = ["gw.example.com"]'

    @inlineCallbacks
    def test_port_in_the_name(self):
        """C{<app>-<port>s.<base>}: the app's instance on that port; no DNS query."""
        self.proxy(self.ROUTING)
        url = f"https://myapp-{self.backend_port}s.gw.example.com/"
        self.assertEqual((yield self.get(url)), (200, b"hello from the app"))
        self.assertEqual(self.dns.log, [])

    @inlineCallbacks
    def test_short_form(self):
        """C{<app>s.<base>}: port 443, which this app's instance overrides."""
        self.proxy(self.ROUTING)
        self.assertEqual((yield self.get("https://fixeds.gw.example.com/")), (200, b"hello from the app"))

    @inlineCallbacks
    def test_refusals(self):
        """
        A second label below the base, and a name without C{s}: alerts, no
        backend connection, no DNS query (the refusal stops the chain).
        """
        _, port = self.proxy(self.ROUTING)
        self.assertEqual((yield self.alert_for(port, "a.counted-s.gw.example.com")), INTERNAL_ERROR)
        self.assertEqual((yield self.alert_for(port, "counted.gw.example.com")), INTERNAL_ERROR)
        self.assertEqual(self.counting.connections, 0)
        self.assertEqual(self.dns.log, [])
        first, second = self.rejections()
        self.assertIn("more than one label below the base domain gw.example.com", first["reason"])
        self.assertIn("TLS termination is not supported", second["reason"])

    @inlineCallbacks
    def test_unknown_app_falls_through(self):
        """An unknown id is no route: the next source (TXT) is asked."""
        self.dns.add_txt("_dstack-app-address.nope-s.gw.example.com", "fixed:1")
        self.proxy(self.ROUTING)
        self.assertEqual((yield self.get("https://nope-s.gw.example.com/")), (200, b"hello from the app"))


class SystemRoutingTests(DNSRoutingTestCase):
    @inlineCallbacks
    def test_allowed_name_through_getaddrinfo(self):
        """
        An allowed name goes to its own addresses on the configured port.
        (getaddrinfo is replaced: the test machine's resolver knows no
        such name; the proxy's threads still run it.)
        """
        service, _ = self.proxy(
            f'[routing]\nsources = ["system"]\n[routing.system]\nallow = ["*.svc.test"]\n'
            f"port = {self.backend_port}\nallow_private = true"
        )
        asked = []

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            asked.append((host, port, type))
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        [system] = service.factory.router.source.sources
        system.getaddrinfo = getaddrinfo
        self.assertEqual((yield self.get("https://app.svc.test/")), (200, b"hello from the app"))
        self.assertEqual(asked, [("app.svc.test.", self.backend_port, socket.SOCK_STREAM)])

    @inlineCallbacks
    def test_private_address_refused(self):
        service, port = self.proxy(
            f'[routing]\nsources = ["system"]\n[routing.system]\nallow = ["*.svc.test"]\nport = {self.counted_port}'
        )
        [system] = service.factory.router.source.sources
        system.getaddrinfo = lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        self.assertEqual((yield self.alert_for(port, "db.svc.test")), INTERNAL_ERROR)
        self.assertEqual(self.counting.connections, 0)
        [line] = self.rejections()
        self.assertIn("every address is refused: 127.0.0.1 (loopback)", line["reason"])


class ResolverThreadsLifetimeTests(TestCase):
    """The service owns the getaddrinfo threads for the life of the process."""

    @inlineCallbacks
    def test_started_kept_across_reloads_stopped(self):
        from sniproxy.config import load_config
        from sniproxy.service import ProxyService

        path = self.mktemp()
        text = '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[routing]\nsources = ["system"]\n[routing.system]\nallow = ["*.svc.test"]\nthreads = 3\n'
        with open(path, "w") as f:
            f.write(text)
        service = ProxyService(load_config(path))
        threads = service.resolver_threads
        self.assertEqual(threads.size, 3)
        service.startService()
        try:
            self.assertTrue(threads.pool.started)
            [source] = service.factory.router.source.sources
            self.assertIs(source.threads, threads)
            with open(path, "w") as f:
                f.write(text.replace("*.svc.test", "*.other.test"))
            self.assertTrue(service.reload())
            [reloaded] = service.factory.router.source.sources
            self.assertIsNot(reloaded, source)
            self.assertIs(reloaded.threads, threads)
        finally:
            yield service.stopService()
        self.assertFalse(threads.pool.started)
