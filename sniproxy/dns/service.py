"""
The DNS layer as a service: load the cache file and warm the cache when the
process starts, save the cache file every so often, stop the upstream
cleanly and save once more when it stops.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sniproxy.dns.cache import CachingResolver
from sniproxy.dns.persist import load_cache, write_cache_file

__all__ = ["DNSService"]

log = Logger()


class DNSService(Service):
    """
    Owns a L{CachingResolver} for the life of the process.

    @ivar resolver: the cache.
    @ivar prefetched: after L{startService}, a L{Deferred} that fires when
        the warm-start lookups are done (it never fails).
    @ivar cache_file: where the cache is saved and loaded (C{""} = off).
    @ivar save_interval: seconds between saves.
    @ivar loaded: how many entries came from the cache file at start.
    """

    def __init__(
        self,
        resolver: CachingResolver,
        prefetch: Iterable[str] = (),
        *,
        cache_file: str = "",
        save_interval: float = 60.0,
        clock: IReactorTime | None = None,
        reactor: IReactorThreads | None = None,
    ) -> None:
        """
        @param prefetch: host names whose A and AAAA records are looked up
            at start-up, so that their first connections hit the cache.
        @param clock: times the saves; the resolver's clock by default.
        @param reactor: an L{IReactorThreads}: with one, the entries are
            snapshotted on the reactor thread and encoded and written in
            its thread pool (10,000 entries take ~100 ms to write);
            without, saves are synchronous.
        """
        self.resolver = resolver
        self.prefetch = tuple(prefetch)
        self.prefetched: defer.Deferred[None] | None = None
        self.cache_file = cache_file
        self.save_interval = save_interval
        self.loaded = 0
        self._clock = clock if clock is not None else resolver.clock
        self._reactor = reactor
        self._saving: task.LoopingCall | None = None
        self._writing: defer.Deferred[bool] | None = None

    def startService(self) -> None:
        super().startService()
        if self.cache_file:
            # Before the prefetch, so that names in the file are not asked
            # again; loading never waits for the network.
            self.loaded = load_cache(self.resolver, self.cache_file, self.resolver.max_entries)
        if self.prefetch:
            log.info("Prefetching {count} DNS names", count=len(self.prefetch))
        # Start-up does not wait: a name that is slow to resolve must not
        # hold back the listening ports.
        self.prefetched = self.resolver.prefetch(self.prefetch)
        self._start_saving()

    def _start_saving(self) -> None:
        if self._saving is not None and self._saving.running:
            self._saving.stop()
        self._saving = None
        if self.cache_file and self.running:
            self._saving = task.LoopingCall(self.save)
            self._saving.clock = self._clock
            self._saving.start(self.save_interval, now=False)

    def reconfigure(self, cache_file: str, save_interval: float) -> None:
        """Save to C{cache_file} every C{save_interval} seconds from now on."""
        if (cache_file, save_interval) != (self.cache_file, self.save_interval):
            self.cache_file, self.save_interval = cache_file, save_interval
            self._start_saving()

    def save(self) -> defer.Deferred[bool]:
        """
        Save the cache to the cache file now (if one is set).  A failure is
        one warning naming the file and the reason.  A save while another
        is being written waits for that one, then writes.

        @return: fires with whether it was saved (it never fails).
        """
        if not self.cache_file:
            return defer.succeed(False)
        if self._writing is not None:
            # Chained after the write in progress, without changing the
            # result its own caller sees.
            waiting: defer.Deferred[None] = defer.Deferred()

            def written(result: Any) -> Any:
                waiting.callback(None)
                return result

            self._writing.addBoth(written)
            return waiting.addCallback(lambda _: self.save())
        path = self.cache_file
        entries = list(self.resolver.saved_entries())
        now = self._clock.seconds()
        if self._reactor is None:
            d = defer.maybeDeferred(write_cache_file, entries, path, now)
        else:
            d = threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), write_cache_file, entries, path, now
            )
        self._writing = d
        d.addCallbacks(lambda _: True, self._save_failed, errbackArgs=(path,))

        def done(saved: bool) -> bool:
            if self._writing is d:
                self._writing = None
            return saved

        return d.addCallback(done)

    def _save_failed(self, failure: Failure, path: str) -> bool:
        if failure.check(OSError):
            error = failure.value
            log.warn("Cannot save the DNS cache to {path}: {reason}", path=path, reason=error.strerror or str(error))
        else:
            log.failure("Saving the DNS cache to {path} failed", failure, path=path)
        return False

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self._saving is not None and self._saving.running:
            self._saving.stop()
        self._saving = None
        stopped = self.resolver.stop()
        if not self.cache_file:
            return stopped
        # The entries stay through the stop: save what they are now.
        return defer.gatherResults([stopped, self.save()])
