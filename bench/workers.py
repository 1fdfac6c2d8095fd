"""
Workers (issue 14): new-connection throughput and CPU per connection with
1 and 2 worker processes, and upstream DNS queries per name per TTL with
each (they must be equal: the workers share one cache).

    python bench/workers.py [--connections 4000] [--clients 32] [--json FILE]

The load client is C{h2load} (Debian's nghttp2-client), a C client that is
not the bottleneck: C{--h1 -m 1 --connect-to} the proxy, with the URI's
host as SNI, against an nginx backend that closes after every response
(C{keepalive_timeout 0}), so every request is a new TLS connection through
the proxy.  The proxy's CPU is the on-CPU time of the main process and
every worker (/proc/<pid>/task/*/schedstat).  Everything runs on loopback
on one machine, client and backend included: on a 2-core machine the
scaling factor is a floor of what N dedicated cores give.  Both proxies
run at once and the passes alternate between them; the medians are kept.  Every loop is
bounded in count and time; every child is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import Harness, cpu_ns  # noqa: E402
from sniproxy.testing.tls import CertificateAuthority  # noqa: E402

STATIC = "static.bench.test"
TXT_NAMES = [f"txt{i}.bench.test" for i in range(4)]
PREFIX = "_dstack-app-address"
TTL = 2


def progress(text: str) -> None:
    print(f"workers: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_backend(harness: Harness, directory: str, cert: str, key: str) -> int:
    port = free_port()
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w") as f:
        f.write(
            f"""
worker_processes 1;
daemon off;
master_process off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory};
    proxy_temp_path {directory};
    fastcgi_temp_path {directory};
    uwsgi_temp_path {directory};
    scgi_temp_path {directory};
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_tickets off;
        ssl_session_cache off;
        keepalive_timeout 0;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )
    child = harness._start("nginx", ["nginx", "-c", path, "-p", directory])
    BACKEND_PIDS.append(child.pid)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def proxy_config(directory: str, workers: int, backend: int, dns_port: int) -> str:
    path = os.path.join(directory, f"sniproxy-{workers}.toml")
    with open(path, "w") as f:
        f.write(
            f"""
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
workers = {workers}
shutdown_timeout = 1.0
max_connections_per_client = 0
[routing]
sources = ["static", "txt"]
[routing.static]
"{STATIC}" = "127.0.0.1:{backend}"
[apps.benchapp]
backends = ["127.0.0.1:{backend}"]
[dns]
servers = ["127.0.0.1:{dns_port}"]
[log]
access = ""
[admin]
listen = ""
"""
        )
    return path


