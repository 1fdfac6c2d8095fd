"""
Worker processes (C{[proxy] workers} above 1): every core serves, and all
of them share one DNS cache.

The main process (what twistd runs) binds every listening socket and
accepts nothing on them; it owns the DNS layer (the L{CachingResolver},
its cache file and warm-up), serves it to the workers with
L{sniproxy.dns.shared.DNSOwner} on a UNIX socket in a private runtime
directory, runs the admin endpoint, and starts and watches N workers
(L{Supervisor}).  Each worker (C{python -m sniproxy.workers}, see
L{worker_main}) adopts the listening sockets it inherited
(C{reactor.adoptStreamPort}) and accepts and relays on its own, as a
L{WorkerProxyService}: a L{ProxyService} that resolves through a
L{sniproxy.dns.shared.DNSMirror}.  Main and worker talk AMP over two
pipes of their own, the worker's fds 3 and 4 (L{sniproxy.workerproto});
the worker's standard output is the main process's (C{[log] access =
"-"}), and its standard error comes back to the main process's log, line
by line.

See docs/workers.rst for the behaviour (signals, faults, limits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import tomllib
from typing import Any, Callable

from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated, ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols import amp

import sniproxy
from sniproxy.admin import admin_site
from sniproxy.assembly import StartError, assemble, build_dns, build_resolver_threads, build_router, validate
from sniproxy.backends import BackendBoard, HealthState, InstanceStatus
from sniproxy.config import Config, ConfigError, parse_config
from sniproxy.dns import apply_dns, build_dns_service, with_dns_cache_file
from sniproxy.explain import explain
from sniproxy.metrics import _DNSCollector
from sniproxy.service import ProcessSignals, ProxyService, _listen, open_new_ports
from sniproxy.status import StatusCollector
from sniproxy.workerproto import CHUNK, Drain, Exposition, Ready, Reload, ReopenLogs, UnknownSnapshot
from sniproxy.transport import serve_accepts

__all__ = [
    "Supervisor",
    "WorkerMetrics",
    "WorkerProxyService",
    "WorkersService",
    "worker_count",
    "worker_main",
]

log = Logger()

#: Restart back-off: the first restart waits FIRST_DELAY; each death within
#: STABLE seconds of a start doubles it, up to MAX_DELAY.
FIRST_DELAY = 0.1
MAX_DELAY = 10.0
STABLE = 30.0

#: Seconds a worker has to send its whole exposition before it is left out
#: of a scrape (a wedged worker must not hang the admin endpoint).
EXPOSITION_TIMEOUT = 2.0


def worker_count(config: Config) -> int:
    """How many processes serve: C{proxy.workers}, with 0 meaning one per CPU core."""
    return config.proxy.workers or os.cpu_count() or 1


# ---------------------------------------------------------------- metrics


class _Family:
    """One summed metric family (what L{WorkerMetrics} yields)."""

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        for (sample, labels), value in self.values.items():
            metric.add_sample(sample, dict(labels), value)
        return metric


class _Only:
    """One family of a L{WorkerMetrics}, with C{collect()} as a Prometheus counter has."""

    def __init__(self, metrics: WorkerMetrics, name: str) -> None:
        self.metrics, self.name = metrics, name

    def collect(self) -> list[Metric]:
        family = self.metrics.families.get(self.name)
        return [] if family is None else [family]


#: Families that are not summed: an instance is up when every worker has it up.
_MINIMUM = frozenset({"sniproxy_backend_up"})


class WorkerMetrics:
    """
    The workers' metrics, summed by name and labels (counters, gauges,
    histogram buckets), as a Prometheus collector.  The DNS cache's
    families are left out: the main process's own cache is the one.

    @ivar families: the summed families by name, as of the last L{update}.
    @ivar connections: C{sniproxy_connections} alone (for the status page).
    @ivar relayed_bytes: C{sniproxy_relayed_bytes} alone.
    @ivar routed: C{sniproxy_routed_connections} alone.
    """

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.connections = _Only(self, "sniproxy_connections")
        self.relayed_bytes = _Only(self, "sniproxy_relayed_bytes")
        self.routed = _Only(self, "sniproxy_routed_connections")

    def update(self, texts: list[str]) -> None:
        """Replace the sums with those of these expositions (one per worker)."""
        sums: dict[str, _Family] = {}
        for text in texts:
            for family in text_string_to_metric_families(text):
                if family.name.startswith("sniproxy_dns_"):
                    continue
                summed = sums.get(family.name)
                if summed is None:
                    summed = sums[family.name] = _Family(family.name, family.documentation, family.type)
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key in summed.values and family.name in _MINIMUM:
                        summed.values[key] = min(summed.values[key], sample.value)
                    else:
                        summed.values[key] = summed.values.get(key, 0.0) + sample.value
        self.families = {name: family.metric() for name, family in sums.items()}

    def live(self) -> int:
        """Connections open now, in all workers."""
        family = self.families.get("sniproxy_live_connections")
        return int(sum(sample.value for sample in family.samples)) if family is not None else 0

    def collect(self):
        return list(self.families.values())


# Worst first: an instance any worker has ejected shows as ejected.
_SEVERITY = {HealthState.UP: 0, HealthState.PROBING: 1, HealthState.EJECTED: 2}


def instances_json(instances: list[InstanceStatus]) -> bytes:
    """A board's instances as the JSON a worker sends the main process."""
    return json.dumps(
        [dataclasses.asdict(i) | {"state": HealthState(i.state).value} for i in instances], separators=(",", ":")
    ).encode("utf-8")


