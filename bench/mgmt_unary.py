"""The gateway's management unary call: CPU per call by thread (issue 20).

A ProxyService sink in its own process (127.0.0.1, plaintext, answers
``ValidateTunnelPeer`` at once); this process makes ``--calls`` calls with
varied tunnel IPs, domains and accounts (as the private gate's cold misses
and refreshes), ``--inflight`` started per reactor turn, in several ways:

* ``client``: the gateway's path, ``GrpcManagementClient.validate_tunnel_peer``
  (Deferred API, bridge, auth metadata, deadline, transparent retries on);
* ``client-sync``: the same client on a synchronous ``grpc.Channel`` (the
  bridge's ``.future()`` path; a server stream is held open on it so grpc's
  channel spin thread lives on instead of starting per call);
* ``aio`` / ``aio-noretry``: the floor of grpc.aio: a coroutine on the same
  loop thread awaiting the client's stub (retries on) or a channel made with
  ``retries=False`` (no bridge, no reactor);
* ``workers``: a prototype (not in the gateway): grpc's synchronous API,
  blocking calls on two long-lived worker threads fed by a queue, answers to
  the reactor with ``callFromThread``;
* ``sync``: grpc's synchronous API called by one long-lived worker thread
  (blocking calls, ``--inflight`` ignored);
* ``none`` (with ``--busy``): no calls, the busy reactor's chunks alone.

Per mode: CPU per call of the asyncio thread (``nbgw-grpc-aio``), the reactor
thread, the worker thread (sync), grpcio's C threads together, and the whole
process, read from ``/proc/self/task/*/schedstat`` (``--verbose``: every
thread) (CPU clocks: they hold up
on a busy machine, wall rates do not).  ``--tree DIR`` imports ``nbgateway``
from another checkout (a worktree of an older revision) for a same-run A/B:
run both trees alternately.

Run:  .venv/bin/python bench/mgmt_unary.py [--calls 3000] [--inflight 1]
          [--modes client,aio,sync] [--rounds 3] [--tree DIR] [--busy]
For a load-independent figure run it under callgrind (``--separate-threads=yes``)
at two ``--calls`` and divide the difference per thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
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
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc  # noqa: E402

TOKEN = "nbp_bench_token"


def _serve() -> None:
    """``--serve``: the sink (prints its port, runs until stdin closes)."""
    from concurrent import futures

    import grpc

    class Sink(pb_grpc.ProxyServiceServicer):
        def ValidateTunnelPeer(self, request, context):
            if request.tunnel_ip.endswith("7"):
                return pb.ValidateTunnelPeerResponse(valid=False, denied_reason="peer_not_found")
            return pb.ValidateTunnelPeerResponse(
                valid=True, user_id="u1", user_email="alice@example.com", session_token="jwt",
                peer_group_ids=["g1", "g2"], peer_group_names=["devs", "ops"])

        def GetMappingUpdate(self, request, context):  # a stream held open
            done.wait()
            return iter(())

    done = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ProxyServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    done.set()
    server.stop(None).wait(5)


def _args(i: int) -> tuple[str, str, str]:
    """Varied (tunnel IP, domain, account) of the i-th call."""
    return (f"100.64.{i // 250 % 250}.{i % 250 + 2}", f"app{i % 37}.example",
            f"acc{i % 11}")


def _tasks() -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of every thread of this process."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                cpu = int(f.read().split()[0]) / 1e9
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        out[int(tid)] = (names.get(int(tid), comm), cpu)
    return out


def _split(before: dict, after: dict, n: int, verbose: bool = False) -> dict[str, float]:
    """us per call by thread group."""
    main = threading.main_thread().native_id
    groups: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        took = cpu - before.get(tid, (name, 0.0))[1]
        if verbose and took / n > 1e-6:
            print(f"    {tid} {name}: {took / n * 1e6:.1f} us/call")
        if tid == main:
            key = "reactor"
        elif name == "nbgw-grpc-aio":
            key = "asyncio"
        else:
            key = "grpc-C+other"
        groups[key] = groups.get(key, 0.0) + took
    groups["process"] = sum(v for k, v in groups.items())
    return {k: v / n * 1e6 for k, v in groups.items()}


class Busy:
    """``--busy``: the reactor also runs chunks of pure-Python work (``--chunk-us``
    each, one per reactor turn), as a gateway serving requests does; each
    chunk's wall time beyond its CPU time is time it waited (for the GIL held
    by another thread of this process, or preempted by the OS: the ``none``
    mode, the same chunks without calls, gives the floor).  The run's wall
    time less the reactor thread's CPU (``reactor off CPU``) is every wait of
    the never-idle reactor, between chunks too (GIL hand-overs at its
    syscalls)."""

    def __init__(self, chunk_us: float) -> None:
        self.k = 1000
        t = time.thread_time()
        for _ in range(50):
            sum(range(self.k))
        took = (time.thread_time() - t) / 50
        self.k = max(100, int(self.k * chunk_us * 1e-6 / took))
        self.running = False
        self.reset()

    def reset(self) -> None:
        self.chunks = 0
        self.cpu = 0.0
        self.stall = 0.0
        self.over_1ms = 0

    def start(self) -> None:
        self.running = True
        reactor.callLater(0, self._chunk)

    def stop(self) -> None:
        self.running = False

    def _chunk(self) -> None:
        if not self.running:
            return
        t, w = time.thread_time(), time.perf_counter()
        sum(range(self.k))
        cpu, wall = time.thread_time() - t, time.perf_counter() - w
        self.chunks += 1
        self.cpu += cpu
        self.stall += max(0.0, wall - cpu)
        if wall - cpu > 1e-3:
            self.over_1ms += 1
        reactor.callLater(0, self._chunk)


class _Workers:
    """Prototype: blocking calls of grpc's sync API on long-lived worker threads."""

    def __init__(self, stub, n: int = 2) -> None:
        import queue

        self.stub = stub
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"bench-worker-{i}", daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        import grpc

        while (item := self.q.get()) is not None:
            name, req, timeout, md, d = item
            try:
                r = getattr(self.stub, name)(req, timeout=timeout, metadata=md)
            except grpc.RpcError as e:
                reactor.callFromThread(d.errback, e)
            else:
                reactor.callFromThread(d.callback, r)

    def unary(self, name, req, timeout, md):
        d = defer.Deferred()
        self.q.put((name, req, timeout, md, d))
        return d

    def stop(self) -> None:
        for _ in self.threads:
            self.q.put(None)


