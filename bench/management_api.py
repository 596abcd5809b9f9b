"""Management REST API throughput: services created/s and listed/s with 10,000 services stored.

For each backend (SQLite file, PostgreSQL when ``NBGW_TEST_PG_DSN`` is set) this
starts a real ``twistd nbmanagement``, seeds the store with ``--services``
services directly through the Store API (that rate is the same-run comparison),
then measures through REST:

* create: ``--create`` POSTs with ``--clients`` concurrent HTTP clients;
* list:   ``GET /api/reverse-proxies/services`` of the whole account, repeated;

and prints each REST rate next to the direct-store rate for the same operation
(ratio = REST / store), so the cost of HTTP + JSON + thread hand-off shows up
independently of how busy the machine is.

Run:  .venv/bin/python bench/management_api.py [--services 10000] [--create 500]
      [--clients 8] [--lists 3] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from nbgateway.management.model import Service, Target, TargetOptions  # noqa: E402
from tests.management.apiserver import ApiServer  # noqa: E402

CLUSTER = "eu.proxy.bench"


def target(i: int) -> Target:
    return Target(host=f"backend-{i}.lan", port=8080, protocol="http", target_id=CLUSTER,
                  target_type="cluster", options=TargetOptions(direct_upstream=True))


def body(i: int, run: str, gid: str) -> dict:
    return {"name": f"rest-{run}-{i}", "domain": f"rest-{run}-{i}.apps.bench", "enabled": True,
            "private": True, "access_groups": [gid],
            "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                         "host": f"backend-{i}.lan", "port": 8080, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix=f"nbgw-bench-{backend}-")
    server = ApiServer(workdir, backend).start()
    store = None
    try:
        server.ok("POST", "/api/reverse-proxies/domains",
                  {"domain": "apps.bench", "target_cluster": CLUSTER})
        gid = server.ok("POST", "/api/groups", {"name": "bench"})["id"]
        store = server.open_store()
        acct = store.accounts.list()[0].id
        run = uuid.uuid4().hex[:6]

        t0 = time.perf_counter()
        for i in range(args.services):
            store.services.create(Service(
                account_id=acct, name=f"seed-{i}", domain=f"seed-{run}-{i}.apps.bench",
                enabled=True, private=True, access_groups=(gid,), mode="http",
                targets=(target(i),)))
        store_create = args.services / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in range(args.lists):
            n_store = len(store.services.list(acct))
        store_list = args.lists / (time.perf_counter() - t0)

        def create(i: int) -> None:
            resp = server.request("POST", "/api/reverse-proxies/services", body(i, run, gid),
                                  timeout=120)
            assert resp.status == 200, resp

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(create, range(args.create)))
        rest_create = args.create / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in range(args.lists):
            resp = server.request("GET", "/api/reverse-proxies/services", timeout=300)
            assert resp.status == 200, resp
        rest_list = args.lists / (time.perf_counter() - t0)
        n_rest = len(resp.json)
        assert n_rest == n_store + args.create, (n_rest, n_store)
        return {"services": n_rest, "store_create": store_create, "rest_create": rest_create,
                "store_list": store_list, "rest_list": rest_list, "bytes": len(resp.data)}
    finally:
        if store is not None:
            store.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        from bench._limits import lift_management_limits
    except ImportError:  # run as a script from bench/
        from _limits import lift_management_limits  # type: ignore[no-redef]

    lift_management_limits()  # throughput, not the per-account limits
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--create", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--lists", type=int, default=3)
    p.add_argument("--backends", default="sqlite,postgres")
    args = p.parse_args(argv)
    for backend in args.backends.split(","):
        if backend == "postgres" and not os.environ.get("NBGW_TEST_PG_DSN"):
            print("postgres: skipped (set NBGW_TEST_PG_DSN)")
            continue
        r = bench_backend(backend, args)
        create_ratio = r["rest_create"] / r["store_create"]
        list_ratio = r["rest_list"] / r["store_list"]
        print(f"{backend}: {r['services']} services stored")
        print(f"  create: REST {r['rest_create']:8.1f} services/s ({args.clients} clients)  "
              f"store direct {r['store_create']:8.1f}/s  ratio {create_ratio:.2f}")
        print(f"  list:   REST {r['rest_list']:8.3f} lists/s = "
              f"{r['rest_list'] * r['services']:9.0f} services/s ({r['bytes'] / 1e6:.1f} MB)  "
              f"store direct {r['store_list']:8.3f} lists/s  ratio {list_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
