"""
The system source.  getaddrinfo is replaced by a function that hands out
whatever addresses a test needs: no socket is ever opened, so refusing
private addresses is checked where it happens (no route is produced)
without anything connecting to them.
"""

from __future__ import annotations

import socket
import threading
import tomllib

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sniproxy.config import ConfigError, parse_config
from sniproxy.interfaces import Address, IResolver, RouteRefused, RoutingError
from sniproxy.sources.system import ResolverThreads, SystemResolver, refusal


def info(host: str, port: int = 443) -> tuple:
    if ":" in host:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (host, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))


class FakeGetaddrinfo:
    """Answers from C{self.answers} (name -> hosts or an exception), noting every call."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.calls: list[tuple] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append((host, port, type))
        answer = self.answers[host]
        if isinstance(answer, BaseException):
            raise answer
        return [info(h, port) for h in answer]


class FakeThreads:
    """L{ResolverThreads} whose calls run when the test says."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.outstanding = 0
        self.calls: list[tuple] = []

    def run(self, function, *args, **kwargs) -> Deferred:
        self.outstanding += 1
        d: Deferred = Deferred()
        self.calls.append((function, args, kwargs, d))
        return d

    def finish(self, index: int = 0) -> None:
        function, args, kwargs, d = self.calls.pop(index)
        self.outstanding -= 1
        try:
            result = function(*args, **kwargs)
        except BaseException:
            d.errback()
        else:
            d.callback(result)


def system_config(extra: str = ""):
    text = f'[routing]\nsources = ["system"]\n[routing.system]\nallow = ["api.svc.example", "*.svc.example"]\n{extra}\n'
    return parse_config(tomllib.loads(text)).routing.system


class RefusalTests(SynchronousTestCase):
    REFUSED = {
        "127.0.0.1": "loopback",
        "127.1.2.3": "loopback",
        "::1": "loopback",
        "10.1.2.3": "private",
        "172.16.0.1": "private",
        "172.31.255.255": "private",
        "192.168.1.1": "private",
        "fc00::1": "private",
        "fd12:3456::1": "private",
        "169.254.169.254": "link-local",
        "fe80::1": "link-local",
        "0.0.0.0": "unspecified",
        "::": "unspecified",
        "::ffff:127.0.0.1": "loopback",
        "::ffff:10.0.0.1": "private",
        "::ffff:0.0.0.0": "unspecified",
        "224.0.0.1": "multicast",
        "ff02::1": "multicast",
        "240.0.0.1": "private",
        "100.64.0.1": "not global",
        "192.0.2.1": "private",
    }

    def test_refused_unless_allowed(self):
        for host, why in self.REFUSED.items():
            self.assertEqual(refusal(host, False), why, host)

    def test_public(self):
        for host in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
            self.assertIsNone(refusal(host, False), host)
            self.assertIsNone(refusal(host, True), host)

    def test_allow_private_keeps_unspecified_and_multicast_out(self):
        for host, why in self.REFUSED.items():
            expected = why if why in ("unspecified", "multicast") else None
            self.assertEqual(refusal(host, True), expected, host)


class SystemConfigTests(SynchronousTestCase):
    def test_defaults(self):
        config = system_config()
        self.assertEqual((config.port, config.timeout, config.threads, config.max_queued), (443, 2.0, 4, 64))
        self.assertFalse(config.allow_private)

    def test_max_queued(self):
        self.assertEqual(system_config("max_queued = 0").max_queued, 0)
        for value, problem in (("-1", "must be at least 0"), ('"many"', "expected an integer")):
            error = self.assertRaises(ConfigError, system_config, f"max_queued = {value}")
            self.assertTrue(str(error).startswith(f"routing.system.max_queued: {problem}"), str(error))


class SystemResolverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.threads = FakeThreads()
        self.getaddrinfo = FakeGetaddrinfo()

    def source(self, extra: str = "") -> SystemResolver:
        return SystemResolver(system_config(extra), self.threads, self.clock, getaddrinfo=self.getaddrinfo)

    def test_provides_the_interface(self):
        verifyObject(IResolver, self.source())

    def test_only_allowed_names(self):
        source = self.source()
        for name in ("svc.example", "api.svc.example.org", "example", "xsvc.example"):
            self.assertIsNone(self.successResultOf(source.resolve(name)), name)
        self.assertEqual(self.threads.calls, [])

    def test_public_addresses(self):
        """The absolute name, on the configured port; duplicates dropped, order kept."""
        self.getaddrinfo.answers["a.b.svc.example."] = ["8.8.8.8", "2001:4860:4860::8888", "8.8.8.8"]
        d = self.source("port = 8443").resolve("a.b.svc.example")
        self.assertNoResult(d)
        self.threads.finish()
        route = self.successResultOf(d)
        self.assertEqual(route.backends, (Address("8.8.8.8", 8443), Address("2001:4860:4860::8888", 8443)))
        self.assertEqual((route.source, route.app, route.cache), ("system", None, ""))
        self.assertEqual(route.detail, "*.svc.example -> getaddrinfo a.b.svc.example.")
        self.assertEqual(self.getaddrinfo.calls, [("a.b.svc.example.", 8443, socket.SOCK_STREAM)])

    def test_exact_pattern(self):
        self.getaddrinfo.answers["api.svc.example."] = ["1.1.1.1"]
        d = self.source().resolve("api.svc.example")
        self.threads.finish()
        self.assertEqual(self.successResultOf(d).detail, "api.svc.example -> getaddrinfo api.svc.example.")

    def test_every_address_refused(self):
        """No route is produced, so nothing can connect; the reason names the addresses."""
        self.getaddrinfo.answers["db.svc.example."] = ["10.0.0.5", "127.0.0.1", "::ffff:192.168.0.1"]
        d = self.source().resolve("db.svc.example")
        self.threads.finish()
        self.assertEqual(
            str(self.failureResultOf(d, RouteRefused).value),
            "db.svc.example: every address is refused: 10.0.0.5 (private), 127.0.0.1 (loopback), "
            "::ffff:192.168.0.1 (private)",
        )

    def test_some_refused_keeps_the_rest(self):
        self.getaddrinfo.answers["db.svc.example."] = ["10.0.0.5", "8.8.4.4"]
        d = self.source().resolve("db.svc.example")
        self.threads.finish()
        route = self.successResultOf(d)
        self.assertEqual(route.backends, (Address("8.8.4.4", 443),))
        self.assertIn("(refused: 10.0.0.5 (private))", route.detail)

    def test_allow_private(self):
        self.getaddrinfo.answers["db.svc.example."] = ["0.0.0.0", "127.0.0.1", "10.0.0.5"]
        d = self.source("allow_private = true").resolve("db.svc.example")
        self.threads.finish()
        route = self.successResultOf(d)
        self.assertEqual(route.backends, (Address("127.0.0.1", 443), Address("10.0.0.5", 443)))

    def test_no_such_name_is_no_route(self):
        self.getaddrinfo.answers["gone.svc.example."] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        d = self.source().resolve("gone.svc.example")
        self.threads.finish()
        self.assertIsNone(self.successResultOf(d))

    def test_temporary_failure(self):
        self.getaddrinfo.answers["x.svc.example."] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        d = self.source().resolve("x.svc.example")
        self.threads.finish()
        self.assertEqual(
            str(self.failureResultOf(d, RoutingError).value),
            "getaddrinfo x.svc.example. failed: Temporary failure in name resolution",
        )

    def test_timeout(self):
        """
        A lookup is a routing failure after C{timeout}; the call, once its
        turn comes, is skipped: nobody waits for it.
        """
        d = self.source("timeout = 1.5").resolve("slow.svc.example")
        self.clock.advance(1.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(str(self.failureResultOf(d, RoutingError).value), "getaddrinfo slow.svc.example. gave no answer within 1.5s")
        self.threads.finish()
        self.assertEqual(self.getaddrinfo.calls, [])

    def test_lookups_of_one_name_share_a_call(self):
        self.getaddrinfo.answers["a.svc.example."] = ["8.8.8.8"]
        source = self.source()
        first, second = source.resolve("a.svc.example"), source.resolve("a.svc.example")
        self.assertEqual(len(self.threads.calls), 1)
        self.threads.finish()
        self.assertEqual(self.successResultOf(first).backends, self.successResultOf(second).backends)
        self.assertEqual(len(self.getaddrinfo.calls), 1)

    def test_cancel_leaves_the_others(self):
        self.getaddrinfo.answers["a.svc.example."] = ["8.8.8.8"]
        source = self.source()
        first, second = source.resolve("a.svc.example"), source.resolve("a.svc.example")
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.threads.finish()
        self.assertEqual(self.successResultOf(second).backends, (Address("8.8.8.8", 443),))

    def test_abandoned_call_is_not_joined(self):
        """After every waiter gave up, a new lookup of the name starts a new call."""
        self.getaddrinfo.answers["a.svc.example."] = ["8.8.8.8"]
        source = self.source()
        abandoned = source.resolve("a.svc.example")
        abandoned.cancel()
        self.failureResultOf(abandoned, defer.CancelledError)
        d = source.resolve("a.svc.example")
        self.assertEqual(len(self.threads.calls), 2)
        self.threads.finish()
        self.assertNoResult(d)
        self.threads.finish()
        self.successResultOf(d)
        self.assertEqual(len(self.getaddrinfo.calls), 1)

    def test_queue_is_bounded(self):
        """
        At most C{threads + max_queued} calls outstanding: past that, new
        names are refused at once; a name already in flight still joins.
        """
        source = self.source("max_queued = 1")
        pending = [source.resolve(f"n{i}.svc.example") for i in range(3)]
        busy = source.resolve("n3.svc.example")
        self.assertEqual(
            str(self.failureResultOf(busy, RoutingError).value),
            "the system resolver is busy: 3 getaddrinfo calls outstanding",
        )
        joined = source.resolve("n0.svc.example")
        self.assertNoResult(joined)
        self.assertEqual(len(self.threads.calls), 3)
        self.getaddrinfo.answers["n0.svc.example."] = ["8.8.8.8"]
        self.threads.finish()
        self.successResultOf(pending[0])
        self.successResultOf(joined)
        self.assertNoResult(source.resolve("n3.svc.example"))


class ResolverThreadsTests(TestCase):
    """The real thread pool."""

    @defer.inlineCallbacks
    def test_getaddrinfo_runs_in_a_pool_thread(self):
        threads = ResolverThreads(reactor, 2)
        threads.start()
        self.addCleanup(threads.stop)
        where: list[str] = []

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            where.append(threading.current_thread().name)
            return [info("127.0.0.1", port)]

        source = SystemResolver(system_config("allow_private = true"), threads, reactor, getaddrinfo=getaddrinfo)
        route = yield source.resolve("local.svc.example")
        self.assertEqual(route.backends, (Address("127.0.0.1", 443),))
        self.assertNotEqual(where, [threading.current_thread().name])
        self.assertEqual(threads.outstanding, 0)
