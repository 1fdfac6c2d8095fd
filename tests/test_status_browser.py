"""
The status page in a real browser: headless Chromium (Debian package
C{chromium}) loads it from a running proxy, runs its refresh script, and
takes a screenshot; the page's own self-check element must report no
errors.  Skipped, with the reason, when Chromium is absent.

The same code path makes the manual's screenshot::

    /work/venv/bin/python -m tests.test_status_browser docs/_static/status-page.png
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from twisted.trial.unittest import TestCase

from sniproxy.testing.churn import EchoBackend
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.config import load_config
from sniproxy.testing.proxy import running_proxy

# How long the browser may take, at most, before it is killed.
BROWSER_TIMEOUT = 60.0


def find_chromium() -> str | None:
    """The Chromium executable on C{PATH}, or C{None}."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class EchoClient(Protocol):
    """Sends C{data}, and hangs up once as many bytes came back (or the proxy hangs up)."""

    def __init__(self, data: bytes, hang_up: bool = True) -> None:
        self.data = data
        self.hang_up = hang_up
        self.received = 0
        self.done: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.hang_up and self.received >= len(self.data):
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.done.callback(self.received)


class _Browser(ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        code = 0 if reason.check(ProcessDone) else (reason.value.exitCode if reason.value.exitCode is not None else -1)
        self.ended.callback(code)


@inlineCallbacks
def browse(url: str, screenshot: str, profile: str, size: str = "1280,1100"):
    """
    Load C{url} in headless Chromium, let its scripts run for a few
    (virtual) seconds, save a screenshot and return the DOM.

    The browser runs as a child process of this reactor, so the admin
    endpoint it loads keeps answering; it is killed by its PID after
    L{BROWSER_TIMEOUT} seconds.

    @return: a L{Deferred} firing with C{(exit code, DOM text, stderr text)}.
    """
    chromium = find_chromium()
    arguments = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        # Virtual time: the page's 2 s refresh timer fires, and its fetches
        # complete, before the DOM is dumped.
        "--virtual-time-budget=5000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    browser = _Browser()
    process = reactor.spawnProcess(browser, chromium, arguments, env={**os.environ, "HOME": profile})
    timer = reactor.callLater(BROWSER_TIMEOUT, process.signalProcess, "KILL")
    code = yield browser.ended
    if timer.active():
        timer.cancel()
    return code, b"".join(browser.out).decode("utf-8", "replace"), b"".join(browser.err).decode("utf-8", "replace")


def listen(testcase, factory: Factory):
    d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    def listening(port):
        testcase.addCleanup(port.stopListening)
        return port

    return d.addCallback(listening)


@inlineCallbacks
def busy_proxy(testcase) -> Any:
    """
    A proxy with an admin endpoint and some history: relayed, unrouted and
    refused connections, and one connection still open.

    @return: a L{Deferred} firing with C{(service, admin URL)}.
    """
    echo = yield listen(testcase, EchoBackend())
    down = yield listen(testcase, Factory.forProtocol(Protocol))
    down_port = down.getHost().port
    yield down.stopListening()
    port = echo.getHost().port
    directory = tempfile.mkdtemp(prefix="sniproxy-status-config-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "sniproxy.toml")
    with open(path, "w") as f:
        f.write(
            f"""
        [proxy]
        listen = ["tcp:0:interface=127.0.0.1"]
        connect_timeout = 2.0
        [log]
        access = ""
        [routing]
        sources = ["static", "subdomain"]
        [routing.static]
        "shop.example.com" = {{ app = "shop", port = {port} }}
        "api.example.com" = {{ app = "api", port = {port} }}
        "legacy.example.com" = "127.0.0.1:{down_port}"
        [routing.subdomain]
        base_domains = ["apps.example.com"]
        [apps.shop]
        backends = ["127.0.0.1", "127.0.0.2"]
        [apps.api]
        backends = ["127.0.0.1:{port}", "[::1]:{port}"]
        [admin]
        listen = "tcp:0:interface=127.0.0.1"
        """
        )
    service, proxy_port = running_proxy(testcase, config=load_config(path))
    for sni, payload in [("shop.example.com", b"GET / HTTP/1.1\r\n\r\n")] * 3 + [
        ("api.example.com", b"ping"),
        ("nowhere.example.com", b""),
        ("legacy.example.com", b""),
    ]:
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), EchoClient(make_client_hello(sni) + payload)
        )
        yield client.done
    # One connection stays open while the browser looks.
    held = yield connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port), EchoClient(make_client_hello("api.example.com"), False)
    )
    testcase.addCleanup(lambda: held.done)
    testcase.addCleanup(held.transport.loseConnection)
    return service, f"http://127.0.0.1:{service.admin_port.getHost().port}/"


