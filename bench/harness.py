"""
The benchmark's child processes, and their end.

Three children, all on loopback, all started with this interpreter:

  - the backend (L{bench.backend}),
  - the test DNS server, C{python -m sniproxy.testing.dns --control}, driven
    through its standard input (C{delay}, C{outage}, C{ttl}, C{stats},
    C{reset}); a child rather than in this process, so that the client's
    timing never shares an interpreter (or a GIL) with the server it waits
    for,
  - the proxy, C{twistd -n --pidfile= sniproxy --config FILE}.

Each runs in a session of its own (a Ctrl-C in the terminal reaches only
this process, which then stops them in order), is asked to die with its
parent (Linux C{PR_SET_PDEATHSIG}), and is stopped by PID: SIGTERM, then
SIGKILL after a bound.  L{Harness} does that on leaving its C{with} block,
at exit, on Ctrl-C (L{KeyboardInterrupt}) and on SIGTERM/SIGHUP (turned into
L{SystemExit}).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import glob
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import IO, Any

from sniproxy.testing.process import child_environment, twistd_command

__all__ = ["Child", "DNSControl", "Harness", "MachineLoad", "cpu_seconds"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_BOUND = 5.0
START_BOUND = 30.0
_LISTENING = re.compile(r"listening on (\S+):(\d+) \(")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process C{pid}, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name may hold spaces; the fields after it do not.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of C{pid} (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


class MachineLoad:
    """
    How busy the machine was while the benchmark ran, and how much of that
    was not the benchmark: the CPU time of every CPU (/proc/stat) against
    that of this process, its children (reaped or running) and the three
    servers.  The machine is shared; this says how much.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _system() -> tuple[float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields) - idle) / _CLK_TCK, sum(fields) / _CLK_TCK

    @staticmethod
    def _loadavg() -> str:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])

    def _sample(self) -> dict[str, Any]:
        busy, total = self._system()
        times = os.times()
        return {
            "busy": busy,
            "total": total,
            "ours": times.user + times.system + times.children_user + times.children_system,
            "loadavg": self._loadavg(),
        }

    def finish(self, children: list[Child]) -> dict[str, Any]:
        """The figures since construction; C{children}: the servers, still running."""
        end = self._sample()
        running = 0.0
        for child in children:
            try:
                running += sum(cpu_seconds(child.pid))
            except OSError:
                pass
        wall_cpu = max(end["total"] - self.start["total"], 1e-9)
        cores = os.cpu_count() or 1
        busy = end["busy"] - self.start["busy"]
        ours = end["ours"] - self.start["ours"] + running
        return {
            "loadavg_start": self.start["loadavg"],
            "loadavg_end": end["loadavg"],
            "busy_share": busy / wall_cpu,
            "others_share": max(0.0, busy - ours) / wall_cpu,
            "others_cores": max(0.0, busy - ours) / (wall_cpu / cores),
        }


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One child process, its output in a log file (and its stdout in a pipe, if asked)."""

    def __init__(self, name: str, argv: list[str], log_path: str, *, pipe_stdout: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if pipe_stdout else self._log,
            stderr=self._log,
            cwd=ROOT,
            env=child_environment(),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.pid = self.process.pid

    def readline(self, timeout: float) -> str:
        """One line of its stdout, within C{timeout} seconds."""
        stream: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.name}: no answer within {timeout:g} s")
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
        return line.decode("utf-8", "replace").rstrip("\n")

    def tail(self, size: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after L{STOP_BOUND} seconds; the exit status."""
        process = self.process
        if process.poll() is None:
            try:
                process.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_BOUND)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_BOUND)
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._log.close()
        return process.returncode


class DNSControl:
    """The test DNS server's control channel (see L{sniproxy.testing.dns._Control})."""

    def __init__(self, child: Child) -> None:
        self.child = child

    def command(self, line: str) -> str:
        stdin: IO[bytes] = self.child.process.stdin  # type: ignore[assignment]
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        answer = self.child.readline(10.0)
        if answer.startswith("error"):
            raise RuntimeError(f"DNS server: {line!r}: {answer}")
        return answer

    def delay(self, seconds: float) -> None:
        self.command(f"delay {seconds:g}")

    def outage(self, on: bool) -> None:
        self.command(f"outage {'on' if on else 'off'}")

    def reset(self) -> None:
        self.command("reset")

    def stats(self) -> dict[str, Any]:
        """C{{"queries": N, "names": {name: N}}} since the last L{reset}."""
        return json.loads(self.command("stats"))

    def queries(self, *names: str) -> int:
        """Queries since the last reset: all of them, or those for any of C{names} (owner names)."""
        stats = self.stats()
        if not names:
            return stats["queries"]
        return sum(stats["names"].get(name, 0) for name in names)


