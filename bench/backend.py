"""
The benchmark's backend, one child process with two loopback ports:

  - a TLS server (the standard library's C{ssl}, handshakes done in C by
    a pool of blocking threads) presenting one certificate for every name
    the benchmark routes: it completes the handshake, then waits for the
    client's end of stream and closes.  No session tickets, so nothing is
    left unread when the client closes;
  - a raw TCP sink/source for the throughput figures.  A client sends a
    real ClientHello (so the proxy routes it like any connection), then
    9 bytes: C{u} or C{d} and a 64-bit big-endian byte count.  C{u}: the
    backend reads that many bytes (spliced to /dev/null where Linux allows)
    and answers one byte, C{k}; C{d}: it sends that many bytes, then ends
    its stream.  Either way it then waits for the client's end of stream.

    python bench/backend.py --cert CERT --key KEY

prints C{"<tls port> <raw port>"} on a line once listening, and exits when
its standard input closes (its parent is gone) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import struct
import sys
import threading

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.streams import CHUNK, Sink, send_count  # noqa: E402

__all__ = ["main", "read_hello"]

TLS_THREADS = 128


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("end of stream")
        data += chunk
    return bytes(data)


def read_hello(sock: socket.socket) -> bytes:
    """Read exactly one ClientHello (in one or more handshake records), and nothing after it."""
    payload = bytearray()
    hello = bytearray()
    while len(payload) < 4 or len(payload) < 4 + int.from_bytes(payload[1:4], "big"):
        header = recv_exact(sock, 5)
        if header[0] != 0x16:
            raise ValueError("not a handshake record")
        fragment = recv_exact(sock, int.from_bytes(header[3:5], "big"))
        hello += header + fragment
        payload += fragment
    return bytes(hello)


def wait_for_end(sock: socket.socket) -> None:
    sock.settimeout(30)
    while sock.recv(65536):
        pass


def _serve_stream(conn: socket.socket, block: memoryview) -> None:
    with conn:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(60)
            read_hello(conn)
            direction, count = struct.unpack("!cQ", recv_exact(conn, 9))
            if direction == b"u":
                with Sink() as sink:
                    sink.drain(conn, count)
                conn.sendall(b"k")
            elif direction == b"d":
                send_count(conn, count, block)
                conn.shutdown(socket.SHUT_WR)
            wait_for_end(conn)
        except (OSError, ValueError, ConnectionError):
            pass


def _stream_server(listener: socket.socket) -> None:
    block = memoryview(os.urandom(CHUNK))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_stream, args=(conn, block), daemon=True).start()


def _tls_worker(listener: socket.socket, context: ssl.SSLContext) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(30)
            with context.wrap_socket(conn, server_side=True) as tls:
                wait_for_end(tls)
        except (OSError, ValueError):
            conn.close()


def _listen() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    return listener


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python bench/backend.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(options.cert, options.key)
    context.num_tickets = 0
    tls, raw = _listen(), _listen()
    for _ in range(TLS_THREADS):
        threading.Thread(target=_tls_worker, args=(tls, context), daemon=True).start()
    threading.Thread(target=_stream_server, args=(raw,), daemon=True).start()
    print(tls.getsockname()[1], raw.getsockname()[1], flush=True)
    # Until the parent closes our standard input (or is gone).
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
