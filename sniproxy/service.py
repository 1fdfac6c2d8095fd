"""
The running proxy as a Twisted service: its listening ports, the DNS layer,
the router, the access log, metrics and the admin endpoint, and reloading
all of it from the config file.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sniproxy.accesslog import AccessLog
from sniproxy.admin import admin_site
from sniproxy.assembly import StartError, assemble, build_dns, build_resolver_threads, build_router, validate
from sniproxy.backends import BackendBoard
from sniproxy.config import Config, ConfigError
from sniproxy.dns import apply_dns, build_dns_service, with_dns_cache_file
from sniproxy.dns.service import DNSService
from sniproxy.deferreds import PENDING, peek
from sniproxy.explain import explain
from sniproxy.interfaces import Address
from sniproxy.metrics import ProxyMetrics
from sniproxy.proxy import ProxyFactory
from sniproxy.status import StatusCollector
from sniproxy.transport import serve_accepts

__all__ = ["ProxyService", "StartError"]

log = Logger()


def _listen(reactor, description: str, factory) -> Any:
    """
    Listen on an endpoint string, synchronously.

    @raise StartError: naming the endpoint and the reason, on failure.
    """
    listening = endpoints.serverFromString(reactor, description).listen(factory)
    port = peek(listening)
    if port is PENDING:  # stream server endpoints listen synchronously
        raise StartError(f"cannot listen on {description}: the endpoint did not listen at once")
    if isinstance(port, Failure):
        listening.addErrback(lambda _: None)  # reported here, as one line
        error = port.value
        reason = getattr(error, "socketError", None) or error
        raise StartError(f"cannot listen on {description}: {reason}")
    if isinstance(factory, ProxyFactory):
        # Accepted connections get the lean transport (sniproxy.transport).
        serve_accepts(port)
    host = port.getHost()
    log.info("listening on {address} ({endpoint})", address=str(Address(host.host, host.port)), endpoint=description)
    return port


def _check_descriptor_limit(max_connections: int) -> None:
    """Warn when the process would run out of descriptors before max_connections."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Two sockets per relayed connection, and some room for pipes in use,
    # DNS sockets, the admin endpoint and the logs.
    needed = 2 * max_connections + 256
    if max_connections and soft != resource.RLIM_INFINITY and soft < needed:
        log.warn(
            "the file descriptor limit ({soft}) is below what proxy.max_connections = {max} needs "
            "(about {needed}): connections will be refused before that limit; raise it (ulimit -n, LimitNOFILE)",
            soft=soft,
            max=max_connections,
            needed=needed,
        )


def open_new_ports(service: Any, config: Config) -> dict[str, Any]:
    """
    Bind what a reload of C{service} to C{config} adds: its new proxy
    endpoints (through C{service._bind}, by endpoint string) and a changed
    admin endpoint (key C{""}).  All or none: on a failure, what was bound
    is closed again and the error raised.
    """
    opened: dict[str, Any] = {}
    try:
        for description in config.proxy.listen:
            if description not in service.ports:
                opened[description] = service._bind(description)
        if config.admin.listen and config.admin.listen != service.config.admin.listen:
            opened[""] = _listen(service.reactor, config.admin.listen, service._admin_site())
    except Exception:
        for port in opened.values():
            try:
                port.stopListening()
            except Exception:
                log.failure("cannot close a port a failed reload opened")
        raise
    return opened


