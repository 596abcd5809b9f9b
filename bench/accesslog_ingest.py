"""Access-log ingestion at 10 million rows on PostgreSQL: CPU per ingested row.

Issue #20 asks for 20,000 access-log entries/s per core on PostgreSQL with
one transaction per batch.  Two processes share that core: the management
process (decode, prepare, ``COPY``) and the PostgreSQL backend (the insert
into the table and its indexes, the counting triggers).  This bench measures
both on the real path at the real size.

It loads (or reuses: ``--keep DIR``) the 10,000,000-row cluster of
``bench/accesslog_list.py`` (its loader and schema: 10 accounts, 200 users
each, 8 services, 30 days), then sends batches through the store's own
ingestion, the code the ``NbgwSendAccessLogBatch`` RPC calls: each batch
is ``--batch`` (1,000) ``pb.AccessLog`` messages serialized as a gateway
ships them, parsed, decoded column-wise (``accesslogdecode.decode_batch``)
and stored with ``store.access_logs.append_columns`` (one transaction:
``user_groups`` captured from the directory, binary ``COPY`` into the
staging table, one ``INSERT ... SELECT``, the counting triggers).  The
entries vary as the loader's do (services, hosts, paths, methods, status
codes with ~5 % failures, 80 % of them by one of 200 users, source
addresses, durations), with gateway (time-ordered) ids and timestamps in the
loaded data's last hour (the current day's ranges of the per-day indexes
already hold a day of entries, as in live ingestion; entries after the last
day would land in an empty day and cost less); ``--accounts-per-batch 10``
interleaves 10 accounts in every batch, ``1`` gives each batch one account.

Per measure (``--batches`` batches, in a worker process) it prints the
PostgreSQL backend's CPU per row (``/proc/<pid>/schedstat`` of the client
backends: on-CPU nanoseconds; ``/proc/<pid>/stat``'s 10 ms ticks beside it),
the store call's (``time.process_time`` of the worker around the parse,
decode and ``append_columns``: no gRPC), both as rows per CPU-second, and the
combined figure ``1 / (1/management + 1/server)`` (the issue's "per core"),
with ``--management`` (``bench/management_grpc.py``'s figure over gRPC, one
account) and with the measured store call.  The rows a measure inserted are
deleted after it (not timed), so the cluster stays at its 10M rows.

Same-run A/B: ``--trees name=DIR,...`` measures checkouts in turn (e.g. a
``git worktree`` of the previous revision), rounds interleaved (order
reversed every other round), each measure a worker importing that tree's
``nbgateway`` against the same cluster (the schema must be one both trees
accept: the cluster is migrated by this checkout; ``migrate=False`` in the
workers).  The report gives each tree's median and best, and the median of
the rounds' paired ratios to the first tree.

    .venv/bin/python bench/accesslog_ingest.py --keep /tmp/alist-pg
    git worktree add -f /tmp/old HEAD~1
    .venv/bin/python bench/accesslog_ingest.py --keep /tmp/alist-pg --rounds 6 \\
        --accounts-per-batch 10,1 --trees old=/tmp/old,new=.

The load average is printed with the figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
# --tree DIR (a worker measuring another checkout): that tree's nbgateway
_TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else os.path.dirname(_HERE)
sys.path.insert(0, _TREE)
sys.path.insert(1, _HERE)

from nbgateway._proto import proxy_service_pb2 as pb  # noqa: E402
from nbgateway.management.accesslogdecode import decode_batch  # noqa: E402
from nbgateway.management.store import Store  # noqa: E402
from nbgateway.observe.accesslog import new_log_id  # noqa: E402

# after nbgateway is imported from the tree: accesslog_list puts this checkout
# first on sys.path
alist = importlib.import_module("accesslog_list")

_PATHS = ("/", "/api/v1/items", "/api/v1/users", "/login", "/static/app.js",
          "/static/style.css", "/healthz", "/api/v1/orders")
_STATUS = ((90, 200), (93, 304), (95, 302), (97, 404), (98, 401), (99, 500), (100, 502))


def _status(r2: int) -> int:
    return next(code for bound, code in _STATUS if r2 < bound)


def make_batch(rng: random.Random, accounts: list[int], size: int,
               start_us: int, step_us: int) -> bytes:
    """One serialized ``NbgwSendAccessLogBatchRequest``: *size* entries of
    *accounts* in turn, varied as ``accesslog_list``'s loader varies them."""
    logs = []
    for k in range(size):
        a = accounts[k % len(accounts)]
        aid = alist.account_id(a)
        h = rng.getrandbits(31)
        r1, r2, u = h % 100, rng.randrange(100), (h // 7) % alist.USERS
        code = _status(r2)
        user = r1 < 80
        path = _PATHS[(h // 8) % 8] + (f"/{h % 10000}" if r2 < 30 else "")
        ip = (f"10.{h % 4}.{h % 200}.{h % 250}" if r1 < 50
              else f"203.0.{h % 113}.{h % 251}")
        e = pb.AccessLog(
            log_id=new_log_id(), account_id=aid, service_id=f"{aid}-svc{h % 8}",
            host=f"app{h % 8}.a{a}.example.com", path=path,
            duration_ms=1 + h % 500, method=("GET" if r1 < 80 else "POST" if r1 < 94
                                             else "PUT" if r1 < 98 else "DELETE"),
            response_code=code, source_ip=ip, auth_mechanism="oidc" if user else "",
            user_id=f"{aid}-u{u}" if user else "", auth_success=r2 != 97,
            protocol="http", bytes_upload=h % 4000, bytes_download=h % 200000,
            nbgw_target=f"10.0.0.{h % 4}:8080")
        us = start_us + k * step_us
        e.timestamp.seconds, e.timestamp.nanos = divmod(us, 1_000_000)[0], us % 1_000_000 * 1000
        logs.append(e)
    return pb.NbgwSendAccessLogBatchRequest(logs=logs).SerializeToString()


# -- measuring --------------------------------------------------------------------------------


def _backend_ns(pids: list[int]) -> int:
    """On-CPU nanoseconds of the backends (``/proc/<pid>/schedstat``)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def _backend_ticks(pids: list[int]) -> int:
    """utime + stime clock ticks of the backends (``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


class Ingest:
    """Batches through the store's batch path, measured."""

    def __init__(self, store: Store, admin: Any, accounts: int, batch: int, seed: int) -> None:
        self.store, self.admin, self.accounts, self.batch = store, admin, accounts, batch
        self.rng = random.Random(seed)
        #: epoch microseconds of the loaded data's end: batches follow it
        self.t_us = int(alist.NOW.timestamp()) * 1_000_000

    def _pids(self) -> list[int]:
        return [r[0] for r in self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()]

    def measure(self, per_batch: int, batches: int) -> dict[str, float]:
        """*batches* batches of ``self.batch`` entries (*per_batch* accounts
        each), then their rows deleted again; CPU per row of both sides."""
        wire = []
        for _ in range(batches):
            first = self.rng.randrange(self.accounts)
            accts = [(first + i) % self.accounts for i in range(per_batch)]
            wire.append(make_batch(self.rng, accts, self.batch, self.t_us, 100))
            self.t_us += self.batch * 100
        append = self.store.access_logs.append_columns
        parse = pb.NbgwSendAccessLogBatchRequest.FromString
        append(decode_batch(parse(wire[0]).logs))  # warm: the pool's connection, caches
        pids = self._pids()
        ns0, ticks0, cpu0 = _backend_ns(pids), _backend_ticks(pids), time.process_time()
        stored = 0
        for b in wire[1:]:
            columns = decode_batch(parse(b).logs)
            assert columns is not None
            stored += append(columns)
        cpu = time.process_time() - cpu0
        ns, ticks = _backend_ns(pids) - ns0, _backend_ticks(pids) - ticks0
        rows = (len(wire) - 1) * self.batch
        assert stored == rows, (stored, rows)
        ids = [e.log_id for b in wire for e in parse(b).logs]
        for i in range(0, len(ids), 1000):  # by the id index (a long list: a sequential scan)
            self.admin.execute("DELETE FROM access_log_entries WHERE id = ANY(%s)",
                               (ids[i:i + 1000],))
            self.admin.commit()
        hz = os.sysconf("SC_CLK_TCK")
        return {"server": rows / (ns / 1e9), "server_stat": rows / max(ticks / hz, 1e-9),
                "management": rows / cpu}


def combined(management: float, server: float) -> float:
    return 1 / (1 / management + 1 / server)


# -- one measure in a worker process (the tree under test) ------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Measure ``--batches`` batches with this process's tree; print one JSON line."""
    import psycopg

    store = Store.open(args.dsn, known_clusters=[alist.CLUSTER], migrate=False)
    try:
        with psycopg.connect(args.dsn) as admin:
            ingest = Ingest(store, admin, args.accounts, args.batch, args.seed)
            ingest.t_us = args.t_us
            m = ingest.measure(args.per_batch, args.batches)
    finally:
        store.close()
    print(json.dumps(m))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", metavar="DIR",
                   help="cluster directory of bench/accesslog_list.py (loaded on first use)")
    p.add_argument("--database", default="bench")
    p.add_argument("--rows", type=int, default=10_000_000, help="rows of a new load")
    p.add_argument("--accounts", type=int, default=10, help="accounts of a new load")
    p.add_argument("--stop", action="store_true", help="stop the cluster at exit")
    p.add_argument("--batch", type=int, default=1000, help="entries per batch")
    p.add_argument("--batches", type=int, default=21,
                   help="batches per measure (the first one is untimed)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--accounts-per-batch", default="10,1")
    p.add_argument("--trees", default=f"head={os.path.dirname(_HERE)}",
                   help="name=DIR,... checkouts measured in turn (e.g. a git worktree of the "
                        "previous revision: old=/tmp/old,new=.)")
    p.add_argument("--management", type=float, default=116_000,
                   help="management process entries per CPU-second over gRPC "
                        "(bench/management_grpc.py) for the combined figure")
    p.add_argument("--seed", type=int, default=1)
    # a worker's own arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--per-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--t-us", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.keep:
        p.error("--keep DIR is required")
    trees = dict(t.split("=", 1) for t in args.trees.split(","))
    shapes = [int(x) for x in args.accounts_per_batch.split(",")]
    with alist.kept_cluster(args.keep, stop=args.stop, database=args.database) as dsn:
        store = Store.open(dsn, known_clusters=[alist.CLUSTER])
        try:
            have = alist.loaded(dsn)
            if have is None:
                print(f"loading {args.rows:,} rows over {args.accounts} accounts ...")
                alist.load(store, dsn, args.rows, args.accounts, 500_000)
                have = (args.rows, args.accounts)
        finally:
            store.close()
        print(f"{have[0]:,} rows over {have[1]} accounts; batches of {args.batch}, "
              f"{args.batches - 1} timed per measure; trees {trees}")
        got: dict[tuple[str, int], list[dict[str, float]]] = {}
        # the batches' timestamps: within the loaded data's last hour (the
        # current day's index ranges already hold a day of entries, as live)
        t_us = int(alist.NOW.timestamp() - 3600) * 1_000_000
        seed = args.seed
        for r in range(args.rounds):
            names = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for per in shapes:
                for name in names:
                    out = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--worker",
                         "--tree", trees[name], "--dsn", dsn, "--accounts", str(have[1]),
                         "--batch", str(args.batch), "--batches", str(args.batches),
                         "--per-batch", str(per), "--t-us", str(t_us), "--seed", str(seed)],
                        capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        raise SystemExit(f"worker {name} failed: {out.stderr[-2000:]}")
                    m = json.loads(out.stdout.strip().splitlines()[-1])
                    seed += 1
                    t_us += args.batches * args.batch * 100
                    got.setdefault((name, per), []).append(m)
                    print(f"  round {r + 1} {name:>8} {per:>2} accounts/batch: "
                          f"server {m['server']:9,.0f} rows/CPU-s (stat {m['server_stat']:,.0f}),"
                          f" store call {m['management']:9,.0f}, load {os.getloadavg()[0]:.1f}",
                          flush=True)
        report(got, shapes, list(trees), args.management)
    return 0


def report(got: dict[tuple[str, int], list[dict[str, float]]], shapes: list[int],
           names: list[str], management: float) -> None:
    print("\nrows per CPU-second, median (best) of the rounds; combined = "
          "1/(1/management + 1/server); the ratio is the median of the rounds' paired ratios")
    for per in shapes:
        base = got[(names[0], per)]
        for name in names:
            ms = got[(name, per)]
            server = statistics.median(m["server"] for m in ms)
            best = max(m["server"] for m in ms)
            mgmt = statistics.median(m["management"] for m in ms)
            ratio = statistics.median(
                m["server"] / b["server"] for m, b in zip(ms, base, strict=True))
            print(f"  {per:>2} accounts/batch {name:>8}: server {server:9,.0f} ({best:,.0f}) "
                  f"x{ratio:.3f}  store call {mgmt:9,.0f}  combined with {management:,.0f}: "
                  f"{combined(management, server):8,.0f}, with the store call: "
                  f"{combined(mgmt, server):8,.0f}")


if __name__ == "__main__":
    sys.exit(main())
