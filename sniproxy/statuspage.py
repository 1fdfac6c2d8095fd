"""
The status page: one self-contained HTML document rendered from a
L{sniproxy.status.Snapshot}.  No external assets and no framework; it
reads fine without JavaScript.  A small inline script refreshes the page's
C{<div id="status">} every few seconds (C{?refresh=0} turns that off) and
keeps a self-check element, C{<p id="self-check" data-errors="N">}, with
the count of script errors and failed refreshes.

Every string that comes from outside (server names, DNS names, app ids,
addresses, the config path, a reload error) goes through L{html.escape}.
"""

from __future__ import annotations

import time
from html import escape

from sniproxy.status import MAX_INSTANCES, MAX_NAMES, Snapshot

__all__ = ["DEFAULT_REFRESH", "render_page"]

#: Seconds between refreshes unless the URL says otherwise.
DEFAULT_REFRESH = 2

_STYLE = """
:root{color-scheme:light;--ink:#1d2330;--dim:#5b6475;--line:#dde1e8;--bg:#f6f7f9;--ok:#1f7a3a;--bad:#b42318;--warn:#a15c00}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:var(--bg)}
header.top{background:#1d2330;color:#fff;padding:10px 20px;display:flex;flex-wrap:wrap;gap:6px 24px;align-items:baseline}
header.top h1{font-size:18px;margin:0 12px 0 0}
header.top span{color:#c9cfdb}
header.top b{color:#fff;font-weight:600}
header.top a{color:#9cc3ff}
main.grid{padding:12px 20px 4px;display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px;align-items:start}
.col{display:grid;gap:14px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px 14px}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--dim);font-weight:600;font-size:12px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.name{white-space:normal;word-break:break-all}
.big{display:flex;gap:26px;margin:0 0 8px}
.big div{display:flex;flex-direction:column}
.big b{font-size:22px;font-variant-numeric:tabular-nums}
.big span{color:var(--dim);font-size:12px}
.zero{color:#a3a9b5}
.up,.fresh,.ok{color:var(--ok);font-weight:600}
.ejected,.negative,.error{color:var(--bad);font-weight:600}
.probing,.refreshing,.stale{color:var(--warn);font-weight:600}
.note{color:var(--dim);font-size:12px;margin:6px 0 0}
footer{padding:0 20px 14px;color:var(--dim);font-size:12px}
"""

