"""
The leak check: many short connections through the proxy, then file
descriptors and memory must be back at their baseline.

    python bench/leaks.py                       # 20,000 connections
    python bench/leaks.py --connections 2000 --no-tracemalloc

One process runs the proxy (in-process, real loopback sockets), an echo
backend and the clients (L{sniproxy.testing.churn}): good connections,
clients that reset mid-relay, names with no route, a backend that refuses,
plain HTTP, broken hellos, invalid server names, clients that give up
half-way and slow ones closed at C{hello_timeout}.  After a warm-up of
1,000 connections (caches, free lists and the like reach their working
size) the baseline is taken; after the run, once the proxy has closed
everything, the same figures are taken again:

  - open file descriptors (/proc/self/fd): must be exactly the baseline;
  - the Python heap (tracemalloc's current traced size; --no-tracemalloc
    runs about three times faster without it) and the resident set size
    (/proc/self/status, after gc and glibc's malloc_trim, less
    tracemalloc's own tables), each within a margin (--heap-margin,
    --rss-margin); the live object count (gc) is shown;
  - connections, per-client counts and timers the proxy still holds: none.
Exit status 1 when a figure is off.  --rounds N repeats the run N times,
each compared with the same baseline: a leak grows round after round, an
allocator's high-water mark does not.

Every connection is bounded (10 s) and so is the run (--time-limit).
Figures from a run are in README.rst ("Security").
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time
import tomllib
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from sniproxy.config import parse_config  # noqa: E402
from sniproxy.service import ProxyService  # noqa: E402
from sniproxy.testing.churn import Churn, EchoBackend, config_for, open_fds, rss_bytes  # noqa: E402

MiB = 1 << 20


def _malloc_trim() -> None:
    """Hand freed C heap back to the OS (glibc), so RSS shows what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def figures(service, reactor, traced: bool) -> dict[str, int]:
    gc.collect()
    _malloc_trim()
    factory = service.factory
    # Idle pipes kept for the splice pump are reused, not leaked; how many
    # depends on the busiest moment so far.  Count what stays open for good.
    pipes = getattr(factory, "pipes", None)
    if pipes is not None:
        pipes.close()
    return {
        "fds": open_fds(),
        # tracemalloc's own tables are not the proxy's.
        "rss": rss_bytes() - (tracemalloc.get_tracemalloc_memory() if traced else 0),
        "heap": tracemalloc.get_traced_memory()[0] if traced else 0,
        "objects": len(gc.get_objects()),
        "connections": len(factory.connections),
        "per_client": len(factory._per_client),
        "timers": len(reactor.getDelayedCalls()),
    }


@inlineCallbacks
def settle(service, reactor, limit: float = 15.0):
    """Wait (bounded) for the proxy to close everything, then a little more."""
    deadline = time.monotonic() + limit
    while service.factory.connections and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.05, lambda: None)
    yield task.deferLater(reactor, 0.5, lambda: None)


@inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--warm-up", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the connections this many times over (each compared with the baseline)",
    )
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--heap-margin", type=float, default=1.0, help="MiB")
    parser.add_argument("--rss-margin", type=float, default=8.0, help="MiB")
    args = parser.parse_args(argv)

    backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=1024).listen(EchoBackend())
    down = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
    down_port = down.getHost().port
    yield down.stopListening()
    data = tomllib.loads(config_for(backend.getHost().port, down_port))
    data["proxy"]["listen"] = ["tcp:0:interface=127.0.0.1:backlog=1024"]
    data["log"] = {"access": ""}
    service = ProxyService(parse_config(data), reactor=reactor)
    service.startService()
    port = next(iter(service.ports.values())).getHost().port
    # Rejections log a line each; keep them out of the way (and count them).
    from twisted.logger import globalLogBeginner

    lines = [0]
    globalLogBeginner.beginLoggingTo([lambda event: lines.__setitem__(0, lines[0] + 1)], redirectStandardIO=False)

    if args.tracemalloc:
        tracemalloc.start(1)
    print(f"warm-up: {args.warm_up} connections", flush=True)
    yield Churn(reactor, port, args.warm_up, args.concurrency, time_limit=args.time_limit).run()
    yield settle(service, reactor)
    before = figures(service, reactor, args.tracemalloc)

    errors = unfinished = 0
    for round in range(1, args.rounds + 1):
        churn = Churn(reactor, port, args.connections, args.concurrency, time_limit=args.time_limit)
        cpu = time.process_time()
        yield churn.run(lambda n: print(f"  {n} connections", flush=True))
        cpu = time.process_time() - cpu
        yield settle(service, reactor)
        after = figures(service, reactor, args.tracemalloc)
        errors += churn.counts.get("error", 0)
        unfinished += args.connections - sum(churn.counts.values())

        print(
            f"\nround {round}: {args.connections} connections in {churn.elapsed:.1f}s ({cpu:.1f}s CPU), {args.concurrency} at a time"
        )
        print("by kind: " + ", ".join(f"{kind} {count}" for kind, count in sorted(churn.counts.items())))
        print(f"log lines so far: {lines[0]}")
        print(f"{'':12} {'before':>14} {'after':>14} {'change':>12}")
        for key in before:
            if key == "heap" and not args.tracemalloc:
                continue
            b, a = before[key], after[key]
            if key in ("rss", "heap"):
                print(f"{key:12} {b / MiB:>12.2f}Mi {a / MiB:>12.2f}Mi {(a - b) / 1024:>+10.1f}Ki")
            else:
                print(f"{key:12} {b:>14} {a:>14} {a - b:>+12}")

    problems = []
    if errors:
        problems.append(f"{errors} connections failed to connect")
    if unfinished:
        problems.append(f"{unfinished} connections did not finish")
    if after["fds"] != before["fds"]:
        problems.append(f"file descriptors: {before['fds']} -> {after['fds']}")
    for key in ("connections", "per_client"):
        if after[key]:
            problems.append(f"the proxy still holds {after[key]} {key}")
    if after["timers"] > before["timers"]:
        problems.append(f"timers: {before['timers']} -> {after['timers']}")
    if args.tracemalloc and after["heap"] - before["heap"] > args.heap_margin * MiB:
        problems.append(f"heap grew by {(after['heap'] - before['heap']) / MiB:.2f} MiB")
    if after["rss"] - before["rss"] > args.rss_margin * MiB:
        problems.append(f"RSS grew by {(after['rss'] - before['rss']) / MiB:.2f} MiB")

    yield service.stopService()
    yield backend.stopListening()
    if problems:
        print("LEAK CHECK FAILED: " + "; ".join(problems))
        raise SystemExit(1)
    print("leak check passed")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
