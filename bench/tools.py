#!/usr/bin/env python3
"""Small helpers for bench/run (python3 standard library only).

    tools.py ports N                  print N distinct free TCP ports on 127.0.0.1
    tools.py wait-port PORT SECS      wait until 127.0.0.1:PORT accepts; exit 1 on timeout
    tools.py ticks PID...             utime+stime of the processes, in clock ticks (summed)
    tools.py rss PID...               VmRSS of the processes, in KiB (summed)
    tools.py wrk FILE [k=v...]        wrk --latency output -> one JSON line {k: v, rps, p50_ms,
                                      p99_ms, requests, errors}
    tools.py h2load FILE LOG [k=v...] h2load output + its --log-file -> the same JSON line
    tools.py json-get KEY             read JSON from stdin, print the string value of KEY (or
                                      of any string starting with pcs_ when KEY is 'api_key')
    tools.py report RESULTS META OUT  print the markdown report and write it to OUT
"""

import json
import os
import re
import socket
import statistics
import sys
import time


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


# --- processes and ports -------------------------------------------------------------------

def cmd_ports(n):
    socks = []
    try:
        for _ in range(int(n)):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def cmd_wait_port(port, secs):
    deadline = time.monotonic() + float(secs)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    die(f"port 127.0.0.1:{port} did not open within {secs} s")


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cmd_ticks(*pids):
    print(sum(ticks(p) for p in pids))


def cmd_rss(*pids):
    print(sum(rss_kib(p) for p in pids))


# --- load generator output -----------------------------------------------------------------

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def extra_fields(pairs):
    """`key=value` arguments appended to a result line (numbers stay numbers)."""
    out = {}
    for p in pairs:
        k, _, v = p.partition("=")
        try:
            out[k] = float(v) if "." in v else int(v)
        except ValueError:
            out[k] = v
    return out


