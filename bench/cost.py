"""
The cost scenario of issue 11: what one connection costs the proxy,
sniproxy side by side with nginx, haproxy, a bare-epoll CPython relay (the
floor), Twisted's portforward and the design spikes of
L{bench.floor_twisted}, all in one run on one machine.

    python bench/cost.py [--quick] [--profile] [--syscalls] [--json PATH] [--peers a,b,...]

(from the checkout, with the venv's python).  C{--quick} finishes in well
under 3 minutes on the 2-core machine of docs/cost.rst (60-130 s with
all ten proxies, depending on how busy the machine is); the full run
takes about 7.  Every loop is bounded in count and time, everything is
on loopback, every child is stopped by PID.

Per proxy (and "direct", the client straight to the backend):

  - CPU of the proxy process per connection, at concurrency 1 (the
    sequential loop, every proxy in turn in one interleaved loop) and at
    concurrency 32 (closed loop, 4 client processes x 8 threads, one proxy
    at a time): on-CPU nanoseconds of all its threads from
    C{/proc/<pid>/task/*/schedstat} (exact, not clock ticks), and the
    user/system split from C{/proc/<pid>/stat}, before and after;
  - connections per second at concurrency 32;
  - sequential handshake p50/p99 (TCP connect + TLS handshake, the
    backend's certificate verified for the SNI) and the added latency:
    the proxy's p50 minus direct's, from the same interleaved loop;
  - relay throughput each way (L{bench.clients.stream}: a raw stream
    after a real ClientHello), direct and through each SNI proxy;
  - with C{--profile}: Python function calls, reactor dispatches and
    C{DelayedCall}s per connection (cProfile: C{twistd --profile} for
    sniproxy, C{python -m cProfile} for the Python relays), from two runs
    of different lengths so that start-up and shutdown cancel out;
  - with C{--syscalls}: system calls per connection, by name (C{strace -c
    -f} attached to each proxy for a few sequential connections);
  - the issue's goal rows against the mean of nginx and haproxy, met or
    not, for sniproxy and for each Python candidate.

Markdown on standard output, progress on standard error, everything (raw
samples included) in C{--json} (default C{bench/results/cost.json}).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import clients, peers, stats, topology  # noqa: E402
from bench.harness import ROOT, START_BOUND, Harness, MachineLoad, cpu_ns, cpu_seconds  # noqa: E402
from bench.report import metadata  # noqa: E402
from sniproxy.testing.process import twistd_command  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "bench", "results", "cost.json")
MiB = 1 << 20
_LISTENING = re.compile(r"listening on (\S+):(\d+) \(")


@dataclass(frozen=True)
class Plan:
    name: str
    warmup_rounds: int
    rounds: int  # sequential rounds, one connection per target each
    load_seconds: float
    load_passes: int  # the concurrency-32 loop over every proxy, forwards then backwards
    stream_bytes: int
    stream_repeats: int
    profile_short: int
    profile_long: int
    syscall_connections: int = 50
    load_concurrency: int = 32
    load_processes: int = 4
    loop_limit: float = 60.0


PLANS = {
    # The concurrency-32 loop visits every proxy several times, briefly, so
    # that a burst of other work on a shared machine falls on all of them.
    "quick": Plan("quick", 10, 200, 2.0, 3, 128 * MiB, 1, 20, 120),
    "full": Plan("full", 30, 600, 4.0, 5, 256 * MiB, 3, 50, 450, syscall_connections=200),
}


def progress(text: str) -> None:
    print(f"cost: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CPU


class CPU:
    """A before/after reading of one process's CPU."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ns0, self.times0 = cpu_ns(pid), cpu_seconds(pid)

    def done(self, connections: int) -> dict[str, float]:
        ns, (user, system) = cpu_ns(self.pid) - self.ns0, cpu_seconds(self.pid)
        user, system = user - self.times0[0], system - self.times0[1]
        n = max(connections, 1)
        return {
            "connections": connections,
            "cpu_s": ns / 1e9,
            "us_per_conn": ns / 1e3 / n,
            "user_us_per_conn": user * 1e6 / n,
            "system_us_per_conn": system * 1e6 / n,
        }