def proxy_pids(harness: Harness, workers: int) -> list[int]:
    proxy = harness.proxy
    assert proxy is not None
    if workers == 1:
        return [proxy.pid]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = proxy.tail(10**6)
        if log.count(") serving") >= workers:
            return [proxy.pid, *(int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", log))]
        time.sleep(0.05)
    raise RuntimeError(f"the workers did not start:\n{proxy.tail()}")


def h2load(port: int, name: str, connections: int, clients: int, timeout: float) -> dict:
    argv = [
        "h2load", "--h1", "-n", str(connections), "-c", str(clients), "-m", "1",
        f"--connect-to=127.0.0.1:{port}", f"https://{name}/",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    status = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if finished is None or status is None:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {"seconds": seconds, "succeeded": int(status.group(4)), "failed": int(status.group(5))}


class Proxy:
    """One running proxy with C{workers} workers: its port and the PIDs whose CPU counts."""

    def __init__(self, harness: Harness, directory: str, workers: int, backend: int) -> None:
        harness.proxy = None
        harness.start_proxy(proxy_config(directory, workers, backend, harness.dns_port))
        self.child = harness.proxy
        self.port = harness.proxy_address[1]
        self.pids = proxy_pids(harness, workers)

    def cpu(self) -> int:
        return sum(cpu_ns(pid) for pid in self.pids)


def _client_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load, once waited for
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


def _backend_ns() -> int:
    """On-CPU time of every nginx process of the run (master off: its workers)."""
    return sum(cpu_ns(pid) for pid in BACKEND_PIDS)


BACKEND_PIDS: list[int] = []


def one_pass(proxy: Proxy, options) -> dict:
    before, client, backend = proxy.cpu(), _client_ns(), _backend_ns()
    result = h2load(proxy.port, STATIC, options.connections, options.clients, 120)
    time.sleep(0.3)
    n = max(result["succeeded"], 1)
    result["conn_per_s"] = result["succeeded"] / result["seconds"]
    result["cpu_us_per_conn"] = (proxy.cpu() - before) / 1e3 / n
    result["client_cpu_us_per_conn"] = (_client_ns() - client) / 1e3 / n
    result["backend_cpu_us_per_conn"] = (_backend_ns() - backend) / 1e3 / n
    return result


def dns_phase(harness: Harness, proxy: Proxy, options) -> dict:
    """Upstream queries per name per TTL: a steady trickle to each TXT name for a few TTLs."""
    harness.dns.reset()
    began = time.monotonic()
    while time.monotonic() - began < options.dns_seconds:
        for name in TXT_NAMES:
            h2load(proxy.port, name, 4, 2, 30)
        time.sleep(0.2)
    elapsed = time.monotonic() - began
    queries = {name: harness.dns.queries(f"{PREFIX}.{name}") for name in TXT_NAMES}
    return {
        "seconds": round(elapsed, 2),
        "ttl": TTL,
        "queries": queries,
        "per_name_per_ttl": round(sum(queries.values()) / len(TXT_NAMES) / (elapsed / TTL), 2),
    }


def _median(rows: list[dict], key: str) -> float:
    values = sorted(row[key] for row in rows)
    return values[len(values) // 2]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench/workers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4000, help="connections per pass (default %(default)s)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent h2load clients (default %(default)s)")
    parser.add_argument("--passes", type=int, default=5, help="alternating passes per worker count; the median is kept")
    parser.add_argument("--dns-seconds", type=float, default=6.0, help="seconds of the DNS phase (default %(default)s)")
    parser.add_argument("--json", default="", help="also write the results here")
    options = parser.parse_args(argv)
    for tool in ("h2load", "nginx"):
        if shutil.which(tool) is None:
            print(f"workers: {tool} is not installed (Debian: nghttp2-client, nginx)", file=sys.stderr)
            return 2
    results: dict = {"cores": os.cpu_count(), "connections": options.connections, "clients": options.clients}
    with tempfile.TemporaryDirectory(prefix="sniproxy-workers-") as directory, Harness(directory) as harness:
        ca = CertificateAuthority("sniproxy workers bench CA")
        issued = ca.issue(STATIC, "*.bench.test")
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, data in ((cert, issued.cert_pem), (key, issued.key_pem)):
            with open(path, "wb") as f:
                f.write(data)
        records = os.path.join(directory, "records.json")
        with open(records, "w") as f:
            json.dump(
                {"records": [{"name": f"{PREFIX}.{n}", "type": "TXT", "value": ["benchapp:443"], "ttl": TTL} for n in TXT_NAMES]},
                f,
            )
        harness.start_dns(records)
        backend = nginx_backend(harness, directory, cert, key)
        # Both proxies run at once and the passes alternate, so the
        # machine's other load drifts over both alike.
        proxies = {workers: Proxy(harness, directory, workers, backend) for workers in (1, 2)}
        for proxy in proxies.values():
            h2load(proxy.port, STATIC, min(500, options.connections), options.clients, 60)  # warm-up
        passes: dict[int, list[dict]] = {1: [], 2: []}
        for number in range(options.passes):
            for workers, proxy in proxies.items():
                passes[workers].append(one_pass(proxy, options))
                progress(f"pass {number + 1}, {workers} worker(s): {json.dumps(passes[workers][-1])}")
        for workers, proxy in proxies.items():
            results[f"workers_{workers}"] = {
                "passes": passes[workers],
                "conn_per_s": _median(passes[workers], "conn_per_s"),
                "cpu_us_per_conn": _median(passes[workers], "cpu_us_per_conn"),
                "client_cpu_us_per_conn": _median(passes[workers], "client_cpu_us_per_conn"),
                "backend_cpu_us_per_conn": _median(passes[workers], "backend_cpu_us_per_conn"),
                "failed": sum(row["failed"] for row in passes[workers]),
                "dns": dns_phase(harness, proxy, options),
            }
            progress(f"{workers} worker(s), DNS: {json.dumps(results[f'workers_{workers}']['dns'])}")
    one, two = results["workers_1"], results["workers_2"]
    results["scaling"] = round(two["conn_per_s"] / one["conn_per_s"], 2)
    print(f"{'workers':>8} {'conn/s':>8} {'proxy us/conn':>14} {'client':>7} {'backend':>8} {'failed':>7} {'DNS q/name/TTL':>15}")
    for label, row in (("1", one), ("2", two)):
        print(
            f"{label:>8} {row['conn_per_s']:>8.0f} {row['cpu_us_per_conn']:>14.0f} {row['client_cpu_us_per_conn']:>7.0f}"
            f" {row['backend_cpu_us_per_conn']:>8.0f} {row['failed']:>7} {row['dns']['per_name_per_ttl']:>15}"
        )
    print(f"scaling factor (2 workers / 1): {results['scaling']}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