# The refresh script: it swaps in the <main> of a fresh copy of this page,
# and counts script errors and failed refreshes in the self-check element.
_SCRIPT = """
(function () {
  "use strict";
  var check = document.getElementById("self-check");
  var errors = 0, refreshes = 0, last = "";
  function report() {
    check.setAttribute("data-errors", String(errors));
    check.setAttribute("data-refreshes", String(refreshes));
    check.textContent = errors
      ? "self-check: " + errors + " error(s); last: " + last
      : "self-check: ok, " + refreshes + " refresh(es)";
    check.className = errors ? "error" : "ok";
  }
  function fail(message) { errors += 1; last = message; report(); }
  window.addEventListener("error", function (event) { fail("script error: " + event.message); });
  ["overview", "connections", "apps", "dns", "sources"].forEach(function (id) {
    if (!document.getElementById(id)) { fail("missing section #" + id); }
  });
  fetch("status.json", {cache: "no-store"}).then(function (response) {
    if (!response.ok) { throw new Error("HTTP " + response.status); }
    return response.json();
  }).then(function (data) {
    if (!data.connections || !data.apps || !data.dns || !data.sources) { fail("status.json lacks a section"); }
  }).catch(function (error) { fail("status.json: " + error.message); });
  var period = Number(document.body.getAttribute("data-refresh")) || 0;
  function refresh() {
    fetch(window.location.href, {cache: "no-store"}).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("status");
      if (!fresh) { throw new Error("no #status in the page"); }
      document.getElementById("status").replaceWith(document.importNode(fresh, true));
      refreshes += 1;
      report();
    }).catch(function (error) {
      fail("refresh failed: " + error.message);
    }).then(function () { window.setTimeout(refresh, period * 1000); });
  }
  if (period > 0) { window.setTimeout(refresh, period * 1000); }
  report();
})();
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _num(value: int, title: str = "") -> str:
    css = "n zero" if value == 0 else "n"
    extra = f' title="{_e(title)}"' if title else ""
    return f'<td class="{css}"{extra}>{value}</td>'


def _rate(value: float) -> str:
    css = "n zero" if value == 0 else "n"
    return f'<td class="{css}">{value:.2f}</td>'


def _header(snapshot: Snapshot, refresh: int) -> str:
    h = snapshot.header
    if h.last_reload_error is None:
        verdict = '<b class="ok">ok</b>'
    else:
        verdict = f'<b class="error" id="reload-error">failed: {_e(h.last_reload_error)}</b>'
    switch = (
        '<a href="?refresh=0">pause refresh</a>'
        if refresh
        else f'<a href="?refresh={DEFAULT_REFRESH}">resume refresh</a>'
    )
    return (
        '<header class="top" id="overview">'
        f"<h1>sniproxy {_e(h.version)}</h1>"
        f"<span>up <b>{_duration(h.uptime)}</b></span>"
        f"<span>config <b>{_e(h.config_path or '(none)')}</b></span>"
        f"<span>loaded <b>{_clock(h.loaded_at)}</b></span>"
        f"<span>last reload {verdict}</span>"
        + (f"<span>workers <b>{h.workers_serving} of {h.workers} serving</b></span>" if h.workers > 1 else "")
        + f"<span>at {_clock(h.now)}</span>"
        f'<span>{switch} · <a href="status.json">status.json</a> · <a href="metrics">metrics</a></span>'
        "</header>"
    )


def _connections(snapshot: Snapshot) -> str:
    c = snapshot.connections
    rows = "".join(
        f"<tr><td>{_e(o.outcome)}</td>{_num(o.total)}{_rate(o.rate_10s)}{_rate(o.rate_5m)}</tr>" for o in c.outcomes
    )
    return (
        '<section id="connections"><h2>Connections</h2>'
        '<div class="big">'
        f'<div><b id="live">{c.live}</b><span>live</span></div>'
        f"<div><b>{c.rate_10s:.2f}</b><span>per second, 10 s</span></div>"
        f"<div><b>{c.rate_5m:.2f}</b><span>per second, 5 min</span></div>"
        f"<div><b>{c.total}</b><span>ended since start</span></div>"
        "</div>"
        '<table><thead><tr><th>outcome</th><th class="n">total</th><th class="n">/s 10 s</th>'
        '<th class="n">/s 5 min</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        f'<p class="note">relayed {_bytes(c.bytes_up)} up (client to backend), {_bytes(c.bytes_down)} down; '
        f"the rates cover the last {c.window_10s:.0f} s and {c.window_5m:.0f} s (of 10 s and 5 min).</p>"
        "</section>"
    )


def _health(state: str, until: float | None, left: float | None) -> str:
    if state == "ejected" and until is not None:
        return (
            f'<td class="ejected" title="{_e(_clock(until))}">ejected until '
            f"{_e(time.strftime('%H:%M:%S UTC', time.gmtime(until)))} ({_duration(left or 0)} left)</td>"
        )
    css = state if state in ("up", "ejected", "probing") else ""
    return f'<td class="{css}">{_e(state)}</td>'


def _apps(snapshot: Snapshot) -> str:
    a = snapshot.apps
    rows = "".join(
        f"<tr><td class=\"name\">{_e(i.app)}</td><td>{_e(i.address)}</td>"
        f"{_health(i.state, i.ejected_until, i.ejected_for)}"
        f"{_num(i.live)}{_num(i.total)}{_num(i.connect_failures)}"
        f"{_num(i.bytes_up)}{_num(i.bytes_down)}"
        f'<td class="n">{i.max_connections if i.max_connections else "none"}</td></tr>'
        for i in a.instances
    )
    if not a.total_instances:
        body = '<p class="note">No apps configured.</p>'
    else:
        body = (
            "<table><thead><tr><th>app</th><th>instance</th><th>health</th><th class=\"n\">live</th>"
            '<th class="n">total</th><th class="n">connect failures</th><th class="n">bytes up</th>'
            '<th class="n">bytes down</th><th class="n">app cap</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        if a.truncated:
            body += (
                f'<p class="note" id="apps-truncated">Showing the first {len(a.instances)} of '
                f"{a.total_instances} instances (the page lists at most {MAX_INSTANCES}; "
                "/status.json and /metrics have the same bound).</p>"
            )
    return (
        f'<section id="apps" class="wide"><h2>Apps <span class="note">{a.apps} apps, '
        f"{a.total_instances} instances</span></h2>{body}</section>"
    )


def _dns(snapshot: Snapshot) -> str:
    d = snapshot.dns
    hit_rate = "–" if d.hit_rate is None else f"{100 * d.hit_rate:.1f}%"
    rows = "".join(
        f'<tr><td class="name">{_e(n.name)}</td><td>{_e(n.type)}</td>'
        f'<td class="{_e(n.state)}">{_e(n.state)}</td>'
        f'<td class="n">{n.ttl_left:.0f} s</td>{_num(n.hits)}<td>{_e(n.origin)}</td></tr>'
        for n in d.names
    )
    if d.names:
        names = (
            '<table><thead><tr><th>name</th><th>type</th><th>state</th><th class="n">TTL left</th>'
            '<th class="n">hits</th><th>source</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        if d.truncated:
            names += (
                f'<p class="note" id="dns-truncated">The {len(d.names)} most used of {d.entries} entries '
                f"(at most {MAX_NAMES} are listed).</p>"
            )
    elif d.entries:
        names = f'<p class="note" id="dns-truncated">{d.entries} entries; this cache does not list them.</p>'
    else:
        names = '<p class="note">The cache is empty.</p>'
    return (
        '<section id="dns"><h2>DNS cache</h2>'
        '<div class="big">'
        f"<div><b>{d.entries}</b><span>entries</span></div>"
        f'<div><b id="hit-rate">{hit_rate}</b><span>hit rate ({d.lookups} lookups)</span></div>'
        f"<div><b>{d.stale}</b><span>stale served</span></div>"
        f"<div><b>{d.in_flight}</b><span>in flight</span></div>"
        "</div>"
        '<table><tbody>'
        f"<tr><td>fresh hits</td>{_num(d.hits)}<td>negative hits</td>{_num(d.negative_hits)}</tr>"
        f"<tr><td>misses</td>{_num(d.misses)}<td>merged</td>{_num(d.merged)}</tr>"
        f"<tr><td>upstream queries</td>{_num(d.upstream_queries)}"
        f"<td>upstream failures</td>{_num(d.upstream_failures)}</tr>"
        "</tbody></table>"
        f"<h2 style=\"margin-top:10px\">Most used names</h2>{names}"
        "</section>"
    )


def _sources(snapshot: Snapshot) -> str:
    rows = "".join(
        f'<tr><td class="n">{index}</td><td>{_e(s.name)}</td>{_num(s.decisions)}</tr>'
        for index, s in enumerate(snapshot.sources, 1)
    )
    return (
        '<section id="sources"><h2>Routing sources</h2>'
        '<table><thead><tr><th class="n">order</th><th>source</th><th class="n">connections routed</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
        '<p class="note">Asked in this order; the first that knows the name routes it.</p>'
        "</section>"
    )


def render_page(snapshot: Snapshot, refresh: int = DEFAULT_REFRESH) -> bytes:
    """
    The status page for C{snapshot}.

    @param refresh: seconds between the script's refreshes; 0 for none.
    """
    fallback = f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>' if refresh else ""
    document = (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>sniproxy status</title>{fallback}<style>{_STYLE}</style></head>"
        f'<body data-refresh="{refresh}">'
        f'<div id="status">{_header(snapshot, refresh)}<main class="grid">'
        f'{_connections(snapshot)}<div class="col">{_dns(snapshot)}{_sources(snapshot)}</div>{_apps(snapshot)}'
        "</main></div>"
        '<footer><p id="self-check" data-errors="0" data-refreshes="0">self-check: no script has run</p></footer>'
        f"<script>{_SCRIPT}</script>"
        "</body></html>"
    )
    return document.encode("utf-8")
