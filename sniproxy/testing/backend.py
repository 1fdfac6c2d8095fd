"""
A demo TLS backend for trying sniproxy by hand:

    python -m sniproxy.testing.backend [--port 9443] [--name demo.localhost]

It makes a throwaway certificate authority, writes its certificate to
C{demo-ca.pem} in the current directory (for C{curl --cacert}), and serves
HTTPS on 127.0.0.1 with a certificate for the name and its subdomains,
answering every request with a line naming the SNI it was reached by.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from sniproxy.testing.tls import CertificateAuthority, server_options


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        port = request.getHost().port
        server_name = (request.channel.transport.getHandle().get_servername() or b"-").decode()
        request.setHeader(b"content-type", b"text/plain")
        return f"hello from the sniproxy demo backend on port {port}, reached for {server_name}\n".encode()


def main(reactor, argv: list[str]) -> Deferred:
    parser = argparse.ArgumentParser(prog="python -m sniproxy.testing.backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--name", default="demo.localhost")
    parser.add_argument("--ca-file", default="demo-ca.pem")
    args = parser.parse_args(argv)
    ca = CertificateAuthority("sniproxy demo CA")
    with open(args.ca_file, "wb") as f:
        f.write(ca.cert_pem)
    issued = ca.issue(args.name, "*." + args.name)
    endpoint = endpoints.SSL4ServerEndpoint(reactor, args.port, server_options(issued), interface="127.0.0.1")
    d = endpoint.listen(Site(_Hello()))

    def listening(port):
        print(f"demo backend for {args.name} on 127.0.0.1:{args.port}; CA certificate in {args.ca_file}")
        print(f"try: curl --cacert {args.ca_file} https://{args.name}:8443/")
        sys.stdout.flush()
        return Deferred()  # run until interrupted

    return d.addCallback(listening)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
