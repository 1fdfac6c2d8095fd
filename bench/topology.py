"""
The world the benchmark builds: its names, the certificate every name is
served with, the DNS records behind the DNS-routed names, and the proxy's
config file.  Everything is on loopback; nothing here resolves outside it.

All routes lead to the same two backends (L{bench.backend}):

  - the TLS backend, app C{benchapp}, reached by
      - C{static.bench.test}: the static map (S1),
      - C{<app-id>-443s.gw.bench.test}: a base-domain subdomain (the original table),
      - custom domains C{*.custom.test}: TXT C{_dstack-app-address.<name>} = C{benchapp:443}
        (S2, S3, S4, the original table),
      - C{legacy.old.test}: no primary record (NXDOMAIN, with the SOA of zone
        C{old.test}), only the legacy C{_tapp-address} one (S5);
  - the raw stream sink/source, app C{rawapp}, reached by C{stream.bench.test}
    (static) and C{stream.custom.test} (TXT), for the throughput figures.

Each scenario has names of its own, so that a first connection is a cold one
whatever ran before (the proxy's cache cannot be emptied from outside).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sniproxy.testing.tls import CertificateAuthority

__all__ = ["NAMES", "S3_DECAY_CHAIN", "Files", "Names", "dns_records", "proxy_config", "write_files"]

APP = "benchapp"
RAW_APP = "rawapp"
BASE = "gw.bench.test"


@dataclass(frozen=True)
class Names:
    static: str = "static.bench.test"
    stream_static: str = "stream.bench.test"
    stream_txt: str = "stream.custom.test"
    subdomain: str = f"{APP}-443s.{BASE}"
    s2_prefix: str = "s2-"  # s2-300.custom.test, s2-800.custom.test
    s3: str = "s3.custom.test"
    s3_decay: str = "s3-decay.custom.test"  # through a CNAME chain, behind a caching forwarder
    s4: str = "s4.custom.test"
    s4_unseen: str = "s4-unseen.custom.test"
    legacy: str = "legacy.old.test"
    legacy_zone: str = "old.test"
    original: str = "original.custom.test"
    txt_prefix: str = "_dstack-app-address"
    legacy_prefix: str = "_tapp-address"

    def s2(self, delay_ms: int) -> str:
        return f"{self.s2_prefix}{delay_ms}.custom.test"

    def tls_names(self, s2_delays_ms) -> list[str]:
        """Every name the TLS backend's certificate must be valid for."""
        return [
            self.static,
            self.subdomain,
            *(self.s2(d) for d in s2_delays_ms),
            self.s3,
            self.s3_decay,
            self.s4,
            self.s4_unseen,
            self.legacy,
            self.original,
        ]


NAMES = Names()

# TTLs of the records (seconds), as the targets in docs/benchmarks.rst ask.
S2_TTL = 30
S3_TTL = 2
# S3 through a caching forwarder (issue 12): the chain 300/60/5 seen in the field.
S3_DECAY_CHAIN = (300, 60, 5)
S4_TTL = 2
S5_TTL = 30
# old.test's SOA: negative answers for its names live min(ttl, minimum) = 5 s
# (under dns.max_negative_ttl, 10 s), so S5's steady state sees them expire.
S5_SOA_TTL = 60
S5_SOA_MINIMUM = 5


@dataclass(frozen=True)
class Files:
    directory: str
    ca: str
    cert: str
    key: str
    records: str


def write_files(directory: str, s2_delays_ms) -> Files:
    """A throwaway CA, the backend's key and certificate, and the DNS records, in C{directory}."""
    ca = CertificateAuthority("sniproxy bench CA")
    issued = ca.issue(*NAMES.tls_names(s2_delays_ms))
    files = Files(
        directory=directory,
        ca=os.path.join(directory, "ca.pem"),
        cert=os.path.join(directory, "backend-cert.pem"),
        key=os.path.join(directory, "backend-key.pem"),
        records=os.path.join(directory, "records.json"),
    )
    for path, data in ((files.ca, ca.cert_pem), (files.cert, issued.cert_pem), (files.key, issued.key_pem)):
        with open(path, "wb") as f:
            f.write(data)
    with open(files.records, "w") as f:
        json.dump(dns_records(s2_delays_ms), f, indent=1)
    return files


def dns_records(s2_delays_ms) -> dict:
    """The test DNS server's records (L{sniproxy.testing.dns.DNSServer.load} format)."""
    n = NAMES

    def txt(name: str, value: str, ttl: int, prefix: str = n.txt_prefix) -> dict:
        return {"name": f"{prefix}.{name}", "type": "TXT", "value": [value], "ttl": ttl}

    target = f"{APP}:443"
    records = [txt(n.s2(d), target, S2_TTL) for d in s2_delays_ms]
    records += [
        txt(n.stream_txt, f"{RAW_APP}:443", S2_TTL),
        txt(n.s3, target, S3_TTL),
        {"name": f"{n.txt_prefix}.{n.s3_decay}", "type": "CNAME", "value": "link1.s3-decay.test", "ttl": S3_DECAY_CHAIN[0]},
        {"name": "link1.s3-decay.test", "type": "CNAME", "value": "link2.s3-decay.test", "ttl": S3_DECAY_CHAIN[1]},
        {"name": "link2.s3-decay.test", "type": "TXT", "value": [target], "ttl": S3_DECAY_CHAIN[2]},
        txt(n.s4, target, S4_TTL),
        txt(n.s4_unseen, target, S4_TTL),
        txt(n.original, target, S2_TTL),
        txt(n.legacy, target, S5_TTL, prefix=n.legacy_prefix),
    ]
    return {
        "records": records,
        "soa": [{"zone": n.legacy_zone, "ttl": S5_SOA_TTL, "minimum": S5_SOA_MINIMUM}],
    }


def proxy_config(*, dns_port: int, tls_port: int, raw_port: int) -> str:
    """The proxy's TOML config: listen on a free loopback port, every route above, access log off."""
    n = NAMES
    return f"""\
# Generated by bench/run.py for one benchmark run.
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
shutdown_timeout = 1.0
max_connections_per_client = 1024

[routing]
sources = ["static", "subdomain", "txt"]

[routing.static]
"{n.static}" = "127.0.0.1:{tls_port}"
"{n.stream_static}" = "127.0.0.1:{raw_port}"

[routing.subdomain]
base_domains = ["{BASE}"]

[routing.txt]
prefix = "{n.txt_prefix}"
legacy_prefix = "{n.legacy_prefix}"

[apps.{APP}]
backends = ["127.0.0.1:{tls_port}"]

[apps.{RAW_APP}]
backends = ["127.0.0.1:{raw_port}"]

[dns]
servers = ["127.0.0.1:{dns_port}"]

[log]
access = ""
"""
