"""
(Re)capture the corpus of real ClientHellos in this directory.

    python tests/corpus/capture.py              # every client found
    python tests/corpus/capture.py --only node  # the clients whose name starts so
    python tests/corpus/capture.py --list       # what would run, and what is missing

Each TLS client installed on the machine connects to a listener on
127.0.0.1 that reads the client's first flight with
L{sniproxy.clienthello.ClientHelloParser}, saves exactly the bytes
received up to the complete ClientHello as C{<name>.bin}, and closes (so
every client fails its handshake: that is expected).  Beside it,
C{<name>.json} names the SNI the client was told to send (the test checks
the parser finds that name and that the proxy relays the bytes
unchanged), the ALPN list it was told to offer, and the client and
version that made it.

Clients: OpenSSL's s_client (TLS 1.2 only, TLS 1.3 only, and its default
with ALPN), curl, Python's ssl module, Node.js, wget (GnuTLS; it sends
the URL's host as SNI and cannot be pointed at another address, hence
the name C{localhost}), gnutls-cli, and Java (every JDK found under
/usr/lib/jvm, through a small SSLSocket program).  A client that is not
installed is skipped with a note.  Only loopback is ever contacted.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from sniproxy.clienthello import ClientHelloError, ClientHelloParser  # noqa: E402

ALPN = ["h2", "http/1.1"]
TIMEOUT = 20.0


class Listener:
    """Accepts one connection at a time and keeps its first flight."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def capture(self, timeout: float = TIMEOUT) -> bytes:
        """The bytes of the next connection's complete ClientHello."""
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(timeout)
            parser = ClientHelloParser()
            while True:
                data = conn.recv(65536)
                if not data:
                    raise RuntimeError(f"connection closed after {len(parser.buffered)} bytes, hello incomplete")
                try:
                    if parser.feed(data) is not None:
                        return parser.buffered
                except ClientHelloError as error:
                    raise RuntimeError(f"not a ClientHello: {error}") from None

    def close(self) -> None:
        self.sock.close()


@dataclass
class Client:
    """
    One capture: C{name} (the file name), a description of the client, the
    SNI it sends, and C{run(port, sni, workdir)} which starts it.
    """

    name: str
    describe: Callable[[], str]
    sni: str
    run: Callable[[int, str, str], subprocess.Popen]
    alpn: tuple[str, ...] = ()
    available: Callable[[], bool] = lambda: True


def _popen(argv: list[str], cwd: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd
    )


def _version(argv: list[str], line: int = 0) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[line].strip() if text else "?"


def _openssl(flag: str | None, alpn: bool) -> Callable[[int, str, str], subprocess.Popen]:
    def run(port: int, sni: str, workdir: str) -> subprocess.Popen:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni]
        if flag:
            argv.append(flag)
        if alpn:
            argv += ["-alpn", ",".join(ALPN)]
        return _popen(argv)

    return run


def _curl(port: int, sni: str, workdir: str) -> subprocess.Popen:
    return _popen(["curl", "-sk", "--max-time", "10", "--resolve", f"{sni}:{port}:127.0.0.1", f"https://{sni}:{port}/"])


def _python(port: int, sni: str, workdir: str) -> subprocess.Popen:
    code = (
        "import socket, ssl, sys\n"
        "context = ssl.create_default_context()\n"
        f"context.set_alpn_protocols({ALPN!r})\n"
        f"sock = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n"
        "try:\n"
        f"    context.wrap_socket(sock, server_hostname={sni!r})\n"
        "except (OSError, ssl.SSLError):\n"
        "    pass\n"
    )
    return _popen([sys.executable, "-c", code])


def _node(port: int, sni: str, workdir: str) -> subprocess.Popen:
    code = (
        f"const s = require('tls').connect({{host: '127.0.0.1', port: {port}, servername: {json.dumps(sni)}, "
        f"ALPNProtocols: {json.dumps(ALPN)}}}); s.on('error', () => {{}}); s.setTimeout(10000, () => s.destroy());"
    )
    return _popen(["node", "-e", code])


def _wget(port: int, sni: str, workdir: str) -> subprocess.Popen:
    return _popen(
        [
            "wget",
            "-q",
            "-O",
            "/dev/null",
            "--tries=1",
            "--timeout=10",
            "--no-check-certificate",
            f"https://{sni}:{port}/",
        ],
        cwd=workdir,
    )


def _gnutls(port: int, sni: str, workdir: str) -> subprocess.Popen:
    return _popen(
        [
            "gnutls-cli",
            "--insecure",
            f"--sni-hostname={sni}",
            f"--alpn={ALPN[0]}",
            f"--alpn={ALPN[1]}",
            "-p",
            str(port),
            "127.0.0.1",
        ]
    )


_JAVA = """
import java.util.List;
import javax.net.ssl.*;

public class Hello {
    public static void main(String[] args) throws Exception {
        SSLSocket socket = (SSLSocket) SSLSocketFactory.getDefault().createSocket("127.0.0.1", Integer.parseInt(args[0]));
        SSLParameters parameters = socket.getSSLParameters();
        parameters.setServerNames(List.of(new SNIHostName(args[1])));
        parameters.setApplicationProtocols(new String[] {"h2", "http/1.1"});
        socket.setSSLParameters(parameters);
        socket.setSoTimeout(10000);
        try {
            socket.startHandshake();
        } catch (Exception expected) {
        }
    }
}
"""


def _jdks() -> list[str]:
    """The C{java} executables of the JDKs under /usr/lib/jvm, one per version."""
    found: dict[str, str] = {}
    for java in sorted(glob.glob("/usr/lib/jvm/*/bin/java")):
        real = os.path.realpath(java)
        try:
            version = _version([real, "-version"])
        except (OSError, subprocess.SubprocessError):
            continue
        found.setdefault(version, real)
    return sorted(set(found.values()))