def _settle() -> None:
    time.sleep(0.3)  # the last connections' teardown, before CPU is read


# ---------------------------------------------------------------- phases


def sequential(context, targets: list[clients.Target], running: dict[str, peers.Started], plan: Plan) -> dict:
    """Concurrency 1: one interleaved loop over every target; per proxy, its CPU over its own connections."""
    clients.interleaved(context, targets, plan.warmup_rounds, plan.loop_limit)
    _settle()
    meters = {label: CPU(s.child.pid) for label, s in running.items()}
    samples = clients.interleaved(context, targets, plan.rounds, plan.loop_limit)
    _settle()
    out: dict[str, Any] = {"truncated": samples.truncated}
    for target in targets:
        label = target.label
        times = samples.times[label]
        entry = {"summary": stats.summary(times), "errors": samples.errors[label][:5], "failed": len(samples.errors[label])}
        if label in meters:
            entry["cpu"] = meters[label].done(len(times) + len(samples.errors[label]))
        entry["raw"] = times
        out[label] = entry
    return out


def concurrent(cafile: str, targets: list[clients.Target], running: dict[str, peers.Started], plan: Plan) -> dict:
    """Concurrency 32, one target at a time (forwards, then backwards on a second pass)."""
    out: dict[str, Any] = {t.label: {"passes": []} for t in targets}
    for index in range(plan.load_passes):
        for target in targets if index % 2 == 0 else list(reversed(targets)):
            meter = CPU(running[target.label].child.pid) if target.label in running else None
            result = clients.load(
                cafile,
                target,
                concurrency=plan.load_concurrency,
                duration=plan.load_seconds,
                processes=plan.load_processes,
            )
            _settle()
            entry = {
                "per_second": result["per_second"],
                "connections": result["connections"],
                "failed": len(result["errors"]),
                "errors": result["errors"][:5],
                "summary": stats.summary(result["times"]),
            }
            if meter is not None:
                entry["cpu"] = meter.done(result["connections"] + len(result["errors"]))
            out[target.label]["passes"].append(entry)
            progress(f"  c={plan.load_concurrency} {target.label}: {result['per_second']:.0f} conn/s")
    for entry in out.values():
        passes = entry["passes"]
        entry["per_second"] = sum(p["per_second"] for p in passes) / len(passes)
        entry["failed"] = sum(p["failed"] for p in passes)
        cpus = [p["cpu"] for p in passes if "cpu" in p]
        if cpus:
            n = sum(c["connections"] for c in cpus)
            entry["cpu"] = {
                "connections": n,
                "us_per_conn": sum(c["cpu_s"] for c in cpus) * 1e6 / max(n, 1),
                "user_us_per_conn": sum(c["user_us_per_conn"] * c["connections"] for c in cpus) / max(n, 1),
                "system_us_per_conn": sum(c["system_us_per_conn"] * c["connections"] for c in cpus) / max(n, 1),
            }
    return out


def throughput(paths: list[tuple[str, tuple[str, int]]], plan: Plan) -> dict:
    """MB/s each way through every path (the median of C{stream_repeats} runs, paths alternating)."""
    size = plan.stream_bytes
    out: dict[str, Any] = {"bytes": size}
    for direction in ("up", "down"):
        runs: dict[str, list[float]] = {label: [] for label, _ in paths}
        errors: dict[str, str] = {}
        for _ in range(plan.stream_repeats):
            for label, address in paths:
                try:
                    runs[label].append(size / clients.stream(address, topology.NAMES.stream_static, direction, size) / 1e6)
                except OSError as error:
                    errors[label] = f"{type(error).__name__}: {error}"[:200]
        for label, rates in runs.items():
            out.setdefault(label, {})[direction] = stats.percentile(sorted(rates), 50) if rates else None
            if label in errors:
                out[label][f"{direction}_error"] = errors[label]
    return out


# ---------------------------------------------------------------- profile


