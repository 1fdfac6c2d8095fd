"""
A coverage-guided fuzzer (atheris, i.e. libFuzzer for Python) for the
ClientHello parser, L{sniproxy.clienthello.ClientHelloParser}.

Setup (atheris is not a dependency of sniproxy; it ships wheels for
CPython on Linux x86-64):

    pip install atheris

Run:

    python fuzz/atheris_clienthello.py -max_total_time=120
    python fuzz/atheris_clienthello.py -runs=200000
    python fuzz/atheris_clienthello.py WORKDIR -max_total_time=3600 -jobs=2

Any libFuzzer flag works (C{-help=1} lists them).  Without a directory the
corpus lives in $TMPDIR/sniproxy-clienthello-fuzz (kept between runs, so
it grows), seeded on every start with the captured real ClientHellos of
tests/corpus/ and a few from OpenSSL and the test builders.  With a
directory, seed it yourself (C{cp tests/corpus/*.bin WORKDIR/}).  Never
point it at tests/corpus itself: libFuzzer writes its inputs there.

Each input is a byte stream as a client would send it.  The harness
feeds it in one read, in reads of a size derived from the input, and a
byte per read (inputs up to 4 KiB), under the default 64 KiB limit and
under a 512-byte one, and checks:

  - nothing but a ClientHelloError ever comes out (anything else is a
    crash: libFuzzer saves the input as crash-<sha1> and stops);
  - every way of cutting the stream gives the same outcome (the same
    ClientHello, or the same error type and reason), after the same
    number of bytes;
  - C{buffered} is exactly the bytes fed; a parsed hello is within the
    limit; an error that carries an alert comes with a record version to
    write it in.

Reproduce a crash with C{python fuzz/atheris_clienthello.py crash-<sha1>}.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

import atheris

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

with atheris.instrument_imports():
    from sniproxy.clienthello import ClientHelloError, ClientHelloParser

LIMITS = (65536, 512)


def outcome(data: bytes, size: int, limit: int):
    """
    Feed C{data} in reads of C{size} bytes; return (outcome, bytes fed when
    it came, parser).  The outcome is the ClientHello, C{(error type,
    reason)}, or C{None} when more bytes are needed.
    """
    parser = ClientHelloParser(limit)
    fed = 0
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        fed += len(piece)
        try:
            result = parser.feed(piece)
        except ClientHelloError as error:
            if error.alert is not None:
                assert parser.record_version is not None, ("alert without a record version", error)
            return (type(error), str(error)), fed, parser
        if result is not None:
            assert result.size <= limit, (result.size, limit)
            assert parser.buffered == data[:fed], "buffered is not the bytes fed"
            return result, fed, parser
    assert parser.buffered == data, "buffered is not the bytes fed"
    return None, fed, parser


def test_one_input(data: bytes) -> None:
    size = (len(data) + sum(data[:16])) % 97 + 1
    for limit in LIMITS:
        whole = outcome(data, max(len(data), 1), limit)
        bytewise = outcome(data, 1, limit) if len(data) <= 4096 else None
        chunked = outcome(data, size, limit)
        for name, got in (("a byte per read", bytewise), (f"reads of {size} bytes", chunked)):
            if got is not None and got[0] != whole[0]:
                raise AssertionError(f"{name} (limit {limit}): {got[0]!r}; in one read: {whole[0]!r}")
        if bytewise is not None and bytewise[0] is not None:
            # A byte per read, the outcome comes with the very byte that
            # decides it; in bigger reads, with the read holding that byte.
            decided = bytewise[1]
            expected = min(len(data), -(-decided // size) * size)
            assert chunked[1] == expected, (f"decided at byte {decided}, reads of {size}", chunked[1], expected)


def seeds() -> list[bytes]:
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "corpus", "*.bin"))):
        with open(path, "rb") as f:
            found.append(f.read())
    try:
        from sniproxy.testing.clienthello import build_client_hello, make_client_hello, sni_extension, split_records

        hello = make_client_hello("seed.example", [b"h2"])
        found += [
            hello,
            make_client_hello(None, None, "1.2"),
            split_records(hello, 7),
            build_client_hello([sni_extension(["a.example"]), (0xFE0D, bytes(8))], record_size=50),
            build_client_hello(None),
            b"GET / HTTP/1.1\r\n\r\n",
        ]
    except ImportError:  # pyOpenSSL missing: the corpus alone will do
        pass
    return found


def main(argv: list[str]) -> None:
    if not [a for a in argv[1:] if not a.startswith("-")]:
        # libFuzzer ends the process itself (no cleanup runs after it), so
        # the default corpus directory is a fixed one, kept between runs.
        workdir = os.path.join(tempfile.gettempdir(), "sniproxy-clienthello-fuzz")
        os.makedirs(workdir, exist_ok=True)
        for i, seed in enumerate(seeds()):
            with open(os.path.join(workdir, f"seed-{i}"), "wb") as f:
                f.write(seed)
        argv = argv + [workdir]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
