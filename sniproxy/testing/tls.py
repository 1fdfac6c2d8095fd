"""
Real TLS on loopback for tests: a throwaway certificate authority, TLS
backends whose certificates are for the names you choose, and HTTPS
clients that verify those certificates (service_identity) while connecting
somewhere else -- through the proxy.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints, ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

__all__ = [
    "CertificateAuthority",
    "Issued",
    "https_client",
    "listen_https",
    "listen_tls",
    "server_options",
]


@dataclass(frozen=True)
class Issued:
    """A key and certificate chain issued by a L{CertificateAuthority}, in PEM."""

    key_pem: bytes
    cert_pem: bytes

    def private_certificate(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.key_pem + self.cert_pem)


class CertificateAuthority:
    """
    A certificate authority that lives for one test run.  Clients trust it
    through L{trust_root}; servers use the certificates from L{issue}.
    """

    def __init__(self, name: str = "sniproxy test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._name = subject
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def trust_root(self) -> ssl.Certificate:
        return ssl.Certificate.loadPEM(self.cert_pem)

    def issue(self, *names: str) -> Issued:
        """A leaf certificate for C{names} (DNS names or IP addresses)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Issued(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def server_options(issued: Issued) -> ssl.CertificateOptions:
    """TLS server options presenting C{issued}, advertising http/1.1."""
    return issued.private_certificate().options()


class _Body(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return self.body


def listen_tls(reactor, issued: Issued, factory: Factory, port: int = 0):
    """
    Listen on 127.0.0.1 with TLS presenting C{issued}.

    @return: a L{Deferred} firing with the listening port.
    """
    endpoint = endpoints.SSL4ServerEndpoint(reactor, port, server_options(issued), interface="127.0.0.1")
    return endpoint.listen(factory)


def listen_https(reactor, issued: Issued, body: bytes, port: int = 0):
    """
    An HTTPS server on 127.0.0.1 answering every GET with C{body}.

    @return: a L{Deferred} firing with the listening port.
    """
    site = Site(_Body(body))
    site.noisy = False
    # ALPN from the options, set once on the context, not from the Site:
    # Twisted before 26 sets a factory's acceptableProtocols on the shared
    # context at every connection, which pyOpenSSL 25 and later refuse once
    # the context has been used.
    certificate = issued.private_certificate()
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original, certificate=certificate.original, acceptableProtocols=[b"http/1.1"]
    )
    endpoint = endpoints.SSL4ServerEndpoint(reactor, port, options, interface="127.0.0.1")
    return endpoint.listen(_NoNegotiation(site))


class _NoNegotiation(Factory):
    """C{factory}'s protocols, without its own ALPN list (see L{listen_https})."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.noisy = False

    def buildProtocol(self, addr):
        return self.factory.buildProtocol(addr)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()


@implementer(IAgentEndpointFactory)
class _ToAddress:
    """Connects every request to one address, whatever host the URL names."""

    def __init__(self, reactor, host: str, port: int, policy: BrowserLikePolicyForHTTPS) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.policy = policy

    def endpointForURI(self, uri):
        tcp = endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=10)
        if uri.scheme == b"https":
            return endpoints.wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tcp)
        return tcp


def https_client(reactor, ca: CertificateAuthority, host: str, port: int):
    """
    A L{treq.client.HTTPClient} whose connections all go to C{host:port}
    (the proxy), while TLS uses the URL's host name for SNI and verifies
    the server's certificate against C{ca} with service_identity.
    """
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS(trustRoot=ca.trust_root())
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent.usingEndpointFactory(reactor, _ToAddress(reactor, host, port, policy), pool=pool)
    return HTTPClient(agent)


class Collect(Protocol):
    """Keeps every byte received; C{done} fires with them when the connection ends."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.chunks))