def _profile_counts(path: str) -> dict[str, int]:
    profile = pstats.Stats(path)
    counts = {"calls": profile.total_calls, "reactor_dispatches": 0, "reactor_iterations": 0, "delayed_calls": 0, "deferreds": 0}
    for (filename, _, function), (_, ncalls, *_rest) in profile.stats.items():  # type: ignore[attr-defined]
        if function == "_doReadOrWrite" and filename.endswith(os.path.join("internet", "posixbase.py")):
            counts["reactor_dispatches"] += ncalls  # one per socket event the reactor hands to a descriptor
        elif function == "doPoll" and filename.endswith(os.path.join("internet", "epollreactor.py")):
            counts["reactor_iterations"] += ncalls
        elif function == "__init__" and filename.endswith(os.path.join("internet", "base.py")):
            counts["delayed_calls"] += ncalls  # DelayedCall's; the other classes there are built once
        elif function == "__init__" and filename.endswith(os.path.join("internet", "defer.py")):
            counts["deferreds"] += ncalls
    return counts


def _profiled_run(harness: Harness, directory: str, name: str, cafile: str, tls_port: int, raw_port: int, n: int) -> dict:
    out = os.path.join(directory, f"profile-{name}-{n}.prof")
    if name == "sniproxy":
        config = os.path.join(directory, "cost-sniproxy.toml")
        argv = twistd_command(
            "-n", "--pidfile=", "--profile", out, "--profiler", "cprofile", "--savestats", "sniproxy", "--config", config
        )
    else:
        script = "floor.py" if name.startswith("floor") else "floor_twisted.py"
        argv = [sys.executable, "-m", "cProfile", "-o", out, os.path.join(ROOT, "bench", script)]
        if name == "floor-et":
            argv.append("--edge")
        elif name.startswith("tw-"):
            argv += ["--mode", name[3:]]
        argv += [a for route, p in ((topology.NAMES.static, tls_port),) for a in ("--route", f"{route}=127.0.0.1:{p}")]
    child = harness._start(f"profile-{name}-{n}", argv, pipe_stdout=name != "sniproxy")
    if name == "sniproxy":
        deadline = time.monotonic() + START_BOUND
        while not (match := _LISTENING.search(child.tail(100000))):
            if time.monotonic() > deadline or child.process.poll() is not None:
                raise RuntimeError(f"profiled sniproxy did not start:\n{child.tail()}")
            time.sleep(0.05)
        address = (match.group(1), int(match.group(2)))
    else:
        address = ("127.0.0.1", int(child.readline(START_BOUND).split()[1]))
    context = clients.tls_context(cafile)
    target = clients.Target(name, address, topology.NAMES.static)
    samples = clients.interleaved(context, [target], n, 60.0)
    _settle()
    child.process.send_signal(signal.SIGTERM)
    try:
        child.process.wait(20)
    except Exception:
        pass
    child.stop()
    harness.children.remove(child)
    counts = _profile_counts(out)
    counts["connections"] = len(samples.times[name]) + len(samples.errors[name])
    return counts


def profile(harness: Harness, directory: str, names: list[str], cafile: str, tls_port: int, raw_port: int, plan: Plan):
    """Per connection: the difference of a long and a short profiled run, divided by their difference in connections."""
    out = {}
    for name in names:
        try:
            short = _profiled_run(harness, directory, name, cafile, tls_port, raw_port, plan.profile_short)
            long = _profiled_run(harness, directory, name, cafile, tls_port, raw_port, plan.profile_long)
        except (RuntimeError, OSError, TimeoutError) as error:
            out[name] = {"error": str(error)[:300]}
            continue
        n = max(long["connections"] - short["connections"], 1)
        out[name] = {key: (long[key] - short[key]) / n for key in long if key != "connections"}
        out[name]["connections"] = n
        progress(f"  profile {name}: {out[name]['calls']:.0f} calls/conn")
    return out


# ---------------------------------------------------------------- syscalls


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def parse_strace_summary(text: str) -> dict[str, int]:
    """C{strace -c}'s table: syscall name -> calls (C{total} included)."""
    counts = {}
    for line in text.splitlines():
        match = _STRACE_ROW.match(line)
        if match:
            counts[match.group(3)] = int(match.group(1))
    return counts


