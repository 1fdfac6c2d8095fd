"""
The DNS layer as a service: load the cache file and warm the cache when the
process starts, save the cache file every so often, stop the upstream
cleanly and save once more when it stops.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sniproxy.dns.cache import CachingResolver
from sniproxy.dns.persist import load_cache, save_cache

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
    ) -> None:
        """
        @param prefetch: host names whose A and AAAA records are looked up
            at start-up, so that their first connections hit the cache.
        @param clock: times the saves; the resolver's clock by default.
        """
        self.resolver = resolver
        self.prefetch = tuple(prefetch)
        self.prefetched: defer.Deferred[None] | None = None
        self.cache_file = cache_file
        self.save_interval = save_interval
        self.loaded = 0
        self._clock = clock if clock is not None else resolver._clock
        self._saving: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.cache_file:
            # Before the prefetch, so that names in the file are not asked
            # again; loading never waits for the network.
            self.loaded = load_cache(self.resolver, self.cache_file, self.resolver._max_entries)
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

    def save(self) -> bool:
        """
        Save the cache to the cache file now (if one is set).  A failure is
        one warning naming the file and the reason.

        @return: whether it was saved.
        """
        if not self.cache_file:
            return False
        try:
            save_cache(self.resolver, self.cache_file, self._clock.seconds())
        except OSError as error:
            log.warn(
                "Cannot save the DNS cache to {path}: {reason}",
                path=self.cache_file,
                reason=error.strerror or str(error),
            )
            return False
        return True

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self._saving is not None and self._saving.running:
            self._saving.stop()
        self._saving = None
        stopped = self.resolver.stop()
        if self.cache_file:
            # The entries stay through the stop: save what they are now.
            self.save()
        return stopped