class WorkerInstances:
    """
    The status page's instances with several workers: each worker's board
    (L{sniproxy.backends.BackendBoard}) summed by app and address.  Counts
    add up; the health shown is the worst any worker has (each worker's
    board judges its own connects), with the latest C{ejected_until}.
    """

    def __init__(self) -> None:
        self._rows: list[InstanceStatus] = []

    def instances(self) -> list[InstanceStatus]:
        return self._rows

    def update(self, texts: list[str]) -> None:
        """Replace the sums with those of these JSON lists (one per worker)."""
        merged: dict[tuple[str, str], InstanceStatus] = {}
        for text in texts:
            try:
                rows = [InstanceStatus(**row | {"state": HealthState(row["state"])}) for row in json.loads(text)]
            except (ValueError, TypeError, KeyError) as error:
                log.warn("a worker sent unreadable instances: {error}", error=str(error)[:200])
                continue
            for row in rows:
                key = (row.app, row.address)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = row
                    continue
                worst = seen.state if _SEVERITY[seen.state] >= _SEVERITY[row.state] else row.state
                until = [t for t in (seen.ejected_until, row.ejected_until) if t is not None]
                merged[key] = dataclasses.replace(
                    seen,
                    state=worst,
                    ejected_until=max(until) if until else None,
                    live=seen.live + row.live,
                    total=seen.total + row.total,
                    connect_failures=seen.connect_failures + row.connect_failures,
                    bytes_up=seen.bytes_up + row.bytes_up,
                    bytes_down=seen.bytes_down + row.bytes_down,
                )
        self._rows = list(merged.values())


class _WorkerUp:
    """C{sniproxy_worker_up{worker}}: 1 while a worker runs and serves."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self):
        family = GaugeMetricFamily("sniproxy_worker_up", "1 while the worker process serves", labels=["worker"])
        for number in range(1, self.supervisor.count + 1):
            worker = self.supervisor.workers.get(number)
            family.add_metric([str(number)], 1 if worker is not None and worker.ready else 0)
        yield family


# ---------------------------------------------------------------- the main process's side


class _MainSide(amp.AMP):
    def __init__(self, worker: _Worker) -> None:
        super().__init__()
        self.worker = worker

    @Ready.responder
    def ready(self, pid: int):
        self.worker.ready = True
        log.info("worker {worker} (pid {pid}) serving", worker=self.worker.number, pid=pid)
        return {}


def _how(reason: Any) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = str(value.signal)
        return f"was killed by signal {name}"
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        return f"exited with status {value.exitCode}"
    return f"ended: {value}"


#: The worker's file descriptors: 0 is closed at once (the worker reads
#: nothing there), 1 is the main process's own standard output (so C{[log]
#: access = "-"} writes where it does with one process), 2 carries its log
#: lines back, the control AMP goes in on CONTROL_IN and out on
#: CONTROL_OUT, and the listening sockets follow from FIRST_LISTEN_FD.
CONTROL_IN = 3
CONTROL_OUT = 4
FIRST_LISTEN_FD = 5


def _stdout_fd() -> Any:
    """The main process's fd 1 to hand down, or a pipe to drop output into when it is closed."""
    try:
        os.fstat(1)
    except OSError:
        return "r"
    return 1


