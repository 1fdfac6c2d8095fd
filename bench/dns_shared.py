"""
What the shared DNS cache costs a worker: a hit in a mirror against a hit
in a plain L{CachingResolver} (the same code: they should cost the same),
and a mirror's miss answered by the owner's cache over the UNIX socket
(one AMP round trip, no DNS).

    python -m bench.dns_shared [--hits 200000] [--misses 2000]

Bounded: C{--hits} lookups each way, C{--misses} sequential round trips,
loopback only (a UNIX socket in a temporary directory, the in-process test
DNS server).  Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.names import dns

from sniproxy.config import DNSConfig
from sniproxy.dns import build_dns
from sniproxy.dns.shared import DNSMirror, DNSOwner
from sniproxy.testing.dns import DNSServer

NAME = "_dstack-app-address.shop.test"


def _hits(resolver, count: int) -> float:
    """Seconds per hit, best of three passes."""
    query = resolver.query
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            query(NAME, dns.TXT)
        best = min(best, (time.perf_counter() - started) / count)
    return best


async def _main(reactor, hits: int, misses: int) -> None:
    server = DNSServer()
    server.start()
    server.add_txt(NAME, "myapp:443", ttl=3600)
    for i in range(misses):
        server.add_txt(f"n{i}.test", "x", ttl=3600)
    directory = tempfile.mkdtemp(prefix="sniproxy-bench-")
    path = os.path.join(directory, "dns.sock")
    config = DNSConfig(servers=(server.address,))
    cache = build_dns(config, reactor)
    owner = DNSOwner(cache, reactor)
    mirror = DNSMirror(path, config, reactor)
    try:
        await owner.listen(path)
        mirror.start()
        await mirror.when_connected()
        await mirror.query(NAME, dns.TXT)
        await mirror.sync()
        plain = _hits(cache, hits)
        mirrored = _hits(mirror, hits)
        print(f"plain cache hit   {plain * 1e6:7.2f} us")
        print(f"mirror hit        {mirrored * 1e6:7.2f} us  ({mirrored / plain:.2f}x)")
        # The owner learns every name first, so the mirrors' misses are
        # owner hits: the round trip alone.
        for start in range(0, misses, 50):
            batch = range(start, min(misses, start + 50))
            await defer.gatherResults([cache.query(f"n{i}.test", dns.TXT) for i in batch])
        other = DNSMirror(path, config, reactor)
        other.start()
        await other.when_connected()
        started = time.perf_counter()
        for i in range(misses):
            await other.query(f"n{i}.test", dns.TXT)
        elapsed = (time.perf_counter() - started) / misses
        print(f"mirror miss (owner hit, one round trip) {elapsed * 1e6:7.1f} us")
        print(f"upstream queries: {len(server.log)} for {misses + 1} names")
        await other.stop()
    finally:
        await mirror.stop()
        await owner.stop()
        await cache.stop()
        await server.stop()
        shutil.rmtree(directory, True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=200000)
    parser.add_argument("--misses", type=int, default=2000)
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, args.hits, args.misses)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
