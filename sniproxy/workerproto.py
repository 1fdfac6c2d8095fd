"""
The control channel between the main process and its workers
(L{sniproxy.workers}): AMP over two pipes, the worker's
fds 3 (main to worker) and 4 (worker to main), apart from its standard
output, which may carry the access log.
"""

from __future__ import annotations

from twisted.protocols import amp

__all__ = ["CHUNK", "Drain", "Exposition", "Ready", "Reload", "ReopenLogs"]

#: The most bytes of an exposition one L{Exposition} answer carries (an
#: AMP value holds at most 65535).
CHUNK = 60000


class Ready(amp.Command):
    """Worker to main: my ports are adopted and I serve."""

    arguments = [(b"pid", amp.Integer())]
    response: list = []


class Reload(amp.Command):
    """Main to worker: re-read the (already validated) config file and apply it."""

    arguments: list = []
    response = [(b"ok", amp.Boolean()), (b"error", amp.Unicode(optional=True))]


class Drain(amp.Command):
    """Main to worker: stop accepting, drain live connections, exit 0."""

    arguments: list = []
    response: list = []


class ReopenLogs(amp.Command):
    """Main to worker: reopen the access log (SIGUSR1)."""

    arguments: list = []
    response: list = []


class Exposition(amp.Command):
    """
    Main to worker: your metrics registry's text exposition (C{kind}
    C{"metrics"}) or your backends board's instances as JSON (C{kind}
    C{"instances"}), from byte C{offset} (0 renders it afresh), at most
    L{CHUNK} bytes of it.
    """

    arguments = [(b"offset", amp.Integer()), (b"kind", amp.Unicode(optional=True))]
    response = [(b"data", amp.String()), (b"total", amp.Integer())]
