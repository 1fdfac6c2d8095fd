"""
Worker processes (C{[proxy] workers}, issue 14): the key, the summed
metrics, the supervisor's restart back-off, and the real daemon with two
workers (C{twistd -n sniproxy} as a child process, loopback only).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

import tomllib

import treq

from sniproxy.config import ConfigError, parse_config
from sniproxy.testing.clienthello import make_client_hello
from sniproxy.testing.dns import DNSServer
from sniproxy.testing.process import Twistd, child_environment, twistd_command
from sniproxy.testing.tls import Collect
from sniproxy.backends import HealthState, InstanceStatus
from sniproxy.workers import FIRST_DELAY, MAX_DELAY, Supervisor, WorkerInstances, WorkerMetrics, instances_json, worker_count


def load_config_text(text: str):
    return parse_config(tomllib.loads(text))


class ConfigTests(SynchronousTestCase):
    def test_default_is_one(self):
        config = load_config_text("")
        self.assertEqual((config.proxy.workers, worker_count(config)), (1, 1))

    def test_zero_is_one_per_core(self):
        config = load_config_text("[proxy]\nworkers = 0\n")
        self.assertEqual(worker_count(config), os.cpu_count() or 1)

    def test_two(self):
        self.assertEqual(worker_count(load_config_text("[proxy]\nworkers = 2\n")), 2)

    def test_limits_are_shared_out(self):
        """Each of N workers gets ceil(limit / N): at most limit + N - 1 overall."""
        from types import SimpleNamespace

        from sniproxy.workers import WorkerProxyService

        config = load_config_text("[proxy]\nworkers = 3\nmax_connections = 100\nmax_connections_per_client = 0\n")
        adjusted = WorkerProxyService.adjust_config(SimpleNamespace(share=3), config)
        self.assertEqual((adjusted.proxy.max_connections, adjusted.proxy.max_connections_per_client), (34, 0))
        self.assertEqual(adjusted.proxy.listen, config.proxy.listen)

    def test_bad_values_name_the_key(self):
        for value in ("-1", "257", '"2"', "1.5", "true"):
            with self.assertRaises(ConfigError) as caught:
                load_config_text(f"[proxy]\nworkers = {value}\n")
            self.assertIn("proxy.workers", str(caught.exception))


EXPOSITION = """\
# HELP sniproxy_connections_total Connections handled, by outcome
# TYPE sniproxy_connections_total counter
sniproxy_connections_total{{outcome="relayed"}} {relayed}
sniproxy_connections_created{{outcome="relayed"}} 1.7e9
# HELP sniproxy_live_connections Connections open now
# TYPE sniproxy_live_connections gauge
sniproxy_live_connections {live}
# HELP sniproxy_route_decision_seconds Time
# TYPE sniproxy_route_decision_seconds histogram
sniproxy_route_decision_seconds_bucket{{le="0.1"}} {relayed}
sniproxy_route_decision_seconds_bucket{{le="+Inf"}} {relayed}
sniproxy_route_decision_seconds_count {relayed}
sniproxy_route_decision_seconds_sum 0.5
# HELP sniproxy_backend_up up
# TYPE sniproxy_backend_up gauge
sniproxy_backend_up{{app="a",address="127.0.0.1:1"}} {up}
# HELP sniproxy_dns_cache_hits_total Answers
# TYPE sniproxy_dns_cache_hits_total counter
sniproxy_dns_cache_hits_total 5.0
"""


class WorkerStartTests(SynchronousTestCase):
    def test_environment_has_no_systemd_variables(self):
        from sniproxy.workers import _environment

        self.patch(os, "environ", dict(os.environ, LISTEN_PID="1", LISTEN_FDS="1", LISTEN_FDNAMES="x"))
        env = _environment()
        self.assertFalse({"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(env))
        self.assertIn("PYTHONPATH", env)

    def test_worker_validation_leaves_endpoints_alone(self):
        """A worker reads systemd: endpoints (which it cannot parse) as they are, and every other key in full."""
        from sniproxy.workers import validate_in_worker

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[proxy]\nlisten = ["systemd:domain=INET:index=0", "systemd:domain=INET:index=1"]\n'
                    '[admin]\nlisten = "systemd:domain=INET:index=2"\n[log]\naccess = ""\n')
        config = validate_in_worker(path, None)
        self.assertEqual(config.proxy.listen, ("systemd:domain=INET:index=0", "systemd:domain=INET:index=1"))
        self.assertEqual(config.admin.listen, "systemd:domain=INET:index=2")
        with open(path, "a") as f:
            f.write("[routing]\nbogus = 1\n")
        with self.assertRaises(ConfigError) as caught:
            validate_in_worker(path, None)
        self.assertIn("bogus", str(caught.exception))


class ExpositionTests(SynchronousTestCase):
    """The chunked exposition: snapshots on the worker's side, whole or failed on the main's."""

    def worker_side(self, rows):
        from types import SimpleNamespace

        from sniproxy.workers import _WorkerSide

        service = SimpleNamespace(backends=SimpleNamespace(instances=lambda: list(rows)))
        return _WorkerSide(service, None)

    def row(self, n):
        return InstanceStatus(f"app{n}", f"127.0.0.1:{n}", HealthState.UP, None, 0, n, 0, 0, 0, 0)

    def test_concurrent_snapshots_do_not_mix(self):
        from sniproxy.workerproto import CHUNK, UnknownSnapshot

        rows = [self.row(n) for n in range(1000)]
        side = self.worker_side(rows)
        first = side.exposition(0, "instances")
        rows[:] = [self.row(n) for n in range(2000, 2600)]
        second = side.exposition(0, "instances")
        self.assertNotEqual(first["snapshot"], second["snapshot"])
        for answer in (first, second):
            data = answer["data"]
            while len(data) < answer["total"]:
                data += side.exposition(len(data), "instances", answer["snapshot"])["data"]
            self.assertGreater(len(data), CHUNK)
            self.assertEqual({len(json.loads(data))}, {1000 if answer is first else 600})
        # Each snapshot goes with its last chunk.
        self.assertEqual(side._snapshots, {})
        self.assertRaises(UnknownSnapshot, side.exposition, CHUNK, "instances", first["snapshot"])

    def test_short_data_fails(self):
        from types import SimpleNamespace

        from twisted.internet.defer import succeed

        from sniproxy.workers import _Worker

        worker = _Worker(SimpleNamespace(clock=Clock()), 1)
        answers = [{"data": b"x" * 10, "total": 30, "snapshot": 1}, {"data": b"", "total": 30, "snapshot": 1}]
        worker.call = lambda command, **arguments: succeed(answers.pop(0))
        self.failureResultOf(worker.exposition("metrics"), ValueError)
        answers = [{"data": b"x" * 10, "total": 30, "snapshot": None}]
        self.failureResultOf(worker.exposition("metrics"), ValueError)
        answers = [{"data": b"x" * 10, "total": 20, "snapshot": 2}, {"data": b"y" * 10, "total": 20, "snapshot": 2}]
        self.assertEqual(self.successResultOf(worker.exposition("metrics")), "x" * 10 + "y" * 10)


class WorkerMetricsTests(SynchronousTestCase):
    def test_sums_by_name_and_labels(self):
        metrics = WorkerMetrics()
        metrics.update(
            [
                EXPOSITION.format(relayed=3, live=1, up=1),
                EXPOSITION.format(relayed=4, live=2, up=0),
            ]
        )
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for family in metrics.collect() for s in family.samples
        }
        self.assertEqual(samples[("sniproxy_connections_total", (("outcome", "relayed"),))], 7)
        self.assertEqual(samples[("sniproxy_route_decision_seconds_bucket", (("le", "+Inf"),))], 7)
        self.assertEqual(samples[("sniproxy_route_decision_seconds_sum", ())], 1.0)
        self.assertEqual(metrics.live(), 3)
        # Up only when every worker has the instance up.
        self.assertEqual(samples[("sniproxy_backend_up", (("address", "127.0.0.1:1"), ("app", "a")))], 0)
        # No creation times, and the DNS cache's numbers come from the main process.
        self.assertFalse([name for name, _ in samples if name.endswith("_created") or name.startswith("sniproxy_dns")])
        totals = {}
        for family in metrics.connections.collect():
            for sample in family.samples:
                totals[sample.labels["outcome"]] = sample.value
        self.assertEqual(totals, {"relayed": 7})


class WorkerInstancesTests(SynchronousTestCase):
    def row(self, state=HealthState.UP, until=None, live=0, total=0, failures=0) -> InstanceStatus:
        return InstanceStatus("web", "127.0.0.1:443", state, until, live, total, failures, 10, 20, 5)

    def test_sums_and_worst_state(self):
        """Counts add up across workers; the health is the worst any worker has."""
        instances = WorkerInstances()
        instances.update(
            [
                instances_json([self.row(live=1, total=3)]).decode(),
                instances_json([self.row(HealthState.EJECTED, 40.0, live=2, total=4, failures=1)]).decode(),
                instances_json([self.row(HealthState.PROBING, 30.0, failures=2)]).decode(),
            ]
        )
        [merged] = instances.instances()
        self.assertEqual(merged.state, HealthState.EJECTED)
        self.assertEqual(merged.ejected_until, 40.0)
        self.assertEqual((merged.live, merged.total, merged.connect_failures), (3, 7, 3))
        self.assertEqual((merged.bytes_up, merged.bytes_down, merged.max_connections), (30, 60, 5))

    def test_unreadable_worker_left_out(self):
        instances = WorkerInstances()
        instances.update(["not json", '[{"app": 1}]', instances_json([self.row(total=2)]).decode()])
        [merged] = instances.instances()
        self.assertEqual(merged.total, 2)


class AccessLogTests(SynchronousTestCase):
    def test_workers_append_whole_lines_naming_themselves(self):
        """Two workers' logs on one file: every line whole (even past any buffer size) and named."""
        from sniproxy.accesslog import AccessLog

        path = self.mktemp()
        logs = [AccessLog(path, worker=1), AccessLog(path, worker=2)]
        self.addCleanup(lambda: [log.close() for log in logs])
        for index in range(20):
            logs[index % 2].write({"worker": 1 + index % 2, "filler": str(index) * 20000})
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([line["worker"] for line in lines], [1, 2] * 10)
        self.assertEqual([len(line["filler"]) for line in lines[:2]], [20000, 20000])

    def test_one_worker_lines_have_no_worker(self):
        from sniproxy.accesslog import AccessLog

        self.assertIsNone(AccessLog("").worker)


