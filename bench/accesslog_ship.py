"""Gateway side of the access log: reactor-thread cost per entry and the
longest reactor step the shipper takes.

Two parts, against a real grpcio ProxyService on 127.0.0.1 (in this process,
storing nothing):

* ``--part rate`` (default): requests' fields are handed to
  :meth:`nbgateway.observe.accesslog.AccessLogger.record` at ``--rate``
  entries/s (``--per-turn`` per reactor turn; varied hosts, paths, status
  codes, sizes, users and targets, as a gateway's requests; ``--clients N``:
  from N client addresses at random, as a public service's clients;
  ``--users N``: by N OIDC users; ``--services N``: to N services), for
  ``--seconds``.
  Every shipper entry point the reactor runs (``record``, the linger timer,
  batch forming turns, the RPC's answer) is timed with the reactor thread's
  CPU clock: reported are the shipper's CPU per entry on the reactor thread
  (``time.thread_time``, load-independent as far as the CPU clock is) and its
  longest single step, plus the process CPU per entry (grpcio's threads and
  the in-process server included).  ``--tree DIR`` imports ``nbgateway`` from
  another checkout (a worktree of an older revision): run both trees
  alternately for a same-run A/B.
* ``--part count``: a fixed amount of work for instruction counts:
  ``--entries`` varied records (``--per-turn`` per reactor turn) after a
  warm-up of two batches, batches cut by size only (``--batch`` entries, the
  linger an hour), every one shipped through the real client to the sink
  process.  ``--callgrind`` runs it under ``valgrind --tool=callgrind`` with
  no entries and with ``--entries``; the difference of the totals (every
  thread of the process: the reactor, grpcio's threads) over the entries is
  the instructions per entry (``--tree`` for the tree to count).
* ``--part per-request``: the old pipeline, one ``SendAccessLog`` unary call
  per request, against the batching queue (built entries offered in bursts
  of ``--burst`` per reactor turn).

Run:  .venv/bin/python bench/accesslog_ship.py [--rate 3000] [--seconds 10]
          [--tree /tmp/old-worktree]
      .venv/bin/python bench/accesslog_ship.py --callgrind [--entries 6000] [--tree DIR]
      .venv/bin/python bench/accesslog_ship.py --part per-request [--entries 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _import_root(argv: list[str]) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "--tree" in argv:
        root = os.path.abspath(argv[argv.index("--tree") + 1])
    sys.path.insert(0, root)
    return root


_ROOT = _import_root(sys.argv)

from twisted.internet import defer, reactor, task  # noqa: E402

from nbgateway._proto import proxy_service_pb2 as pb  # noqa: E402
from nbgateway.mgmt.client import GrpcManagementClient  # noqa: E402
from nbgateway.observe.accesslog import AccessLogger, build_entry, new_log_id  # noqa: E402
from tests.mgmt.servicer import TOKEN, CannedProxyService, Server  # noqa: E402

#: the shipper's entry points the reactor calls (those present in the tree)
_STEPS = ("record", "_linger_over", "_form_more", "_done", "_failed")


class Sink(CannedProxyService):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def SendAccessLog(self, request, context):
        self.count += 1
        return pb.SendAccessLogResponse()

    def NbgwSendAccessLogBatch(self, request, context):
        self.count += len(request.logs)
        return pb.NbgwSendAccessLogBatchResponse(stored=len(request.logs))


def _entry() -> pb.AccessLog:
    return build_entry(now=time.time(), log_id=new_log_id(), account_id="acc1",
                       service_id="svc1", host="app.example", path="/x", method="GET",
                       response_code=200, duration_ms=1, source_ip="100.64.0.10")


_HOSTS = [f"app{i}.example" for i in range(8)] + ["app0.example:8443"]
_PEERS = [f"100.64.0.{i}" for i in range(2, 34)]
_CODES = (200, 200, 200, 200, 304, 404, 403, 502, 0)
_USERS = (("", ""), ("oidc", "user-1"), ("token", "token:t1"), ("", ""))
_TARGETS = ("http://127.0.0.1:8080", "http://10.0.0.6:8080", "")


#: ``--clients N``: N client addresses (IPv4 and IPv6), one drawn at random per request
_CLIENTS: list[str] = []
#: ``--users N``: three requests in four by one of N OIDC users, drawn at random
_USER_IDS: list[str] = []
#: ``--services N``: N services (each its own host), one drawn at random per request
_SERVICES: list[int] = []


def _clients(n: int) -> list[str]:
    return [f"198.51.{i // 250 % 250}.{i % 250 + 1}" if i % 4 else f"2001:db8::{i:x}"
            for i in range(n)]


def _fields(i: int) -> tuple:
    """One request's fields (HTTP_FIELDS order), varied like real traffic."""
    auth, user = _USERS[i % 4]
    if _USER_IDS and i % 4:
        auth, user = "oidc", _USER_IDS[(i * 40503) % 65521 % len(_USER_IDS)]
    peer = _CLIENTS[(i * 2654435761) % 4294967291 % len(_CLIENTS)] if _CLIENTS else _PEERS[i % 32]
    svc, host = f"svc{i % 3}", _HOSTS[i % 9]
    if _SERVICES:
        k = (i * 69069 + 1) % 65537 % _SERVICES[0]
        svc, host = f"svc{k}", f"s{k}.example"
    return (time.time(), new_log_id(), "acc1", svc, host,
            f"/items/{i * 7919 % 100003}?page={i % 17}", ("GET", "POST")[i % 5 == 0],
            _CODES[i % 9], i % 40, peer, auth, user, (i % 3) * 211,
            512 + i % 4096, _TARGETS[i % 3])


