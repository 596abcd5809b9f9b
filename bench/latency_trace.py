"""Where one request's time goes in the gateway at one connection (issue 20).

Sets up the gateway path of ``bench/gateway.py`` (management, ``twistd
nbgateway --private``, nginx upstream on loopback, peer "alice" on stock
wireguard-go, wrk with one keep-alive connection) with the gateway started
under ``bench/_lattrace`` (``NBGW_LATTRACE``: stamps at the UDP read, the
netstack delivery, the HTTP request, the upstream write and read, the write
back into the netstack, the WireGuard send and flush, the reactor's poll and
timers; nothing of it is in the shipped code).  A window of ``--window``
seconds in the middle of the wrk run is dumped and cut into request cycles
(a UDP read that starts a request up to the datagram that carries its
response out) and the cycle's phases are summarised as medians:

    rx      poll returned with the UDP socket readable -> HTTP request handed over
    req     HTTP request handling up to the upstream write returning
    wait    upstream write -> the upstream socket's read event (nginx + kernel)
    resp    upstream read -> the response written into the netstack
    flush   netstack write -> the UDP sendto/GSO send (segment, encrypt, and
            the end-of-turn hold)
    polls   epoll_wait calls inside the cycle (1 = only the wait for nginx)

plus every ``callLater`` seen per request and what ran in timer slots.

Run as root:  .venv/bin/python bench/latency_trace.py [--seconds 6] [--window 2]
                  [--raw trace.txt] [--env VAR=VALUE ...]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

try:
    from bench._testbed import Testbed
except ImportError:  # run as a script
    from _testbed import Testbed

import gateway as gwbench  # bench/gateway.py (bench/ is sys.path[0] as a script)

from tests.interop.test_private_e2e import APP, World

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(path: str) -> list[tuple[int, str]]:
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            t, _, name = line.rstrip("\n").partition(" ")
            out.append((int(t), name))
    return out


def cycles(ev: list[tuple[int, str]]) -> list[dict]:
    """Cut the event list into request cycles: from the poll return that
    delivers a request (fd> BatchingPort ... http_req>) to the sendto/GSO that
    follows the response write."""
    res: list[dict] = []
    cur: dict | None = None
    last_poll_end = None
    poll_start = None
    mode = ""
    for t, name in ev:
        if name.startswith("mode "):
            mode = name.split()[1]
            cur = None  # a cycle across a switch counts for neither
            continue
        if name.startswith("poll>"):
            poll_start = t
            if cur is not None:
                cur["polls"] += 1
            continue
        if (name.startswith("fd> ") or name == "timers>") and poll_start is not None:
            last_poll_end = t  # first thing after the poll
            if cur is not None:
                cur.setdefault("poll_gaps", []).append((t - poll_start) / 1000)
            poll_start = None
        if name.startswith("fd> BatchingPort") and cur is None:
            cur = {"t0": last_poll_end if last_poll_end is not None else t, "polls": 0,
                   "mode": mode,
                   "calllater": [], "timers": 0}
            continue
        if cur is None:
            continue
        if name.startswith("callLater"):
            cur["calllater"].append(name.split()[1])
        elif name == "timers>":
            cur["timers"] += 1
        elif name == "http_req>" and "req" not in cur:
            cur["req"] = t
        elif name == "up_write<" and "upw" not in cur:
            cur["upw"] = t
        elif name.startswith("fd> Client") and "upw" in cur and "upr" not in cur:
            cur["upr"] = t
        elif name == "ns_write>" and "upr" in cur and "wgs" not in cur:
            cur["wgs"] = t
        elif name in ("sendto>", "sendgso>") and "wgs" in cur:
            cur["out"] = t
            res.append(cur)
            cur = None
    return res


def summarise(cs: list[dict]) -> dict:
    ok = [c for c in cs if all(k in c for k in ("req", "upw", "upr", "wgs", "out"))]
    if not ok:
        return {"cycles": 0}

    def med(vals):
        return round(statistics.median(vals) / 1000, 1)

    out = {
        "cycles": len(ok),
        "rx_us": med([c["req"] - c["t0"] for c in ok]),
        "req_us": med([c["upw"] - c["req"] for c in ok]),
        "wait_us": med([c["upr"] - c["upw"] for c in ok]),
        "resp_us": med([c["wgs"] - c["upr"] for c in ok]),
        "flush_us": med([c["out"] - c["wgs"] for c in ok]),
        "total_us": med([c["out"] - c["t0"] for c in ok]),
        "gateway_us": med([(c["out"] - c["t0"]) - (c["upr"] - c["upw"]) for c in ok]),
        "polls_per_cycle": round(statistics.mean(c["polls"] for c in ok), 2),
        "timer_slots_per_cycle": round(statistics.mean(c["timers"] for c in ok), 2),
    }
    cl = collections.Counter(n for c in ok for n in c["calllater"])
    out["callLater_per_cycle"] = {k: round(v / len(ok), 3) for k, v in cl.most_common(8)}
    return out


def light_cycles(ev: list[tuple[int, str]]) -> dict:
    """--light: per setting, the request cycles (UDP read event to the next)
    that lie wholly inside one toggle period: how many per second of that
    setting, and their median and 90th percentile in microseconds."""
    by: dict[str, list[int]] = {}
    span: dict[str, int] = {}
    mode, last, since = "", None, None
    for t, name in ev:
        if name.startswith("mode "):
            if since is not None and mode:
                span[mode] = span.get(mode, 0) + (t - since)
            mode, last, since = name.split()[1], None, t
            continue
        if mode and last is not None:
            by.setdefault(mode, []).append(t - last)
        last = t
    out = {}
    for m, v in sorted(by.items()):
        v.sort()
        out[m] = {"cycles": len(v), "per_s": round(len(v) / (span.get(m, 1) / 1e9)),
                  "p50_us": round(v[len(v) // 2] / 1000, 1),
                  "p90_us": round(v[len(v) * 9 // 10] / 1000, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--raw", default=None, help="keep the raw trace here")
    p.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                   help="extra environment of the gateway (A/B switches)")
    p.add_argument("--toggle", default=None, metavar="MODULE:CLASS.ATTR",
                   help="flip this boolean attribute on every instance every 0.2 s "
                        "and summarise the cycles of each setting apart (an A/B in one "
                        "process, interleaved)")
    p.add_argument("--light", action="store_true",
                   help="stamp only the UDP read events (request cycles at one "
                        "connection, next to no tracer cost); with --toggle: cycle "
                        "time per setting")
    p.add_argument("--py-spy", default=None, metavar="FILE",
                   help="also record the gateway with py-spy (raw, 1000 Hz) during the "
                        "window")
    p.add_argument("--no-trace", action="store_true",
                   help="wrk only (the tracer's cost out of the p50)")
    args = p.parse_args(argv)
    reason = gwbench.unavailable_reason(need=("curl", "wg-quick", "wrk", "nginx"))
    if reason is not None:
        print(f"unavailable: {reason}", file=sys.stderr)
        return 2
    raw = args.raw or f"/tmp/lattrace-{os.getpid()}.txt"
    if os.path.exists(raw):
        os.unlink(raw)
    for kv in args.env:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    if not args.no_trace:
        os.environ["NBGW_LATTRACE"] = raw
        if args.toggle:
            os.environ["NBGW_LATTRACE_TOGGLE"] = args.toggle
        if args.light:
            os.environ["NBGW_LATTRACE_LIGHT"] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            x for x in (os.path.join(HERE, "_lattrace"), os.environ.get("PYTHONPATH")) if x)
    hosts_dirs: list[str] = []
    result: dict = {}
    with Testbed() as tb:
        try:
            w = World(tb)
            gwbench.start_nginx(tb, w.g, "upstream-g",
                                gwbench.upstream_body(["127.0.0.1:8081"]))
            _token, ns, gw_ip = gwbench.bring_up_private_app(w, hosts_dirs)
            pid = gwbench.find_gateway_pid(w)
            wrk = gwbench.Wrk(tb, 2.0)
            wrk(ns, f"http://{gw_ip}/", 1, "Host: " + APP)  # warm-up
            lua = tb.write_file("report2.lua", gwbench.WRK_LUA)
            with open(raw + ".wrk", "w") as wrk_out:
                proc = ns.popen(["wrk", "-t1", "-c1", f"-d{args.seconds:g}s", "--timeout",
                                 "5s", "-s", lua, "-H", "Host: " + APP, f"http://{gw_ip}/"],
                                stdout=wrk_out, stderr=subprocess.DEVNULL)
            time.sleep(max(0.5, (args.seconds - args.window) / 2))
            spy = None
            if args.py_spy:
                spy = subprocess.Popen(
                    [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p",
                     str(pid), "-d", str(max(1, int(args.window))), "-f", "raw", "-o",
                     args.py_spy, "-r", "1000", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not args.no_trace:
                os.kill(pid, signal.SIGUSR2)  # clear
            time.sleep(args.window)
            if not args.no_trace:
                os.kill(pid, signal.SIGUSR2)  # the window
            if spy is not None:
                spy.wait(timeout=60)
            proc.wait(timeout=args.seconds + 60)
            time.sleep(0.5)
            with open(raw + ".wrk") as f:
                line = [x for x in f.read().splitlines() if x.startswith("{")][-1]
            r = json.loads(line)
            result["wrk"] = {"requests": r["requests"], "p50_us": r["p50_us"],
                             "p99_us": r["p99_us"],
                             "errors": sum(r[k] for k in ("connect", "read", "write", "status",
                                                          "timeout"))}
        finally:
            for d in hosts_dirs:
                shutil.rmtree(d, ignore_errors=True)
    if not args.no_trace:
        with open(raw) as f:
            text = f.read()
        parts = text.split("# dump\n")
        window = parts[1] if len(parts) > 2 else parts[0]
        with open(raw + ".window", "w") as f:
            f.write(window)
        ev = parse(raw + ".window")
        if args.light:
            result["cycles"] = light_cycles(ev)
            print(json.dumps(result, indent=1))
            return 0
        cs = cycles(ev)
        modes = sorted({c["mode"] for c in cs})
        if modes == [""]:
            result["trace"] = summarise(cs)
        else:  # --toggle: the two settings alternated in one process
            for m in modes:
                if m:
                    result[f"trace {m}"] = summarise([c for c in cs if c["mode"] == m])
        # outside the gateway: from a response's send to the next request's poll return
        outs = [(c["out"], c["t0"]) for c in cs if "out" in c]
        gaps = [b[1] - a[0] for a, b in itertools.pairwise(outs)]
        if gaps and "trace" in result:
            result["trace"]["outside_us"] = round(statistics.median(gaps) / 1000, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
