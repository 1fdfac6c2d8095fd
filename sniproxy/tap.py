"""
C{twistd sniproxy}: the command-line options and the service they make.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from sniproxy.assembly import StartError, validate
from sniproxy.config import ConfigError
from sniproxy.dns import with_dns_cache_file
from sniproxy.service import ProxyService
from sniproxy.workers import WorkersService, worker_count

__all__ = ["Options", "makeService"]

DEFAULT_CONFIG = "/etc/sniproxy/sniproxy.toml"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Proxy TLS connections by the server name in their ClientHello, "
        "without terminating TLS.  Everything else is set in the config file "
        "(TOML); see etc/sniproxy.toml and README.rst."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the TOML config file."],
        ["dns-cache-file", None, None, "Save and load the DNS cache here (overrides [dns] cache_file; \"\" = off)."],
    ]

    def postOptions(self) -> None:
        # Validate the whole config here, so a bad file stops the start with
        # one line naming the key rather than a traceback.
        try:
            # No reactor yet: twistd installs the one asked for after this.
            self.loaded = validate(self["config"])
        except ConfigError as error:
            self._refuse(f"config: {error}")
        except StartError as error:
            self._refuse(str(error))
        if self["dns-cache-file"] is not None:
            self.loaded = with_dns_cache_file(self.loaded, self["dns-cache-file"])

    def _refuse(self, line: str) -> None:
        """
        Stop the start with C{line}, as twistd reports a usage error (its
        usage text, then C{"argv0 argv1: line"}), and exit status 1.  Twisted
        before 26.10 reports a usage error that way but exits 0, which would
        tell an init script or systemd that a broken config started.
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            raise usage.UsageError(line)
        print(parent)
        print(f"{' '.join(sys.argv[0:2])}: {line}")
        raise SystemExit(1)


def makeService(options: Options) -> ProxyService:
    _quiet_start_errors()
    if worker_count(options.loaded) > 1:
        # The main process of several workers (docs/workers.rst).
        return WorkersService(options.loaded, handle_signals=True, dns_cache_file=options["dns-cache-file"])
    return ProxyService(options.loaded, handle_signals=True, dns_cache_file=options["dns-cache-file"])


def _quiet_start_errors() -> None:
    """
    A L{StartError} (a port in use, say) ends twistd's start: print its one
    line instead of a traceback.  (In daemon mode twistd reports it on the
    status pipe as "An error has occurred: ...StartError: ...".)
    """
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, StartError):
            print(f"sniproxy: {value}", file=sys.__stderr__)
        else:
            previous(kind, value, traceback)

    sys.excepthook = excepthook
