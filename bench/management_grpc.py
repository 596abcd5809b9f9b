"""Management ProxyService gRPC: ValidateTunnelPeer RPCs/s and a 10,000-service snapshot.

Seeds a store (SQLite file; PostgreSQL too when ``NBGW_TEST_PG_DSN`` is set and
``--backends`` asks for it) with fixture F (``Fixture`` in
tests/management/test_grpc_support.py) plus
``--services`` private services on one cluster, starts a real ProxyGrpcService
on 127.0.0.1 and measures:

* ValidateTunnelPeer RPCs/s from ``--clients`` concurrent grpcio clients (one
  channel each) for ``--seconds``; the same-run comparison is the servicer's
  own work (token check + validation + JWT signing) called in-process from the
  same number of threads, without gRPC;
* snapshot: time from opening SyncMappings (auto-ack) to the message with
  ``initial_sync_complete`` for one capable proxy; comparison: building the
  same snapshot (store query + mapping conversion + one-time tokens) in-process.

* access-log ingestion: ``--log-entries`` entries sent as
  NbgwSendAccessLogBatch calls of ``--log-batch`` entries, one call in flight
  (as a gateway ships them, serialized beforehand), printing entries/s and
  entries per CPU-second of this process (the management's work plus grpcio's
  client side of one call per batch, so the per-core figure is a lower bound
  for the management alone); comparisons: a raw SQLAlchemy core
  ``executemany`` of the same rows (one transaction per batch, no gRPC, no
  validation), the store's driver path alone on rows prepared beforehand
  (``executemany_rows``: SQLite executemany of tuples plus the accounts'
  counter upserts, PostgreSQL binary COPY + INSERT ... SELECT), and the old
  path of one SendAccessLog per entry.  ``--ids``: ``sequential`` (the
  default, as earlier figures), ``gateway`` (a gateway's ids: time-ordered,
  the second then random digits, nbgateway/observe/accesslog.py
  ``new_log_id``) or ``random`` (each entry on a random leaf of the id index,
  as gateways sent before their ids were time-ordered; ``--random-ids``).

Ratios are gRPC / in-process, so the transport cost shows up independently of
how busy the machine is.

PostgreSQL: ``NBGW_TEST_PG_DSN``, else the throwaway cluster of
tests/pgcluster.py when the server binaries are installed (fsync off).

Run:  .venv/bin/python bench/management_grpc.py [--services 10000] [--clients 8]
      [--seconds 5] [--backends sqlite,postgres] [--parts validate,snapshot,accesslog]
      [--log-entries 100000] [--log-batch 1000] [--ids sequential|gateway|random]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import grpc  # noqa: E402

from nbgateway._proto import proxy_service_pb2 as pb  # noqa: E402
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc  # noqa: E402
from nbgateway.management.grpcserver import ProxyGrpcService  # noqa: E402
from nbgateway.management.proxymapping import per_proxy_mapping  # noqa: E402
from nbgateway.management.store import Store  # noqa: E402
from nbgateway.observe.accesslog import new_log_id  # noqa: E402
from tests.management.test_grpc_support import (  # noqa: E402
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    U_IP,
    Fixture,
    make_service,
)


class _Ctx:
    """Minimal ServicerContext for the in-process comparison."""

    def __init__(self, token: str) -> None:
        self._md = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self):
        return self._md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def _run_threads(n: int, seconds: float, work: Callable[[], None]) -> float:
    """Calls/s of ``work`` from ``n`` threads for ``seconds``."""
    counts = [0] * n
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            work()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def bench(store: Store, args: argparse.Namespace, label: str) -> None:
    fx = Fixture(store)
    parts = set(args.parts.split(","))
    if "validate" not in parts and "snapshot" not in parts:
        args.services = 0
    t0 = time.perf_counter()
    for i in range(args.services):
        store.services.create(
            make_service(f"b{i}", private=True, access_groups=("grp-admins",))
        )
    seed = time.perf_counter() - t0
    if args.services:
        print(f"[{label}] seeded {args.services} services in {seed:.1f}s "
              f"({args.services / seed:.0f}/s direct store)")

    t0 = time.perf_counter()
    svc = ProxyGrpcService(store, addr="127.0.0.1:0")
    svc.startService()
    print(f"[{label}] gRPC service started in {time.perf_counter() - t0:.2f}s "
          "(includes loading the broadcast cache)")
    servicer = svc.servicer
    req = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN)
    try:
        # --- ValidateTunnelPeer -----------------------------------------------------------
        local = threading.local()

        def grpc_call() -> None:
            stub = getattr(local, "stub", None)
            if stub is None:
                local.stub = stub = pb_grpc.ProxyServiceStub(
                    grpc.insecure_channel(f"127.0.0.1:{svc.port}"))
            r = stub.ValidateTunnelPeer(req, metadata=(("authorization", f"Bearer {fx.token}"),))
            assert r.valid

        ctx = _Ctx(fx.token)

        def direct_call() -> None:
            caller = servicer._authenticate(ctx)
            assert servicer.tunnel_peers.ValidateTunnelPeer(req, ctx, caller).valid

        if "accesslog" in parts:
            bench_access_log(store, svc, fx, args, label)
        if "validate" in parts:
            grpc_call(), direct_call()  # warm up
            direct_rate = _run_threads(args.clients, args.seconds, direct_call)
            grpc_rate = _run_threads(args.clients, args.seconds, grpc_call)
            print(f"[{label}] ValidateTunnelPeer, {args.clients} clients: "
                  f"{grpc_rate:,.0f} RPC/s over gRPC; in-process {direct_rate:,.0f}/s; "
                  f"ratio {grpc_rate / direct_rate:.2f}")

        # --- snapshot ------------------------------------------------------------------------
        if "snapshot" not in parts:
            return
        conn = types.SimpleNamespace(address=CLUSTER, account_id=None,
                                     caps=pb.ProxyCapabilities(supports_private_service=True))
        direct_snap = float("inf")
        for _ in range(2):  # the first pass also warms the database page cache
            t0 = time.perf_counter()
            mappings = [per_proxy_mapping(m, servicer.tokens.issue)
                        for m in servicer.snapshot_mappings(conn)]
            direct_snap = min(direct_snap, time.perf_counter() - t0)

        stub = pb_grpc.ProxyServiceStub(grpc.insecure_channel(
            f"127.0.0.1:{svc.port}", options=[("grpc.max_receive_message_length", 64 << 20)]))
        acks: list[pb.SyncMappingsRequest] = []
        cond = threading.Condition()

        def requests():
            yield pb.SyncMappingsRequest(init=pb.SyncMappingsInit(
                proxy_id="bench-proxy", address=CLUSTER,
                capabilities=pb.ProxyCapabilities(supports_private_service=True)))
            while True:
                with cond:
                    cond.wait_for(lambda: acks)
                    item = acks.pop()
                if item is None:
                    return
                yield item

        t0 = time.perf_counter()
        call = stub.SyncMappings(requests(),
                                 metadata=(("authorization", f"Bearer {fx.token}"),))
        got = batches = 0
        for resp in call:
            got += len(resp.mapping)
            batches += 1
            with cond:
                acks.append(pb.SyncMappingsRequest(ack=pb.SyncMappingsAck()))
                cond.notify_all()
            if resp.initial_sync_complete:
                break
        grpc_snap = time.perf_counter() - t0
        call.cancel()
        with cond:
            acks.append(None)
            cond.notify_all()
        assert got == len(mappings) == args.services + 1, (got, len(mappings))
        print(f"[{label}] snapshot of {got} mappings to one proxy ({batches} acked batches): "
              f"{grpc_snap:.2f}s over gRPC; in-process build {direct_snap:.2f}s; "
              f"ratio {grpc_snap / direct_snap:.2f}")
    finally:
        servicer.stop()
        svc.server.stop(0).wait(5)


def _log_entry(account_id: str, i: int, run: str, ids: str = "sequential") -> pb.AccessLog:
    # "gateway": a gateway's own ids (time-ordered: they land on the id
    # index's last leaves); "random": each on a random leaf; the default
    # sequential ids keep earlier figures comparable
    if ids == "gateway":
        log_id = f"{run}-{new_log_id()}"
    elif ids == "random":
        log_id = f"{run}-{secrets.token_hex(10)}"
    else:
        log_id = f"{run}-{i:08d}"
    e = pb.AccessLog(log_id=log_id, account_id=account_id, service_id="svc-bench",
                     host=DOMAIN, path=f"/bench/{i}", duration_ms=3, method="GET",
                     response_code=200, source_ip="100.64.0.10", auth_mechanism="oidc",
                     user_id="alice", auth_success=True, protocol="http",
                     bytes_download=512)
    e.timestamp.GetCurrentTime()
    return e


def bench_access_log(store: Store, svc: ProxyGrpcService, fx: Fixture,
                     args: argparse.Namespace, label: str) -> None:
    """Batch ingestion over gRPC vs a raw executemany of the same rows."""
    from nbgateway.management.proxyrpcs import access_log_values
    from nbgateway.management.store._accesslog import (
        _COLUMNS,
        _groups_json,
        executemany_rows,
        insert_ignoring_duplicates,
        prepare_rows,
    )

    account = ACCOUNT
    n, size = args.log_entries, args.log_batch
    md = (("authorization", f"Bearer {fx.token}"),)
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}")
    stub = pb_grpc.ProxyServiceStub(channel)
    batches = [pb.NbgwSendAccessLogBatchRequest(
        logs=[_log_entry(account, i, "grpc", args.ids)
              for i in range(j, min(n, j + size))])
        for j in range(0, n, size)]
    stub.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(
        logs=[_log_entry(account, 0, "warm")]), metadata=md)
    # the batches go out serialized beforehand (a gateway builds them as its
    # requests end), so this process's CPU time is the management's work plus
    # only grpcio's client side of one call per batch
    send_bytes = channel.unary_unary(
        "/management.ProxyService/NbgwSendAccessLogBatch", request_serializer=None,
        response_deserializer=pb.NbgwSendAccessLogBatchResponse.FromString)
    wire = [b.SerializeToString() for b in batches]
    cpu0, t0 = time.process_time(), time.perf_counter()
    stored = sum(send_bytes(b, metadata=md).stored for b in wire)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert stored == n, (stored, n)
    # a retried batch stores nothing new
    assert stub.NbgwSendAccessLogBatch(batches[0], metadata=md).stored == 0

    # raw inserts of the same rows (user groups as the store captured them):
    # SQLAlchemy core executemany (per-row parameter processing), and the
    # store's own driver path (rows prepared column-wise, one executemany of
    # tuples on SQLite, binary COPY + INSERT ... SELECT on PostgreSQL)
    groups = store.access_logs.get(account, batches[0].logs[0].log_id).user_groups
    names = [c.name for c in _COLUMNS]

    def fresh_values(prefix: str) -> list[list[tuple]]:
        return [[(prefix + e.log_id, *access_log_values(e)[1:-1], groups) for e in b.logs]
                for b in batches]

    def core_rows(values: list[tuple]) -> list[dict]:
        rows = []
        for v in values:
            row = dict(zip(names, v, strict=True))
            row["metadata"] = None
            row["user_groups"] = _groups_json(tuple(v[-1])) if v[-1] is not None else None
            row["upstream_target"] = v[-2] or None
            rows.append(row)
        return rows

    stmt = insert_ignoring_duplicates(store.dialect)
    rates = {}
    for name in ("core", "driver"):
        values = fresh_values(name)
        chunks = ([core_rows(v) for v in values] if name == "core"
                  else [prepare_rows(v, store.dialect) for v in values])
        cpu0, t0 = time.process_time(), time.perf_counter()
        for chunk in chunks:
            with store._engine.begin() as conn:
                if name == "core":
                    conn.execute(stmt, chunk)
                else:
                    assert executemany_rows(conn, chunk) == len(chunk)
        rates[name] = (n / (time.perf_counter() - t0), n / (time.process_time() - cpu0))

    # the old path: one SendAccessLog (one transaction) per entry
    single_n = min(n, 2000)
    singles = [pb.SendAccessLogRequest(log=_log_entry(account, i, "single"))
               for i in range(single_n)]
    t0 = time.perf_counter()
    for r in singles:
        stub.SendAccessLog(r, metadata=md)
    single_rate = single_n / (time.perf_counter() - t0)

    rate = n / wall
    core, driver = rates["core"], rates["driver"]
    ids = f" ({args.ids} ids)" if args.ids != "sequential" else ""
    print(f"[{label}] access-log batches of {size}, {n:,} entries{ids}: {rate:,.0f} entries/s over "
          f"gRPC ({n / cpu:,.0f} per CPU-second, grpcio client included); raw SQLAlchemy core "
          f"executemany of the same rows {core[0]:,.0f}/s ({core[1]:,.0f} per CPU-second), "
          f"ratio {rate / core[0]:.2f}; driver executemany {driver[0]:,.0f}/s "
          f"({driver[1]:,.0f} per CPU-second), ratio {rate / driver[0]:.2f}; "
          f"one SendAccessLog per entry {single_rate:,.0f}/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--backends", default="sqlite")
    p.add_argument("--parts", default="validate,snapshot,accesslog")
    p.add_argument("--log-entries", type=int, default=100_000)
    p.add_argument("--log-batch", type=int, default=1000)
    p.add_argument("--ids", choices=("sequential", "gateway", "random"), default="sequential",
                   help="log ids: sequential (default), a gateway's (time-ordered) or random")
    p.add_argument("--random-ids", action="store_const", dest="ids", const="random",
                   help="the same as --ids random")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        if backend == "sqlite":
            workdir = tempfile.mkdtemp(prefix="nbgw-bench-grpc-")
            store = Store.open(f"sqlite:///{workdir}/store.db", known_clusters=[CLUSTER])
        elif backend == "postgres":
            from tests import pgcluster

            dsn = pgcluster.dsn()
            if not dsn:
                print(f"[postgres] skipped: {pgcluster.unavailable_reason()}")
                continue
            import uuid

            import psycopg

            schema = "nbgw_bench_" + uuid.uuid4().hex[:8]
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'CREATE SCHEMA "{schema}"')
            sep = "&" if "?" in dsn else "?"
            store = Store.open(f"{dsn}{sep}options=-csearch_path%3D{schema}",
                               known_clusters=[CLUSTER])
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        try:
            bench(store, args, backend)
        finally:
            store.close()
            if backend == "postgres":
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
