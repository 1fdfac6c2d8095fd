"""
C{twistd -n sniproxy} as a child process, for tests and benchmarks that
need the real daemon: started with a config file, its log read for the
ports it listens on, and stopped by signal.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol

__all__ = ["Twistd", "twistd_command"]

_LISTENING = re.compile(rb"listening on (\S+) \(")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def twistd_command(*arguments: str) -> list[str]:
    """The argv running twistd with this interpreter (no PATH lookup)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments]


def child_environment() -> dict[str, str]:
    """
    The environment for a child that must import this very copy of
    sniproxy (and find its twistd plugin), installed or not.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    return env


class Twistd(ProcessProtocol):
    """
    A running C{twistd -n sniproxy --config FILE}.

    @ivar output: everything it wrote to stdout and stderr.
    @ivar listening: fires with the list of C{"host:port"} it listens on,
        once the first one is logged.
    @ivar ended: fires with the exit code (or C{-signal}) when it exits.
    """

    def __init__(self, config_path: str, *extra: str) -> None:
        self.config_path = config_path
        self.extra = extra
        self.output = b""
        self.addresses: list[str] = []
        self.listening: Deferred[list[str]] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.transport = None
        self._waiting: list[tuple[bytes, int, Deferred[None]]] = []

    def start(self, reactor, *, cwd: str | None = None) -> Deferred[list[str]]:
        argv = twistd_command("-n", "--pidfile=", "sniproxy", "--config", self.config_path, *self.extra)
        reactor.spawnProcess(self, argv[0], argv, env=child_environment(), path=cwd)
        return self.listening

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for match in _LISTENING.finditer(data):
            self.addresses.append(match.group(1).decode())
        if self.addresses and not self.listening.called:
            self.listening.callback(self.addresses)
        waiting, self._waiting = self._waiting, []
        for text, start, d in waiting:
            if text in self.output[start:]:
                d.callback(None)
            else:
                self._waiting.append((text, start, d))

    def wait_for(self, text: bytes) -> Deferred[None]:
        """Fire once C{text} appears in the output written from now on."""
        d: Deferred[None] = Deferred()
        self._waiting.append((text, len(self.output), d))
        return d

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if isinstance(reason.value, ProcessDone):
            code = 0
        elif isinstance(reason.value, ProcessTerminated):
            code = reason.value.exitCode if reason.value.exitCode is not None else -reason.value.signal
        else:
            code = -1
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd exited ({code}) before listening:\n{self.output.decode(errors='replace')}"))
        self.ended.callback(code)

    def signal(self, name: str = "TERM") -> None:
        """Send the signal C{SIG<name>}, if the process still runs."""
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess(getattr(signal, f"SIG{name}"))

    def stop(self) -> Deferred[int]:
        """Send SIGTERM (once) and fire with the exit code."""
        if not self.ended.called:
            self.signal("TERM")
        return self.ended

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])


