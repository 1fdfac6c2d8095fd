"""
The sniproxy benchmark: DNS-routed connections against static ones, side by
side, in one run on one machine, so every figure is a ratio taken at the
same time (the targets in docs/benchmarks.rst).

    python bench/run.py [--quick] [--json PATH] [--only s1,s2,...]

(from a clone after C{pip install .}; C{.venv/bin/python bench/run.py} with
the README's virtualenv).  On the 2-core machine of the README's results,
C{--quick} takes about 70 s and the full run about 2 minutes; every loop is
bounded in count and time.  Markdown tables on standard output, progress on
standard error, raw samples and metadata (date, machine, versions, commit,
how busy the machine was) in C{bench/results/latest.json} (or C{--json}).
C{--only} runs some scenarios (S3 brings S1 along: its threshold).

It starts, as its own child processes, all on loopback: a TLS backend with
one certificate for every name (and a raw byte sink/source), the test DNS
server (C{python -m sniproxy.testing.dns --control}: per-query delay, TTLs,
outage switch and query counts driven through its standard input), and the
proxy (C{twistd -n sniproxy} with a generated config).  They are stopped by
PID (SIGTERM, then SIGKILL) however the run ends.

A connection's time is TCP connect + TLS handshake as the client sees it
(stdlib C{ssl}, the backend's certificate verified for the SNI).  Where a
ratio is taken, the two kinds of connection alternate in one loop.

  - S1, static route: sequential connections direct and through the proxy
    (the proxy's own cost; its CPU time per connection from /proc);
    connections per second at concurrency 32 (4 processes × 8 threads);
    throughput of a 512 MiB raw stream each way after a real ClientHello,
    through the proxy and direct (the ceiling of the method).
  - S2, TXT-routed custom domain, upstream delayed 300 and 800 ms, TTL 30 s:
    the cold first connection and its queries, then warm connections
    alternating with static ones (ratio to S1), and connections per second.
  - S3, TTL expiry: TTL 2 s, upstream delayed 300 ms, 20 connections/s for
    12 s, open loop, in turn with as many static ones paced alike: how many
    were slower than 2x the S1 median (and than 2x the paced static
    median, the same arrival pattern), how many waited for the upstream,
    and the upstream queries against T/t + 1.
  - S4, upstream outage after warm-up: 100 connections with every query
    dropped and the entry expired (served stale), a never-seen name (must
    fail), and connections for 4 s once the upstream is back.
  - S5, legacy-only domain (primary NXDOMAIN with an SOA, negative TTL
    5 s; legacy record present): first-connection cost and queries, then a
    steady state alternating with static connections (ratio to S1), paced
    to outlive the negative TTL.
  - The original report's table: a custom domain against an
    <app-id>-443s.<base> subdomain, upstream delayed 800 ms.
  - Last, the section 5 targets, each met or not.

Targets are reported, not asserted: the exit status is 0 whenever every
scenario ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report, topology  # noqa: E402
from bench.harness import ROOT, Harness, MachineLoad  # noqa: E402
from bench.scenarios import PLANS, SCENARIOS, Bench  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "bench", "results", "latest.json")


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs (under 3 minutes)")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write raw samples (default: %(default)s)")
    names = [name for name, _ in SCENARIOS]
    parser.add_argument("--only", default="", help=f"comma-separated scenarios to run, of {','.join(names)}")
    options = parser.parse_args(argv)
    chosen = [n for n in options.only.split(",") if n] or names
    unknown = set(chosen) - set(names)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if ("s3" in chosen or "s3_decay" in chosen) and "s1" not in chosen:
        chosen.insert(0, "s1")  # S3's threshold is 2x the S1 median
    plan = PLANS["quick" if options.quick else "full"]
    meta = report.metadata(plan.name, argv)
    data: dict = {"meta": meta, "plan": plan.__dict__, "scenarios": {}}
    began = time.monotonic()
    print(report.header(meta), flush=True)
    with tempfile.TemporaryDirectory(prefix="sniproxy-bench-") as directory, Harness(directory) as harness:
        files = topology.write_files(directory, plan.s2_delays_ms)
        progress("starting the backend, the DNS server and the proxy")
        harness.start_backend(files.cert, files.key)
        harness.start_dns(files.records)
        config = os.path.join(directory, "sniproxy.toml")

        def write_config(dns_port: int) -> None:
            with open(config, "w") as f:
                f.write(
                    topology.proxy_config(
                        dns_port=dns_port, tls_port=harness.tls_address[1], raw_port=harness.raw_address[1]
                    )
                )

        write_config(harness.dns_port)
        harness.start_proxy(config)
        progress(f"proxy on {harness.proxy_address[0]}:{harness.proxy_address[1]} (pid {harness.proxy.pid})")
        bench = Bench(harness, plan, files.ca, results=data["scenarios"], records=files.records, write_config=write_config)
        load = MachineLoad()
        try:
            for name, scenario in SCENARIOS:
                if name not in chosen:
                    continue
                progress(f"{name}: {scenario.__doc__.strip().splitlines()[0]}")
                started = time.monotonic()
                data["scenarios"][name] = result = scenario(bench)
                result["elapsed"] = time.monotonic() - started
                print("\n" + report.SECTIONS[name](result), flush=True)
        finally:
            data["meta"]["elapsed"] = time.monotonic() - began
            data["meta"]["load"] = load.finish(harness.children)
            text, rows = report.targets(data["scenarios"])
            data["targets"] = rows
            report.write_json(options.json, data)
    print("\n" + text, flush=True)
    print("\n" + report.footer(data["meta"], os.path.relpath(options.json)), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        progress("interrupted; the servers are stopped")
        sys.exit(130)
