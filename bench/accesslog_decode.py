"""The management process's CPU per ingested access-log entry, by stage.

``bench/management_grpc.py --parts accesslog`` gives one figure for the
whole RPC (uniform entries of one account and one user); this bench splits
the management process's work on a batch into its stages and counts them
in a load-independent way, on varied batches (``bench/accesslog_ingest.py``'s
``make_batch``: services, hosts, paths, methods, status codes with ~5 %
failures, 200 users per account, source addresses, durations, gateway ids),
``--accounts-per-batch`` accounts interleaved per batch:

* ``parse``: ``NbgwSendAccessLogBatchRequest.FromString`` of the wire bytes;
* ``decode``: parse + ``accesslogdecode.decode_batch``;
* ``store``: parse + decode + ``store.access_logs.append_columns`` (account
  check, prepare, user-group capture, the driver: SQLite executemany or
  PostgreSQL binary COPY + INSERT ... SELECT);
* ``rpc``: the servicer's ``NbgwSendAccessLogBatch`` handler as the gRPC
  server calls it (token check, parse, the handler), no transport;
* ``grpc``: the same batches over a real grpcio server on loopback, client
  in this process (as ``management_grpc.py``: serialized beforehand).

The directory (10 accounts x 200 users, ``bench/accesslog_list.py``'s
``seed_directory``) and the batches are made once by the parent; every
measure is a worker process (``--tree DIR``: that checkout's ``nbgateway``)
that runs one stage over ``--batches`` batches after one untimed batch and
prints its CPU per entry.  ``--callgrind`` runs each worker under
``valgrind --tool=callgrind`` twice, with ``--batches`` and with 1 batch,
and prints the difference in instructions per entry (the process's start,
imports and the warm batch cancel out): the figure does not depend on the
machine's load.  Under ``--callgrind`` a worker moves what is alive after
its warm batch into the permanent generation (``gc.freeze``): a full
collection walks the whole heap (the imports: tens of millions of
instructions), and whether one fell inside the longer or the shorter run
moved the figure by up to ~14k instructions per entry from run to run;
collections of what the batches themselves allocate still count.  The
PostgreSQL server is another process: only the management side is counted.

    .venv/bin/python bench/accesslog_decode.py --backends sqlite,postgres \\
        --stages decode,store,rpc [--callgrind] [--trees old=/tmp/old,new=.]

PostgreSQL: ``NBGW_TEST_PG_DSN``, else the throwaway cluster of
tests/pgcluster.py (fsync off), a fresh schema per run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
_TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else os.path.dirname(_HERE)
sys.path.insert(0, _TREE)
sys.path.insert(1, _HERE)
# the tree's package, bound before accesslog_list puts this checkout on sys.path
import nbgateway  # noqa: E402, F401

STAGES = ("parse", "decode", "store", "rpc", "grpc")


def _batches(accounts: int, per_batch: int, size: int, count: int, seed: int) -> list[bytes]:
    import accesslog_ingest as ingest  # the varied entries of the 10M bench

    rng = random.Random(seed)
    t_us = int(time.time() - 3600) * 1_000_000
    out = []
    for _ in range(count):
        first = rng.randrange(accounts)
        accts = [(first + i) % accounts for i in range(per_batch)]
        out.append(ingest.make_batch(rng, accts, size, t_us, 100))
        t_us += size * 100
    return out


def worker(args: argparse.Namespace) -> int:
    """One stage over the first ``--batches`` + 1 batches of the file; one JSON line."""
    import types

    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway.management.accesslogdecode import decode_batch
    from nbgateway.management.store import Store

    with open(args.batches_file, "rb") as f:
        wire = pickle.load(f)[: args.batches + 1]
    n = sum(len(pb.NbgwSendAccessLogBatchRequest.FromString(b).logs) for b in wire[1:])
    store = Store.open(args.dsn, migrate=False)
    parse = pb.NbgwSendAccessLogBatchRequest.FromString
    append = store.access_logs.append_columns
    stored = n
    svc = None
    try:
        if args.stage == "parse":
            def one(raw: bytes) -> int:
                return len(parse(raw).logs)
        elif args.stage == "decode":
            def one(raw: bytes) -> int:
                return len(decode_batch(parse(raw).logs)[0])
        elif args.stage == "store":
            def one(raw: bytes) -> int:
                return append(decode_batch(parse(raw).logs))
        elif args.stage == "rpc":
            from nbgateway.management.proxyservice import ProxyServiceServicer

            servicer = ProxyServiceServicer(store)
            handler = servicer.generic_handler().service(types.SimpleNamespace(
                method="/management.ProxyService/NbgwSendAccessLogBatch")).unary_unary
            ctx = _Ctx(args.token)

            def one(raw: bytes) -> int:
                return handler(raw, ctx).stored
        else:
            import grpc

            from nbgateway.management.grpcserver import ProxyGrpcService

            svc = ProxyGrpcService(store, addr="127.0.0.1:0")
            svc.startService()
            send = grpc.insecure_channel(f"127.0.0.1:{svc.port}").unary_unary(
                "/management.ProxyService/NbgwSendAccessLogBatch", request_serializer=None,
                response_deserializer=pb.NbgwSendAccessLogBatchResponse.FromString)
            md = (("authorization", f"Bearer {args.token}"),)

            def one(raw: bytes) -> int:
                return send(raw, metadata=md).stored
        one(wire[0])  # warm: the pool's connection, caches
        if args.freeze:  # --callgrind: see the module docstring
            gc.collect()
            gc.freeze()
        cpu0 = time.process_time()
        got = sum(one(b) for b in wire[1:])
        cpu = time.process_time() - cpu0
        if args.stage in ("store", "rpc", "grpc"):
            assert got == stored, (got, stored)
    finally:
        if svc is not None:
            svc.servicer.stop()
            svc.server.stop(0).wait(5)
        store.close()
    print(json.dumps({"entries": n, "cpu": cpu}))
    return 0


class _Ctx:
    """The servicer context the handler reads: metadata, peer, abort."""

    def __init__(self, token: str) -> None:
        self._md = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self):
        return self._md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def _run(tree: str, stage: str, batches: int, dsn: str, token: str, path: str,
         callgrind: bool) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--tree", tree,
           "--stage", stage, "--batches", str(batches), "--dsn", dsn, "--token", token,
           "--batches-file", path]
    if callgrind:
        out_file = path + ".callgrind"
        cmd.append("--freeze")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {tree} {stage} failed: {out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if callgrind:
        m = re.search(r"Collected : (\d+)", out.stderr)
        got["ir"] = int(m.group(1)) if m else 0
        os.unlink(out_file)
    return got


def measure(trees: dict[str, str], stages: list[str], args: argparse.Namespace, dsn: str,
            token: str, fresh: Callable[[int], str], label: str) -> None:
    """Each stage of each tree, rounds interleaved (order reversed every
    other round).  The trees of a round get the same entries (one seed),
    each in batches of its own (``fresh``: new ids, so no measure re-sends
    rows an earlier one stored)."""
    seeds = itertools.count(args.seed)
    for stage in stages:
        for r in range(args.rounds):
            names = list(trees) if r % 2 == 0 else list(trees)[::-1]
            seed = next(seeds)
            for name in names:
                if args.callgrind:
                    full = _run(trees[name], stage, args.batches, dsn, token, fresh(seed), True)
                    base = _run(trees[name], stage, 1, dsn, token, fresh(seed), True)
                    entries = full["entries"] - base["entries"]
                    per = (full["ir"] - base["ir"]) / entries
                    print(f"[{label}] {stage:>6} {name:>6}: {per:,.0f} instructions per entry "
                          f"(callgrind, {entries:,} entries)", flush=True)
                else:
                    got = _run(trees[name], stage, args.batches, dsn, token, fresh(seed), False)
                    us = got["cpu"] / got["entries"] * 1e6
                    print(f"[{label}] {stage:>6} {name:>6}: {us:.2f} us CPU per entry, "
                          f"{1e6 / us:,.0f} entries per CPU-second, load "
                          f"{os.getloadavg()[0]:.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="sqlite")
    p.add_argument("--stages", default="decode,store,rpc")
    p.add_argument("--batches", type=int, default=20, help="timed batches per measure")
    p.add_argument("--batch", type=int, default=1000, help="entries per batch")
    p.add_argument("--accounts-per-batch", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--callgrind", action="store_true",
                   help="instructions per entry under callgrind instead of CPU time")
    p.add_argument("--trees", default=f"head={os.path.dirname(_HERE)}",
                   help="name=DIR,... checkouts measured in turn (same data, same store)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--batches-file", help=argparse.SUPPRESS)
    p.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    trees = dict(t.split("=", 1) for t in args.trees.split(","))
    stages = args.stages.split(",")
    workdir = tempfile.mkdtemp(prefix="nbgw-bench-aldecode-")
    try:
        for backend in args.backends.split(","):
            _backend(backend, trees, stages, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _backend(backend: str, trees: dict[str, str], stages: list[str], args: argparse.Namespace,
             workdir: str) -> None:
    """Seed a fresh store of *backend* and measure every stage of every tree on it."""
    import accesslog_list as alist

    from nbgateway.management.store import Store

    accounts = 10
    schema = None
    if backend == "sqlite":
        dsn = f"sqlite:///{workdir}/store.db"
    else:
        from tests import pgcluster

        base = pgcluster.dsn()
        if not base:
            print(f"[postgres] skipped: {pgcluster.unavailable_reason()}")
            return
        import psycopg

        schema = "nbgw_bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in base else "?"
        dsn = f"{base}{sep}options=-csearch_path%3D{schema}"
    store = Store.open(dsn, known_clusters=[alist.CLUSTER])
    try:
        alist.seed_directory(store, accounts)
        _, token = store.proxies.create_token("bench", account_id=None)
    finally:
        store.close()

    files = itertools.count()

    def fresh(seed: int) -> str:
        path = os.path.join(workdir, f"batches-{backend}-{next(files)}.pickle")
        with open(path, "wb") as f:
            pickle.dump(_batches(accounts, args.accounts_per_batch, args.batch,
                                 args.batches + 1, seed), f)
        return path

    try:
        measure(trees, stages, args, dsn, token, fresh, backend)
    finally:
        if schema is not None:
            with psycopg.connect(base, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    raise SystemExit(main())