def _serve() -> None:
    """``--serve``: the sink in its own process (prints its port, runs until
    stdin closes, then prints how many entries it stored)."""
    sink = Sink()
    server = Server(sink)
    print(server.port, flush=True)
    sys.stdin.read()
    print(sink.count, flush=True)
    server.stop()


def _thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread called ``name`` (0 if none)."""
    import threading

    for t in threading.enumerate():
        if t.name == name and t.native_id is not None:
            with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
    return 0.0


class StepTimer:
    """Wraps the shipper's reactor entry points on one instance: CPU time of
    each call on the reactor thread."""

    def __init__(self, logger: AccessLogger) -> None:
        self.total = 0.0
        self.wall = 0.0
        self.longest = 0.0
        self.longest_wall = 0.0
        self.slow_wall = 0  # steps that took over 1 ms of wall time
        self.slow: list[tuple[float, str, float]] = []  # (wall ms, step, CPU ms)
        self.steps: list[float] = []
        self.by_name: dict[str, float] = {}
        for name in _STEPS:
            fn = getattr(logger, name, None)
            if fn is not None:
                self.by_name[name] = 0.0
                setattr(logger, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        clock, wall = time.thread_time, time.perf_counter

        def timed(*a, **kw):
            t, w = clock(), wall()
            try:
                return fn(*a, **kw)
            finally:
                took, w = clock() - t, wall() - w
                self.total += took
                self.wall += w
                if w > self.longest_wall:
                    self.longest_wall = w
                if w > 1e-3:
                    self.slow_wall += 1
                    self.slow.append((round(w * 1e3, 2), name, round(took * 1e3, 2)))
                self.by_name[name] += took
                if took > 50e-6:
                    self.steps.append(took)
                if took > self.longest:
                    self.longest = took

        return timed


async def _rate(client: GrpcManagementClient, args: argparse.Namespace) -> None:
    n = int(args.rate * args.seconds)
    kw = {} if args.linger is None else {"linger": args.linger}
    logger = AccessLogger(client, reactor, **kw)
    timer = StepTimer(logger)
    import gc

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses[info["generation"]].append(time.perf_counter() - started.pop())

    gc.callbacks.append(on_gc)
    thread0, cpu0, aio0 = time.thread_time(), time.process_time(), _thread_cpu("nbgw-grpc-aio")
    start = time.perf_counter()
    i = 0
    while i < n:
        for _ in range(args.per_turn):
            logger.record(_fields(i))
            i += 1
        # the next turn at its due time (a paced offer, not a tight loop)
        due = start + i / args.rate - time.perf_counter()
        await task.deferLater(reactor, max(0.0, due), lambda: None)
    await logger.stop(timeout=30)
    gc.callbacks.remove(on_gc)
    thread_cpu = time.thread_time() - thread0
    cpu = time.process_time() - cpu0
    aio = _thread_cpu("nbgw-grpc-aio") - aio0
    steps = sorted(timer.steps)
    s = logger.stats
    print(f"{os.path.basename(_ROOT.rstrip('/'))}: {n:,} entries at {args.rate:,}/s, linger "
          f"{logger.linger}: shipper {timer.total / n * 1e6:5.2f} us/entry on the reactor thread "
          f"(wall {timer.wall / n * 1e6:5.2f}), longest step {timer.longest * 1e3:.3f} ms CPU, "
          f"{timer.longest_wall * 1e3:.3f} ms wall ({timer.slow_wall} > 1 ms); "
          f"steps > 50 us CPU: {len(steps)} (median "
          f"{steps[len(steps) // 2] * 1e3 if steps else 0:.3f} ms); reactor thread "
          f"{thread_cpu / n * 1e6:5.2f} us/entry, asyncio (grpc.aio) thread "
          f"{aio / n * 1e6:5.2f} us/entry ({aio / max(1, s.batches) * 1e6:.0f} us/RPC), process "
          f"{cpu / n * 1e6:5.2f} us/entry; {s.batches} RPCs, sent {s.sent}, dropped {s.dropped}",
          flush=True)
    print("  GC passes (count, longest ms) by generation: " + ", ".join(
        f"{g}: {len(v)}, {max(v, default=0) * 1e3:.2f}" for g, v in pauses.items()))
    if args.verbose:
        print("  slowest steps (wall ms, step, CPU ms):", sorted(timer.slow)[-8:])
    print("  us/entry by step: " + ", ".join(
        f"{k} {v / n * 1e6:.2f}" for k, v in timer.by_name.items()), flush=True)


async def _count(client: GrpcManagementClient, args: argparse.Namespace) -> None:
    """``--part count``: two warm-up batches, then ``--entries`` records,
    ``--per-turn`` per reactor turn; waits until every entry was shipped."""
    logger = AccessLogger(client, reactor, max_batch=args.batch, linger=3600.0)
    if args.null:  # the bench's own share: the records only go to a list
        logger.record = [].append  # type: ignore[method-assign]
    warm = 2 * args.batch
    # made up front, as many in every run (--pregen), so that the difference
    # of two runs has none of the bench's own field making
    rows = [_fields(k) for k in range(warm + max(args.entries, args.pregen))]
    i = 0
    for total in (warm, warm + args.entries):
        while i < total:
            for _ in range(min(args.per_turn, total - i)):
                logger.record(rows[i])
                i += 1
            await task.deferLater(reactor, 0, lambda: None)
        while logger.stats.sent < total and logger.pending > len(logger._queue):
            await task.deferLater(reactor, 0.001, lambda: None)
    await logger.stop(timeout=60)
    s = logger.stats
    print(f"count: {i} entries, {s.batches} RPCs, sent {s.sent}, dropped {s.dropped}",
          flush=True)


def _callgrind(args: argparse.Namespace) -> None:
    """Instructions per entry: callgrind totals of ``--part count`` with no
    entries and with ``--entries``, the difference over the entries."""
    import subprocess

    totals = []
    for null, n in ((False, 0), (False, args.entries), (True, 0), (True, args.entries)):
        out = f"/tmp/accesslog_ship.callgrind.{os.getpid()}"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               os.path.abspath(__file__), "--part", "count", "--entries", str(n),
               "--pregen", str(args.entries), "--batch", str(args.batch),
               "--per-turn", str(args.per_turn),
               "--clients", str(args.clients), "--users", str(args.users),
               "--services", str(args.services), "--tree", _ROOT] + ["--null"] * null
        res = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0"),
                             capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        with open(out) as f:
            totals.append(next(int(line.split()[1]) for line in f
                               if line.startswith("totals:")))
        os.unlink(out)
    total, own = (totals[1] - totals[0]) / args.entries, (totals[3] - totals[2]) / args.entries
    print(f"{os.path.basename(_ROOT.rstrip('/'))}: access log {total - own:,.0f} instructions "
          f"per entry (callgrind, every thread: {total:,.0f} less the bench's own {own:,.0f}; "
          f"{args.entries} entries, batches of {args.batch}, {args.per_turn} per turn)", flush=True)


async def _per_request(mode: str, client: GrpcManagementClient, sink: Sink, n: int,
                       burst: int) -> float:
    entries = [_entry() for _ in range(n)]
    sink.count = 0
    logger = AccessLogger(client, reactor)
    thread0, cpu0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    inflight: list[defer.Deferred] = []
    for i in range(0, n, burst):
        for e in entries[i:i + burst]:
            if mode == "batched":
                logger.log(e)
            else:
                inflight.append(client.send_access_log(e))
        if len(inflight) >= 200:  # as the old pipeline: a bounded number in flight
            await defer.gatherResults(inflight)
            inflight.clear()
        await task.deferLater(reactor, 0, lambda: None)  # one reactor turn per burst
    if inflight:
        await defer.gatherResults(inflight)
    await logger.stop(timeout=30)
    while sink.count < n:
        await task.deferLater(reactor, 0.001, lambda: None)
    thread_cpu = time.thread_time() - thread0
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    calls = logger.stats.batches if mode == "batched" else n
    print(f"{mode}: reactor thread {thread_cpu / n * 1e6:6.1f} us/entry, process "
          f"{cpu / n * 1e6:6.1f} us/entry, {calls} RPCs, {n / wall:,.0f} entries/s")
    return thread_cpu / n


async def main(args: argparse.Namespace) -> None:
    if args.part in ("rate", "count"):
        import subprocess

        srv = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                "--tree", _ROOT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{int(srv.stdout.readline())}"
    else:
        sink = Sink()
        server = Server(sink)
        url = server.url
    client = GrpcManagementClient(reactor, url, TOKEN, address="bench.example", private=True)
    client.startService()
    if args.request_client:  # the proposed client method (client.py does not have it yet)
        from nbgateway.mgmt.client import ACCESS_LOG_TIMEOUT

        def send_request(req):
            d = client._unary("NbgwSendAccessLogBatch", req, ACCESS_LOG_TIMEOUT)
            return d.addCallback(lambda r: r.stored)

        client.send_access_log_batch_request = send_request
    try:
        if args.part == "count":
            await _count(client, args)
            return
        if args.part == "rate":
            warm = argparse.Namespace(**{**vars(args), "seconds": 1.0})
            await _rate(client, warm)  # warm up (templates, channel)
            await _rate(client, args)
            return
        await _per_request("batched", client, sink, 1000, args.burst)  # warm up both paths
        await _per_request("per-request", client, sink, 1000, args.burst)
        print(f"{args.entries:,} entries, bursts of {args.burst}:")
        old = await _per_request("per-request", client, sink, args.entries, args.burst)
        new = await _per_request("batched", client, sink, args.entries, args.burst)
        print(f"reactor-thread cost: batched / per-request = {new / old:.3f}")
    finally:
        client.stopService()
        if args.part in ("rate", "count"):
            srv.stdin.close()
            stored = int(srv.stdout.readline())
            srv.wait(10)
            print(f"  stored by the sink: {stored:,}")
        else:
            server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("rate", "count", "per-request"), default="rate")
    p.add_argument("--callgrind", action="store_true",
                   help="instructions per entry of --part count under callgrind")
    p.add_argument("--null", action="store_true",
                   help="--part count: records go to a list (the bench's own cost)")
    p.add_argument("--pregen", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=750,
                   help="--part count: entries per batch (0.25 s at 3,000 requests/s)")
    p.add_argument("--rate", type=int, default=3000)
    p.add_argument("--per-turn", type=int, default=3)
    p.add_argument("--linger", type=float, default=None,
                   help="seconds (default: the tree's AccessLogger default)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--request-client", action="store_true",
                   help="give the client send_access_log_batch_request (the built request "
                        "sent as it is: the client.py change proposed in issue 20)")
    p.add_argument("--clients", type=int, default=0,
                   help="client addresses drawn per request (default: 32 tunnel peers in "
                        "turn, each always with the same user: few distinct entries)")
    p.add_argument("--users", type=int, default=0,
                   help="OIDC users drawn per request (default: two named users in turn)")
    p.add_argument("--services", type=int, default=0,
                   help="services drawn per request, each with its own host (default: 3 "
                        "services, 9 hosts in turn)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tree", default=None, help="import nbgateway (and tests) from this checkout")
    p.add_argument("--entries", type=int, default=None,
                   help="per-request: 20,000; count: 6,000")
    p.add_argument("--burst", type=int, default=100)
    a = p.parse_args()
    if a.serve:
        _serve()
        sys.exit(0)
    if a.entries is None:
        a.entries = 6000 if a.part == "count" or a.callgrind else 20_000
    _CLIENTS[:] = _clients(a.clients)
    _USER_IDS[:] = [f"user-{k}" for k in range(a.users)]
    _SERVICES[:] = [a.services] if a.services > 0 else []
    if a.callgrind:
        _callgrind(a)
        sys.exit(0)
    task.react(lambda _r: defer.ensureDeferred(main(a)))