class ProcessSignals:
    """
    A proxy process's signals: SIGHUP reloads, SIGUSR1 reopens the logs,
    SIGTERM stops gracefully.  Handlers run on the reactor thread; the
    previous ones come back with L{restore}.  One copy for the single
    process (L{ProxyService}) and the workers' main process.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._previous: list[tuple[int, Any]] = []

    def install(self, reload, reopen_logs, terminate) -> None:
        # SIGHUP's default action kills the process: handle it from the
        # start, not once the reactor runs.
        self._handle(signal.SIGHUP, reload)
        self._handle(signal.SIGUSR1, reopen_logs)
        # The reactor installs its own SIGTERM handler as it starts (one
        # that makes twistd exit by the signal); ours replaces it
        # afterwards, since a graceful stop is a normal exit, status 0.
        self.reactor.callWhenRunning(self._handle, signal.SIGTERM, terminate)

    def _handle(self, number: int, handler) -> None:
        previous = signal.signal(number, lambda *_: self.reactor.callFromThread(handler))
        self._previous.append((number, previous))

    def stopping(self) -> None:
        """
        The process is on its way out: a reload or a log reopen now would
        be pointless, and SIGHUP's default action would kill it before
        live connections finish.  SIGTERM stays ours.
        """
        if self._previous:
            for number in (signal.SIGHUP, signal.SIGUSR1):
                signal.signal(number, signal.SIG_IGN)

    def restore(self) -> None:
        """Give back the handlers there were before L{install}."""
        for number, previous in self._previous:
            signal.signal(number, previous)
        self._previous.clear()


class ProxyService(MultiService):
    """
    Listens on the configured endpoints and proxies what arrives.

    @ivar factory: the L{ProxyFactory} shared by every listening port.
    @ivar ports: the proxy's listening ports by endpoint string.
    @ivar dns: the process's one caching DNS resolver.
    @ivar config_path: the config file this service loads and reloads.
    @ivar loaded_at: clock seconds of the last successful load or reload.
    @ivar last_reload_error: the one-line error of the last reload, or
        C{None} when it succeeded (or none was tried).
    @ivar status: what the admin endpoint's status page shows.
    """

    def __init__(
        self,
        config: Config,
        reactor: IReactorTCP | None = None,
        clock: IReactorTime | None = None,
        handle_signals: bool = False,
        dns_cache_file: str | None = None,
        dns_owner: str | None = None,
        worker: int | None = None,
    ) -> None:
        """
        @param dns_cache_file: overrides C{dns.cache_file}, at start and at
            every reload (twistd's C{--dns-cache-file}).
        @param dns_owner: in a worker process, the UNIX socket of the main
            process's DNS cache (L{sniproxy.workers}): this service then
            resolves through a mirror of it and keeps no cache file, and
            the main process applies C{[dns]} reloads.
        @param worker: in a worker process, its number (in the access log).
        """
        super().__init__()
        self.dns_cache_file = dns_cache_file
        config = self.adjust_config(with_dns_cache_file(config, dns_cache_file))
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.config = config
        self.config_path = config.path
        self.loaded_at = self.clock.seconds()
        self.last_reload_error: str | None = None
        self.handle_signals = handle_signals
        self.worker = worker
        self.dns = build_dns(config, reactor, self.clock, owner=dns_owner)
        # For the life of the process, like the DNS cache: a reload builds
        # new sources over the same threads (routing.system.threads takes
        # effect at the next start).
        self.resolver_threads = build_resolver_threads(config, reactor)
        parts = assemble(config, self.clock, dns=self.dns, resolver_threads=self.resolver_threads)
        self.dns_service: DNSService | None = None
        if dns_owner is None:
            self.dns_service = build_dns_service(self.dns, config.dns, parts.warm_names, self.clock, reactor)
            self.dns_service.setServiceParent(self)
        self.access_log = AccessLog(config.log.access, worker=worker)
        self.metrics = ProxyMetrics(live=lambda: len(self.factory.connections), dns_counters=lambda: self.dns.counters)
        self.factory = ProxyFactory(
            config.proxy, parts.router, reactor, self.clock, access_log=self.access_log, metrics=self.metrics
        )
        # Balancing, passive health, app caps and per-app counters: one
        # board for the life of the service, reconfigured on reload.
        self.backends = BackendBoard(self.clock)
        self.backends.configure(config)
        self.factory.board = self.backends
        self.factory.record_observers.append(self.backends.record_closed)
        self.metrics.registry.register(self.backends.collector())
        self.status = StatusCollector(
            clock=self.clock,
            metrics=self.metrics,
            live=lambda: len(self.factory.connections),
            service=self,
            backends=self.backends,
            dns=self.dns,
        )
        self.ports: dict[str, Any] = {}
        self.admin_port = None
        self.signals = ProcessSignals(self.reactor)
        self._terminating = False

    def adjust_config(self, config: Config) -> Config:
        """The config this process runs with, from the file's (a worker shares the limits out)."""
        return config

    def validate_file(self, path: str) -> Config:
        """Read and validate the config file at C{path} for a reload (L{validate})."""
        return validate(path, self.reactor)

    # -- starting and stopping

    def privilegedStartService(self) -> None:
        # Bind here so ports below 1024 work before twistd drops privileges.
        if not self.ports:
            for description in self.config.proxy.listen:
                self.ports[description] = _listen(self.reactor, description, self.factory)
            if self.config.admin.listen:
                self.admin_port = _listen(self.reactor, self.config.admin.listen, self._admin_site())
                self.status.sampler.start()
        super().privilegedStartService()

    def startService(self) -> None:
        self.privilegedStartService()
        self.resolver_threads.start()
        super().startService()
        if self.handle_signals:
            _check_descriptor_limit(self.config.proxy.max_connections)
            self.signals.install(self.reload, self.reopen_logs, self._terminate)

    @inlineCallbacks
    def stopService(self):
        self.signals.stopping()
        self.status.sampler.stop()
        ports = list(self.ports.values())
        self.ports = {}
        if self.admin_port is not None:
            ports.append(self.admin_port)
            self.admin_port = None
        yield DeferredList([maybeDeferred(port.stopListening) for port in ports])
        # Live connections may still need the DNS layer: drain them first.
        yield self.factory.drain(self.config.proxy.shutdown_timeout)
        yield super().stopService()
        # Last: routing may still need the threads while connections drain.
        self.resolver_threads.stop()
        self.factory.stop()
        self.access_log.close()
        self.signals.restore()

    def _admin_site(self):
        # Explain with the running config and the live cache, through a
        # router of its own so the recording never touches live routing.
        return admin_site(
            self.metrics.registry,
            lambda name: explain(
                lambda dns: build_router(self.config, self.clock, dns, self.resolver_threads), self.dns, name,
                board=self.backends,
            ),
            self.status,
        )

    # -- signals

    def reopen_logs(self) -> None:
        """Reopen the access log (after logrotate moved it)."""
        self.access_log.reopen()
        log.info("reopened the access log {path}", path=self.access_log.path)

    def _terminate(self) -> None:
        if self._terminating:
            log.info("SIGTERM again: already stopping")
            return
        self._terminating = True
        log.info(
            "SIGTERM: no longer accepting; waiting up to {timeout}s for {count} connections",
            timeout=self.config.proxy.shutdown_timeout,
            count=len(self.factory.connections),
        )
        self.reactor.stop()

    # -- reloading

    def reload(self) -> bool:
        """
        Re-read the config file and apply it.  The new config is validated
        in full, its router built and its new ports bound before anything
        changes; on any error the running config stays and the error is
        logged.  Live connections keep the config they started with.

        @return: whether the new config took effect.
        """
        path = self.config_path
        try:
            config = self.adjust_config(with_dns_cache_file(self.validate_file(path), self.dns_cache_file))
            parts = assemble(config, self.clock, dns=self.dns, resolver_threads=self.resolver_threads)
            opened = self._open_new_ports(config)
        except (ConfigError, StartError) as error:
            self.last_reload_error = str(error)
            log.error("reload of {path} failed, keeping the running config: {error}", path=path, error=str(error))
            return False
        except Exception as error:
            self.last_reload_error = f"internal error: {type(error).__name__}: {error}".splitlines()[0]
            log.failure("reload of {path} failed, keeping the running config", path=path)
            return False
        old, self.config = self.config, config
        self.loaded_at = self.clock.seconds()
        self.last_reload_error = None
        self.factory.reconfigure(config.proxy, parts.router)
        self.backends.configure(config)
        self._close_old_ports(config, opened)
        try:
            self.access_log.path = config.log.access
            self.access_log.reopen()
            if self.dns_service is not None:  # a worker's mirror: the main process applies [dns]
                # [dns] applies now, to the same cache (entries kept).
                apply_dns(self.dns, self.dns_service, old.dns, config.dns, parts.warm_names, self.reactor)
            else:
                # The mirror keeps the owner's answers under the new bounds.
                self.dns.reconfigure(config.dns)
        except Exception as error:
            # The new routes and ports are in force already: say what did
            # not follow, rather than leave a half-applied reload unsaid.
            self.last_reload_error = f"applied partially: {type(error).__name__}: {error}".splitlines()[0]
            log.failure("reload of {path} applied partially (routes and ports are new)", path=path)
            return False
        log.info("reloaded {path}", path=path)
        return True

    def _bind(self, description: str) -> Any:
        """Listen on a proxy endpoint (a reload's new one) for this process's factory."""
        return _listen(self.reactor, description, self.factory)

    def _open_new_ports(self, config: Config) -> dict[str, Any]:
        return open_new_ports(self, config)

    def _close_old_ports(self, config: Config, opened: dict[str, Any]) -> None:
        for description in list(self.ports):
            if description not in config.proxy.listen:
                self.ports.pop(description).stopListening()
        admin = opened.pop("", None)
        if admin is not None or not config.admin.listen:
            if self.admin_port is not None:
                self.admin_port.stopListening()
            self.admin_port = admin
        if self.admin_port is None:
            self.status.sampler.stop()
        else:
            self.status.sampler.start()
        self.ports.update(opened)