def syscalls(harness: Harness, directory: str, running: dict[str, peers.Started], context, connections: int) -> dict:
    """
    Per proxy, system calls per connection: C{strace -c -f} attached to it
    for C{connections} sequential connections (strace slows the proxy
    down; the counts, not the times, are the figure).
    """
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        return {"skipped": "strace is not installed"}
    out: dict[str, Any] = {}
    for label, started in running.items():
        path = os.path.join(directory, f"strace-{label}.txt")
        tracer = harness._start(f"strace-{label}", [strace, "-c", "-f", "-q", "-o", path, "-p", str(started.child.pid)])
        time.sleep(0.5)  # attached (to every thread)
        target = clients.Target(label, started.address, topology.NAMES.static)
        samples = clients.interleaved(context, [target], connections, 60.0)
        _settle()
        tracer.process.send_signal(signal.SIGINT)  # detach and write the summary
        try:
            tracer.process.wait(10)
        except Exception:
            pass
        tracer.stop()
        harness.children.remove(tracer)
        try:
            with open(path) as f:
                counts = parse_strace_summary(f.read())
        except OSError:
            counts = {}
        n = max(len(samples.times[label]) + len(samples.errors[label]), 1)
        if not counts:
            out[label] = {"error": "strace wrote no summary (ptrace not permitted?)"}
            continue
        total = counts.pop("total", sum(counts.values()))
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
        out[label] = {"per_conn": total / n, "top": {name: calls / n for name, calls in top}, "connections": n}
        progress(f"  syscalls {label}: {total / n:.1f}/conn")
    return out


# ---------------------------------------------------------------- report


