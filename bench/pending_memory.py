"""
What a connection waiting for its ClientHello costs the proxy in memory.

    python bench/pending_memory.py                  # 10,000 connections
    python bench/pending_memory.py --connections 2000

The proxy runs in this process; a child process opens the connections to
it on loopback and holds them, half sending nothing and half one byte of
a hello (so the parser has started), which is what a slowloris client
does.  Once the proxy has accepted them all, the growth of the Python
heap (tracemalloc) and of the resident set size (/proc/self/status, after
gc and glibc's malloc_trim) is divided by the number of connections.
Kernel socket memory is not in either figure (it is small for a socket
with no data queued).  Figures from a run are in README.rst ("Security").
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import subprocess
import sys
import time
import tomllib
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402

from sniproxy.config import parse_config  # noqa: E402
from sniproxy.service import ProxyService  # noqa: E402
from sniproxy.testing.churn import open_fds, rss_bytes  # noqa: E402

CHILD = r"""
import errno, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(count):
    s = socket.socket()
    s.setblocking(False)
    if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
        raise SystemExit("connect failed")
    held.append(s)
    if i % 200 == 199:
        time.sleep(0.01)
time.sleep(0.2)
for s in held[::2]:
    s.send(b"\x16")
print("ready", flush=True)
sys.stdin.read()
"""


def measure() -> tuple[int, int]:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return tracemalloc.get_traced_memory()[0], rss_bytes() - tracemalloc.get_tracemalloc_memory()


@inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--time-limit", type=float, default=120.0)
    args = parser.parse_args(argv)
    count = args.connections

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + open_fds() + 100
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit(f"need {want} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    data = tomllib.loads(
        "[proxy]\nhello_timeout = 3600.0\nmax_connections = 0\nmax_connections_per_client = 0\n[log]\naccess = ''\n"
    )
    data["proxy"]["listen"] = ["tcp:0:interface=127.0.0.1:backlog=4096"]
    service = ProxyService(parse_config(data), reactor=reactor)
    service.startService()
    port = next(iter(service.ports.values())).getHost().port

    tracemalloc.start(1)
    heap0, rss0 = measure()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + args.time_limit
    try:
        while len(service.factory.connections) < count:
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit(f"only {len(service.factory.connections)} of {count} connections arrived")
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield task.deferLater(reactor, 0.5, lambda: None)  # the one-byte sends
        heap1, rss1 = measure()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    tracemalloc.stop()
    print(f"{count} connections waiting for their ClientHello:")
    print(f"  Python heap (tracemalloc): {(heap1 - heap0) / count:8.0f} bytes per connection")
    print(f"  resident set size:         {(rss1 - rss0) / count:8.0f} bytes per connection")
    deadline = time.monotonic() + 30
    while service.factory.connections and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.05, lambda: None)
    yield service.stopService()


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
