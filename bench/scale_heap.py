"""Where the scale world's per-account memory goes, in the real gateway process.

Runs bench/scale.py's world twice (1 account, then ``--accounts`` N: real
management, real peer channels over gRPC, the world's service mix of public
and private HTTP, public TCP on host ports and private TCP on tunnel ports),
the gateway started with ``NBGW_HEAP_SNAPSHOT`` (nbgateway/tap.py:
tracemalloc on, SIGUSR2 writes a snapshot).  Once every service is active it
takes the RSS and a heap snapshot of each gateway and prints the difference
per extra account: RSS, the Python heap (tracemalloc) by file and, with
``--lines``, by line; and glibc's malloc figures (in use, free = arena
slack) per extra account.  RSS minus heap is what Python does not see (C
allocations of gRPC, OpenSSL, glibc arena slack) plus tracemalloc's own
bookkeeping, so compare RSS figures with bench/scale.py, not this one.

``--ab VAR=A,B`` measures RSS only (no tracemalloc): the 1-account and the
N-account worlds once per value of the gateway's environment variable VAR
(set for the gateway process only; ``PYTHONPATH=/tmp/old,/work/main`` runs
another checkout's gateway against this tree's management),
interleaved (A, B, A, B with ``--rounds 2``), RSS taken ``--settle`` seconds
after ready (e.g. past the first malloc_trim, 60 s after start).

Run as root:  .venv/bin/python bench/scale_heap.py --accounts 50 [--lines 30]
              .venv/bin/python bench/scale_heap.py --accounts 100 --settle 70 \
                  --ab NBGW_MALLOC_TRIM=0,1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench._testbed import Testbed, unavailable_reason  # noqa: E402
from bench.scale import Scaled, rss_kib  # noqa: E402
from tests.interop.test_private_e2e import wait_for  # noqa: E402


class _GatewayEnv(Scaled):
    """The scale world whose gateway (only: not management, not this process)
    starts with ``gateway_env`` added to its environment."""

    gateway_env: dict[str, str] = {}

    def start_gateway(self, token: str, *extra_args: str) -> None:
        saved = {k: os.environ.get(k) for k in self.gateway_env}
        os.environ.update(self.gateway_env)
        try:
            super().start_gateway(token, *extra_args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def measure(accounts: int, args: argparse.Namespace, folder: str | None,
            gateway_env: dict[str, str] | None = None,
            ) -> tuple[int, tracemalloc.Snapshot | None, dict[str, int]]:
    """(RSS KiB, heap snapshot, glibc malloc figures) of a ready gateway
    serving ``accounts``; RSS only when ``folder`` is None."""
    path = os.path.join(folder, f"heap-{accounts}.snap") if folder else ""
    if path:
        os.environ["NBGW_HEAP_SNAPSHOT"] = path
    tb = Testbed()
    try:
        _GatewayEnv.gateway_env = dict(gateway_env or {})
        w = _GatewayEnv(tb, accounts, args.peers_per_account, args.services_per_account)
        w.start_upstream()
        w.start_management()
        t0 = time.monotonic()
        w.start_gateway(w.proxy_token)
        wait_for(lambda: w.active_services() >= w.n_services
                 and w.metric("nbgateway_accounts") >= accounts,
                 args.ready_timeout, "every service active", interval=0.5)
        print(f"[{accounts} accounts] ready in {time.monotonic() - t0:.1f} s", flush=True)
        pid = w.gateway_pid()
        time.sleep(args.settle)
        rss = rss_kib(pid)
        if not path:
            return rss, None, {}
        os.kill(pid, signal.SIGUSR2)
        wait_for(lambda: os.path.exists(path), 120, "the heap snapshot", interval=0.5)
        with open(path + ".malloc") as f:
            malloc = json.load(f)
        return rss, tracemalloc.Snapshot.load(path), malloc
    finally:
        os.environ.pop("NBGW_HEAP_SNAPSHOT", None)
        tb.close()


def _name(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.replace(_ROOT + "/", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--peers-per-account", type=int, default=10)
    parser.add_argument("--services-per-account", type=int, default=10)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after ready")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--lines", type=int, default=0)
    parser.add_argument("--ab", default="", help="VAR=A,B: RSS-only A/B of a gateway variable")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"testbed unavailable: {reason}")
    if args.ab:
        ab(args)
        return
    folder = tempfile.mkdtemp(prefix="nbgw-scale-heap-")
    rss0, base, m0 = measure(1, args, folder)
    rss1, world, m1 = measure(args.accounts, args, folder)
    assert base is not None and world is not None
    n = args.accounts - 1
    stats = world.compare_to(base, "filename")
    heap = sum(s.size_diff for s in stats) / n / 1024
    print(f"RSS per extra account: {(rss1 - rss0) / n:.1f} KiB (tracemalloc on); "
          f"Python heap per extra account: {heap:.1f} KiB", flush=True)
    for key in ("in_use", "free", "arena", "mmapped", "tracemalloc_overhead"):
        if key in m0 and key in m1:
            print(f"  glibc malloc {key:<21} {(m1[key] - m0[key]) / n / 1024:7.1f} KiB "
                  "per extra account")
    for s in stats[:args.top]:
        if s.size_diff:
            print(f"  {s.size_diff / n / 1024:7.2f} KiB  {s.count_diff / n:7.1f} blocks  "
                  f"{_name(s.traceback[0].filename)}")
    if args.lines:
        print("by line:")
        for s in world.compare_to(base, "lineno")[:args.lines]:
            fr = s.traceback[0]
            print(f"  {s.size_diff / n / 1024:7.2f} KiB  {s.count_diff / n:7.1f} blocks  "
                  f"{_name(fr.filename)}:{fr.lineno}")


def ab(args: argparse.Namespace) -> None:
    var, _, values = args.ab.partition("=")
    results: dict[str, list[float]] = {v: [] for v in values.split(",")}
    for r in range(args.rounds):
        for value in results:
            env = {var: value}
            rss0, _, _ = measure(1, args, None, env)
            rss1, _, _ = measure(args.accounts, args, None, env)
            per = (rss1 - rss0) / (args.accounts - 1)
            results[value].append(per)
            print(f"round {r + 1} {var}={value}: RSS {rss0 / 1024:.1f} -> "
                  f"{rss1 / 1024:.1f} MiB, {per:.1f} KiB per extra account", flush=True)
    for value, pers in results.items():
        print(f"{var}={value}: " + ", ".join(f"{p:.1f}" for p in pers)
              + " KiB per extra account")


if __name__ == "__main__":
    main()
