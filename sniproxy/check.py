"""
C{python -m sniproxy.check --config FILE}: check a config file the way a
start or a reload would, without starting anything (like C{nginx -t}).

It reads and validates every key (L{sniproxy.config.load_config}, which
also parses every endpoint string without binding it), checks that the
access log can be opened for appending, and builds the router with the real
route sources over a L{MemoryReactorClock}, so no DNS query is sent, no
thread started and no port bound.  It prints C{sniproxy: config FILE ok}
and exits 0, or prints the one line a start or a reload gives for the same
file (C{sniproxy: config: <key>: <problem>}) and exits 1.  Usage errors exit
2.  It never prints a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from sniproxy.assembly import StartError, validate
from sniproxy.config import Config, ConfigError, load_config
from sniproxy.tap import DEFAULT_CONFIG

__all__ = ["Options", "check", "main"]

#: Exit statuses.
OK, INVALID, USAGE = 0, 1, 2


def check(path: str, *, systemd_sockets: Sequence[str] | None = None) -> Config:
    """
    Validate the config file at C{path} as a start or a reload would.

    Nothing is started: no port is bound, no DNS query sent, no file
    written (a missing access log's directory is probed with an empty
    file, removed at once).

    @param systemd_sockets: the names of the sockets systemd passes the
        daemon (C{FileDescriptorName=}, one per socket, in order), to check
        C{systemd:} endpoints against when this process was not given them
        (systemd passes sockets to C{ExecStart=} only, not to
        C{ExecStartPre=} or C{ExecReload=}).  C{None}: the sockets this
        process was given, as the daemon would see them.

    @return: the validated config.

    @raise ConfigError: naming the key and the problem, exactly as a start
        or a reload would.
    @raise StartError: if building the service fails the way a start would.
    """
    # The real sources, over a reactor that never runs: building them sends
    # nothing and starts nothing.
    with _systemd_sockets(systemd_sockets):
        return validate(load_config(path), MemoryReactorClock())


@contextlib.contextmanager
def _systemd_sockets(names: Sequence[str] | None) -> Iterator[None]:
    """
    While this runs, C{systemd:} endpoint strings parse as if systemd had
    passed this process one socket per name in C{names}.
    """
    if names is None:
        yield
        return
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    parser = endpoints._SystemdParser
    previous = parser.__dict__["_sddaemon"]
    parser._sddaemon = ListenFDs(list(range(3, 3 + len(names))), tuple(names))
    try:
        yield
    finally:
        parser._sddaemon = previous


def _socket_names(value: str) -> list[str]:
    """C{--systemd-sockets}: a count, or names separated by colons (as in C{LISTEN_FDNAMES})."""
    if value.isdigit():
        return ["unknown"] * int(value)
    names = value.split(":")
    if not all(names):
        raise usage.UsageError(f"--systemd-sockets: expected a count or names separated by ':', got {value!r}")
    return names


class Options(usage.Options):
    synopsis = "[--config FILE] [--systemd-sockets N|NAME:...]"
    longdesc = (
        "Check a sniproxy config file as a start or a reload would, without "
        "binding a port or sending a DNS query.  Prints 'sniproxy: config FILE "
        "ok' and exits 0, or prints the one-line error and exits 1; usage "
        "errors exit 2."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the TOML config file."],
        [
            "systemd-sockets",
            None,
            None,
            "Check 'systemd:' endpoints as if systemd passed this many sockets "
            "(or sockets with these names, separated by ':'); for ExecStartPre=.",
            _socket_names,
        ],
    ]

    def parseArgs(self) -> None:
        # No positional arguments: a bare file name is a usage error, not
        # a silently ignored one.
        pass


def main(argv: Sequence[str] | None = None, stdout=None, stderr=None) -> int:
    """
    Run the check as a command.

    @param argv: the arguments, without the program name; default
        C{sys.argv[1:]}.
    @return: the exit status: 0 the file is good, 1 it is not, 2 bad usage.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        print(f"sniproxy.check: {error}", file=stderr)
        print("usage: python -m sniproxy.check [--config FILE] [--systemd-sockets N]; --help for more", file=stderr)
        return USAGE
    path = options["config"]
    try:
        check(path, systemd_sockets=options["systemd-sockets"])
    except ConfigError as error:
        print(f"sniproxy: config: {error}", file=stderr)
        return INVALID
    except StartError as error:
        print(f"sniproxy: {error}", file=stderr)
        return INVALID
    except Exception as error:
        # A bug of ours, not a problem of the file: still one line, and
        # still not "ok".
        print(f"sniproxy: config: {path}: cannot check: {type(error).__name__}: {error}", file=stderr)
        return INVALID
    print(f"sniproxy: config {path} ok", file=stdout)
    return OK


if __name__ == "__main__":
    raise SystemExit(main())
