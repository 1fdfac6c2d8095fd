"""
The control channel between the main process and its workers
(L{sniproxy.workers}): AMP over two pipes, the worker's
fds 3 (main to worker) and 4 (worker to main), apart from its standard
output, which may carry the access log.
"""

from __future__ import annotations

from twisted.protocols import amp

__all__ = ["CHUNK", "Drain", "Exposition", "Ready", "Reload", "ReopenLogs", "UnknownSnapshot"]

#: The most bytes of an exposition one L{Exposition} answer carries (an
#: AMP value holds at most 65535).
CHUNK = 60000


class Ready(amp.Command):
    """Worker to main: my ports are adopted and I serve."""

    arguments = [(b"pid", amp.Integer())]
    response: list = []


class Reload(amp.Command):
    """
    Main to worker: read the config file C{config} (the main process's
    copy of the config it validated, C{config-<generation>.toml} in its
    runtime directory) and apply it.
    """

    arguments = [(b"config", amp.Unicode(optional=True))]
    response = [(b"ok", amp.Boolean()), (b"error", amp.Unicode(optional=True))]


class Drain(amp.Command):
    """Main to worker: stop accepting, drain live connections, exit 0."""

    arguments: list = []
    response: list = []


class ReopenLogs(amp.Command):
    """Main to worker: reopen the access log (SIGUSR1)."""

    arguments: list = []
    response: list = []


class UnknownSnapshot(Exception):
    """The worker no longer holds the snapshot an L{Exposition} names."""


class Exposition(amp.Command):
    """
    Main to worker: your metrics registry's text exposition (C{kind}
    C{"metrics"}) or your backends board's instances as JSON (C{kind}
    C{"instances"}), from byte C{offset}, at most L{CHUNK} bytes of it.

    Offset 0 renders it afresh; when it is longer than one chunk, the
    answer names the C{snapshot} it was taken into, and the requests for
    the rest name it too, so that concurrent requests (a scrape and a
    status page, two scrapes) never mix two renderings.  A snapshot the
    worker dropped (it keeps a few, and each until its last chunk is
    sent) is an L{UnknownSnapshot} error.
    """

    arguments = [
        (b"offset", amp.Integer()),
        (b"kind", amp.Unicode(optional=True)),
        (b"snapshot", amp.Integer(optional=True)),
    ]
    response = [(b"data", amp.String()), (b"total", amp.Integer()), (b"snapshot", amp.Integer(optional=True))]
    errors = {UnknownSnapshot: b"UNKNOWN_SNAPSHOT"}
