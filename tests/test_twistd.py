"""
The real daemon: C{twistd -n sniproxy --config FILE} as a child process,
driven by a real TLS client (curl, else openssl s_client).
"""

from __future__ import annotations

import shutil

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from sniproxy.testing.process import Twistd, child_environment, twistd_command
from sniproxy.testing.tls import CertificateAuthority, listen_https


class TwistdTests(TestCase):
    timeout = 60

    def write(self, name: str, data: bytes) -> str:
        path = self.mktemp() + "-" + name
        with open(path, "wb") as f:
            f.write(data)
        return path

    @inlineCallbacks
    def start(self, config: str) -> Twistd:
        child = Twistd(self.write("sniproxy.toml", config.encode()))
        self.addCleanup(child.stop)
        yield child.start(reactor)
        return child

    @inlineCallbacks
    def test_real_client_through_the_daemon(self):
        """
        A TLS client verifies the backend's certificate through the daemon,
        and SIGTERM stops the daemon with exit code 0.
        """
        curl = shutil.which("curl")
        openssl = shutil.which("openssl")
        if curl is None and openssl is None:
            raise SkipTest("neither curl nor openssl is installed")
        ca = CertificateAuthority()
        ca_file = self.write("ca.pem", ca.cert_pem)
        backend = yield listen_https(reactor, ca.issue("app.example.com"), b"through the daemon")
        self.addCleanup(backend.stopListening)
        child = yield self.start(
            f"""
            [proxy]
            listen = ["tcp:0:interface=127.0.0.1"]
            [routing.static]
            "app.example.com" = "127.0.0.1:{backend.getHost().port}"
            """
        )
        port = child.port
        if curl is not None:
            out, err, code = yield getProcessOutputAndValue(
                curl,
                ["-sS", "--max-time", "20", "--cacert", ca_file,
                 "--resolve", f"app.example.com:{port}:127.0.0.1", f"https://app.example.com:{port}/"],
                env={},
            )
            self.assertEqual((code, out), (0, b"through the daemon"), err)
        else:
            out, err, code = yield getProcessOutputAndValue(
                openssl,
                ["s_client", "-connect", f"127.0.0.1:{port}", "-servername", "app.example.com",
                 "-CAfile", ca_file, "-verify_return_error", "-verify_hostname", "app.example.com", "-quiet"],
                env={},
                stdinBytes=b"GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n",
            )
            self.assertIn(b"through the daemon", out, err)
        code = yield child.stop()
        self.assertEqual(code, 0, child.output.decode(errors="replace"))

    @inlineCallbacks
    def test_invalid_config_fails_the_start_naming_the_key(self):
        path = self.write("bad.toml", b'[proxy]\nlisten = ["tcp:0"]\nidle_timeout = "forever"\n')
        argv = twistd_command("-n", "--pidfile=", "sniproxy", "--config", path)
        out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=child_environment())
        self.assertEqual(code, 1)
        self.assertIn(b"config: proxy.idle_timeout: expected a number, got a string 'forever'", out + err)
        self.assertNotIn(b"Traceback", out + err)

    @inlineCallbacks
    def test_port_in_use_fails_the_start_in_one_line(self):
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol

        taken = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        path = self.write("taken.toml", f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'.encode())
        argv = twistd_command("-n", "--pidfile=", "sniproxy", "--config", path)
        out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=child_environment())
        self.assertEqual(code, 1)
        self.assertIn(f"sniproxy: cannot listen on tcp:{port}:interface=127.0.0.1: ".encode(), out + err)
        self.assertNotIn(b"Traceback", out + err)
