"""
The scenarios of issue 5, each a function from the running L{Bench} to a
result dict of figures and raw samples (seconds) that L{bench.report}
prints and the JSON file keeps.

Static and DNS-routed connections are interleaved in one loop wherever a
ratio is taken (the machine is shared and noisy: drift then falls on both
sides alike), so a ratio is always "same machine, same minute".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench import clients, stats
from bench.clients import Target
from bench.harness import Harness, cpu_seconds
from bench.topology import NAMES, S3_DECAY_CHAIN, S3_TTL, S4_TTL, S5_SOA_MINIMUM, S5_SOA_TTL

__all__ = ["PLANS", "SCENARIOS", "Bench", "Plan"]

MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """How much of everything: C{--quick} or the full run."""

    name: str
    s1_rounds: int  # sequential pairs, direct + through the proxy
    load_seconds: float
    stream_bytes: int
    s2_rounds: int
    s5_rounds: int
    s5_gap: float  # seconds between S5 rounds, so the run outlives the negative TTL
    original_samples: int
    warmup_rounds: int = 20  # discarded, before S1: code paths, caches and free lists warm
    stream_repeats: int = 3
    load_concurrency: int = 32
    load_processes: int = 4
    s2_delays: tuple[float, ...] = (0.3, 0.8)
    s3_delay: float = 0.3
    s3_rate: float = 20.0
    s3_seconds: float = 12.0
    s4_delay: float = 0.3
    s4_connections: int = 100
    s4_rate: float = 20.0
    s4_recovery_seconds: float = 4.0  # past the failure back-off (dns.failure_backoff, 2 s)
    s5_delay: float = 0.3
    original_delay: float = 0.8
    loop_limit: float = 120.0  # seconds any one sequential loop may take

    @property
    def s2_delays_ms(self) -> list[int]:
        return [round(d * 1000) for d in self.s2_delays]


PLANS = {
    "quick": Plan(
        "quick",
        s1_rounds=300,
        load_seconds=5.0,
        stream_bytes=128 * MiB,
        s2_rounds=200,
        s5_rounds=100,
        s5_gap=0.08,
        original_samples=18,
    ),
    "full": Plan(
        "full",
        s1_rounds=1000,
        load_seconds=10.0,
        stream_bytes=512 * MiB,
        s2_rounds=600,
        s5_rounds=300,
        s5_gap=0.05,
        original_samples=60,
    ),
}


@dataclass
class Bench:
    """What every scenario works with."""

    harness: Harness
    plan: Plan
    cafile: str
    results: dict[str, Any] = field(default_factory=dict)
    records: str = ""  # the DNS records file
    write_config: Any = None  # (dns_port) -> None: rewrites the proxy's config file

    def __post_init__(self) -> None:
        self.context = clients.tls_context(self.cafile)

    @property
    def dns(self):
        assert self.harness.dns is not None
        return self.harness.dns

    def proxy(self, label: str, sni: str) -> Target:
        return Target(label, self.harness.proxy_address, sni)

    def direct(self, label: str, sni: str) -> Target:
        return Target(label, self.harness.tls_address, sni)

    def proxy_cpu(self) -> tuple[float, float]:
        assert self.harness.proxy is not None
        return cpu_seconds(self.harness.proxy.pid)

    def backend_cpu(self) -> float:
        assert self.harness.backend is not None
        return sum(cpu_seconds(self.harness.backend.pid))

    def s1_median(self) -> float:
        return self.results["s1"]["sequential"]["proxy"]["median"]


def _txt_owner(name: str) -> str:
    return f"{NAMES.txt_prefix}.{name}"


def _settle() -> None:
    """Let the last connections' teardown finish in the proxy before its CPU time is read."""
    time.sleep(0.3)


def _sequential(bench: Bench, targets: list[Target], rounds: int, gap: float = 0.0) -> dict[str, Any]:
    samples = clients.interleaved(bench.context, targets, rounds, bench.plan.loop_limit, gap=gap)
    out: dict[str, Any] = {"truncated": samples.truncated, "raw": samples.times, "errors": samples.errors}
    for target in targets:
        out[target.label] = stats.summary(samples.times[target.label])
    return out


