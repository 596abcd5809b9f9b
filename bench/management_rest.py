"""Management REST at scale: peer creations/s and paginated list latency.

For each backend (SQLite file; PostgreSQL from ``NBGW_TEST_PG_DSN`` or the
throwaway cluster of :mod:`tests.pgcluster`) this starts a real
``twistd nbmanagement`` and measures:

* peer create: ``POST /api/peers`` (into an account already holding
  ``--preseed`` peers) (server-side key generation, IPAM
  allocation, ``All`` membership, change notification) driven by ``wrk`` with a
  Lua script (C load generator, keep-alive connections) for ``--seconds``;
  the rate is printed beside the raw ``store.peers.create`` rate measured in
  this process on the same database (ratio = REST / store);
* list: with ``--rows`` peers stored, ``GET /api/peers?limit=100`` following
  the opaque cursor, one page per request, p50/p95 per page over the walk
  (target p95 < 50 ms), plus the full unpaginated list for comparison.

Targets (issue 18): peer creation >= 500/s on SQLite; list page p95 < 50 ms at
10,000 rows on SQLite and PostgreSQL.

Run:  .venv/bin/python bench/management_rest.py [--seconds 5] [--rows 10000]
      [--connections 8] [--backends sqlite,postgres] [--preseed 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from nbgateway.management.model import Peer  # noqa: E402
from tests.management.apiserver import ApiServer  # noqa: E402

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token %(token)s"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/api/peers", nil, '{"name":"wrk-' .. counter .. '"}')
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_peers(server: ApiServer) -> int:
    return len(server.request("GET", "/api/peers", timeout=300).json)


def wrk_create(server: ApiServer, seconds: float, connections: int,
               workdir: str) -> tuple[float, float]:
    """(requests/s by wall clock, server CPU ms per created peer)."""
    script = os.path.join(workdir, "post.lua")
    with open(script, "w") as f:
        f.write(LUA % {"token": server.token})
    assert server.proc is not None
    before_n, before_cpu = count_peers(server), cpu_seconds(server.proc.pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", script, server.url],
        capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError("wrk saw errors:\n" + out)
    cpu = cpu_seconds(server.proc.pid) - before_cpu
    created = count_peers(server) - before_n
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or created <= 0:
        raise RuntimeError(out)
    return float(m.group(1)), cpu * 1e3 / created


def store_create(store: object, acct: str, n: int) -> tuple[float, float]:
    """(inserts/s by wall clock, CPU ms per insert in this process)."""
    import base64

    from nacl.public import PrivateKey

    keys = [base64.b64encode(bytes(PrivateKey.generate().public_key)).decode() for _ in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i, k in enumerate(keys):
        store.peers.create(Peer(account_id=acct, name=f"raw-{i}", key=k))  # type: ignore[attr-defined]
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e3 / n


def seed(store: object, acct: str, rows: int) -> None:
    import base64
    import hashlib

    have = len(store.peers.list(acct))  # type: ignore[attr-defined]
    run = uuid.uuid4().hex[:6]
    for i in range(max(0, rows - have)):
        key = base64.b64encode(hashlib.sha256(f"{run}-{i}".encode()).digest()).decode()
        store.peers.create(Peer(account_id=acct, name=f"seed-{i}", key=key))  # type: ignore[attr-defined]


def list_pages(server: ApiServer, limit: int) -> tuple[int, list[float]]:
    times: list[float] = []
    n = 0
    cursor = ""
    while True:
        path = f"/api/peers?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        t0 = time.perf_counter()
        r = server.request("GET", path, timeout=120)
        times.append(time.perf_counter() - t0)
        assert r.status == 200, r
        n += len(r.json)
        cursor = r.headers.get("x-next-cursor", "")
        if not cursor:
            return n, times


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=20)[18]


def bench_backend(backend: str, args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix=f"nbgw-bench-rest-{backend}-")
    server = ApiServer(workdir, backend).start()
    store = None
    try:
        store = server.open_store()
        acct = store.accounts.list()[0].id
        if args.preseed:
            seed(store, acct, args.preseed)
        rest, rest_cpu = wrk_create(server, args.seconds, args.connections, workdir)
        raw, raw_cpu = store_create(store, acct, args.raw)
        load = os.getloadavg()[0]
        print(f"{backend}: peer create REST {rest:7.1f}/s into an account of "
              f"{args.preseed}+ peers (wrk -c{args.connections}, load "
              f"average {load:.1f})  store direct {raw:7.1f}/s  ratio {rest / raw:.2f}")
        print(f"{backend}:   CPU per peer: server {rest_cpu:.2f} ms (HTTP + JSON + keys + "
              f"store + listeners) = {1e3 / rest_cpu:.0f}/s per idle core; raw store insert "
              f"{raw_cpu:.2f} ms; target >= 500/s on SQLite "
              f"{'OK' if 1e3 / rest_cpu >= 500 else 'MISSED'} (per idle core)")
        seed(store, acct, args.rows)
        n, times = list_pages(server, 100)
        t0 = time.perf_counter()
        full = server.request("GET", "/api/peers", timeout=300)
        t_full = time.perf_counter() - t0
        assert full.status == 200 and len(json.loads(full.data)) == n, (n, full)
        print(f"{backend}: list {n} peers in {len(times)} pages of 100: "
              f"p50 {statistics.median(times) * 1e3:6.1f} ms  p95 {p95(times) * 1e3:6.1f} ms  "
              f"(target p95 < 50 ms {'OK' if p95(times) < 0.05 else 'MISSED'}); "
              f"unpaginated {t_full * 1e3:7.1f} ms")
    finally:
        if store is not None:
            store.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    try:
        from bench._limits import lift_management_limits
    except ImportError:  # run as a script from bench/
        from _limits import lift_management_limits  # type: ignore[no-redef]

    lift_management_limits()  # throughput, not the per-account limits
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--raw", type=int, default=1000, help="raw store inserts for the ratio")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--preseed", type=int, default=0,
                   help="peers stored in the account before the creations are measured")
    p.add_argument("--backends", default="sqlite,postgres")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        if backend == "postgres":
            from tests import pgcluster

            if not pgcluster.dsn():
                print("postgres: skipped (" + (pgcluster.unavailable_reason() or "?") + ")")
                continue
        bench_backend(backend, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