def _f(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def goals(results: dict) -> tuple[list[dict], list[str]]:
    """The issue's goal rows for every SNI-routing Python candidate, against the mean of nginx and haproxy."""
    seq, load, tp = results["sequential"], results["concurrent"], results.get("throughput", {})
    reference = [p for p in ("nginx", "haproxy") if p in seq and "cpu" in load.get(p, {})]
    if not reference:
        return [], []

    def mean(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    direct_p50 = seq["direct"]["summary"].get("median")

    def added(label: str) -> float | None:
        p50 = seq.get(label, {}).get("summary", {}).get("median")
        return None if p50 is None or direct_p50 is None else p50 - direct_p50

    cpu_ref = mean([load[p]["cpu"]["us_per_conn"] for p in reference])
    rate_ref = mean([load[p]["per_second"] for p in reference])
    added_ref = mean([added(p) for p in reference])
    up_ref = mean([tp.get(p, {}).get("up") for p in reference])
    down_ref = mean([tp.get(p, {}).get("down") for p in reference])
    p99_today = seq.get("sniproxy", {}).get("summary", {}).get("p99")
    candidates = [
        s.name for s in peers.PEERS if s.sni and s.kind != "C" and s.name in seq and "cpu" in load.get(s.name, {})
    ]
    rows = []
    for label in candidates:
        cpu = load[label]["cpu"]["us_per_conn"]
        rate = load[label]["per_second"]
        extra = added(label)
        up, down = tp.get(label, {}).get("up"), tp.get(label, {}).get("down")
        p99 = seq[label]["summary"].get("p99")
        rows.append(
            {
                "proxy": label,
                "cpu_ratio": cpu / cpu_ref if cpu_ref else None,
                "cpu_met": bool(cpu_ref) and cpu <= 1.25 * cpu_ref,
                "added_us": None if extra is None else extra * 1e6,
                "added_met": extra is not None and added_ref is not None and extra <= added_ref,
                "rate_ratio": rate / rate_ref if rate_ref else None,
                "rate_met": bool(rate_ref) and rate >= 0.95 * rate_ref,
                "throughput_met": None
                if up is None or down is None or up_ref is None or down_ref is None
                else (up >= up_ref and down >= down_ref),
                "up": up,
                "down": down,
                "p99_vs_today": None if not p99_today or p99 is None else p99 / p99_today,
            }
        )
    text = [
        f"Bars (mean of {' and '.join(reference)}): CPU/connection at c=32 <= 1.25 x {cpu_ref:.0f} = {1.25 * cpu_ref:.0f} µs; "
        f"added p50 <= {_f(None if added_ref is None else added_ref * 1e6)} µs; conn/s >= 0.95 x {rate_ref:.0f} = "
        f"{0.95 * rate_ref:.0f}; throughput each way >= theirs ({_f(up_ref)} up / {_f(down_ref)} down MB/s; "
        "the issue also asks >= 2,000 and never below sniproxy's today); p99 no worse than sniproxy's today."
    ]
    return rows, text


def render(results: dict, meta: dict) -> str:
    seq, load, tp, prof = results["sequential"], results["concurrent"], results.get("throughput", {}), results.get("profile", {})
    direct_p50 = seq["direct"]["summary"].get("median")
    lines = [
        f"## Cost per connection ({meta['mode']} run, {meta['date']}, commit {meta['commit'][:12]})",
        "",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs; Python {meta['python']}, Twisted {meta['twisted']}, "
        f"{meta['openssl']}.  Load average {meta['load']['loadavg_start']} at the start, "
        f"{meta['load']['loadavg_end']} at the end; {meta['load']['others_cores']:.2f} cores busy with other work.",
        "",
        "| proxy | kind | CPU µs/conn c=1 | CPU µs/conn c=32 (user+sys) | conn/s c=32 | p50 ms | p99 ms | added p50 µs "
        "| up MB/s | down MB/s | calls/conn | reactor dispatches/conn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    kinds = {p.name: p.kind for p in peers.PEERS}
    for label in ["direct", *[p.name for p in peers.PEERS]]:
        if label not in seq:
            continue
        s = seq[label]["summary"]
        c1 = seq[label].get("cpu", {}).get("us_per_conn")
        cpu = load.get(label, {}).get("cpu")
        c32 = None if cpu is None else f"{cpu['us_per_conn']:.0f} ({cpu['user_us_per_conn']:.0f}+{cpu['system_us_per_conn']:.0f})"
        extra = None if label == "direct" or direct_p50 is None or "median" not in s else (s["median"] - direct_p50) * 1e6
        p = dict(prof.get(label, {}))
        counted = results.get("counters", {}).get(label)
        if counted and counted.get("connections") and "reactor_dispatches" not in p:
            p["reactor_dispatches"] = (counted.get("polls") or counted.get("events", 0)) / counted["connections"]
        failed = seq[label].get("failed", 0) + load.get(label, {}).get("failed", 0)
        name = label + (f" ({failed} failed)" if failed else "")
        lines.append(
            f"| {name} | {kinds.get(label, '-')} | {_f(c1)} | {c32 or '-'} | {_f(load.get(label, {}).get('per_second'))} "
            f"| {_f(s.get('median', None) and s['median'] * 1e3, 2)} | {_f(s.get('p99', None) and s['p99'] * 1e3, 2)} "
            f"| {_f(extra)} | {_f(tp.get(label, {}).get('up'))} | {_f(tp.get(label, {}).get('down'))} "
            f"| {_f(p.get('calls'))} | {_f(p.get('reactor_dispatches'), 1)} |"
        )
    for name, note in results.get("skipped", {}).items():
        lines.append(f"\nSkipped {name}: {note}.")
    rows, text = goals(results)
    if rows:
        lines += ["", "### Goals (issue 11)", "", *text, ""]
        lines.append("| proxy | CPU vs C mean | met | added p50 µs | met | conn/s vs C mean | met | throughput | p99 vs sniproxy |")
        lines.append("|---|---|---|---|---|---|---|---|---|")

        def yes(flag: bool | None) -> str:
            return "-" if flag is None else ("met" if flag else "not met")

        for row in rows:
            lines.append(
                f"| {row['proxy']} | {_f(row['cpu_ratio'], 2, 'x')} | {yes(row['cpu_met'])} | {_f(row['added_us'])} "
                f"| {yes(row['added_met'])} | {_f(row['rate_ratio'], 2, 'x')} | {yes(row['rate_met'])} "
                f"| {yes(row['throughput_met'])} | {_f(row['p99_vs_today'], 2, 'x')} |"
            )
        results["goals"] = rows
    calls = results.get("syscalls") or {}
    if calls:
        lines += ["", "System calls per connection (strace -c -f, sequential connections):", ""]
        if "skipped" in calls:
            lines.append(f"Skipped: {calls['skipped']}.")
        for label, c in calls.items():
            if label == "skipped":
                continue
            if "error" in c:
                lines.append(f"- {label}: {c['error']}")
            else:
                top = ", ".join(f"{name} {n:.1f}" for name, n in c["top"].items())
                lines.append(f"- {label}: {c['per_conn']:.1f} ({top})")
    if prof:
        lines += ["", "Profile (cProfile, per connection, long run minus short run): "]
        for name, p in prof.items():
            if "error" in p:
                lines.append(f"- {name}: {p['error']}")
            else:
                lines.append(
                    f"- {name}: {p['calls']:.0f} Python function calls, {p['reactor_dispatches']:.1f} reactor "
                    f"dispatches in {p['reactor_iterations']:.1f} reactor iterations, {p['delayed_calls']:.1f} DelayedCalls, {p['deferreds']:.1f} Deferreds"
                )
    lines += ["", f"Run took {meta['elapsed']:.0f} s; raw samples in the JSON file."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench/cost.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter loops (under 3 minutes)")
    parser.add_argument("--profile", action="store_true", help="also count Python calls per connection (cProfile)")
    parser.add_argument("--syscalls", action="store_true", help="also count system calls per connection (strace -c)")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write everything (default: %(default)s)")
    names = [p.name for p in peers.PEERS]
    parser.add_argument("--peers", default="", help=f"comma-separated, of {','.join(names)} (default: all)")
    options = parser.parse_args(argv)
    chosen = [n for n in options.peers.split(",") if n] or names
    unknown = set(chosen) - set(names)
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    plan = PLANS["quick" if options.quick else "full"]
    meta = metadata(plan.name, argv)
    meta["command"] = " ".join(["python", "bench/cost.py", *argv])
    results: dict[str, Any] = {"skipped": {}}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sniproxy-cost-") as directory, Harness(directory) as harness:
        files = topology.write_files(directory, [])
        progress("starting the backend")
        harness.start_backend(files.cert, files.key)
        tls_port, raw_port = harness.tls_address[1], harness.raw_address[1]
        running: dict[str, peers.Started] = {}
        for peer in peers.PEERS:
            if peer.name not in chosen:
                continue
            started = peers.start_peer(peer, harness, directory, tls_port, raw_port)
            if isinstance(started, str):
                results["skipped"][peer.name] = started
                progress(f"skipping {peer.name}: {started}")
            else:
                running[peer.name] = started
                progress(f"{peer.name} on {started.address[0]}:{started.address[1]} (pid {started.child.pid})")
        load = MachineLoad()
        targets = [clients.Target("direct", harness.tls_address, topology.NAMES.static)]
        targets += [clients.Target(label, s.address, topology.NAMES.static) for label, s in running.items()]
        context = clients.tls_context(files.ca)
        progress(f"sequential: {plan.rounds} rounds over {len(targets)} targets")
        results["sequential"] = sequential(context, targets, running, plan)
        progress(f"concurrency {plan.load_concurrency}: {plan.load_seconds:g} s per target, {plan.load_passes} pass(es)")
        results["concurrent"] = concurrent(files.ca, targets, running, plan)
        paths = [("direct", harness.raw_address)]
        paths += [(label, s.address) for label, s in running.items() if s.stream]
        progress(f"throughput: {plan.stream_bytes // MiB} MiB each way, {len(paths)} paths")
        results["throughput"] = throughput(paths, plan)
        meta["load"] = load.finish(harness.children)
        if options.syscalls:
            progress("syscalls: strace -c on each proxy")
            results["syscalls"] = syscalls(harness, directory, running, context, plan.syscall_connections)
        results["counters"] = {}
        for label, started in running.items():
            if label.startswith(("floor", "tw-")):
                started.child.process.send_signal(signal.SIGTERM)
                counted = peers.counters(started)
                if counted:
                    results["counters"][label] = counted
        if options.profile:
            python = [n for n in ("sniproxy", "floor", "floor-et", "tw-descriptors", "tw-lean", "tw-inner", "tw-inner-et") if n in running]
            progress(f"profile: {', '.join(python)}")
            results["profile"] = profile(harness, directory, python, files.ca, tls_port, raw_port, plan)
    meta["elapsed"] = time.monotonic() - began
    print(render(results, meta), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(options.json)), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump({"meta": meta, "plan": asdict(plan), **results}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        progress("interrupted; the servers are stopped")
        sys.exit(130)
