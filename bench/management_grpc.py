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

Ratios are gRPC / in-process, so the transport cost shows up independently of
how busy the machine is.

Run:  .venv/bin/python bench/management_grpc.py [--services 10000] [--clients 8]
      [--seconds 5] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
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
from tests.management.test_grpc_support import (  # noqa: E402
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
    t0 = time.perf_counter()
    for i in range(args.services):
        store.create_service(
            make_service(f"b{i}", private=True, access_groups=("grp-admins",))
        )
    seed = time.perf_counter() - t0
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
            assert servicer.ValidateTunnelPeer(req, ctx, caller).valid

        grpc_call(), direct_call()  # warm up
        direct_rate = _run_threads(args.clients, args.seconds, direct_call)
        grpc_rate = _run_threads(args.clients, args.seconds, grpc_call)
        print(f"[{label}] ValidateTunnelPeer, {args.clients} clients: "
              f"{grpc_rate:,.0f} RPC/s over gRPC; in-process {direct_rate:,.0f}/s; "
              f"ratio {grpc_rate / direct_rate:.2f}")

        # --- snapshot ------------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--backends", default="sqlite")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        if backend == "sqlite":
            workdir = tempfile.mkdtemp(prefix="nbgw-bench-grpc-")
            store = Store.open(f"sqlite:///{workdir}/store.db", known_clusters=[CLUSTER])
        elif backend == "postgres":
            dsn = os.environ.get("NBGW_TEST_PG_DSN")
            if not dsn:
                print("[postgres] skipped: NBGW_TEST_PG_DSN is not set")
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