def _java(java: str) -> Callable[[int, str, str], subprocess.Popen]:
    def run(port: int, sni: str, workdir: str) -> subprocess.Popen:
        source = os.path.join(workdir, "Hello.java")
        with open(source, "w") as f:
            f.write(_JAVA)
        return _popen([java, source, str(port), sni], cwd=workdir)

    return run


def _java_major(java: str) -> str:
    text = _version([java, "-version"])
    # openjdk version "17.0.15" 2025-04-15
    quoted = text.split('"')[1] if '"' in text else text
    return quoted.split(".")[0]


def _curl_version() -> str:
    # curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 OpenSSL/3.0.19 zlib/...
    words = _version(["curl", "--version"]).split()
    tls = [w for w in words if w.split("/")[0] in ("OpenSSL", "GnuTLS", "BoringSSL", "LibreSSL", "wolfSSL", "NSS")]
    return " ".join(words[:2] + tls[:1])


def _wget_version() -> str:
    words = _version(["wget", "--version"]).split()  # GNU Wget 1.21.3 built on linux-gnu.
    try:
        gnutls = (
            " "
            + subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "libgnutls30"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        )
    except OSError:
        gnutls = ""
    return " ".join(words[:3]) + f" (GnuTLS{gnutls})"


def _wget_gnutls() -> bool:
    if shutil.which("wget") is None:
        return False
    return "+ssl/gnutls" in subprocess.run(["wget", "--version"], capture_output=True, text=True).stdout


def clients() -> list[Client]:
    openssl = lambda: shutil.which("openssl") is not None  # noqa: E731
    openssl_version = lambda: _version(["openssl", "version"]).rsplit(" (", 1)[0]  # noqa: E731
    found = [
        Client(
            "openssl-tls12",
            lambda: f"{openssl_version()} s_client -tls1_2",
            "openssl-tls12.corpus.test",
            _openssl("-tls1_2", False),
            available=openssl,
        ),
        Client(
            "openssl-tls13",
            lambda: f"{openssl_version()} s_client -tls1_3",
            "openssl-tls13.corpus.test",
            _openssl("-tls1_3", False),
            available=openssl,
        ),
        Client(
            "openssl-alpn",
            lambda: f"{openssl_version()} s_client -alpn h2,http/1.1",
            "openssl-alpn.corpus.test",
            _openssl(None, True),
            tuple(ALPN),
            available=openssl,
        ),
        Client(
            "curl",
            _curl_version,
            "curl.corpus.test",
            _curl,
            tuple(ALPN),
            available=lambda: shutil.which("curl") is not None,
        ),
        Client(
            "python-ssl",
            lambda: f"Python {sys.version.split()[0]} ssl ({__import__('ssl').OPENSSL_VERSION})",
            "python.corpus.test",
            _python,
            tuple(ALPN),
        ),
        Client(
            "node",
            lambda: (
                f"Node.js {_version(['node', '--version'])} tls.connect (OpenSSL {_version(['node', '-p', 'process.versions.openssl'])})"
            ),
            "node.corpus.test",
            _node,
            tuple(ALPN),
            available=lambda: shutil.which("node") is not None,
        ),
        Client("wget-gnutls", _wget_version, "localhost", _wget, available=_wget_gnutls),
        Client(
            "gnutls-cli",
            lambda: _version(["gnutls-cli", "--version"]),
            "gnutls.corpus.test",
            _gnutls,
            tuple(ALPN),
            available=lambda: shutil.which("gnutls-cli") is not None,
        ),
    ]
    for java in _jdks():
        major = _java_major(java)
        found.append(
            Client(
                f"java{major}",
                lambda java=java: _version([java, "-version"]) + " SSLSocket",
                f"java{major}.corpus.test",
                _java(java),
                tuple(ALPN),
            )
        )
    return found


def capture(client: Client, listener: Listener, out: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        process = client.run(listener.port, client.sni, workdir)
        try:
            data = listener.capture()
        finally:
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    hello = ClientHelloParser().feed(data)
    if hello is None or hello.server_name != client.sni:
        raise RuntimeError(f"parsed SNI {hello and hello.server_name!r}, expected {client.sni!r}")
    sidecar = {
        "sni": client.sni,
        "client": client.describe(),
        "alpn": list(client.alpn),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "supported_versions": ["%04x" % v for v in hello.supported_versions],
    }
    with open(os.path.join(out, client.name + ".bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(out, client.name + ".json"), "w") as f:
        json.dump(sidecar, f, indent=2)
        f.write("\n")
    return sidecar


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="capture only the clients whose name starts with this")
    parser.add_argument("--out", default=HERE, help="where to write (default: this directory)")
    parser.add_argument("--list", action="store_true", help="list the clients and whether they are installed")
    args = parser.parse_args(argv)
    failed = 0
    listener = Listener()
    try:
        for client in clients():
            if not client.name.startswith(args.only):
                continue
            if not client.available():
                print(f"{client.name:16} not installed, skipped")
                continue
            if args.list:
                print(f"{client.name:16} {client.describe()}")
                continue
            try:
                sidecar = capture(client, listener, args.out)
            except Exception as error:  # a broken client must not stop the others
                failed += 1
                print(f"{client.name:16} FAILED: {error}")
                continue
            print(f"{client.name:16} {sidecar['bytes']:5} bytes  sni={sidecar['sni']}  {sidecar['client']}")
    finally:
        listener.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