def _load(bench: Bench, target: Target) -> dict[str, Any]:
    plan = bench.plan
    user0, system0 = bench.proxy_cpu()
    backend0 = bench.backend_cpu()
    result = clients.load(
        bench.cafile,
        target,
        concurrency=plan.load_concurrency,
        duration=plan.load_seconds,
        processes=plan.load_processes,
    )
    _settle()
    user1, system1 = bench.proxy_cpu()
    result["backend_cpu"] = bench.backend_cpu() - backend0
    if target.address == bench.harness.proxy_address:
        result["proxy_cpu"] = {"user": user1 - user0, "system": system1 - system0}
    result["summary"] = stats.summary(result["times"])
    result["raw"] = result.pop("times")
    return result


def _streams(bench: Bench, paths: list[tuple[str, tuple[str, int], str]]) -> dict[str, Any]:
    """Each path, each direction, C{stream_repeats} times (paths alternating); the median run is the figure."""
    size, repeats = bench.plan.stream_bytes, bench.plan.stream_repeats
    out: dict[str, Any] = {"bytes": size, "repeats": repeats}
    for direction in ("up", "down"):
        runs: dict[str, list[float]] = {label: [] for label, _, _ in paths}
        for _ in range(repeats):
            for label, address, sni in paths:
                runs[label].append(clients.stream(address, sni, direction, size))
        for label, seconds in runs.items():
            rates = sorted(size / s / 1e6 for s in seconds)
            out[f"{label} {direction}"] = {"seconds": seconds, "MBps": stats.percentile(rates, 50), "runs_MBps": rates}
    return out


# ---------------------------------------------------------------- S1


def s1_static(bench: Bench) -> dict[str, Any]:
    """The proxy's own cost on a static route: latency, CPU, connections per second, throughput."""
    plan, dns = bench.plan, bench.dns
    dns.delay(0)
    dns.reset()
    n = NAMES
    static = [bench.direct("direct", n.static), bench.proxy("proxy", n.static)]
    clients.interleaved(bench.context, static, plan.warmup_rounds, plan.loop_limit)
    user0, system0 = bench.proxy_cpu()
    sequential = _sequential(bench, static, plan.s1_rounds)
    _settle()
    user1, system1 = bench.proxy_cpu()
    through = sequential["proxy"]["n"] + len(sequential["errors"]["proxy"])
    sequential["proxy_cpu"] = {"user": user1 - user0, "system": system1 - system0, "connections": through}
    load = {
        "direct": _load(bench, bench.direct("direct", n.static)),
        "proxy": _load(bench, bench.proxy("proxy", n.static)),
    }
    throughput = _streams(
        bench,
        [
            ("direct", bench.harness.raw_address, n.stream_static),
            ("proxy", bench.harness.proxy_address, n.stream_static),
        ],
    )
    return {"sequential": sequential, "load": load, "throughput": throughput, "dns_queries": dns.queries()}


# ---------------------------------------------------------------- S2


def s2_txt(bench: Bench) -> dict[str, Any]:
    """TXT-routed custom domains with a slow upstream: cold first connection, then warm, against static."""
    plan, dns = bench.plan, bench.dns
    out: dict[str, Any] = {"ttl": 30, "delays": {}}
    for delay in plan.s2_delays:
        name = NAMES.s2(round(delay * 1000))
        dns.delay(delay)
        dns.reset()
        first = clients.handshake(bench.context, bench.harness.proxy_address, name)
        first_queries = dns.stats()
        dns.reset()
        sequential = _sequential(bench, [bench.proxy("static", NAMES.static), bench.proxy("txt", name)], plan.s2_rounds)
        sequential["queries"] = dns.queries()
        dns.reset()
        load = _load(bench, bench.proxy("txt", name))
        load["queries"] = dns.queries()
        out["delays"][f"{delay:g}"] = {
            "name": name,
            "delay": delay,
            "first": first,
            "first_queries": first_queries["queries"],
            "first_queries_by_name": first_queries["names"],
            "sequential": sequential,
            "load": load,
        }
    # The relay does not care how a connection was routed; measured once, to
    # show it, after a one-byte transfer has warmed the name.
    clients.stream(bench.harness.proxy_address, NAMES.stream_txt, "up", 1)
    dns.reset()
    out["throughput"] = _streams(bench, [("txt", bench.harness.proxy_address, NAMES.stream_txt)])
    out["throughput_queries"] = dns.queries()
    return out


