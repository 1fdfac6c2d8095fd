"""
The clients, and what they time.

A connection's time is the client's view of TCP connect + TLS handshake:
from just before C{connect()} to just after C{do_handshake()} returns, with
the standard library's C{ssl} verifying the backend's certificate against
the bench CA for the SNI (C{check_hostname} on).  The proxy never
terminates TLS, so a verified handshake proves the connection reached the
backend.  Then, outside the timed part, the client closes cleanly: it ends
its stream (FIN), waits for the backend's end (relayed by the proxy), and
closes, so one connection's teardown is over before the next starts.

Every loop is bounded by a count and a time limit, every connection by a
socket timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.streams import CHUNK, Sink, send_count

__all__ = [
    "Target",
    "handshake",
    "interleaved",
    "load",
    "paced",
    "stream",
    "tls_context",
]

CONNECTION_TIMEOUT = 10.0
Address = tuple[str, int]


@dataclass(frozen=True)
class Target:
    """Where a client connects (the proxy or the backend) and the SNI it sends."""

    label: str
    address: Address
    sni: str


def tls_context(cafile: str) -> ssl.SSLContext:
    """A client context trusting only the bench CA, verifying host names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    return context


def handshake(context: ssl.SSLContext, address: Address, sni: str, timeout: float = CONNECTION_TIMEOUT) -> float:
    """
    One connection: the seconds from before connect() to after the TLS
    handshake; then a clean close.

    @raise OSError: (C{ssl.SSLError} included) when it fails.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    tls = context.wrap_socket(sock, server_hostname=sni, do_handshake_on_connect=False)
    try:
        start = time.perf_counter()
        tls.connect(address)
        tls.do_handshake()
        elapsed = time.perf_counter() - start
        tls.shutdown(socket.SHUT_WR)
        while tls.recv(4096):
            pass
        return elapsed
    finally:
        tls.close()


@dataclass
class Samples:
    """Seconds per successful connection, and the failures, by target label."""

    times: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    truncated: bool = False


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


def interleaved(
    context: ssl.SSLContext, targets: Sequence[Target], rounds: int, time_limit: float, gap: float = 0.0
) -> Samples:
    """
    C{rounds} rounds of one sequential connection to each target, the order
    reversed every other round (AB, BA, AB, ...), so that drift in the
    machine's load falls on every target alike; C{gap} seconds of pause
    between rounds.  Stops early (C{truncated}) past C{time_limit} seconds.
    """
    result = Samples({t.label: [] for t in targets}, {t.label: [] for t in targets})
    deadline = time.monotonic() + time_limit
    for index in range(rounds):
        if time.monotonic() > deadline:
            result.truncated = True
            break
        if gap and index:
            time.sleep(gap)
        for target in targets if index % 2 == 0 else reversed(targets):
            try:
                result.times[target.label].append(handshake(context, target.address, target.sni))
            except OSError as error:
                result.errors[target.label].append(_error(error))
    return result


def paced(
    context: ssl.SSLContext, targets: Sequence[Target], rate: float, duration: float, threads: int = 8
) -> list[dict]:
    """
    Open-loop arrivals at C{rate} connections per second to each target for
    C{duration} seconds: the targets take turns (A, B, A, B, ...), and
    connection i starts at its scheduled time (or as soon after as one of
    C{threads} is free), so that one slow connection does not delay the
    next ones.

    @return: one dict per connection: C{label} (its target's), C{at}
        (scheduled start, seconds from the first), C{late} (how late it
        started), C{seconds} (its time, to failure if it failed) and
        C{error} (C{None}, or why it failed).
    """
    count = int(rate * duration) * len(targets)
    interval = 1.0 / (rate * len(targets))
    results: list[dict | None] = [None] * count
    lock = threading.Lock()
    next_index = [0]
    start = time.monotonic() + 0.05

    def run() -> None:
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= count:
                return
            target = targets[index % len(targets)]
            at = index * interval
            wait = start + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            late = max(0.0, time.monotonic() - (start + at))
            began = time.perf_counter()
            try:
                seconds, error = handshake(context, target.address, target.sni), None
            except OSError as failure:
                seconds, error = time.perf_counter() - began, _error(failure)
            results[index] = {"label": target.label, "at": at, "late": late, "seconds": seconds, "error": error}

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(duration + 2 * CONNECTION_TIMEOUT + 5)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- load


def _load_worker(cafile: str, target: Target, threads: int, start_at: float, duration: float, pipe) -> None:
    context = tls_context(cafile)
    lock = threading.Lock()
    times: list[float] = []
    ends: list[float] = []
    errors: list[str] = []
    cpu_before = time.process_time()

    def run() -> None:
        wait = start_at - time.time()
        if wait > 0:
            time.sleep(wait)
        stop = start_at + duration
        while time.time() < stop:
            try:
                seconds = handshake(context, target.address, target.sni)
            except OSError as error:
                with lock:
                    errors.append(_error(error))
                continue
            with lock:
                times.append(seconds)
                ends.append(time.time())

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(duration + 2 * CONNECTION_TIMEOUT + 5)
    pipe.send(
        {"times": times, "last": max(ends, default=start_at), "errors": errors, "cpu": time.process_time() - cpu_before}
    )
    pipe.close()


def load(cafile: str, target: Target, *, concurrency: int, duration: float, processes: int) -> dict:
    """
    C{concurrency} clients in a closed loop (each starts its next connection
    when the last one is closed) for C{duration} seconds: C{processes}
    forked processes (the GIL would otherwise bound the figure) of
    C{concurrency / processes} threads each.

    @return: C{connections}, C{errors}, C{elapsed} (from the common start to
        the last completion), C{per_second}, C{times} (every connection's
        seconds), C{client_cpu} (CPU seconds of the client processes).
    """
    threads = max(1, concurrency // processes)
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 0.5
    children = []
    for _ in range(processes):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_load_worker, args=(cafile, target, threads, start_at, duration, sender), daemon=True
        )
        process.start()
        sender.close()
        children.append((process, receiver))
    results = []
    bound = time.monotonic() + duration + 2 * CONNECTION_TIMEOUT + 15
    try:
        for process, receiver in children:
            if receiver.poll(max(0.0, bound - time.monotonic())):
                results.append(receiver.recv())
            process.join(max(0.0, bound - time.monotonic()))
    finally:
        for process, receiver in children:
            if process.is_alive():
                process.kill()
                process.join(5)
            receiver.close()
    times = [t for r in results for t in r["times"]]
    errors = [e for r in results for e in r["errors"]]
    last = max((r["last"] for r in results), default=start_at)
    elapsed = max(last - start_at, 1e-9)
    return {
        "connections": len(times),
        "errors": errors,
        "elapsed": elapsed,
        "per_second": len(times) / elapsed,
        "times": times,
        "client_cpu": sum(r["cpu"] for r in results),
        "concurrency": threads * processes,
        "processes": processes,
        "workers_reported": len(results),
    }


# ---------------------------------------------------------------- throughput

_BLOCK: memoryview | None = None


def _block() -> memoryview:
    global _BLOCK
    if _BLOCK is None:
        _BLOCK = memoryview(os.urandom(CHUNK))
    return _BLOCK


def stream(address: Address, sni: str, direction: str, count: int, timeout: float = 60.0) -> float:
    """
    Move C{count} bytes one way through a raw stream (L{bench.backend}'s
    protocol, after a real ClientHello for C{sni}): C{"up"} (client to
    backend, timed until the backend acknowledges the last byte) or
    C{"down"} (backend to client, timed until the last byte is in).

    @return: seconds, from the request to the last byte.
    """
    from sniproxy.testing.clienthello import make_client_hello

    hello = make_client_hello(sni)
    request = struct.pack("!cQ", b"u" if direction == "up" else b"d", count)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello)
        if direction == "up":
            start = time.perf_counter()
            sock.sendall(request)
            send_count(sock, count, _block())
            if sock.recv(1) != b"k":
                raise ConnectionError("the backend did not acknowledge the upload")
        else:
            with Sink(timeout) as sink:
                start = time.perf_counter()
                sock.sendall(request)
                got = sink.drain(sock, count)
            if got != count:
                raise ConnectionError(f"stream ended after {got} of {count} bytes")
        elapsed = time.perf_counter() - start
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return elapsed
    finally:
        sock.close()
