"""
The access log: one JSON object per line, one line per connection.

Written to a file (appending, one C{write} per line) or to standard output.
L{AccessLog.reopen} closes and reopens the file, for log rotation
(C{logrotate} moves the file, then the daemon gets SIGUSR1 or SIGHUP).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import IO, Any

from twisted.logger import Logger

from sniproxy.record import ConnectionRecord

__all__ = ["AccessLog", "cannot_open", "entry"]

log = Logger()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def entry(record: ConnectionRecord) -> dict[str, Any]:
    """A connection's record as the access log's JSON object (one line)."""
    return {
        "time": round(record.started, 3),
        "client": record.peer,
        "sni": record.sni,
        "alpn": list(record.alpn),
        "ech": record.ech,
        "source": record.source,
        "cache": (record.cache or None) if record.source is not None else None,
        "route_ms": _ms(record.route_seconds),
        "backend": str(record.backend) if record.backend is not None else None,
        "connect_ms": _ms(record.connect_seconds),
        "bytes_up": record.bytes_up,
        "bytes_down": record.bytes_down,
        "duration_ms": _ms(record.duration),
        "outcome": record.outcome.value,
        "reason": record.reason,
    }


def cannot_open(path: str) -> str | None:
    """
    Why the access log at C{path} could not be opened for appending, or
    C{None} if it could.  Start, reload and C{python -m sniproxy.check} all
    ask this.

    Nothing is created, truncated or written: an existing file is opened for
    appending (without C{O_CREAT}) and closed; for a missing one, a uniquely
    named empty file is created in its directory and removed at once, which
    proves the file could be created there by this user.
    """
    if path in ("", "-"):
        return None
    try:
        # O_NONBLOCK: a FIFO with no reader must not hang the check.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno == getattr(os, "ENXIO", 6):  # a FIFO nobody reads yet
            return None
        return f"cannot open {path!r}: {error.strerror}"
    else:
        os.close(fd)
        return None
    try:
        fd, probe = tempfile.mkstemp(prefix=".sniproxy-check-", dir=os.path.dirname(os.path.abspath(path)))
    except OSError as error:
        return f"cannot open {path!r}: {error.strerror}"
    os.close(fd)
    os.unlink(probe)
    return None


class AccessLog:
    """
    @param path: a file path, C{"-"} for standard output, or C{""} for no
        access log at all.
    @param worker: the worker process's number, written as C{"worker"} in
        every line (C{None}, with C{proxy.workers = 1}: no such field).

    A file is opened with C{O_APPEND} and each line written with one
    C{os.write}, so the lines of several worker processes appending to
    one file never interleave (appends to a regular file are atomic).
    """

    def __init__(self, path: str, worker: int | None = None) -> None:
        self.path = path
        self.worker = worker
        self._file: IO[str] | None = None
        self._fd: int | None = None
        self.reopen()

    def __bool__(self) -> bool:
        return self._file is not None or self._fd is not None

    def reopen(self) -> None:
        """(Re)open the destination; a failure is logged and leaves the log off."""
        self.close()
        if not self.path:
            return
        if self.path == "-":
            # The process's real standard output: under twistd, sys.stdout
            # is redirected into the log, which would wrap every line.
            self._file = sys.__stdout__
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            log.error("cannot open the access log {path}: {error}", path=self.path, error=error.strerror)

    def observe(self, record: ConnectionRecord) -> None:
        """Write C{record}'s line (a record observer of L{sniproxy.proxy.ProxyFactory})."""
        if self._fd is not None or self._file is not None:
            line = entry(record)
            if self.worker is not None:
                line["worker"] = self.worker
            self.write(line)

    def write(self, record: dict[str, Any]) -> None:
        try:
            if self._fd is not None:
                os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
            elif self._file is not None:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._file.flush()
        except (OSError, ValueError) as error:
            # A full disk must not take the proxy down with it.
            log.error("cannot write the access log {path}: {error}", path=self.path, error=error)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._file = None
