"""
Run sniproxy in-process on loopback, from a config written as a TOML
string, the way the tests and benchmarks need it.
"""

from __future__ import annotations

import tomllib

from sniproxy.config import Config, parse_config
from sniproxy.service import ProxyService

__all__ = ["running_proxy"]


def running_proxy(testcase, toml: str = "", *, config: Config | None = None, reactor=None, clock=None):
    """
    Start a L{ProxyService} listening on an ephemeral loopback port and
    stop it when C{testcase} ends.

    @param toml: the config; C{[proxy] listen} defaults to an ephemeral
        port on 127.0.0.1 and C{[log] access} to off.
    @return: C{(service, port_number)}.
    """
    if reactor is None:
        from twisted.internet import reactor
    if config is None:
        data = tomllib.loads(toml)
        data.setdefault("proxy", {}).setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        # Tests read connections from the service, not from standard output.
        data.setdefault("log", {}).setdefault("access", "")
        config = parse_config(data)
    service = ProxyService(config, reactor=reactor, clock=clock)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service, next(iter(service.ports.values())).getHost().port