# ---------------------------------------------------------------- S3


def s3_ttl_expiry(bench: Bench) -> dict[str, Any]:
    """Steady traffic across TTL expiries: no connection should wait for DNS."""
    return _s3(bench, bench.dns, NAMES.s3, S3_TTL)


def s3_decay(bench: Bench) -> dict[str, Any]:
    """S3 through a caching forwarder (decayed TTLs, AA clear), CNAME chain 300/60/5, switched to by SIGHUP."""
    control, port = bench.harness.start_dns(bench.records, caching=True)
    bench.write_config(port)
    bench.harness.reload_proxy()
    try:
        result = _s3(bench, control, NAMES.s3_decay, min(S3_DECAY_CHAIN))
        result["chain"] = list(S3_DECAY_CHAIN)
        result["authority_queries"] = control.stats().get("authority_queries", 0)
        result["upstream"] = "a caching forwarder (remaining TTLs, rounded down; AA clear)"
    finally:
        bench.write_config(bench.harness.dns_port)
        bench.harness.reload_proxy()
    return result


def _s3(bench: Bench, dns: Any, name: str, ttl: int) -> dict[str, Any]:
    plan = bench.plan
    dns.delay(plan.s3_delay)
    dns.reset()
    warm = clients.handshake(bench.context, bench.harness.proxy_address, name)
    dns.reset()
    # Static connections paced the same way, in turn with the TXT ones: the
    # reference for "slow" under the same arrival pattern (an idle gap of
    # 25 ms between connections makes every connection slower than S1's
    # back-to-back loop, static ones included).
    runs = clients.paced(
        bench.context, [bench.proxy("txt", name), bench.proxy("static", NAMES.static)], plan.s3_rate, plan.s3_seconds
    )
    stats_ = dns.stats()
    txt = [r for r in runs if r["label"] == "txt"]
    ok = [r["seconds"] for r in txt if r["error"] is None]
    static = [r["seconds"] for r in runs if r["label"] == "static" and r["error"] is None]
    static_summary = stats.summary(static)
    threshold_s1 = 2 * bench.s1_median()
    threshold_paced = 2 * static_summary["median"] if static else None
    return {
        "ttl": ttl,
        "delay": plan.s3_delay,
        "rate": plan.s3_rate,
        "seconds": plan.s3_seconds,
        "warm_up": warm,
        "connections": len(txt),
        "failures": sum(1 for r in txt if r["error"] is not None),
        "summary": stats.summary(ok),
        "static": static_summary,
        "static_failures": sum(1 for r in runs if r["label"] == "static" and r["error"] is not None),
        "threshold_s1": threshold_s1,
        "threshold_paced": threshold_paced,
        "slow_s1": sum(1 for s in ok if s > threshold_s1),
        "slow_paced": sum(1 for s in ok if threshold_paced is not None and s > threshold_paced),
        "static_slow_s1": sum(1 for s in static if s > threshold_s1),
        "static_slow_paced": sum(1 for s in static if threshold_paced is not None and s > threshold_paced),
        "over_delay": sum(1 for s in ok if s > plan.s3_delay),
        "slowest": sorted((r for r in txt if r["error"] is None), key=lambda r: -r["seconds"])[:5],
        "queries": stats_["names"].get(_txt_owner(name), 0),
        "queries_all": stats_["queries"],
        "bound": plan.s3_seconds / ttl + 1,
        "raw": runs,
    }


# ---------------------------------------------------------------- S4