class SupervisorTests(TestCase):
    """Real (short-lived) processes, restart times on a L{Clock}."""

    timeout = 30

    @inlineCallbacks
    def test_backoff_doubles_and_resets(self):
        clock = Clock()

        def command(number, listen):
            return [sys.executable, "-c", "import sys; sys.exit(3)"]

        supervisor = Supervisor(reactor, 1, command, {}, clock=clock)
        delays = []
        supervisor.start()
        for _ in range(8):
            while not supervisor._restarts:
                yield deferLater(reactor, 0.01, lambda: None)
            call = supervisor._restarts[1]
            delays.append(round(call.getTime() - clock.seconds(), 3))
            clock.advance(call.getTime() - clock.seconds())
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, MAX_DELAY])
        while not supervisor._restarts:
            yield deferLater(reactor, 0.01, lambda: None)
        yield supervisor.stop(0)
        self.assertEqual((supervisor.workers, supervisor._restarts), ({}, {}))

    @inlineCallbacks
    def test_backoff_resets_after_a_stable_run(self):
        """A worker that lived 30 s is restarted after the first delay again."""
        clock = Clock()

        def command(number, listen):
            return [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"]

        supervisor = Supervisor(reactor, 1, command, {}, clock=clock)
        supervisor._delays[1] = MAX_DELAY
        supervisor.start()
        clock.advance(30)
        supervisor.workers[1].transport.closeStdin()  # it exits
        while not supervisor._restarts:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(round(supervisor._restarts[1].getTime() - clock.seconds(), 3), FIRST_DELAY)
        yield supervisor.stop(0)


class SupervisorFaultTests(SynchronousTestCase):
    """A wedged worker, a failed spawn, a failed reload: no hang, a retry, nothing left bound."""

    def test_wedged_worker_is_left_out_of_expositions(self):
        from types import SimpleNamespace

        from twisted.internet.defer import Deferred, succeed

        from sniproxy.workers import EXPOSITION_TIMEOUT

        clock = Clock()
        supervisor = Supervisor(None, 2, lambda number, listen: [], {}, clock=clock)
        wedged = Deferred()
        supervisor.workers = {
            1: SimpleNamespace(number=1, ready=True, exposition=lambda kind: wedged),
            2: SimpleNamespace(number=2, ready=True, exposition=lambda kind: succeed("two")),
        }
        texts = supervisor.expositions()
        self.assertNoResult(texts)
        clock.advance(EXPOSITION_TIMEOUT)
        self.assertEqual(self.successResultOf(texts), ["two"])

    def test_failed_spawn_is_retried_with_the_backoff(self):
        from types import SimpleNamespace

        clock = Clock()
        attempts = []

        def spawnProcess(*args, **kwargs):
            attempts.append(clock.seconds())
            raise OSError(11, "Resource temporarily unavailable")

        supervisor = Supervisor(SimpleNamespace(spawnProcess=spawnProcess), 1, lambda n, l: ["python"], {}, clock=clock)
        supervisor.stopping = True  # a previous stop
        supervisor.start()
        self.assertFalse(supervisor.stopping)
        self.assertEqual(supervisor.workers, {})
        for _ in range(3):
            clock.advance(supervisor._restarts[1].getTime() - clock.seconds())
        self.assertEqual(attempts, [0, FIRST_DELAY, FIRST_DELAY * 3, FIRST_DELAY * 7])
        supervisor.stop(0)
        self.assertEqual(supervisor._restarts, {})

    def service(self, listen: str = "tcp:0:interface=127.0.0.1"):
        from sniproxy.assembly import validate
        from sniproxy.workers import WorkersService

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[proxy]\nlisten = ["{listen}"]\nworkers = 2\n[log]\naccess = ""\n')
        service = WorkersService(validate(path), reactor=reactor, clock=Clock())
        self.addCleanup(service.resolver_threads.stop)
        return service, path

    def test_concurrent_refreshes_share_one_gathering(self):
        from twisted.internet.defer import Deferred

        service, _ = self.service()
        asked = []

        def expositions(kind="metrics"):
            asked.append(Deferred())
            return asked[-1]

        service.supervisor.expositions = expositions
        first, second = service._refresh(), service._refresh()
        self.assertEqual(len(asked), 2)  # metrics and instances, once
        asked[0].callback([EXPOSITION.format(relayed=3, live=0, up=1)])
        asked[1].callback([])
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (None, None))
        self.assertEqual(service.metrics.live(), 0)
        self.assertIn("sniproxy_connections", service.metrics.families)
        third = service._refresh()
        self.assertEqual(len(asked), 4)  # a new one once that one is done
        self.assertNoResult(third)
        asked[2].errback(ValueError("boom"))
        asked[3].callback([])
        self.failureResultOf(third)

    def test_reload_internal_error_closes_what_it_bound(self):
        from types import SimpleNamespace

        service, path = self.service()
        closed = []
        service._bind = lambda description: SimpleNamespace(stopListening=lambda: closed.append(description))
        import sniproxy.service

        # The admin endpoint is bound by the reload's shared open_new_ports.
        self.patch(
            sniproxy.service, "_listen",
            lambda reactor, description, factory: SimpleNamespace(stopListening=lambda: closed.append("admin")),
        )

        def broken(data):
            raise OSError(28, "No space left on device")

        service._write_generation = broken
        with open(path, "a") as f:
            f.write('[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n')
        with open(path) as f:
            text = f.read().replace('listen = ["tcp:0:interface=127.0.0.1"]', 'listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=9"]')
        with open(path, "w") as f:
            f.write(text)
        before = service.config
        self.assertFalse(service.reload())
        self.assertTrue(service.last_reload_error.startswith("internal error: OSError"), service.last_reload_error)
        self.assertEqual(closed, ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=9", "admin"])
        self.assertIs(service.config, before)
        self.assertIsNone(service.admin_port)
        self.flushLoggedErrors(OSError)

    def test_reload_failing_after_the_switch_says_partially(self):
        service, path = self.service()
        service.ports = {"tcp:0:interface=127.0.0.1": object()}
        service._write_generation = lambda data: path

        def broken(*args):
            raise RuntimeError("cache file")

        service.dns_service.reconfigure = broken
        from twisted.internet.defer import succeed

        service.supervisor.call = lambda command, **arguments: succeed([])
        self.assertFalse(service.reload())
        self.assertTrue(service.last_reload_error.startswith("applied partially: RuntimeError"), service.last_reload_error)
        self.flushLoggedErrors(RuntimeError)


GREETING = b"hello from the backend"


class Greeter(Protocol):
    greeting = GREETING

    def connectionMade(self):
        self.transport.write(self.greeting)


class Client(Collect):
    @inlineCallbacks
    def until(self, n: int, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while len(b"".join(self.chunks)) < n:
            if self.done.called or time.monotonic() > deadline:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        return b"".join(self.chunks)


def _alive(pid: int) -> bool:
    """Whether C{pid} is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split(":", 1)[1]
    except FileNotFoundError:
        return False
    return False


class SystemdTwistd(Twistd):
    """C{twistd -n sniproxy} given a listening socket as fd 3 the way systemd passes one."""

    def __init__(self, config_path: str, fd: int) -> None:
        super().__init__(config_path)
        self.fd = fd

    def start(self, reactor, *, cwd: str | None = None):
        # $$ is the shell's pid, which exec keeps: LISTEN_PID names the main process.
        argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=sniproxy exec "$@"', "sh"]
        argv += twistd_command("-n", "--pidfile=", "sniproxy", "--config", self.config_path)
        reactor.spawnProcess(self, argv[0], argv, env=child_environment(), path=cwd, childFDs={0: "w", 1: "r", 2: "r", 3: self.fd})
        return self.listening


class DaemonWorkersTests(TestCase):
    """C{twistd -n sniproxy} with C{workers = 2}."""

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        self.backends = []
        for greeting in (GREETING, b"hello from backend two"):
            factory = Factory.forProtocol(Greeter)
            factory.protocol = type("G", (Greeter,), {"greeting": greeting})
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            self.addCleanup(port.stopListening)
            self.backends.append(port.getHost().port)
        self.dns = DNSServer()
        self.dns.start()
        self.addCleanup(self.dns.stop)
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.config = os.path.join(self.dir, "sniproxy.toml")
        self.access = os.path.join(self.dir, "access.log")

    def write_config(
        self,
        backend: int = 0,
        access: str | None = None,
        listen: str = "tcp:0:interface=127.0.0.1",
        extra: str = "",
        shutdown_timeout: float = 2,
    ) -> None:
        if access is not None:
            self.access = access
        with open(self.config, "w") as f:
            f.write(
                f"""
[proxy]
listen = ["{listen}"]
workers = 2
shutdown_timeout = {shutdown_timeout}
[routing]
sources = ["static", "txt"]
[routing.static]
"static.example.com" = "127.0.0.1:{self.backends[backend]}"
[apps.myapp]
backends = ["127.0.0.1:{self.backends[0]}"]
[dns]
servers = ["127.0.0.1:{self.dns.port}"]
timeout = 1.0
attempts = 1
deadline = 2.0
[admin]
listen = "tcp:0:interface=127.0.0.1"
[log]
access = "{self.access}"
{extra}
"""
            )

    @inlineCallbacks
    def start(self, child: Twistd | None = None) -> Twistd:
        if child is None:
            child = Twistd(self.config)
        self.addCleanup(self.stop_child, child)
        serving = [child.wait_for(b"worker 1 (pid"), child.wait_for(b"worker 2 (pid")]
        yield child.start(reactor)
        yield gatherResults(serving)
        yield self.wait_serving(child, 2)
        return child

    @inlineCallbacks
    def stop_child(self, child: Twistd):
        pids = self.worker_pids(child)
        yield child.stop()
        for pid in pids:  # never leave a worker behind, whatever the test did
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def worker_pids(self, child: Twistd) -> list[int]:
        return [int(pid) for pid in re.findall(rb"worker \d+ started \(pid (\d+)\)", child.output)]

    @inlineCallbacks
    def wait_serving(self, child: Twistd, count: int):
        for _ in range(500):
            if child.output.count(b") serving") >= count:
                return
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(child.output.decode(errors="replace"))

    @property
    def admin(self) -> int:
        return int(self.child.addresses[1].rsplit(":", 1)[1])

    @inlineCallbacks
    def connect(self, port: int, name: str, expect: bytes = GREETING) -> bytes:
        client = Client()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        protocol.transport.write(make_client_hello(name))
        data = yield client.until(len(expect))
        protocol.transport.loseConnection()
        yield client.done
        return data

    def stdout_records(self) -> list[dict]:
        """The access-log lines on the main process's output (C{access = "-"})."""
        lines = []
        for line in self.child.output.split(b"\n"):
            if line.startswith(b"{"):
                lines.append(json.loads(line))  # a whole line, or this fails
        return lines

    @inlineCallbacks
    def records(self, count: int):
        for _ in range(500):
            if self.access == "-":
                lines = self.stdout_records()
                if len(lines) >= count:
                    return lines
            elif os.path.exists(self.access):
                with open(self.access) as f:
                    lines = [json.loads(line) for line in f if line.strip()]
                if len(lines) >= count:
                    return lines
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"fewer than {count} access-log records")

    @inlineCallbacks
    def get(self, path: str) -> bytes:
        response = yield treq.get(f"http://127.0.0.1:{self.admin}{path}", persistent=False)
        body = yield treq.content(response)
        return body

    @inlineCallbacks
    def connect_until_both_workers(self, name: str, expect: bytes = GREETING, at_most: int = 200):
        """
        Connect for C{name} until both workers have served it; every answer
        must be C{expect}.  (Which worker accepts is the kernel's choice
        between the two waiting on the socket: on a loaded machine one can
        take dozens in a row, hence the generous bound.)
        """
        seen = set()
        done = 0
        for _ in range(at_most):
            data = yield self.connect(self.child.port, name, expect)
            self.assertEqual(data, expect)
            done += 1
            lines = yield self.records(self.before + done)
            seen.add(lines[-1]["worker"])
            if seen == {1, 2}:
                break
        self.before += done
        self.assertEqual(seen, {1, 2})

    @inlineCallbacks
    def test_two_workers_serve_and_metrics_count_them_all(self):
        """Both workers serve; /metrics counts every worker's connections and shows both as up."""
        self.write_config()
        self.child = yield self.start()
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        lines = yield self.records(self.before)
        self.assertTrue(all(line["outcome"] == "relayed" for line in lines))
        self.assertTrue(all(line["worker"] in (1, 2) for line in lines))
        metrics = (yield self.get("/metrics")).decode()
        self.assertIn(f'sniproxy_connections_total{{outcome="relayed"}} {float(self.before)}', metrics)
        self.assertIn('sniproxy_worker_up{worker="1"} 1.0', metrics)
        self.assertIn('sniproxy_worker_up{worker="2"} 1.0', metrics)
        self.assertEqual(metrics.count("# TYPE sniproxy_connections_total counter"), 1)
        status = json.loads((yield self.get("/status.json")))
        self.assertEqual(status["workers"], {"count": 2, "serving": 2})
        self.assertEqual(status["connections"]["total"], self.before)
        page = (yield self.get("/")).decode()
        self.assertIn("2 of 2 serving", page)
        explained = json.loads((yield self.get("/explain?name=static.example.com")))
        self.assertIn(str(self.backends[0]), json.dumps(explained))

    @inlineCallbacks
    def test_access_log_on_standard_output(self):
        """C{access = "-"}: the workers' lines reach the main process's stdout, whole; no worker restarts."""
        self.write_config(access="-")
        self.child = yield self.start()
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        lines = self.stdout_records()
        self.assertEqual(len(lines), self.before)
        self.assertEqual({line["outcome"] for line in lines}, {"relayed"})
        self.assertEqual({line["worker"] for line in lines}, {1, 2})
        metrics = (yield self.get("/metrics")).decode()
        self.assertIn(f'sniproxy_connections_total{{outcome="relayed"}} {float(self.before)}', metrics)
        self.assertNotIn(b"restarting it", self.child.output)
        self.assertEqual(len(self.worker_pids(self.child)), 2)

    @inlineCallbacks
    def test_systemd_socket(self):
        """
        C{systemd:domain=INET:index=0}, the socket passed as systemd does
        (fd 3, C{LISTEN_FDS=1}, C{LISTEN_PID} the main process's pid): the
        workers start, serve it and reload, never re-parsing the endpoint.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        self.write_config(listen="systemd:domain=INET:index=0")
        self.child = yield self.start(SystemdTwistd(self.config, sock.fileno()))
        sock.close()
        self.assertEqual(self.child.port, port)
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        self.write_config(backend=1, listen="systemd:domain=INET:index=0")
        reloaded = self.child.wait_for(b"reload: 2 of 2 workers switched")
        self.child.signal("HUP")
        yield reloaded
        yield self.connect_until_both_workers("static.example.com", expect=b"hello from backend two")
        self.assertNotIn(b"restarting it", self.child.output)
        self.assertNotIn(b"failed to reload", self.child.output)

    @inlineCallbacks
    def test_concurrent_large_expositions(self):
        """
        Expositions of several chunks each: concurrent /metrics and
        /status.json requests (each asking both kinds of every worker)
        all answer 200 with every app, never a mix of two renderings.
        """
        apps = 500
        self.write_config(extra="".join(
            f'[apps.many{i}]\nbackends = ["127.0.0.1:{1000 + i}"]\n' for i in range(apps)
        ))
        self.child = yield self.start()

        @inlineCallbacks
        def fetch(path):
            response = yield treq.get(f"http://127.0.0.1:{self.admin}{path}", persistent=False)
            body = yield treq.content(response)
            return response.code, body

        for _ in range(3):
            answers = yield gatherResults([fetch(p) for p in ("/metrics", "/status.json") * 3])
            self.assertEqual([code for code, _ in answers], [200] * 6, answers[0][1][:500])
            for path, (_, body) in zip(("/metrics", "/status.json") * 3, answers):
                if path == "/metrics":
                    text = body.decode()
                    for i in (0, apps // 2, apps - 1):
                        self.assertIn(f'sniproxy_backend_up{{address="127.0.0.1:{1000 + i}",app="many{i}"}} 1.0', text)
                else:
                    from sniproxy.status import MAX_INSTANCES

                    instances = json.loads(body)["apps"]["instances"]
                    self.assertEqual(len(instances), MAX_INSTANCES)  # of apps + 1, all summed
                    self.assertEqual({i["total"] for i in instances}, {0})

    @inlineCallbacks
    def test_one_upstream_query_for_all_workers(self):
        """
        30 concurrent cold connections to one TXT-routed name cause exactly
        one upstream query; the name, then served by both workers, costs
        no other.
        """
        owner = "_dstack-app-address.cold.example.com"
        self.dns.add_txt(owner, "myapp:443", ttl=300)
        self.dns.delay = 0.5
        self.write_config()
        self.child = yield self.start()
        data = yield gatherResults([self.connect(self.child.port, "cold.example.com") for _ in range(30)])
        self.assertEqual(data, [GREETING] * 30)
        lines = yield self.records(30)
        self.assertEqual({line["outcome"] for line in lines}, {"relayed"})
        self.before = 30
        yield self.connect_until_both_workers("cold.example.com")
        self.assertEqual([q.name for q in self.dns.log if q.type == dns.TXT], [owner])
        # The status page sums both workers' boards: every connection to the
        # app's one instance, none live, the instance up.
        status = json.loads((yield self.get("/status.json")))
        [instance] = status["apps"]["instances"]
        self.assertEqual(
            (instance["app"], instance["address"], instance["state"], instance["live"], instance["total"]),
            ("myapp", f"127.0.0.1:{self.backends[0]}", "up", 0, self.before),
        )

    @inlineCallbacks
    def test_killed_worker_is_replaced(self):
        """A worker killed by SIGKILL is logged and replaced; 40 connections meanwhile all succeed."""
        self.write_config()
        self.child = yield self.start()
        first, second = self.worker_pids(self.child)
        replaced = self.child.wait_for(b"was killed by signal SIGKILL")
        os.kill(first, signal.SIGKILL)
        data = []
        for _ in range(40):
            data.append((yield self.connect(self.child.port, "static.example.com")))
        self.assertEqual(data, [GREETING] * 40)
        yield replaced
        yield self.wait_serving(self.child, 3)
        pids = self.worker_pids(self.child)
        self.assertEqual(len(pids), 3)
        self.assertTrue(_alive(second) and _alive(pids[2]))
        self.assertFalse(_alive(first))

    @inlineCallbacks
    def test_restarted_worker_runs_the_validated_config(self):
        """
        A file edited without a reload never reaches a restarted worker:
        workers read the main process's copy of what it validated
        (C{config-<generation>.toml}, mode 0600), and a reload writes the next.
        """
        self.write_config(backend=0)
        self.child = yield self.start()
        runtime = re.search(rb"UNIXAddress\('([^']+)/dns.sock'\)", self.child.output).group(1).decode()
        first = os.path.join(runtime, "config-1.toml")
        self.assertEqual(os.stat(first).st_mode & 0o777, 0o600)
        self.write_config(backend=1)  # no SIGHUP
        with open(first) as f:
            self.assertIn(str(self.backends[0]), f.read())
        pid = self.worker_pids(self.child)[0]
        replaced = self.child.wait_for(b"was killed by signal SIGKILL")
        os.kill(pid, signal.SIGKILL)
        yield replaced
        yield self.wait_serving(self.child, 3)
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        self.assertIn(f"--config-name {self.config}".encode(), open(f"/proc/{self.worker_pids(self.child)[-1]}/cmdline", "rb").read().replace(b"\0", b" "))
        reloaded = self.child.wait_for(b"reload: 2 of 2 workers switched")
        self.child.signal("HUP")
        yield reloaded
        self.assertTrue(os.path.exists(os.path.join(runtime, "config-2.toml")))
        yield self.connect_until_both_workers("static.example.com", expect=b"hello from backend two")
        self.assertIn(f"reloaded {self.config}".encode(), self.child.output)

    @inlineCallbacks
    def test_sighup_changes_the_route_in_every_worker(self):
        """SIGHUP: every worker routes by the new file; a bad file changes nothing and names the key."""
        self.write_config(backend=0)
        self.child = yield self.start()
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        with open(self.config, "a") as f:
            f.write("\n[routing.txt]\nbogus_key = 1\n")
        refused = self.child.wait_for(b"reload of")
        self.child.signal("HUP")
        yield refused
        self.assertIn(b"bogus_key", self.child.output)
        self.write_config(backend=1)
        reloaded = self.child.wait_for(b"reload: 2 of 2 workers switched")
        self.child.signal("HUP")
        yield reloaded
        yield self.connect_until_both_workers("static.example.com", expect=b"hello from backend two")

    @inlineCallbacks
    def test_sigterm_exits_zero_leaving_no_process(self):
        """SIGTERM: the workers drain and exit, then the main process exits 0; the runtime dir goes."""
        self.write_config()
        self.child = yield self.start()
        pids = self.worker_pids(self.child)
        runtime = re.search(rb"UNIXAddress\('([^']+)/dns.sock'\)", self.child.output)
        main = self.child.transport.pid
        code = yield self.child.stop()
        self.assertEqual(code, 0, self.child.output.decode(errors="replace"))
        self.assertEqual(len(pids), 2)
        for pid in (main, *pids):
            self.assertFalse(_alive(pid), pid)
        if runtime is not None:
            self.assertFalse(os.path.exists(runtime.group(1).decode()))
        self.assertNotIn(b"Traceback", self.child.output)

    @inlineCallbacks
    def test_sigterm_refuses_new_connections_while_draining(self):
        """After SIGTERM a new connect is refused at once, while a held connection still drains."""
        from twisted.internet.error import ConnectError, ConnectionRefusedError

        self.write_config(shutdown_timeout=10)
        self.child = yield self.start()
        held = Client()
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.child.port), held)
        protocol.transport.write(make_client_hello("static.example.com"))
        self.assertEqual((yield held.until(len(GREETING))), GREETING)
        self.child.signal("TERM")
        refused = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                probe = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.child.port), Protocol())
            except ConnectionRefusedError:
                refused = True
                break
            except ConnectError as e:
                # Caught in the backlog as the listening socket closed: the
                # kernel resets it, and it was never accepted either.
                if e.osError != errno.ECONNRESET:
                    raise
                yield deferLater(reactor, 0.05, lambda: None)
                continue
            probe.transport.abortConnection()
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(refused, "new connections were still accepted into the backlog")
        self.assertFalse(held.done.called)  # still relaying
        protocol.transport.write(b"x")
        self.assertFalse(self.child.ended.called)
        protocol.transport.loseConnection()
        yield held.done
        code = yield self.child.ended
        self.assertEqual(code, 0, self.child.output.decode(errors="replace"))

    @inlineCallbacks
    def test_sigusr1_reopens_every_workers_log(self):
        """After logrotate's rename and SIGUSR1, both workers write to the new file."""
        self.write_config()
        self.child = yield self.start()
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")
        os.rename(self.access, self.access + ".1")
        reopened = self.child.wait_for(b"2 of 2 workers reopened the access log")
        self.child.signal("USR1")
        yield reopened
        self.before = 0
        yield self.connect_until_both_workers("static.example.com")

    @inlineCallbacks
    def test_reload_adding_a_port_replaces_the_workers(self):
        """A port added by SIGHUP is bound by the main process and served by a new set of workers."""
        self.write_config()
        self.child = yield self.start()
        old = self.worker_pids(self.child)
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace(
                'listen = ["tcp:0:interface=127.0.0.1"]',
                'listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=64"]', 1
            ))
        reloaded = self.child.wait_for(b"reloaded")
        self.child.signal("HUP")
        yield reloaded
        yield self.wait_serving(self.child, 4)
        new_port = int(self.child.addresses[2].rsplit(":", 1)[1])
        for port in (self.child.port, new_port):
            data = yield self.connect(port, "static.example.com")
            self.assertEqual(data, GREETING)
        for _ in range(300):
            if not any(_alive(pid) for pid in old):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([pid for pid in old if _alive(pid)], [])
        self.assertEqual(len(self.worker_pids(self.child)), 4)

    @inlineCallbacks
    def test_workers_exit_when_the_main_process_dies(self):
        """SIGKILL to the main process: its workers stop on their own (PR_SET_PDEATHSIG, the pipe's EOF)."""
        self.write_config()
        self.child = yield self.start()
        pids = self.worker_pids(self.child)
        self.child.signal("KILL")
        yield self.child.ended
        runtime = re.search(rb"UNIXAddress\('([^']+)/dns.sock'\)", self.child.output)
        if runtime is not None:  # nobody removes it after a SIGKILL
            self.addCleanup(shutil.rmtree, runtime.group(1).decode(), True)
        for _ in range(300):
            if not any(_alive(pid) for pid in pids):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
