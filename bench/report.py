"""
Results as markdown tables (one per scenario, then the targets (docs/benchmarks.rst)
targets, met or not), and the JSON file of raw samples and metadata.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness import ROOT
from bench.stats import ratio
from bench.topology import NAMES

__all__ = ["SECTIONS", "footer", "header", "metadata", "targets", "write_json"]

# The targets of docs/benchmarks.rst.
TARGET_RATIO_MEDIAN = 1.05
TARGET_RATIO_P99 = 1.2
TARGET_PROXY_RATIO = 1.15
TARGET_CPU_US = 150.0
TARGET_MBPS = 2000.0


# ---------------------------------------------------------------- formatting


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def latency_cells(summary: dict) -> list[str]:
    if not summary.get("n"):
        return ["0", "-", "-", "-", "-"]
    return [str(summary["n"]), ms(summary["median"]), ms(summary["p90"]), ms(summary["p99"]), ms(summary["max"])]


LATENCY = ["n", "median (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"]


def _errors(errors: dict[str, list[str]] | list[str]) -> str:
    if isinstance(errors, dict):
        errors = [e for values in errors.values() for e in values]
    if not errors:
        return ""
    return f"\n\n**{len(errors)} connection(s) failed**, e.g. `{errors[0]}`"


def _cpu_us(cpu: dict, connections: int) -> float | None:
    if not connections:
        return None
    return (cpu["user"] + cpu["system"]) / connections * 1e6


# ---------------------------------------------------------------- scenarios


def s1(result: dict) -> str:
    seq = result["sequential"]
    cpu = seq["proxy_cpu"]
    per_conn = _cpu_us(cpu, cpu["connections"])
    rows = [
        ["direct to the backend", *latency_cells(seq["direct"]), ""],
        [
            f"through the proxy (`{NAMES.static}`)",
            *latency_cells(seq["proxy"]),
            f"median {times(ratio(seq['proxy']['median'], seq['direct']['median']))}, "
            f"p99 {times(ratio(seq['proxy']['p99'], seq['direct']['p99']))}",
        ],
    ]
    out = ["### S1: static route, the proxy's own cost", ""]
    out.append(
        "Sequential connections, direct and through the proxy alternately "
        "(TCP connect + TLS handshake, certificate verified):"
    )
    out.append("")
    out.append(table(["path", *LATENCY, "proxy / direct"], rows))
    out.append("")
    out.append(
        f"Proxy CPU time per connection (sequential run): **{per_conn:.0f} µs** "
        f"(user {cpu['user'] / cpu['connections'] * 1e6:.0f} µs, "
        f"system {cpu['system'] / cpu['connections'] * 1e6:.0f} µs; "
        f"{cpu['connections']} connections, /proc clock ticks of 10 ms; target ≤ {TARGET_CPU_US:.0f} µs)."
        if per_conn is not None
        else "Proxy CPU time per connection: no connections."
    )
    out.append("")
    out.append(_load_table(result["load"]))
    out.append("")
    out.append(_throughput_table(result["throughput"], ["direct", "proxy"]))
    out.append("")
    out.append(f"DNS queries during S1: {result['dns_queries']}.{_errors(seq['errors'])}")
    return "\n".join(out)


def _load_row(label: str, load: dict) -> list[str]:
    proxy_cpu = load.get("proxy_cpu")
    per_conn = _cpu_us(proxy_cpu, load["connections"]) if proxy_cpu else None
    elapsed = load["elapsed"]
    return [
        label,
        f"{load['concurrency']} ({load['processes']}×{load['concurrency'] // load['processes']})",
        f"{load['connections']}",
        f"**{load['per_second']:.0f}**",
        ms(load["summary"].get("median")),
        ms(load["summary"].get("p99")),
        str(len(load["errors"])),
        "-" if per_conn is None else f"{per_conn:.0f}",
        "-" if proxy_cpu is None else f"{(proxy_cpu['user'] + proxy_cpu['system']) / elapsed:.0%}",
        f"{load['backend_cpu'] / elapsed:.0%}",
        f"{load['client_cpu'] / elapsed:.0%}",
    ]


LOAD_HEADERS = [
    "path",
    "clients (procs×threads)",
    "connections",
    "conn/s",
    "median (ms)",
    "p99 (ms)",
    "errors",
    "proxy CPU/conn (µs)",
    "proxy CPU",
    "backend CPU",
    "clients CPU",
]


def _load_table(loads: dict[str, dict]) -> str:
    first = next(iter(loads.values()))
    rows = [_load_row(label, load) for label, load in loads.items()]
    text = (
        f"Connections per second, closed loop, {first['elapsed']:.1f} s each "
        "(CPU columns: share of one core over the run; the machine has "
        f"{os.cpu_count()}):\n\n" + table(LOAD_HEADERS, rows)
    )
    proxy = loads.get("proxy")
    if proxy and proxy.get("proxy_cpu") and proxy["connections"]:
        per_conn = _cpu_us(proxy["proxy_cpu"], proxy["connections"])
        total = (
            proxy["proxy_cpu"]["user"] + proxy["proxy_cpu"]["system"] + proxy["backend_cpu"] + proxy["client_cpu"]
        ) / proxy["elapsed"]
        text += (
            f"\n\nThrough the proxy, proxy + backend + clients used {total:.0%} of one core "
            f"({os.cpu_count()} cores): the machine, not the proxy's single thread, bounds conn/s here.  "
            f"At {per_conn:.0f} µs per connection, the proxy alone would saturate its one core at "
            f"about {1e6 / per_conn:.0f} conn/s."
        )
    return text


def _throughput_table(throughput: dict, labels: list[str]) -> str:
    size = throughput["bytes"]
    rows = []
    for direction, meaning in (("up", "client → backend"), ("down", "backend → client")):
        cells = [f"{direction} ({meaning})"]
        for label in labels:
            figure = throughput[f"{label} {direction}"]
            runs = figure.get("runs_MBps", [figure["MBps"]])
            spread = f" ({runs[0]:.0f}-{runs[-1]:.0f})" if len(runs) > 1 else ""
            cells.append(f"{figure['MBps']:.0f}{spread}")
        if "direct" in labels and len(labels) > 1:
            cells.append(
                times(ratio(throughput[f"{labels[1]} {direction}"]["MBps"], throughput[f"direct {direction}"]["MBps"]))
            )
        rows.append(cells)
    headers = ["direction", *(f"{label} (MB/s)" for label in labels)]
    if "direct" in labels and len(labels) > 1:
        headers.append("proxy / direct")
    repeats = throughput.get("repeats", 1)
    return (
        f"Throughput of a {size >> 20} MiB raw stream each way, median of {repeats} runs (range in brackets): "
        "a real ClientHello, then raw bytes, so the proxy's relay is measured, not TLS; the client sends with "
        'sendall and receives with splice, and "direct" (no proxy) is the ceiling of this method:\n\n'
        + table(headers, rows)
    )


def s2(result: dict) -> str:
    out = [f"### S2: TXT-routed custom domain, upstream delayed, TTL {result['ttl']} s", ""]
    rows = []
    summary_rows = []
    for d in result["delays"].values():
        seq = d["sequential"]
        delay = f"{d['delay'] * 1000:.0f} ms"
        for label, title in (("static", "static (S1), interleaved"), ("txt", f"TXT `{d['name']}`, warm")):
            cells = [delay, title, *latency_cells(seq[label])]
            if label == "txt":
                cells += [
                    times(ratio(seq["txt"]["median"], seq["static"]["median"])),
                    times(ratio(seq["txt"]["p99"], seq["static"]["p99"])),
                ]
            else:
                cells += ["", ""]
            rows.append(cells)
        summary_rows.append(
            [
                delay,
                ms(d["first"]),
                str(d["first_queries"]),
                str(seq["queries"]),
                f"{d['load']['per_second']:.0f}",
                f"{_cpu_us(d['load']['proxy_cpu'], d['load']['connections']):.0f}" if d["load"]["connections"] else "-",
                str(d["load"]["queries"]),
            ]
        )
    out.append("After the first connection, TXT-routed and static connections alternately:")
    out.append("")
    out.append(table(["upstream delay", "route", *LATENCY, "ratio median", "ratio p99"], rows))
    out.append("")
    out.append(
        table(
            [
                "upstream delay",
                "first connection (ms)",
                "its DNS queries",
                "queries, warm sequential run",
                "conn/s at 32 (TXT)",
                "proxy CPU/conn (µs)",
                "queries during load",
            ],
            summary_rows,
        )
    )
    out.append("")
    t = result["throughput"]
    out.append(
        f"Throughput through a TXT-routed name (`{NAMES.stream_txt}`), {t['bytes'] >> 20} MiB, "
        f"median of {t.get('repeats', 1)}: "
        f"up {t['txt up']['MBps']:.0f} MB/s, down {t['txt down']['MBps']:.0f} MB/s "
        f"(DNS queries: {result['throughput_queries']})."
        + _errors({k: v["sequential"]["errors"]["txt"] for k, v in result["delays"].items()})
    )
    return "\n".join(out)


def s3_decay(result: dict) -> str:
    return s3(
        result,
        f"### S3 through a caching upstream: CNAME chain {'/'.join(map(str, result['chain']))} s behind "
        f"{result['upstream']}, authority delayed {result['delay'] * 1000:.0f} ms "
        f"({result['authority_queries']} queries reached the authority)",
    )


def s3(result: dict, title: str = "") -> str:
    out = [
        title
        or f"### S3: TTL expiry under steady traffic (TTL {result['ttl']} s, "
        f"upstream delayed {result['delay'] * 1000:.0f} ms)",
        "",
    ]
    out.append(
        f"{result['rate']:g} TXT-routed connections/s for {result['seconds']:g} s, open loop, in turn with as many "
        "static ones (the reference under the same arrival pattern):"
    )
    out.append("")
    headers = [
        "route",
        *LATENCY,
        "failed",
        f"> 2× S1 median ({ms(result['threshold_s1'])} ms)",
        f"> 2× paced static median ({ms(result['threshold_paced'])} ms)",
        f"> upstream delay ({result['delay'] * 1000:.0f} ms)",
        "upstream queries",
        "bound T/t + 1",
    ]
    rows = [
        [
            "TXT, warm",
            *latency_cells(result["summary"]),
            str(result["failures"]),
            f"**{result['slow_s1']}** of {result['connections']}",
            f"**{result['slow_paced']}** of {result['connections']}",
            f"**{result['over_delay']}**",
            f"**{result['queries']}**",
            f"{result['bound']:g}",
        ],
        [
            "static, paced alike",
            *latency_cells(result["static"]),
            str(result["static_failures"]),
            f"{result['static_slow_s1']} of {result['static']['n']}",
            f"{result['static_slow_paced']} of {result['static']['n']}",
            "",
            "",
            "",
        ],
    ]
    out.append(table(headers, rows))
    out.append("")
    slowest = ", ".join(f"{ms(r['seconds'])} ms at {r['at']:.2f} s" for r in result["slowest"])
    out.append(
        f"Warm-up (cold) connection before the run, not counted: {ms(result['warm_up'])} ms.  "
        f"Slowest TXT-routed connections: {slowest}."
    )
    return "\n".join(out)


def s4(result: dict) -> str:
    p = result["phases"]
    seen = p["outage_seen"]
    unseen = p["outage_unseen"]
    out = [
        f"### S4: upstream outage after warm-up (TTL {result['ttl']} s, every query dropped, entries stale)",
        "",
    ]
    rows = [
        [
            "warm-up, upstream up (cold)",
            "1",
            "1",
            "100%",
            ms(p["warm_up"]["seconds"]),
            "",
            "",
            str(p["warm_up"]["queries"]),
        ],
        [
            f"outage, `{NAMES.s4}` (seen before, expired)",
            str(seen["connections"]),
            str(seen["succeeded"]),
            f"**{seen['succeeded'] / max(1, seen['connections']):.0%}**",
            ms(seen["summary"].get("median")),
            ms(seen["summary"].get("p99")),
            ms(seen["summary"].get("max")),
            str(seen["queries"]),
        ],
        [
            f"outage, `{NAMES.s4_unseen}` (never seen)",
            "1",
            "0" if unseen["error"] else "1",
            "0%" if unseen["error"] else "100%",
            ms(unseen["seconds"]) + (" (to failure)" if unseen["error"] else ""),
            "",
            "",
            str(unseen["queries"]),
        ],
        [
            f"upstream back, `{NAMES.s4}`",
            str(p["after"]["connections"]),
            str(p["after"]["succeeded"]),
            f"{p['after']['succeeded'] / max(1, p['after']['connections']):.0%}",
            ms(p["after"]["summary"].get("median")),
            ms(p["after"]["summary"].get("p99")),
            ms(p["after"]["summary"].get("max")),
            str(p["after"]["queries"]),
        ],
    ]
    out.append(
        table(
            [
                "phase",
                "connections",
                "succeeded",
                "success rate",
                "median (ms)",
                "p99 (ms)",
                "max (ms)",
                "upstream queries",
            ],
            rows,
        )
    )
    if unseen["error"]:
        out.append("")
        out.append(f"The never-seen name fails as it must (nothing to serve): `{unseen['error']}`.")
    if seen["errors"]:
        out.append("")
        out.append(f"Failures during the outage: `{seen['errors'][0]}`")
    return "\n".join(out)


def s5(result: dict) -> str:
    seq = result["sequential"]
    out = [
        f"### S5: legacy-only domain (primary NXDOMAIN with SOA, negative TTL {result['negative_ttl']} s; "
        f"upstream delayed {result['delay'] * 1000:.0f} ms)",
        "",
    ]
    rows = [
        ["static (S1), interleaved", *latency_cells(seq["static"]), "", ""],
        [
            f"legacy `{NAMES.legacy}`, warm",
            *latency_cells(seq["legacy"]),
            times(ratio(seq["legacy"]["median"], seq["static"]["median"])),
            times(ratio(seq["legacy"]["p99"], seq["static"]["p99"])),
        ],
    ]
    out.append(table(["route", *LATENCY, "ratio median", "ratio p99"], rows))
    out.append("")
    by_name = ", ".join(f"{k}: {v}" for k, v in sorted(result["first_queries_by_name"].items()))
    steady = seq["queries"]
    out.append(
        f"First connection: **{ms(result['first'])} ms**, {result['first_queries']} upstream queries ({by_name}). "
        f"Steady state over {seq['seconds']:.1f} s: {steady['queries']} queries "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(steady['names'].items())) or 'none'})." + _errors(seq["errors"])
    )
    return "\n".join(out)


def original(result: dict) -> str:
    custom, subdomain, warm = result["custom"], result["subdomain"], result["custom_warm"]
    out = [
        f"### The original report's table (upstream delayed {result['delay'] * 1000:.0f} ms)",
        "",
        table(
            ["SNI", "pre-handshake work", "median", "max"],
            [
                [
                    "custom domain",
                    "DNS lookup (TXT, cached by TTL) + handshake",
                    f"{ms(custom['median'])} ms",
                    f"{ms(custom['max'])} ms",
                ],
                [
                    "`<app-id>-443s.<base>` subdomain",
                    "no DNS",
                    f"{ms(subdomain['median'])} ms",
                    f"{ms(subdomain['max'])} ms",
                ],
            ],
        ),
        "",
        f"{custom['n']} and {subdomain['n']} samples, alternating; the custom domain's first connection is cold "
        f"(one upstream lookup, {result['queries']} queries in all) and counted: without it, its max is "
        f"{ms(warm.get('max'))} ms.  In the original report (per-connection uncached resolver) the custom domain "
        "took 820 ms median / 3373 ms max against 10 / 16 ms for the subdomain, 18 samples each."
        + _errors(result["errors"]),
    ]
    return "\n".join(out)


SECTIONS: dict[str, Callable[[dict], str]] = {
    "s1": s1,
    "s2": s2,
    "s3": s3,
    "s3_decay": s3_decay,
    "s4": s4,
    "s5": s5,
    "original": original,
}


# ---------------------------------------------------------------- targets


def targets(results: dict[str, dict]) -> tuple[str, list[dict]]:
    """The targets table, and its rows for the JSON file."""
    rows: list[dict] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        rows.append({"target": target, "measured": measured, "met": met})

    s2_ = results.get("s2")
    if s2_:
        for d in s2_["delays"].values():
            seq = d["sequential"]
            rm = ratio(seq["txt"]["median"], seq["static"]["median"])
            rp = ratio(seq["txt"]["p99"], seq["static"]["p99"])
            tag = f"{d['delay'] * 1000:.0f} ms"
            add(
                f"DNS-routed / static median ≤ {TARGET_RATIO_MEDIAN} (warm, upstream {tag})",
                times(rm),
                rm is not None and rm <= TARGET_RATIO_MEDIAN,
            )
            add(
                f"DNS-routed / static p99 ≤ {TARGET_RATIO_P99} (warm, upstream {tag})",
                times(rp),
                rp is not None and rp <= TARGET_RATIO_P99,
            )
        for d in s2_["delays"].values():
            add(
                f"cold name, primary record exists: one upstream round trip (upstream {d['delay'] * 1000:.0f} ms)",
                f"{d['first_queries']} query, first connection {ms(d['first'])} ms",
                d["first_queries"] == 1,
            )
    s3_ = results.get("s3")
    if s3_:
        add(
            f"queries ≤ T/t + 1 = {s3_['bound']:g} (T {s3_['seconds']:g} s, TTL {s3_['ttl']} s)",
            f"{s3_['queries']}",
            s3_["queries"] <= s3_["bound"],
        )
        add(
            "TTL expiry: no connection slower than 2× static median (paced static, same run)",
            f"{s3_['slow_paced']} of {s3_['connections']} slower than {ms(s3_['threshold_paced'])} ms "
            f"(static paced alike: {s3_.get('static_slow_paced', '-')} of {s3_['static']['n']}; "
            f"{s3_['over_delay']} waited for the upstream)",
            s3_["slow_paced"] == 0 and s3_["failures"] == 0,
        )
        add(
            "TTL expiry: no connection slower than 2× static median (S1's back-to-back median)",
            f"{s3_['slow_s1']} of {s3_['connections']} slower than {ms(s3_['threshold_s1'])} ms "
            f"(static paced alike: {s3_['static_slow_s1']} of {s3_['static']['n']})",
            s3_["slow_s1"] == 0 and s3_["failures"] == 0,
        )
    s4_ = results.get("s4")
    if s4_:
        seen = s4_["phases"]["outage_seen"]
        add(
            "upstream down: names seen within max_stale keep routing, 100 %",
            f"{seen['succeeded']} of {seen['connections']}",
            seen["succeeded"] == seen["connections"] > 0,
        )
    s1_ = results.get("s1")
    if s1_:
        seq = s1_["sequential"]
        r = ratio(seq["proxy"]["median"], seq["direct"]["median"])
        add(
            f"handshake through the proxy ≤ {TARGET_PROXY_RATIO}× direct (median)",
            times(r),
            r is not None and r <= TARGET_PROXY_RATIO,
        )
        cpu = seq["proxy_cpu"]
        per_conn = _cpu_us(cpu, cpu["connections"])
        load_cpu = s1_["load"]["proxy"].get("proxy_cpu")
        at_load = _cpu_us(load_cpu, s1_["load"]["proxy"]["connections"]) if load_cpu else None
        add(
            f"proxy CPU per connection ≤ {TARGET_CPU_US:.0f} µs",
            f"{per_conn:.0f} µs sequential, {at_load:.0f} µs at concurrency 32" if per_conn and at_load else "-",
            per_conn is not None and per_conn <= TARGET_CPU_US,
        )
        tp = s1_["throughput"]
        for direction in ("up", "down"):
            mbps = tp[f"proxy {direction}"]["MBps"]
            add(
                f"relay throughput ≥ 2 GB/s, {direction}",
                f"{mbps:.0f} MB/s (direct {tp[f'direct {direction}']['MBps']:.0f})",
                mbps >= TARGET_MBPS,
            )
    verdict = {True: "meets", False: "**misses**", None: "-"}
    text = "### Targets\n\n" + table(
        ["target", "measured", "verdict"], [[r["target"], r["measured"], verdict[r["met"]]] for r in rows]
    )
    return text, rows


# ---------------------------------------------------------------- metadata and files


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def metadata(plan_name: str, argv: list[str]) -> dict[str, Any]:
    import twisted

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "mode": plan_name,
        "uname": _run(["uname", "-a"]) or " ".join(platform.uname()),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory": _memory(),
        "python": sys.version.split()[0],
        "twisted": twisted.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        # Read-only: the commit checked out (local changes are not recorded).
        "commit": _run(["git", "rev-parse", "HEAD"]) or "unknown",
    }


def header(meta: dict[str, Any]) -> str:
    return (
        f"## sniproxy benchmark ({meta['mode']} run, {meta['date']})\n\n"
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['memory']} RAM; `{meta['uname']}`.  "
        f"Python {meta['python']}, Twisted {meta['twisted']}, {meta['openssl']}; commit {meta['commit'][:12]}.  "
        "Everything on loopback; times are TCP connect + TLS handshake as the client sees it; "
        "percentiles are nearest-rank."
    )


def footer(meta: dict[str, Any], json_path: str) -> str:
    load = meta.get("load") or {}
    text = f"Run took {meta['elapsed']:.0f} s; raw samples in {json_path}."
    if load:
        text += (
            f"  Machine load: all CPUs {load['busy_share']:.0%} busy during the scenarios, "
            f"{load['others_share']:.0%} ({load['others_cores']:.2f} cores) by processes other than the benchmark's; "
            f"load average {load['loadavg_start']} at the start, {load['loadavg_end']} at the end."
        )
    return text


def write_json(path: str, data: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(temporary, path)