class BrowserTests(TestCase):
    timeout = 120

    def setUp(self):
        if find_chromium() is None:
            raise self.skipTest("headless Chromium is not installed (Debian package chromium)")

    @inlineCallbacks
    def test_page_checks_itself(self):
        """
        Chromium loads the page, its script refreshes it at least once and
        fetches /status.json, and the self-check element reports no errors.
        """
        service, url = yield busy_proxy(self)
        directory = tempfile.mkdtemp(prefix="sniproxy-status-")
        screenshot = os.path.join(directory, "status-page.png")
        code, dom, errors = yield browse(url, screenshot, os.path.join(directory, "profile"))
        where = f"(screenshot: {screenshot}; browser stderr: {errors[-2000:]!r})"
        self.assertEqual(code, 0, f"chromium exited with {code} {where}")
        found = re.search(r'<p id="self-check"[^>]*>[^<]*</p>', dom)
        self.assertIsNotNone(found, f"no self-check element in the DOM {where}")
        check = found.group(0)
        self.assertIn('data-errors="0"', check, f"{check} {where}")
        refreshes = int(re.search(r'data-refreshes="(\d+)"', check).group(1))
        self.assertGreaterEqual(refreshes, 1, f"the page never refreshed: {check} {where}")
        self.assertIn('id="apps"', dom, where)
        self.assertTrue(os.path.getsize(screenshot) > 10000, f"the screenshot is nearly empty {where}")
        shutil.rmtree(os.path.join(directory, "profile"), ignore_errors=True)
        # Kept on success too (it is small), for a person to look at.
        print(f"status page screenshot: {screenshot}")

    @inlineCallbacks
    def test_self_check_catches_errors(self):
        """
        The self-check element is not a constant: with the admin endpoint
        gone between load and refresh, it counts the failed refresh.
        """
        service, url = yield busy_proxy(self)
        directory = tempfile.mkdtemp(prefix="sniproxy-status-")
        screenshot = os.path.join(directory, "broken.png")
        # /status.json is not there: the page's own check must notice.
        root = service.admin_port.factory.resource
        del root.children[b"status.json"]
        code, dom, errors = yield browse(url, screenshot, os.path.join(directory, "profile"))
        shutil.rmtree(directory, ignore_errors=True)
        check = re.search(r'<p id="self-check"[^>]*>[^<]*</p>', dom).group(0)
        self.assertNotIn('data-errors="0"', check)
        self.assertIn("status.json: HTTP 404", check)


def main(argv: list[str]) -> None:
    """Write the manual's screenshot to C{argv[1]}."""
    from twisted.internet import task

    target = os.path.abspath(argv[1] if len(argv) > 1 else "docs/_static/status-page.png")

    class _Case:
        def __init__(self) -> None:
            self.cleanups: list = []

        def addCleanup(self, f, *a):
            self.cleanups.append((f, a))

    @inlineCallbacks
    def run(_):
        case = _Case()
        try:
            service, url = yield busy_proxy(case)
            with tempfile.TemporaryDirectory() as directory:
                code, dom, errors = yield browse(url, target, directory, size="1280,800")
            check = re.search(r'<p id="self-check"[^>]*>[^<]*</p>', dom)
            print(f"chromium exited {code}; {check.group(0) if check else 'no self-check'}; wrote {target}")
        finally:
            for f, a in reversed(case.cleanups):
                yield f(*a)

    task.react(run)


if __name__ == "__main__":
    main(sys.argv)