async def _workers_mode(workers, n: int, inflight: int, base: int, md) -> None:
    i = 0
    while i < n:
        ds = []
        for _ in range(min(inflight, n - i)):
            ip, domain, acc = _args(base + i)
            req = pb.ValidateTunnelPeerRequest(tunnel_ip=ip, domain=domain, nbgw_account_id=acc)
            ds.append(workers.unary("ValidateTunnelPeer", req, 10.0, md))
            i += 1
        await defer.gatherResults(ds, consumeErrors=True)


async def _client_mode(client, n: int, inflight: int, base: int) -> None:
    i = 0
    while i < n:
        ds = []
        for _ in range(min(inflight, n - i)):
            ds.append(client.validate_tunnel_peer(*_args(base + i)))
            i += 1
        await defer.gatherResults(ds, consumeErrors=True)


def _aio_mode(stub, n: int, inflight: int, base: int, metadata) -> None:
    import asyncio

    from nbgateway.mgmt._grpcbridge import aio_loop

    async def run() -> None:
        i = 0
        while i < n:
            calls = []
            for _ in range(min(inflight, n - i)):
                ip, domain, acc = _args(base + i)
                req = pb.ValidateTunnelPeerRequest(tunnel_ip=ip, domain=domain,
                                                   nbgw_account_id=acc)
                calls.append(stub.ValidateTunnelPeer(req, timeout=10.0, metadata=metadata))
                i += 1
            await asyncio.gather(*calls)

    aio_loop().submit(run()).result(120)


def _sync_mode(stub, n: int, base: int, metadata) -> float:
    """The worker's CPU seconds (it has ended when the caller reads /proc)."""
    took = [0.0]

    def run() -> None:
        t0 = time.thread_time()
        for i in range(n):
            ip, domain, acc = _args(base + i)
            req = pb.ValidateTunnelPeerRequest(tunnel_ip=ip, domain=domain, nbgw_account_id=acc)
            stub.ValidateTunnelPeer(req, timeout=10.0, metadata=metadata)
        took[0] = time.thread_time() - t0

    t = threading.Thread(target=run, name="bench-sync-worker")
    t.start()
    t.join()
    return took[0]


