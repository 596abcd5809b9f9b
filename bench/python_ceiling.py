"""How fast can any Python/Twisted reverse proxy be on this machine?  (issue 20)

``bench/gateway.py`` compares the gateway with nginx behind wireguard-go.  This
benchmark measures the floor under that comparison: the smallest reverse
proxies one can write in Python on Twisted (``bench/_ceiling_proxy.py``), with
the kernel's TCP on both sides and wireguard-go in front -- i.e. with none of
the gateway's own work (no userspace WireGuard, no netstack, no routing, auth,
timeouts or access log).  If these cannot reach a ratio, the gateway, which
does all of that in the same interpreter, cannot either.

Topology: ``tunnel_pair`` (namespaces A and B joined by wireguard-go <->
wireguard-go).  B runs the nginx upstream (127.0.0.1:8081, 512-byte answer),
nginx as the reverse proxy (100.64.0.2:80: one worker, keep-alive upstream
connections, one header stamped, as in ``bench/gateway.py``) and the Python
proxies:

* ``py_raw``   -- bytes relayed unparsed, one upstream connection per client
  connection (the cost of Twisted's reactor and the socket calls alone);
* ``py_http``  -- httptools parsing of request and response, the request head
  rebuilt with ``X-NetBird-User`` stamped, whole responses relayed;
* ``py_http2`` -- two ``py_http`` processes sharing the port (SO_REUSEPORT):
  what a multi-process gateway could get from this 2-core machine.

wrk from Debian (``-t1``) runs in A: ``--connections`` (16) keep-alive
connections and one connection for latency; rounds interleave every path.
Printed: req/s, p50/p99, the CPU time per request of each proxy's processes,
and the ratios against nginx.

Run as root:  .venv/bin/python bench/python_ceiling.py [--seconds 5] [--rounds 3]
              [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

try:
    from bench._testbed import Testbed, tunnel_pair, unavailable_reason
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import Testbed, tunnel_pair, unavailable_reason

from bench.gateway import (  # repo root put on sys.path by _testbed
    PROXY_HTTP,
    Wrk,
    cpu_seconds,
    make_cert,
    nginx_workers,
    start_nginx,
    upstream_body,
)
from tests.interop.test_private_e2e import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(HERE, "_ceiling_proxy.py")

#: path name -> (port, mode, processes)
PY_PATHS = {"py_raw": (8090, "raw", 1), "py_http": (8091, "http", 1),
            "py_http2": (8092, "http", 2)}


def start_py_proxies(ns, port: int, mode: str, procs: int) -> list[int]:
    pids = []
    for _ in range(procs):
        args = [sys.executable, PROXY, "--listen", f"100.64.0.2:{port}",
                "--upstream", "127.0.0.1:8081", "--mode", mode]
        if procs > 1:
            args.append("--reuseport")
        pids.append(ns.popen(args).pid)
    return pids


def ok(ns, url: str) -> bool:
    return ns.run(["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", url],
                  check=False).stdout.strip() == "200"


def run_bench(seconds: float, rounds: int, conns: int) -> dict:
    reason = unavailable_reason(need=("curl", "wrk", "nginx", "openssl"))
    if reason is not None:
        raise RuntimeError(f"ceiling benchmark unavailable: {reason}")
    out: dict = {"rounds": []}
    with Testbed() as tb:
        ns_a, _wg_a, ns_b, _wg_b = tunnel_pair(tb)
        start_nginx(tb, ns_b, "upstream-b", upstream_body(["127.0.0.1:8081",
                                                            "100.64.0.2:8081"]))
        proxy_dir = os.path.join(tb.tmpdir, "proxy-b")
        os.makedirs(proxy_dir)
        make_cert(tb, proxy_dir)
        start_nginx(tb, ns_b, "proxy-b", PROXY_HTTP.format(dir="{dir}"))
        pidfile = os.path.join(proxy_dir, "nginx.pid")
        wait_for(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile) > 0, 10,
                 "the nginx proxy's pid file")
        cpu_of: dict[str, list[int]] = {"nginx": nginx_workers(proxy_dir)}
        for name, (port, mode, procs) in PY_PATHS.items():
            cpu_of[name] = start_py_proxies(ns_b, port, mode, procs)
        urls = {"upstream": "http://100.64.0.2:8081/", "nginx": "http://100.64.0.2/",
                **{n: f"http://100.64.0.2:{p[0]}/" for n, p in PY_PATHS.items()}}
        for name, url in urls.items():
            wait_for(lambda url=url: ok(ns_a, url), 20, f"{name} at {url}")
        wrk = Wrk(tb, seconds)
        for i in range(rounds):
            rnd: dict = {}
            for name, url in urls.items():
                pids = cpu_of.get(name, [])
                c0 = cpu_seconds(pids)
                r = rnd[f"{name}_c{conns}"] = wrk(ns_a, url, conns)
                if pids and r["requests"]:
                    r["cpu_ms_per_req"] = (cpu_seconds(pids) - c0) * 1000 / r["requests"]
                rnd[f"{name}_c1"] = wrk(ns_a, url, 1)
            out["rounds"].append(rnd)
            print(f"round {i + 1}/{rounds}: " + ", ".join(
                f"{k} {v['rps']:.0f}" for k, v in rnd.items()), file=sys.stderr)
    return out


def summarize(out: dict, conns: int) -> dict:
    def med(key: str, field: str) -> float:
        vals = [r[key][field] for r in out["rounds"] if field in r.get(key, {})]
        return statistics.median(vals) if vals else float("nan")

    names = ["upstream", "nginx", *PY_PATHS]
    summary: dict = {"paths": {}}
    print(f"wrk -t1, medians of {len(out['rounds'])} interleaved rounds; nginx upstream 512 B")
    print(f"  {'path':<42}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>7}{'CPU ms/req':>11}")
    labels = {"upstream": "upstream alone over wireguard-go",
              "nginx": "nginx reverse proxy behind wireguard-go",
              "py_raw": "Twisted byte relay (no HTTP)",
              "py_http": "Twisted + httptools proxy",
              "py_http2": "Twisted + httptools proxy, 2 processes"}
    for name in names:
        for c in (conns, 1):
            key = f"{name}_c{c}"
            row = {"rps": med(key, "rps"), "p50_ms": med(key, "p50_us") / 1000,
                   "p99_ms": med(key, "p99_us") / 1000,
                   "errors": sum(r[key]["errors"] for r in out["rounds"]),
                   "cpu_ms_per_req": med(key, "cpu_ms_per_req")}
            summary["paths"][key] = row
            cpu = "" if row["cpu_ms_per_req"] != row["cpu_ms_per_req"] else \
                f"{row['cpu_ms_per_req']:.3f}"
            print(f"  {labels[name]:<42}{c:>6}{row['rps']:>10.0f}{row['p50_ms']:>9.3f}"
                  f"{row['p99_ms']:>9.3f}{row['errors']:>7}{cpu:>11}")
    nginx = summary["paths"][f"nginx_c{conns}"]["rps"]
    print(f"ratios to nginx (req/s at {conns} connections):")
    for name in PY_PATHS:
        ratio = summary["paths"][f"{name}_c{conns}"]["rps"] / nginx
        summary[f"{name}/nginx"] = ratio
        print(f"  {labels[name]:<52}{ratio:.3f}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.monotonic()
    out = run_bench(args.seconds, args.rounds, args.connections)
    out["summary"] = summarize(out, args.connections)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"(total wall time {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