def s4_outage(bench: Bench) -> dict[str, Any]:
    """The upstream goes silent after warm-up: names seen before keep routing (stale), for everyone."""
    plan, dns = bench.plan, bench.dns
    name = NAMES.s4
    dns.delay(plan.s4_delay)
    dns.reset()
    warm = clients.handshake(bench.context, bench.harness.proxy_address, name)
    dns.outage(True)
    phases: dict[str, Any] = {"warm_up": {"seconds": warm, "queries": dns.queries()}}
    try:
        dns.reset()
        # Past the TTL: every answer from now on is a stale one (max_stale is a day).
        time.sleep(S4_TTL + 0.5)
        runs = clients.paced(
            bench.context, [bench.proxy("txt", name)], plan.s4_rate, plan.s4_connections / plan.s4_rate
        )
        ok = [r["seconds"] for r in runs if r["error"] is None]
        phases["outage_seen"] = {
            "connections": len(runs),
            "succeeded": len(ok),
            "summary": stats.summary(ok),
            "errors": sorted({r["error"] for r in runs if r["error"]}),
            "queries": dns.queries(),
            "raw": runs,
        }
        dns.reset()
        began = time.perf_counter()
        try:
            clients.handshake(bench.context, bench.harness.proxy_address, NAMES.s4_unseen)
            unseen_error = None
        except OSError as error:
            unseen_error = f"{type(error).__name__}: {error}"[:200]
        phases["outage_unseen"] = {
            "seconds": time.perf_counter() - began,
            "error": unseen_error,
            "queries": dns.queries(),
        }
    finally:
        dns.outage(False)
    # Back: stale answers go on until the failure back-off ends and a refresh
    # gets through; then the entry is fresh again.
    dns.reset()
    runs = clients.paced(bench.context, [bench.proxy("txt", name)], 5.0, plan.s4_recovery_seconds)
    time.sleep(plan.s4_delay + 0.2)
    ok = [r["seconds"] for r in runs if r["error"] is None]
    phases["after"] = {
        "connections": len(runs),
        "succeeded": len(ok),
        "summary": stats.summary(ok),
        "queries": dns.queries(),
        "raw": runs,
    }
    return {"ttl": S4_TTL, "delay": plan.s4_delay, "phases": phases}


# ---------------------------------------------------------------- S5


def s5_legacy(bench: Bench) -> dict[str, Any]:
    """A domain with only the legacy record: the primary's NXDOMAIN is cached (negative TTL from the SOA)."""
    plan, dns = bench.plan, bench.dns
    name = NAMES.legacy
    dns.delay(plan.s5_delay)
    dns.reset()
    first = clients.handshake(bench.context, bench.harness.proxy_address, name)
    first_stats = dns.stats()
    dns.reset()
    began = time.monotonic()
    sequential = _sequential(
        bench, [bench.proxy("static", NAMES.static), bench.proxy("legacy", name)], plan.s5_rounds, gap=plan.s5_gap
    )
    sequential["seconds"] = time.monotonic() - began
    sequential["queries"] = dns.stats()
    return {
        "delay": plan.s5_delay,
        "negative_ttl": min(S5_SOA_TTL, S5_SOA_MINIMUM),
        "first": first,
        "first_queries": first_stats["queries"],
        "first_queries_by_name": first_stats["names"],
        "sequential": sequential,
    }


# ---------------------------------------------------------------- the original table


def original(bench: Bench) -> dict[str, Any]:
    """The report's table: a custom domain against an <app-id>-443s.<base> subdomain, upstream delayed 800 ms."""
    plan, dns = bench.plan, bench.dns
    dns.delay(plan.original_delay)
    dns.reset()
    # The custom domain goes first: its first connection is the cold one.
    samples = clients.interleaved(
        bench.context,
        [bench.proxy("custom", NAMES.original), bench.proxy("subdomain", NAMES.subdomain)],
        plan.original_samples,
        plan.loop_limit,
    )
    custom = samples.times["custom"]
    dns.delay(0)
    return {
        "delay": plan.original_delay,
        "custom": stats.summary(custom),
        "custom_warm": stats.summary(custom[1:]),
        "subdomain": stats.summary(samples.times["subdomain"]),
        "errors": samples.errors,
        "queries": dns.queries(),
        "raw": samples.times,
    }


SCENARIOS = [
    ("s1", s1_static),
    ("s2", s2_txt),
    ("s3", s3_ttl_expiry),
    ("s3_decay", s3_decay),
    ("s4", s4_outage),
    ("s5", s5_legacy),
    ("original", original),
]