class _Pipes:
    """The worker process's control pipes as a transport the control AMP can use."""

    def __init__(self, process: Any) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.writeToChild(CONTROL_IN, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.process.writeToChild(CONTROL_IN, b"".join(data))

    def loseConnection(self) -> None:
        self.process.closeChildFD(CONTROL_IN)

    def getPeer(self) -> str:
        return f"worker pid {self.process.pid}"

    def getHost(self) -> str:
        return "main"


class _Worker(ProcessProtocol):
    """One worker process, seen from the main process."""

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.amp = _MainSide(self)
        self.ready = False
        self.retired = False
        self.started = supervisor.clock.seconds()
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._error = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        try:
            self.transport.closeChildFD(0)
        except (KeyError, OSError):
            pass
        self.amp.makeConnection(_Pipes(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CONTROL_OUT:
            self.amp.dataReceived(data)
        elif childFD == 2:
            self.errReceived(data)
        # fd 1 only when the main process's own stdout was closed: dropped

    def errReceived(self, data: bytes) -> None:
        *lines, self._error = (self._error + data).split(b"\n")
        for line in lines:
            if line:
                log.info("worker {worker}: {line}", worker=self.number, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        self.ready = False
        self.errReceived(b"\n")
        self.amp.connectionLost(reason)
        self.supervisor._ended(self, reason)
        self.ended.callback(None)

    def call(self, command: type[amp.Command], **arguments: Any) -> defer.Deferred[Any]:
        return self.amp.callRemote(command, **arguments)

    @inlineCallbacks
    def exposition(self, kind: str = "metrics"):
        """
        The worker's exposition of C{kind}, whole, from one snapshot.

        @raise ValueError: when the chunks do not add up to it.
        """
        answer = yield self.call(Exposition, offset=0, kind=kind)
        data, total, snapshot = answer["data"], answer["total"], answer.get("snapshot")
        while len(data) < total:
            if snapshot is None:
                raise ValueError(f"worker {self.number} sent {len(data)} of {total} bytes and no snapshot")
            more = yield self.call(Exposition, offset=len(data), kind=kind, snapshot=snapshot)
            if not more["data"] or more["total"] != total:
                raise ValueError(f"worker {self.number} sent {len(data)} of {total} bytes of its {kind}")
            data += more["data"]
        if len(data) != total:
            raise ValueError(f"worker {self.number} sent {len(data)} bytes of its {kind}, not {total}")
        return data.decode("utf-8")


class Supervisor:
    """
    Starts C{count} worker processes and keeps them running: one that dies
    is restarted (one log line with its exit status or signal) after a
    back-off that doubles, from L{FIRST_DELAY} to L{MAX_DELAY}, while it
    keeps dying within L{STABLE} seconds of its start.

    @param command: makes a worker's argv from its number and the
        C{--listen} arguments (C{description=fd} in the child).
    @param fds: the listening sockets to hand down, by endpoint string.
    @ivar workers: the running workers, by number (1 to C{count}).
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: Callable[[int, list[str]], list[str]],
        fds: dict[str, int],
        clock: IReactorTime | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.count = count
        self.command = command
        self.fds = fds
        self.env = env
        self.workers: dict[int, _Worker] = {}
        self.retired: list[_Worker] = []
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self.stopping = False

    def start(self) -> None:
        self.stopping = False
        for number in range(1, self.count + 1):
            self.spawn(number)

    def spawn(self, number: int) -> _Worker:
        self._restarts.pop(number, None)
        worker = _Worker(self, number)
        child_fds: dict[int, Any] = {0: "w", 1: _stdout_fd(), 2: "r", CONTROL_IN: "w", CONTROL_OUT: "r"}
        listen = []
        for index, (description, fd) in enumerate(self.fds.items()):
            child_fds[FIRST_LISTEN_FD + index] = fd
            listen.append(f"{description}={FIRST_LISTEN_FD + index}")
        try:
            argv = self.command(number, listen)
            self.reactor.spawnProcess(worker, argv[0], argv, env=self.env, childFDs=child_fds)
        except Exception as error:  # out of processes or descriptors, say
            self._schedule(number, f"could not be started ({type(error).__name__}: {error})")
            return worker
        self.workers[number] = worker
        log.info("worker {worker} started (pid {pid})", worker=number, pid=worker.pid)
        return worker

    def _ended(self, worker: _Worker, reason: Any) -> None:
        if worker in self.retired:
            self.retired.remove(worker)
            return
        if self.workers.get(worker.number) is not worker:
            return
        del self.workers[worker.number]
        if self.stopping:
            return
        if self.clock.seconds() - worker.started >= STABLE:
            self._delays[worker.number] = FIRST_DELAY
        self._schedule(worker.number, f"(pid {worker.pid}) {_how(reason)}", " (its connections are lost)")

    def _schedule(self, number: int, what: str, lost: str = "") -> None:
        """Log what happened to worker C{number} and start it again after its back-off."""
        delay = self._delays.get(number, FIRST_DELAY)
        self._delays[number] = min(delay * 2, MAX_DELAY)
        log.warn(
            "worker {worker} {what}; restarting it in {delay:g}s{lost}", worker=number, what=what, delay=delay, lost=lost
        )
        self._restarts[number] = self.clock.callLater(delay, self.spawn, number)

    def call(self, command: type[amp.Command], **arguments: Any) -> defer.Deferred[list[tuple[int, Any]]]:
        """Send C{command} to every running worker; fires with (number, answer or None) pairs."""
        numbers = sorted(self.workers)

        def ignore(failure, number):
            log.warn("worker {worker} did not answer {command}: {error}", worker=number, command=command.__name__, error=failure.value)

        calls = [self.workers[n].call(command, **arguments).addErrback(ignore, n) for n in numbers]
        return defer.gatherResults(calls).addCallback(lambda answers: list(zip(numbers, answers)))

    def expositions(self, kind: str = "metrics") -> defer.Deferred[list[str]]:
        """
        Every serving worker's metrics exposition, or (C{kind}
        C{"instances"}) its board's instances as JSON; a worker that fails
        to answer, or has not within L{EXPOSITION_TIMEOUT}, is left out.
        """

        def left_out(failure: Any, worker: _Worker) -> None:
            log.warn(
                "worker {worker} gave no {kind} (left out): {error}", worker=worker.number, kind=kind, error=failure.value
            )

        calls = [
            worker.exposition(kind).addTimeout(EXPOSITION_TIMEOUT, self.clock).addErrback(left_out, worker)
            for worker in self.workers.values()
            if worker.ready
        ]
        return defer.gatherResults(calls).addCallback(lambda texts: [text for text in texts if text is not None])

    def _retire(self, worker: _Worker, timeout: float) -> defer.Deferred[None]:
        """Ask C{worker} to drain and exit; kill it if it has not within C{timeout} + 5 s."""
        worker.retired = True
        if worker not in self.retired:
            self.retired.append(worker)
        worker.call(Drain).addErrback(lambda _: None)
        kill = self.clock.callLater(timeout + 5.0, self._kill, worker)
        worker.ended.addBoth(lambda _: kill.cancel() if kill.active() else None)
        return worker.ended

    def _kill(self, worker: _Worker) -> None:
        log.warn("worker {worker} (pid {pid}) did not stop in time: killing it", worker=worker.number, pid=worker.pid)
        try:
            worker.transport.signalProcess("KILL")
        except Exception:
            pass

    def replace(self, fds: dict[str, int], count: int, timeout: float) -> None:
        """Start a new set of workers on C{fds}; the old ones drain and exit."""
        old = list(self.workers.values())
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        self.workers = {}
        self.fds, self.count = fds, count
        for worker in old:
            self._retire(worker, timeout)
        self.start()

    def stop(self, timeout: float) -> defer.Deferred[Any]:
        """Drain every worker (up to C{timeout} seconds each) and fire once all have exited."""
        self.stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        waiting = [self._retire(worker, timeout) for worker in list(self.workers.values())]
        waiting += [worker.ended for worker in self.retired if not worker.ended.called and worker.ended not in waiting]
        return DeferredList(waiting)


class _NoAccept(Factory):
    """The main process's listening ports accept nothing (it stops reading them)."""

    noisy = False
    protocol = Protocol


def _fd(port: Any) -> int:
    return port.fileno()


def _close(ports: dict[str, Any]) -> None:
    """Stop listening on every port of C{ports} (those a failed reload bound), and forget them."""
    for port in ports.values():
        try:
            port.stopListening()
        except Exception:
            log.failure("cannot close a port a failed reload opened")
    ports.clear()


class WorkersService(MultiService):
    """
    The main process with C{proxy.workers} above 1: binds, owns the DNS
    cache and the admin endpoint, supervises the workers.

    @ivar ports: the bound (not accepting) listening ports by endpoint.
    @ivar supervisor: the L{Supervisor} of the workers.
    @ivar metrics: the workers' summed metrics (L{WorkerMetrics}).
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        handle_signals: bool = False,
        dns_cache_file: str | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.dns_cache_file = dns_cache_file
        self.config_bytes = self._started_bytes(config)
        config = with_dns_cache_file(config, dns_cache_file)
        self.config = config
        self.config_path = config.path
        #: the workers' config: the bytes validated here, written to
        #: C{runtime_dir/config-<generation>.toml} (L{_write_generation}).
        self.generation = 0
        self.worker_config: str | None = None
        self.loaded_at = self.clock.seconds()
        self.last_reload_error: str | None = None
        self.handle_signals = handle_signals
        self.dns = build_dns(config, reactor, self.clock)
        self.resolver_threads = build_resolver_threads(config, reactor)
        parts = assemble(config, self.clock, dns=self.dns, resolver_threads=self.resolver_threads)
        self.dns_service = build_dns_service(self.dns, config.dns, parts.warm_names, self.clock, reactor)
        self.dns_service.setServiceParent(self)
        self.backends = BackendBoard(self.clock)
        self.backends.configure(config)
        self.runtime_dir: str | None = None
        self.owner: Any = None
        self.supervisor = Supervisor(reactor, worker_count(config), self._command, {}, clock=self.clock, env=_environment())
        self.metrics = WorkerMetrics()
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self.registry.register(_WorkerUp(self.supervisor))
        self.registry.register(_DNSCollector(lambda: self.dns.counters))
        self.instances = WorkerInstances()
        self.status = StatusCollector(
            clock=self.clock,
            metrics=self.metrics,
            live=self.metrics.live,
            service=self,
            backends=self.instances,
            dns=self.dns,
        )
        self.ports: dict[str, Any] = {}
        self.admin_port = None
        self.signals = ProcessSignals(self.reactor)
        self._terminating = False
        self._refreshing: list[defer.Deferred[None]] | None = None

    @staticmethod
    def _started_bytes(config: Config) -> bytes | None:
        """The config file's bytes, as validated before this service was made (C{None}: no file)."""
        if not config.path:
            return None
        data, again = read_config(config.path)
        if again != config:
            # Edited between twistd's validation and now: the workers get
            # what this process runs with only if the bytes still match.
            raise StartError(f"{config.path} changed while sniproxy started; start it again")
        return data

    def _write_generation(self, data: bytes | None) -> str:
        """Write the validated C{data} as the next generation for the workers; its path."""
        if data is None:
            return self.config_path
        generation = self.generation + 1
        path = os.path.join(self.runtime_dir or "", f"config-{generation}.toml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        # Keep the one before too: a worker spawned just now may not have read it yet.
        stale = os.path.join(self.runtime_dir or "", f"config-{generation - 2}.toml")
        if generation > 2 and os.path.exists(stale):
            os.unlink(stale)
        self.generation, self.worker_config = generation, path
        return path

    @property
    def workers_status(self) -> tuple[int, int]:
        """(workers configured, workers serving), for the status page."""
        return self.supervisor.count, sum(1 for worker in self.supervisor.workers.values() if worker.ready)

    def _command(self, number: int, listen: list[str]) -> list[str]:
        argv = [sys.executable, "-m", "sniproxy.workers", "--worker", str(number)]
        argv += ["--config", self.worker_config or self.config_path, "--config-name", self.config_path]
        argv += ["--dns-socket", self._socket_path(), "--workers", str(self.supervisor.count)]
        for item in listen:
            argv += ["--listen", item]
        return argv

    def _socket_path(self) -> str:
        return os.path.join(self.runtime_dir or "", "dns.sock")

    # -- starting and stopping

    def _bind(self, description: str) -> Any:
        port = _listen(self.reactor, description, _NoAccept())
        port.stopReading()  # the workers accept; this process never does
        return port

    def privilegedStartService(self) -> None:
        # Bind here so ports below 1024 work before twistd drops privileges.
        if not self.ports:
            for description in self.config.proxy.listen:
                self.ports[description] = self._bind(description)
            if self.config.admin.listen:
                self.admin_port = _listen(self.reactor, self.config.admin.listen, self._admin_site())
        super().privilegedStartService()

    def startService(self) -> None:
        self.privilegedStartService()
        # After twistd's --uid: the runtime directory and the workers
        # belong to the user the proxy runs as.
        self.runtime_dir = tempfile.mkdtemp(prefix="sniproxy-", dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        os.chmod(self.runtime_dir, 0o700)
        self._write_generation(self.config_bytes)
        self.config_bytes = None
        from sniproxy.dns.shared import DNSOwner

        self.owner = DNSOwner(self.dns, self.reactor)
        # The owner's listen may give its port or a Deferred of it.
        maybeDeferred(self.owner.listen, self._socket_path()).addErrback(
            lambda failure: log.error("cannot serve the DNS cache to the workers: {error}", error=failure.value)
        )
        self.resolver_threads.start()
        super().startService()
        self.supervisor.fds = {description: _fd(port) for description, port in self.ports.items()}
        self.supervisor.start()
        if self.handle_signals:
            self.signals.install(self.reload, self.reopen_logs, self._terminate)

    @inlineCallbacks
    def stopService(self):
        self.signals.stopping()
        if self.admin_port is not None:
            yield maybeDeferred(self.admin_port.stopListening)
            self.admin_port = None
        # The workers stop accepting on Drain (sent now); this process's
        # copies of the sockets close right after, so that once the
        # workers' are closed too the kernel refuses new connections
        # instead of completing handshakes nobody will accept.
        drained = self.supervisor.stop(self.config.proxy.shutdown_timeout)
        ports, self.ports = list(self.ports.values()), {}
        yield DeferredList([maybeDeferred(port.stopListening) for port in ports])
        yield drained
        if self.owner is not None:
            yield maybeDeferred(self.owner.stop)
        yield super().stopService()
        self.resolver_threads.stop()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        self.signals.restore()

    def _refresh(self) -> defer.Deferred[None]:
        """
        Gather every worker's metrics and instances; a refresh asked for
        while one is under way waits for that one (concurrent admin
        requests share it).
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._refreshing is not None:
            self._refreshing.append(waiter)
            return waiter
        waiters = self._refreshing = [waiter]

        def finished(result: Any) -> None:
            self._refreshing = None
            for each in waiters:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(None)

        defer.gatherResults(
            [
                self.supervisor.expositions().addCallback(self.metrics.update),
                self.supervisor.expositions("instances").addCallback(self.instances.update),
            ],
            consumeErrors=True,
        ).addBoth(finished)
        return waiter

    def _admin_site(self):
        return admin_site(
            self.registry,
            lambda name: explain(
                lambda dns: build_router(self.config, self.clock, dns, self.resolver_threads), self.dns, name,
                board=self.backends,
            ),
            self.status,
            refresh=self._refresh,
        )

    # -- signals

    def reopen_logs(self) -> defer.Deferred[Any]:
        """Every worker reopens its access log (SIGUSR1)."""
        log.info("reopening the access log {path} in every worker", path=self.config.log.access)

        def reopened(answers: list[tuple[int, Any]]) -> None:
            log.info("{done} of {count} workers reopened the access log", done=sum(a is not None for _, a in answers), count=len(answers))

        return self.supervisor.call(ReopenLogs).addCallback(reopened)

    def _terminate(self) -> None:
        if self._terminating:
            log.info("SIGTERM again: already stopping")
            return
        self._terminating = True
        log.info(
            "SIGTERM: the workers drain for up to {timeout}s", timeout=self.config.proxy.shutdown_timeout
        )
        self.reactor.stop()

    # -- reloading

    def reload(self) -> bool:
        """
        Validate the config file once, then apply it here (C{[dns]}, the
        admin endpoint, new ports) and in every worker (routing, limits,
        the access log).  An error keeps the running config everywhere.
        A change of C{proxy.listen} or C{proxy.workers} starts a new set of
        workers on the new sockets while the old ones drain.

        @return: whether the new config took effect.
        """
        path = self.config_path
        opened: dict[str, Any] = {}
        try:
            data, config = read_config(path)
            config = with_dns_cache_file(validate(config, self.reactor), self.dns_cache_file)
            parts = assemble(config, self.clock, dns=self.dns, resolver_threads=self.resolver_threads)
            opened = self._open_new_ports(config)
            # What every worker reads from now on (spawn, restart, Reload).
            generation = self._write_generation(data)
        except (ConfigError, StartError) as error:
            _close(opened)
            self.last_reload_error = str(error)
            log.error("reload of {path} failed, keeping the running config: {error}", path=path, error=str(error))
            return False
        except Exception as error:
            _close(opened)
            self.last_reload_error = f"internal error: {type(error).__name__}: {error}".splitlines()[0]
            log.failure("reload of {path} failed, keeping the running config", path=path)
            return False
        old, self.config = self.config, config
        self.loaded_at = self.clock.seconds()
        self.last_reload_error = None
        try:
            self.backends.configure(config)
            admin = opened.pop("", None)
            if admin is not None or not config.admin.listen:
                if self.admin_port is not None:
                    self.admin_port.stopListening()
                self.admin_port = admin
            closed = [d for d in self.ports if d not in config.proxy.listen]
            count = worker_count(config)
            if opened or closed or count != self.supervisor.count:
                for description in closed:
                    self.ports.pop(description).stopListening()
                self.ports.update(opened)
                log.info("reload: new listening sockets or worker count: starting {count} new workers", count=count)
                self.supervisor.replace(
                    {description: _fd(port) for description, port in self.ports.items()}, count, old.proxy.shutdown_timeout
                )
            else:
                self.supervisor.call(Reload, config=generation).addCallback(self._reloaded)
            apply_dns(self.dns, self.dns_service, old.dns, config.dns, parts.warm_names, self.reactor)
        except Exception as error:
            # The new config is in force here already: say what did not
            # follow, rather than leave a half-applied reload unsaid.
            self.last_reload_error = f"applied partially: {type(error).__name__}: {error}".splitlines()[0]
            log.failure("reload of {path} applied partially", path=path)
            return False
        log.info("reloaded {path}", path=path)
        return True

    def _open_new_ports(self, config: Config) -> dict[str, Any]:
        return open_new_ports(self, config)

    def _reloaded(self, answers: list[tuple[int, Any]]) -> None:
        done = 0
        for number, answer in answers:
            if answer is not None and not answer["ok"]:
                log.error("worker {worker} failed to reload: {error}", worker=number, error=answer.get("error"))
            elif answer is not None:
                done += 1
        log.info("reload: {done} of {count} workers switched", done=done, count=len(answers))


#: systemd's socket-activation variables: they describe the main
#: process's sockets (C{LISTEN_PID} is its pid), never a worker's.
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _environment() -> dict[str, str]:
    """
    The workers' environment: this one, with this copy of sniproxy first on
    the path and without systemd's C{LISTEN_*} variables.
    """
    env = {name: value for name, value in os.environ.items() if name not in _SYSTEMD_VARIABLES}
    root = os.path.dirname(os.path.dirname(os.path.abspath(sniproxy.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------- the worker's side


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ConfigError(path, f"cannot read the config file: {error.strerror}") from None


def _parse_toml(name: str, data: bytes) -> dict[str, Any]:
    """C{data} as TOML, with L{sniproxy.config.load_config}'s errors, naming the file C{name}."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(name, f"not valid TOML: not UTF-8 (byte {error.start} of the file)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(name, f"not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(name, "not valid TOML: arrays or inline tables nested too deeply") from None


def read_config(path: str) -> tuple[bytes, Config]:
    """The config file's bytes, read once, and the L{Config} they make (not yet L{validate}d)."""
    data = _read_file(path)
    return data, parse_config(_parse_toml(path, data), path)


def _load_in_worker(path: str, name: str | None = None) -> Config:
    """
    L{load_config} without parsing the endpoint strings of C{proxy.listen}
    and C{admin.listen}: only the main process binds them, and a
    C{systemd:} one does not parse in a worker (systemd passed its sockets
    to the main process; a worker's come from C{--listen}).

    @param name: the path the config is known by (C{Config.path}), when
        C{path} is the main process's copy of it.
    """
    name = name or path
    data = _parse_toml(name, _read_file(path))
    proxy, admin = data.get("proxy"), data.get("admin")
    listen = admin_listen = None
    if isinstance(proxy, dict) and isinstance(proxy.get("listen"), list):
        listen = proxy["listen"]
        proxy["listen"] = [f"tcp:{index}" if isinstance(item, str) else item for index, item in enumerate(listen)]
    if isinstance(admin, dict) and isinstance(admin.get("listen"), str):
        admin_listen = admin["listen"]
        admin["listen"] = "tcp:0" if admin_listen else ""
    config = parse_config(data, name)
    if listen is not None:
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, listen=tuple(listen)))
    if admin_listen is not None:
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, listen=admin_listen))
    return config


def validate_in_worker(path: str, reactor: Any, name: str | None = None) -> Config:
    """
    L{validate} as a worker needs it: every key, the access log and the
    router, but not the C{proxy.listen} and C{admin.listen} endpoints
    (L{_load_in_worker}).
    """
    config = _load_in_worker(path, name)
    bare = dataclasses.replace(
        config,
        proxy=dataclasses.replace(config.proxy, listen=()),
        admin=dataclasses.replace(config.admin, listen=""),
    )
    validate(bare, reactor)
    return config


def _adopt(reactor: Any, fd: int, factory: Any) -> Any:
    """Accept on the inherited listening socket C{fd} (closed here; the port has its own)."""
    probe = socket.socket(fileno=os.dup(fd))
    family = probe.family
    probe.close()
    port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)
    serve_accepts(port)  # the lean transport, as in a single process
    return port