async def main(args: argparse.Namespace) -> None:
    import subprocess

    import grpc

    from nbgateway.mgmt.client import GrpcManagementClient

    srv = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline())
    url = f"http://127.0.0.1:{port}"
    client = GrpcManagementClient(reactor, url, TOKEN, address="bench.example", private=True)
    client.startService()
    md = client.auth_metadata()
    from nbgateway.mgmt._grpcbridge import aio_loop
    from nbgateway.mgmt.session import make_channel

    noretry_channel = aio_loop().run(
        lambda: make_channel(client.target, aio=True, retries=False))
    noretry_stub = pb_grpc.ProxyServiceStub(noretry_channel)
    sync_client = GrpcManagementClient(
        reactor, url, TOKEN, address="bench.example", private=True,
        channel_factory=lambda: grpc.insecure_channel(f"127.0.0.1:{port}"))
    sync_client.startService()
    # a long-lived call on the sync channel (as the mapping stream would be):
    # grpc's channel spin thread then lives on instead of starting per call
    held = sync_client.session.stub.GetMappingUpdate(pb.GetMappingUpdateRequest(), metadata=md)
    sync_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    sync_stub = pb_grpc.ProxyServiceStub(sync_channel)
    workers = _Workers(sync_stub)
    busy = Busy(args.chunk_us) if args.busy else None
    if busy is not None:
        busy.start()
    last_wall = 1.0
    tree = os.path.basename(_ROOT.rstrip("/"))
    try:
        base = 0
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for mode in args.modes.split(","):
                n = args.calls if rnd else min(300, args.calls)
                if busy is not None:
                    busy.reset()
                before, w, worker = _tasks(), time.perf_counter(), 0.0
                if mode == "none":  # the busy chunks alone, for as long as the last mode
                    await task.deferLater(reactor, last_wall, lambda: None)
                elif mode == "client":
                    await _client_mode(client, n, args.inflight, base)
                elif mode == "client-sync":
                    await _client_mode(sync_client, n, args.inflight, base)
                elif mode == "aio":
                    await _in_thread(_aio_mode, client.session.stub, n, args.inflight, base, md)
                elif mode == "aio-noretry":
                    await _in_thread(_aio_mode, noretry_stub, n, args.inflight, base, md)
                elif mode == "workers":
                    await _workers_mode(workers, n, args.inflight, base, md)
                elif mode == "sync":
                    worker = await _in_thread(_sync_mode, sync_stub, n, base, md)
                wall = last_wall = time.perf_counter() - w
                split = _split(before, _tasks(), n, args.verbose and rnd > 0)
                if worker:
                    split["worker"] = worker / n * 1e6
                    split["process"] += split["worker"]
                base += n
                if busy is not None:
                    # the busy reactor is never idle: wall time it did not run
                    # is time it waited (for the GIL, or preempted by the OS)
                    off_cpu = wall / n * 1e6 - split["reactor"]
                    split["reactor"] -= busy.cpu / n * 1e6
                    split["process"] -= busy.cpu / n * 1e6
                if rnd:
                    extra = "" if busy is None else (
                        f"; busy reactor: {busy.chunks:,} chunks, waited "
                        f"{busy.stall / busy.chunks * 1e6:5.1f} us/chunk, "
                        f"{busy.stall / n * 1e6:6.1f} us/call, {busy.over_1ms} chunks > 1 ms; "
                        f"reactor off CPU {off_cpu:6.1f} us/call")
                    print(f"{tree} {mode:6s} inflight {args.inflight}: " + ", ".join(
                        f"{k} {v:6.1f}" for k, v in split.items()) + f" us/call; "
                        f"{n / wall:,.0f} calls/s" + extra, flush=True)
    finally:
        client.stopService()
        if busy is not None:
            busy.stop()
        held.cancel()
        workers.stop()
        sync_client.stopService()
        sync_channel.close()
        aio_loop().submit(noretry_channel.close()).result(5)
        srv.stdin.close()
        srv.wait(10)


def _in_thread(fn, *a):
    """Run fn in a helper thread (the reactor keeps turning); a Deferred."""
    from twisted.internet import threads

    return threads.deferToThread(fn, *a)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="client,aio,sync")
    p.add_argument("--busy", action="store_true",
                   help="the reactor also runs pure-Python work chunks (their waits reported)")
    p.add_argument("--chunk-us", type=float, default=50.0)
    p.add_argument("--verbose", action="store_true", help="CPU of every thread")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=None, help="import nbgateway from this checkout")
    a = p.parse_args()
    if a.serve:
        _serve()
        sys.exit(0)
    task.react(lambda _r: defer.ensureDeferred(main(a)))