def cmd_wrk(path, *extra):
    out = open(path).read()
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        die(f"cannot parse wrk output {path}:\n{out}")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    total = re.search(r"(\d+) requests in", out)
    print(json.dumps({
        **extra_fields(extra),
        "rps": float(rps.group(1)),
        "p50_ms": to_ms(p50.group(1)),
        "p99_ms": to_ms(p99.group(1)),
        "requests": int(total.group(1)) if total else None,
        "errors": errors,
    }))


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def cmd_h2load(path, log, *extra):
    out = open(path).read()
    rps = re.search(r"finished in [0-9.]+\w*, ([0-9.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (rps and req):
        die(f"cannot parse h2load output {path}:\n{out}")
    # --log-file: start (µs since epoch) TAB status TAB duration (µs), one line per request.
    lat = []
    try:
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    lat.append(int(parts[2]) / 1000.0)
    except FileNotFoundError:
        pass
    lat.sort()
    errors = int(req.group(5)) + int(req.group(6)) + int(req.group(7))
    if status:
        errors += int(status.group(3)) + int(status.group(4))
    # A peer that cannot speak h2c (prior knowledge) shows up as zero successful requests.
    print(json.dumps({
        **extra_fields(extra),
        "rps": float(rps.group(1)) if int(req.group(4)) else 0.0,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "requests": int(req.group(4)),
        "errors": errors,
    }))


def cmd_merge(path, *extra):
    """One JSON object from PATH with `key=value` fields added, as one result line."""
    row = json.load(open(path))
    row.update(extra_fields(extra))
    print(json.dumps(row))


def cmd_json_get(key):
    text = sys.stdin.read()
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if isinstance(obj.get(key), str):
                print(obj[key])
                return
            if key == "api_key":
                for v in obj.values():
                    if isinstance(v, str) and v.startswith("pcs_"):
                        print(v)
                        return
    die(f"no {key!r} in: {text[:300]!r}")


# --- report ----------------------------------------------------------------------------------

TARGETS = ["direct", "nginx", "haproxy", "portcullis"]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_range(values, digits=0):
    lo, hi = spread(values)
    if lo is None:
        return ""
    return f" ({fmt(lo, digits)}–{fmt(hi, digits)})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def load_results(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def summarise(rows, scenario):
    """target -> dict of medians and per-round values for one load scenario."""
    out = {}
    for r in rows:
        if r.get("scenario") != scenario:
            continue
        t = out.setdefault(r["target"], {"rps": [], "p50": [], "p99": [], "cpu": [],
                                         "cpu_backend": [], "errors": 0, "note": None,
                                         "us_proxy": [], "us_backend": [], "resumed": []})
        if r.get("note"):
            t["note"] = r["note"]
            continue
        t["rps"].append(r["rps"])
        t["p50"].append(r["p50_ms"])
        t["p99"].append(r["p99_ms"])
        t["cpu"].append(r.get("cpu_proxy"))
        t["cpu_backend"].append(r.get("cpu_backend"))
        t["errors"] += r.get("errors") or 0
        n = r.get("requests") or 0
        # CPU microseconds per request (per connection in the new-connection scenarios).
        if n and r.get("proxy_cpu_s") is not None:
            t["us_proxy"].append(r["proxy_cpu_s"] * 1e6 / n)
        if n and r.get("backend_cpu_s") is not None:
            t["us_backend"].append(r["backend_cpu_s"] * 1e6 / n)
        if n and r.get("resumed") is not None:
            t["resumed"].append(100.0 * r["resumed"] / n)
    return out


def load_table(title, summary, order, cpu=True):
    lines = [f"### {title}", ""]
    head = "| target | requests/s (range) | p50 ms | p99 ms (range) |"
    rule = "|---|---:|---:|---:|"
    if cpu:
        head += " proxy CPU, % of a core | backend CPU, % of a core |"
        rule += "---:|---:|"
    head += " errors |"
    rule += "---:|"
    lines += [head, rule]
    for target in order:
        t = summary.get(target)
        if t is None:
            continue
        if t["note"] and not t["rps"]:
            cols = 4 + (2 if cpu else 0)
            lines.append(f"| {target} | {t['note']} |" + " |" * (cols - 1))
            continue
        row = (f"| {target} | {fmt(med(t['rps']))}{fmt_range(t['rps'])} | "
               f"{fmt(med(t['p50']), 2)} | {fmt(med(t['p99']), 2)}{fmt_range(t['p99'], 2)} |")
        if cpu:
            proxy_cpu = "–" if target == "direct" else fmt(med(t["cpu"]))
            row += f" {proxy_cpu} | {fmt(med(t['cpu_backend']))} |"
        row += f" {t['errors']} |"
        lines.append(row)
    lines.append("")
    return lines


def cmd_report(results_path, meta_path, out_path):
    rows = load_results(results_path)
    meta = json.load(open(meta_path))
    rounds = meta["rounds"]
    dur = meta["duration"]
    h1 = summarise(rows, "get_h1")
    h2 = summarise(rows, "get_h2")
    key = summarise(rows, "get_key")
    ident = summarise(rows, "get_identity")
    jwt = summarise(rows, "get_jwt")

    md = ["# Benchmarks", ""]
    md += [f"Latest run of `bench/run` (see `bench/README.md` for what each scenario measures "
           f"and how to read it).", ""]
    md += [f"- date: {meta['date']}",
           f"- machine: {meta['nproc']} cores ({meta['cpu']}), {meta['mem']} RAM, "
           f"kernel {meta['kernel']}",
           f"- commit: {meta['commit']}",
           f"- versions: {meta['versions']}",
           f"- proxies: nginx `worker_processes {meta['nginx_workers']}`, HAProxy "
           f"`nbthread {meta['nproc']}`, Portcullis `runtime.threads` default ({meta['nproc']} "
           f"workers, one per core); backend: echo-service `--listen` (direct, nginx, HAProxy) or linked "
           f"(Portcullis, {meta.get('links', 1)} link(s))",
           f"- API key: " + ("required and checked on every Portcullis call in every scenario "
                             "(the Portcullis rows are keyed rows)" if meta.get("keyed") else
                             "not available in this build (Portcullis rows without a key)"),
           f"- load: median of {rounds} interleaved rounds per target, {dur} s each, order "
           f"reversed every other round; ranges are min–max over the rounds",
           f"- scenario time: {meta['elapsed']} s",
           ""]
    if meta.get("notes"):
        md += ["Notes from this run:", ""] + [f"- {n}" for n in meta["notes"]] + [""]

    md += load_table(f"1. Small GET `/echo/x`, HTTP/1.1 keep-alive, 64 connections "
                     f"(`{meta['cmd_wrk']}`)", h1, TARGETS)
    md += load_table(f"2. Small GET `/echo/x`, HTTP/2 (h2c prior knowledge), 64 connections × "
                     f"1 stream (`{meta['cmd_h2load']}`)", h2, TARGETS)
    md += load_table("3. Portcullis with an API key required and checked on every call "
                     "(HTTP/1.1, as in 1, interleaved with NGINX)", key,
                     ["nginx", "portcullis+key"])
    if jwt:
        md += load_table("3a. A user's token (JWT, EdDSA, verified locally) instead of the API "
                         "key, interleaved with the API-key row", jwt,
                         ["portcullis+key", "portcullis+jwt"])
    if ident:
        md += load_table("3b. The service verifies the gateway's identity assertion and its "
                         "handler reads the caller (`GET /whoami`, the SDK's `Identity` "
                         "extractor), interleaved with the API-key row (`GET /echo/x`)", ident,
                         ["portcullis+key", "portcullis+identity"])

    def idle_rows(scenario):
        return {r["target"]: r for r in rows if r.get("scenario") == scenario}

    def idle_table(title, idle, targets):
        out = [f"### {title}", "",
               "| target | RSS before, MiB | RSS with the connections open, MiB | growth, MiB | "
               "per connection, KiB | connections held |",
               "|---|---:|---:|---:|---:|---:|"]
        for t in targets:
            r = idle.get(t)
            if r is None:
                continue
            if r.get("note"):
                out.append(f"| {t} | {r['note']} | | | | |")
                continue
            grow = (r["rss_after_kib"] - r["rss_before_kib"])
            per = grow / r["held"] if r["held"] else None
            out.append(f"| {t} | {fmt(r['rss_before_kib'] / 1024, 1)} | "
                       f"{fmt(r['rss_after_kib'] / 1024, 1)} | {fmt(grow / 1024, 1)} | "
                       f"{fmt(per, 1)} | {r['held']:,} |")
        out += ["", "RSS is `VmRSS` from `/proc/PID/status`: NGINX summed over its worker "
                "processes (the master holds no connections), HAProxy and Portcullis one process "
                "each.", ""]
        return out

    idle = idle_rows("idle")
    if idle:
        md += idle_table(f"4. {meta['idle_n']:,} idle keep-alive client connections "
                         f"(one request each, then held open)", idle,
                         ["nginx", "haproxy", "portcullis"])

    stream = {}
    for r in rows:
        if r.get("scenario") == "stream":
            stream.setdefault(r["target"], []).append(r)
    size = meta.get("stream_bytes", 1 << 30)
    size_text = "1 GiB" if size == 1 << 30 else f"{size:,}-byte"
    md += [f"### 5. One {size_text} streamed download per target and round (`{meta['cmd_curl']}`)", "",
           "| target | MB/s (range) | vs direct | errors |", "|---|---:|---:|---:|"]
    direct_speed = med([r["mbps"] for r in stream.get("direct", []) if r.get("ok")])
    for t in TARGETS:
        rs = stream.get(t)
        if not rs:
            continue
        ok = [r["mbps"] for r in rs if r.get("ok")]
        bad = len(rs) - len(ok)
        md.append(f"| {t} | {fmt(med(ok))}{fmt_range(ok)} | "
                  f"{'–' if t == 'direct' else ratio(med(ok), direct_speed)} | {bad} |")
    md += ["", "MB = 10⁶ bytes; curl's `%{speed_download}` over the whole transfer.", ""]

    def m(s, t, k):
        v = s.get(t)
        return med(v[k]) if v else None

    tls_t = ["nginx-tls", "haproxy-tls", "portcullis-tls"]
    tls_h1 = summarise(rows, "tls_h1")
    tls_h2 = summarise(rows, "tls_h2")
    if tls_h1:
        md += load_table(f"6. HTTPS (TLS 1.3, ECDSA P-256), HTTP/1.1 keep-alive, "
                         f"{meta.get('conns', 64)} connections (`{meta['cmd_wrk']} https://…`)",
                         tls_h1, tls_t)
    if tls_h2:
        md += load_table(f"7. HTTPS (TLS 1.3), HTTP/2 by ALPN, {meta.get('conns', 64)} "
                         f"connections × 1 stream (`{meta['cmd_h2load']} https://…`)",
                         tls_h2, tls_t)
    conn_plain = summarise(rows, "conn_plain")
    conn_full = summarise(rows, "conn_tls_full")
    conn_res = summarise(rows, "conn_tls_resumed")
    if conn_plain or conn_full or conn_res:
        md += ["### 8. New connections, one request each", "",
               "Plain: `wrk -H 'Connection: close'` (every request a new connection, "
               f"{meta.get('conns', 64)} at a time). TLS: `bench/tls_conns.py`, one client, "
               "connection after connection, full handshakes or resuming the previous "
               "connection's session (TLS 1.3 ticket). CPU per connection = the process's CPU "
               "time over the run ÷ connections made.", "",
               "| target | kind | connections/s (range) | p99 ms | proxy CPU per connection, µs "
               "(range) | backend CPU per connection, µs | resumed | errors |",
               "|---|---|---:|---:|---:|---:|---:|---:|"]
        for kind, summ, targets in [("plain", conn_plain, ["nginx", "haproxy", "portcullis"]),
                                    ("TLS full handshake", conn_full, tls_t),
                                    ("TLS resumed", conn_res, tls_t)]:
            for t in targets:
                v = summ.get(t)
                if not v or not v["rps"]:
                    continue
                res = f"{med(v['resumed']):.0f} %" if v["resumed"] else "–"
                md.append(f"| {t} | {kind} | {fmt(med(v['rps']))}{fmt_range(v['rps'])} | "
                          f"{fmt(med(v['p99']), 2)} | {fmt(med(v['us_proxy']), 1)}"
                          f"{fmt_range(v['us_proxy'], 1)} | {fmt(med(v['us_backend']), 1)} | "
                          f"{res} | {v['errors']} |")
        md.append("")
    idle_h1s, idle_h2s = idle_rows("idle_tls_h1"), idle_rows("idle_tls_h2")
    if idle_h1s:
        md += idle_table(f"9a. {meta['idle_n']:,} idle TLS connections, HTTP/1.1 (one request "
                         f"each, then held open)", idle_h1s, tls_t)
    if idle_h2s:
        md += idle_table(f"9b. {meta['idle_n']:,} idle TLS connections, HTTP/2 (one stream "
                         f"each, then held open with no stream)", idle_h2s, tls_t)
    if h1 and any(v["us_backend"] for v in h1.values()):
        md += ["### CPU per request, HTTP/1.1 keep-alive (scenario 1)", "",
               "The backend column is the echo service: plain HTTP/1.1 behind NGINX and "
               "HAProxy, linked (the SDK's side of the link) behind Portcullis.", "",
               "| target | proxy CPU per request, µs | backend CPU per request, µs |",
               "|---|---:|---:|"]
        for t in TARGETS:
            v = h1.get(t)
            if v and v["us_backend"]:
                proxy_us = "–" if t == "direct" else fmt(med(v["us_proxy"]), 1)
                md.append(f"| {t} | {proxy_us} | {fmt(med(v['us_backend']), 1)} |")
        md.append("")

    md += ["### Ratios", "",
           "Requests/s: higher is better for Portcullis; p99: lower is better.", "",
           "| measure | Portcullis/NGINX | Portcullis/HAProxy |", "|---|---:|---:|"]
    for label, s in [("HTTP/1.1", h1), ("HTTP/2", h2)]:
        md.append(f"| requests/s, {label} | {ratio(m(s, 'portcullis', 'rps'), m(s, 'nginx', 'rps'))} | "
                  f"{ratio(m(s, 'portcullis', 'rps'), m(s, 'haproxy', 'rps'))} |")
        md.append(f"| p99, {label} | {ratio(m(s, 'portcullis', 'p99'), m(s, 'nginx', 'p99'))} | "
                  f"{ratio(m(s, 'portcullis', 'p99'), m(s, 'haproxy', 'p99'))} |")
    if m(key, "portcullis+key", "rps") is not None:
        md.append(f"| requests/s, API key | {ratio(m(key, 'portcullis+key', 'rps'), m(key, 'nginx', 'rps'))} | – |")
        md.append(f"| p99, API key | {ratio(m(key, 'portcullis+key', 'p99'), m(key, 'nginx', 'p99'))} | – |")
    else:
        md.append("| API key | n/a (keys not available in this build) | – |")
    if m(jwt, "portcullis+jwt", "rps") is not None:
        md.append(f"| requests/s, user token ÷ API key (3a) | "
                  f"{ratio(m(jwt, 'portcullis+jwt', 'rps'), m(jwt, 'portcullis+key', 'rps'))}"
                  f" (Portcullis/Portcullis) | – |")
    if m(ident, "portcullis+identity", "rps") is not None:
        md.append(f"| requests/s, identity verified by the service ÷ API key (3b) | "
                  f"{ratio(m(ident, 'portcullis+identity', 'rps'), m(ident, 'portcullis+key', 'rps'))}"
                  f" (Portcullis/Portcullis) | – |")
    for label, s in [("HTTPS HTTP/1.1", tls_h1), ("HTTPS HTTP/2", tls_h2)]:
        if s:
            md.append(f"| requests/s, {label} | "
                      f"{ratio(m(s, 'portcullis-tls', 'rps'), m(s, 'nginx-tls', 'rps'))} | "
                      f"{ratio(m(s, 'portcullis-tls', 'rps'), m(s, 'haproxy-tls', 'rps'))} |")
    tls_plain = {}
    if tls_h1 and h1:
        for t in ["nginx", "haproxy", "portcullis"]:
            a, b = m(tls_h1, f"{t}-tls", "rps"), m(h1, t, "rps")
            tls_plain[t] = a / b if a is not None and b else None
        md.append("| HTTPS ÷ plain requests/s, HTTP/1.1 (each proxy against itself: "
                  + ", ".join(f"{t} {'–' if v is None else f'{v:.2f}'}" for t, v in tls_plain.items())
                  + ") | – | – |")
    for label, s, pt, nt, ht in [("plain new connection", conn_plain, "portcullis", "nginx", "haproxy"),
                                 ("TLS full handshake", conn_full, "portcullis-tls", "nginx-tls", "haproxy-tls"),
                                 ("TLS resumed connection", conn_res, "portcullis-tls", "nginx-tls", "haproxy-tls")]:
        if s:
            md.append(f"| proxy CPU per {label} (lower is better) | "
                      f"{ratio(m(s, pt, 'us_proxy'), m(s, nt, 'us_proxy'))} | "
                      f"{ratio(m(s, pt, 'us_proxy'), m(s, ht, 'us_proxy'))} |")
    if h1 and m(h1, "portcullis", "us_backend") is not None:
        md.append(f"| backend CPU per request, HTTP/1.1: linked echo ÷ plain echo (lower is "
                  f"better) | {ratio(m(h1, 'portcullis', 'us_backend'), m(h1, 'nginx', 'us_backend'))} | "
                  f"{ratio(m(h1, 'portcullis', 'us_backend'), m(h1, 'haproxy', 'us_backend'))} |")
    pc = idle.get("portcullis", {})
    ng = idle.get("nginx", {})
    hp = idle.get("haproxy", {})

    def growth(r):
        if not r or r.get("note"):
            return None
        return r["rss_after_kib"] - r["rss_before_kib"]
    md.append(f"| RSS growth, idle connections | {ratio(growth(pc), growth(ng))} | "
              f"{ratio(growth(pc), growth(hp))} |")
    pst = med([r["mbps"] for r in stream.get("portcullis", []) if r.get("ok")])
    md.append(f"| streaming MB/s | "
              f"{ratio(pst, med([r['mbps'] for r in stream.get('nginx', []) if r.get('ok')]))} | "
              f"{ratio(pst, med([r['mbps'] for r in stream.get('haproxy', []) if r.get('ok')]))} |")
    md.append("")

    # The goals of issue #5, checked on the keyed rows when the build has keys.
    load = key if m(key, "portcullis+key", "rps") is not None else h1
    who = "portcullis+key" if load is key else "portcullis"
    p_rps, n_rps = m(load, who, "rps"), m(load, "nginx", "rps")
    p_p99, n_p99 = m(load, who, "p99"), m(load, "nginx", "p99")
    pc_after = (pc.get("rss_after_kib") / 1024) if pc and not pc.get("note") else None
    dst = med([r["mbps"] for r in stream.get("direct", []) if r.get("ok")])

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "not met")

    def cmp(a, b, f):
        return None if a is None or b is None else f(a, b)
    if load is key or meta.get("keyed"):
        keyed = " (API key checked)"
    else:
        keyed = " (no API key in this build)"
    md += ["### Targets (issue #5)", "",
           "| target | this run | |", "|---|---:|---|",
           f"| requests/s ≥ 1.0× NGINX{keyed} | {ratio(p_rps, n_rps)} | "
           f"{verdict(cmp(p_rps, n_rps, lambda a, b: a >= b))} |",
           f"| p99 ≤ NGINX{keyed} | {ratio(p_p99, n_p99)} | "
           f"{verdict(cmp(p_p99, n_p99, lambda a, b: a <= b))} |",
           f"| {meta['idle_n']:,} idle connections under 100 MiB resident | "
           f"{fmt(pc_after, 1)} MiB | {verdict(None if pc_after is None else pc_after < 100)} |",
           f"| streaming within 20% of direct | {ratio(pst, dst)} | "
           f"{verdict(cmp(pst, dst, lambda a, b: a >= 0.8 * b))} |",
           ""]
    i_rps, k_rps = m(ident, "portcullis+identity", "rps"), m(ident, "portcullis+key", "rps")
    j_rps, jk_rps = m(jwt, "portcullis+jwt", "rps"), m(jwt, "portcullis+key", "rps")
    if i_rps is not None or j_rps is not None:
        md += ["### Targets (issue 10)", "", "| target | this run | |", "|---|---:|---|"]
        if j_rps is not None:
            md.append(f"| user token within 10% of the API-key row (3a) | {ratio(j_rps, jk_rps)} | "
                      f"{verdict(cmp(j_rps, jk_rps, lambda a, b: a >= 0.9 * b))} |")
        if i_rps is not None:
            md.append(f"| identity verified by the service within 10% of the API-key row (3b) | "
                      f"{ratio(i_rps, k_rps)} | {verdict(cmp(i_rps, k_rps, lambda a, b: a >= 0.9 * b))} |")
        md.append("")

    if tls_h1 or conn_plain or idle or (h1 and m(h1, "portcullis", "us_backend") is not None):
        md += ["### Targets (issue 14)", "", "| target | this run | |", "|---|---:|---|"]
        for label, s in [("HTTP/1.1", tls_h1), ("HTTP/2", tls_h2)]:
            if not s:
                continue
            p = m(s, "portcullis-tls", "rps")
            for other in ["nginx", "haproxy"]:
                o = m(s, f"{other}-tls", "rps")
                md.append(f"| HTTPS keep-alive {label} ≥ 1.0× {other} | {ratio(p, o)} | "
                          f"{verdict(cmp(p, o, lambda a, b: a >= b))} |")
        if tls_plain.get("portcullis") is not None:
            v = tls_plain["portcullis"]
            md.append(f"| TLS/plain throughput ≥ 0.85 | {v:.2f} | {verdict(v >= 0.85)} |")
        if conn_plain:
            p, n = m(conn_plain, "portcullis", "us_proxy"), m(conn_plain, "nginx", "us_proxy")
            md.append(f"| plain new connection CPU ≤ 1.1× NGINX | {ratio(p, n)} | "
                      f"{verdict(cmp(p, n, lambda a, b: a <= 1.1 * b))} |")
        if h1 and m(h1, "portcullis", "us_backend") is not None:
            p, n = m(h1, "portcullis", "us_backend"), m(h1, "nginx", "us_backend")
            md.append(f"| linked service CPU per call ≤ 1.1× the plain backend's (behind NGINX) | "
                      f"{ratio(p, n)} | {verdict(cmp(p, n, lambda a, b: a <= 1.1 * b))} |")
        pcg = growth(pc)
        if pcg is not None and pc.get("held"):
            per = pcg / pc["held"]
            md.append(f"| idle plain HTTP/1.1 ≤ 1 KiB per connection | {per:.1f} KiB | "
                      f"{verdict(per <= 1.0)} |")
        md.append("")

    md += ["### Commands", "", "```sh"] + meta["commands"] + ["```", ""]
    text = "\n".join(md)
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


COMMANDS = {
    "ports": cmd_ports, "wait-port": cmd_wait_port, "ticks": cmd_ticks, "rss": cmd_rss,
    "wrk": cmd_wrk, "h2load": cmd_h2load, "json-get": cmd_json_get, "report": cmd_report,
    "merge": cmd_merge,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