class WorkerProxyService(ProxyService):
    """
    A worker's L{ProxyService}: it accepts on inherited sockets, resolves
    through a mirror of the main process's DNS cache, and has no admin
    endpoint, cache file or signal handling of its own.

    @param fds: the inherited listening sockets, by endpoint string.
    @param share: how many workers share C{proxy.max_connections} and
        C{proxy.max_connections_per_client}: each gets the limit divided
        by C{share}, rounded up, so the proxy as a whole holds at most
        C{limit + share - 1}.
    """

    def __init__(
        self,
        config: Config,
        fds: dict[str, int],
        dns_owner: str,
        worker: int,
        reactor: Any = None,
        share: int = 1,
        config_file: str | None = None,
    ) -> None:
        self.share = share
        super().__init__(config, reactor, dns_owner=dns_owner, worker=worker)
        self.fds = fds
        #: the file read at a reload: the main process's copy of the
        #: config it validated (C{config_path} is the name it goes by).
        self.config_file = config_file or self.config_path

    def adjust_config(self, config: Config) -> Config:
        proxy = config.proxy
        return dataclasses.replace(
            config,
            proxy=dataclasses.replace(
                proxy,
                max_connections=-(-proxy.max_connections // self.share),
                max_connections_per_client=-(-proxy.max_connections_per_client // self.share),
            ),
        )

    def privilegedStartService(self) -> None:
        if not self.ports:
            for description, fd in self.fds.items():
                self.ports[description] = _adopt(self.reactor, fd, self.factory)
        MultiService.privilegedStartService(self)

    def validate_file(self, path: str) -> Config:
        return validate_in_worker(self.config_file, self.reactor, name=path)

    def _open_new_ports(self, config: Config) -> dict[str, Any]:
        # New sockets come with a new set of workers (WorkersService.reload).
        return {}

    @inlineCallbacks
    def stopService(self):
        yield super().stopService()
        yield self.dns.stop()


#: How many unfinished exposition snapshots a worker keeps (the oldest goes first).
SNAPSHOTS = 8


class _WorkerSide(amp.AMP):
    def __init__(self, service: WorkerProxyService, reactor: Any) -> None:
        super().__init__()
        self.service = service
        self.reactor = reactor
        self._snapshots: dict[int, bytes] = {}
        self._last_snapshot = 0

    @Reload.responder
    def reload(self, config: str | None = None):
        previous = self.service.config_file
        if config:
            self.service.config_file = config
        ok = self.service.reload()
        if not ok:
            self.service.config_file = previous
        return {"ok": ok, "error": self.service.last_reload_error}

    @Drain.responder
    def drain(self):
        self.reactor.callLater(0, _stop, self.reactor)
        return {}

    @ReopenLogs.responder
    def reopen(self):
        self.service.reopen_logs()
        return {}

    @Exposition.responder
    def exposition(self, offset: int, kind: str | None = None, snapshot: int | None = None):
        if offset == 0:
            if kind == "instances":
                data = instances_json(self.service.backends.instances())
            else:
                data = exposition.generate_latest(self.service.metrics.registry)
            if len(data) <= CHUNK:
                return {"data": data, "total": len(data)}
            self._last_snapshot += 1
            snapshot = self._last_snapshot
            self._snapshots[snapshot] = data
            while len(self._snapshots) > SNAPSHOTS:
                del self._snapshots[next(iter(self._snapshots))]
        else:
            data = self._snapshots.get(snapshot) if snapshot is not None else None
            if data is None:
                raise UnknownSnapshot(f"no snapshot {snapshot}")
        if offset + CHUNK >= len(data):
            self._snapshots.pop(snapshot, None)
        return {"data": data[offset : offset + CHUNK], "total": len(data), "snapshot": snapshot}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # The main process is gone (or closed the channel): drain and exit.
        _stop(self.reactor)


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:  # already stopping
        pass


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the main process dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control pipe's EOF does it
        pass


def _log_to_stderr() -> None:
    from twisted.logger import eventAsText, globalLogBeginner

    def observer(event):
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        sys.stderr.write(text.replace("\n", "\n  ") + "\n")
        sys.stderr.flush()

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def worker_main(argv: list[str] | None = None) -> int:
    """
    A worker process: C{python -m sniproxy.workers --worker N --config FILE
    --dns-socket PATH --listen DESCRIPTION=FD ...}, started by the main
    process's L{Supervisor} with the control AMP on fds 3 (in) and 4 (out).
    """
    parser = argparse.ArgumentParser(prog="python -m sniproxy.workers")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--config", required=True, help="the main process's copy of the config it validated")
    parser.add_argument("--config-name", default=None, help="the config file's own path (for the logs and status)")
    parser.add_argument("--dns-socket", required=True)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the connection limits")
    options = parser.parse_args(argv)
    _die_with_parent()
    # The main process coordinates reloads and log reopening; a signal
    # sent to the whole process group must not kill a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _log_to_stderr()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    try:
        config = validate_in_worker(options.config, reactor, name=options.config_name)
    except (ConfigError, StartError) as error:
        print(f"config: {error}", file=sys.stderr)
        return 2
    fds = {}
    for item in options.listen:
        description, _, fd = item.rpartition("=")
        fds[description] = int(fd)
    service = WorkerProxyService(
        config, fds, options.dns_socket, options.worker, reactor, share=options.workers, config_file=options.config
    )
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    control = _WorkerSide(service, reactor)
    StandardIO(control, stdin=CONTROL_IN, stdout=CONTROL_OUT, reactor=reactor)
    control.callRemote(Ready, pid=os.getpid()).addErrback(lambda _: None)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