class Harness:
    """
    Starts the children and guarantees their end.

    @ivar proxy_address: C{(host, port)} the proxy listens on.
    @ivar tls_address, raw_address: the backend's two ports.
    @ivar dns: the L{DNSControl}, once started.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.children: list[Child] = []
        self.owner = os.getpid()
        self.proxy: Child | None = None
        self.backend: Child | None = None
        self.dns: DNSControl | None = None
        self.dns_port = 0
        self.proxy_address = ("127.0.0.1", 0)
        self.tls_address = ("127.0.0.1", 0)
        self.raw_address = ("127.0.0.1", 0)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Harness:
        atexit.register(self.stop_all)
        for number in (signal.SIGTERM, signal.SIGHUP):
            self._previous[number] = signal.signal(number, self._on_signal)
        # Ctrl-C must end the run even when started with SIGINT ignored (a
        # shell's background job): KeyboardInterrupt, then the finally blocks.
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop_all()
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        atexit.unregister(self.stop_all)

    def _on_signal(self, number: int, frame: Any) -> None:
        raise SystemExit(128 + number)

    def _start(self, name: str, argv: list[str], *, pipe_stdout: bool = False) -> Child:
        child = Child(name, argv, os.path.join(self.directory, f"{name}.log"), pipe_stdout=pipe_stdout)
        self.children.append(child)
        return child

    def start_backend(self, cert: str, key: str) -> None:
        self.backend = self._start(
            "backend",
            [sys.executable, os.path.join(ROOT, "bench", "backend.py"), "--cert", cert, "--key", key],
            pipe_stdout=True,
        )
        tls, raw = self.backend.readline(START_BOUND).split()
        self.tls_address = ("127.0.0.1", int(tls))
        self.raw_address = ("127.0.0.1", int(raw))

    def start_dns(self, records: str, *, caching: bool = False) -> tuple[DNSControl, int]:
        """
        Start the test DNS server (the first one becomes L{dns}); with
        C{caching}, a caching forwarder in front of an authority holding
        C{records}.

        @return: its control channel and port.
        """
        name = "dns-caching" if caching else "dns"
        child = self._start(
            name,
            [sys.executable, "-m", "sniproxy.testing.dns", "--records", records, "--control"]
            + (["--caching"] if caching else []),
            pipe_stdout=True,
        )
        _, port = child.readline(START_BOUND).split()
        control = DNSControl(child)
        if self.dns is None:
            self.dns_port = int(port)
            self.dns = control
        return control, int(port)

    def reload_proxy(self) -> None:
        """SIGHUP the proxy and wait until it says the reload took effect."""
        assert self.proxy is not None
        seen = self.proxy.tail(10**7).count("reloaded ")
        os.kill(self.proxy.pid, signal.SIGHUP)
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            log = self.proxy.tail(10**7)
            if log.count("reloaded ") > seen:
                return
            if "reload of" in log[-2000:] and "failed" in log[-2000:]:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the proxy did not reload:\n{self.proxy.tail()}")

    def start_proxy(self, config: str) -> None:
        self.proxy = child = self._start("proxy", twistd_command("-n", "--pidfile=", "sniproxy", "--config", config))
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            match = _LISTENING.search(child.tail(100000))
            if match:
                self.proxy_address = (match.group(1), int(match.group(2)))
                return
            if child.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the proxy did not start listening:\n{child.tail()}")

    def stop_all(self) -> None:
        """Stop every child still running, the proxy first; only in the process that started them."""
        if os.getpid() != self.owner:
            return
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as error:  # keep stopping the others
                print(f"bench: stopping {child.name} (pid {child.pid}): {error}", file=sys.stderr)
        self.children.clear()
