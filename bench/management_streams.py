"""Threads and memory per long-lived management gRPC stream (issue 18).

Starts the management's gRPC side in a child process (``ProxyGrpcService``
with the peer channel, SQLite store in a temp dir) holding one account per
stream, each with one gateway proxy peer (the target shape: every account's
gateway proxy peer keeps its own ``Sync`` stream), then opens ``--streams``
(default 32, 200, 1000, cumulative) peer-channel ``Sync`` streams from this
process (``grpc.aio`` clients on one loop) and, once every stream has received
its network map, reads the child's ``Threads:`` and ``VmRSS`` from
``/proc/PID/status``.

Comparison in the same run: a reference child serving a trivial ``Sync``
that sends one message and then blocks its thread (``grpc.server`` on a
``ThreadPoolExecutor`` sized for the streams: the thread-per-stream model the
management used before), measured at the same stream counts.  Printed per N:
threads, RSS, RSS per stream over the zero-stream baseline, and the time
until all N maps arrived.

    .venv/bin/python bench/management_streams.py [--streams 32,200,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import textwrap
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import grpc  # noqa: E402
from nacl.public import PrivateKey  # noqa: E402

from nbgateway._proto import management_pb2 as pb  # noqa: E402
from nbgateway._proto import management_pb2_grpc as pb_grpc  # noqa: E402

CLUSTER = "eu.proxy.netbird.io"

AIO_SERVER = textwrap.dedent("""
    import sys
    from nbgateway.management.grpcserver import ProxyGrpcService
    from nbgateway.management.store import Store
    store = Store.open(sys.argv[1], known_clusters=[sys.argv[3]])
    svc = ProxyGrpcService(store, addr="127.0.0.1:0", peer_channel_key=sys.argv[2])
    svc.startService()
    print(svc.port, flush=True)
    sys.stdin.read()
    svc.stopService()  # streams cancelled, server and loop thread stopped
    svc.server_stopped.wait(10)
""")

THREADED_SERVER = textwrap.dedent("""
    import sys, threading
    from concurrent import futures
    import grpc
    stop = threading.Event()
    def sync(request, context):
        yield b"\\x00"
        stop.wait()  # the stream holds this worker thread for its whole life
    handler = grpc.method_handlers_generic_handler("management.ManagementService", {
        "Sync": grpc.unary_stream_rpc_method_handler(sync)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(sys.argv[1])),
                         handlers=[handler], maximum_concurrent_rpcs=int(sys.argv[1]))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
""")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS in KiB) of ``pid``."""
    threads = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, rss


def build_world(path: str, accounts: int) -> list[PrivateKey]:
    from nbgateway.management.model import Account, Peer
    from nbgateway.management.store import Store

    store = Store.open(f"sqlite:///{path}", known_clusters=[CLUSTER])
    keys = []
    for a in range(accounts):
        store.accounts.create(Account(id=f"acct-{a}", domain=f"a{a}.test"))
        k = PrivateKey.generate()
        store.peers.create(Peer(account_id=f"acct-{a}", name="gw", key=b64(bytes(k.public_key)),
                                proxy=True, proxy_cluster=CLUSTER))
        keys.append(k)
    store.close()
    return keys


class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=_ROOT)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def status(self) -> tuple[int, int]:
        return proc_status(self.proc.pid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def open_streams(stub: pb_grpc.ManagementServiceStub, keys: list[PrivateKey],
                       server_public: bytes | None, calls: list) -> None:
    """Open one Sync per key and wait for each stream's first message."""
    from nacl.public import Box, PublicKey

    async def one(k: PrivateKey) -> None:
        req = pb.SyncRequest(meta=pb.PeerSystemMeta(hostname="gw", goOS="linux"))
        if server_public is not None:
            body = bytes(Box(k, PublicKey(server_public)).encrypt(req.SerializeToString()))
        else:
            body = b""
        call = stub.Sync(pb.EncryptedMessage(wgPubKey=b64(bytes(k.public_key)), body=body))
        calls.append(call)
        msg = await call.read()
        assert msg is not grpc.aio.EOF, "stream ended before its first message"

    await asyncio.gather(*(one(k) for k in keys))


def measure(kind: str, child: Child, keys: list[PrivateKey], steps: list[int],
            server_public: bytes | None) -> list[tuple[int, int, int, float]]:
    """Rows (streams, threads, RSS KiB, seconds to open this step's streams)."""
    loop = asyncio.new_event_loop()
    rows = []
    channel = None
    calls: list = []
    try:
        async def make() -> pb_grpc.ManagementServiceStub:
            nonlocal channel
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{child.port}")
            return pb_grpc.ManagementServiceStub(channel)

        stub = loop.run_until_complete(make())
        time.sleep(1.0)
        threads, rss = child.status()
        rows.append((0, threads, rss, 0.0))
        opened = 0
        for n in steps:
            t0 = time.perf_counter()
            loop.run_until_complete(open_streams(stub, keys[opened:n], server_public, calls))
            took = time.perf_counter() - t0
            opened = n
            time.sleep(1.0)  # let the child settle before sampling
            threads, rss = child.status()
            rows.append((n, threads, rss, took))
            print(f"  [{kind}] {n} streams open: threads {threads}, RSS {rss / 1024:.1f} MiB, "
                  f"opened in {took:.2f} s", flush=True)
    finally:
        for c in calls:
            c.cancel()
        if channel is not None:
            loop.run_until_complete(channel.close())
        # the loop is left unclosed: grpc's poller may still deliver a late event to it
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="32,200,1000",
                    help="cumulative stream counts to sample (default 32,200,1000)")
    args = ap.parse_args()
    steps = sorted(int(x) for x in args.streams.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "store.db")
        key_path = os.path.join(tmp, "wg-server.key")
        t0 = time.perf_counter()
        keys = build_world(db, steps[-1])
        print(f"world: {steps[-1]} accounts with one proxy peer each "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        from nbgateway.management.crypto_box import ServerKey

        server_public = base64.b64decode(ServerKey.load_or_create(key_path).public_b64)

        aio = Child([AIO_SERVER, f"sqlite:///{db}", key_path, CLUSTER])
        try:
            ours = measure("aio", aio, keys, steps, server_public)
        finally:
            aio.close()
        ref = Child([THREADED_SERVER, str(steps[-1] + 8)])
        try:
            threaded = measure("thread per stream", ref, keys, steps, None)
        finally:
            ref.close()

    print()
    print("| streams | threads (aio) | threads (thread/stream) | RSS MiB (aio) | "
          "KiB/stream (aio) | KiB/stream (thread/stream) | maps in (aio) |")
    print("|---|---|---|---|---|---|---|")
    base_a, base_t = ours[0][2], threaded[0][2]
    for (n, th_a, rss_a, took_a), (_, th_t, rss_t, _took_t) in zip(ours, threaded, strict=True):
        per_a = f"{(rss_a - base_a) / n:.1f}" if n else "-"
        per_t = f"{(rss_t - base_t) / n:.1f}" if n else "-"
        print(f"| {n} | {th_a} | {th_t} | {rss_a / 1024:.1f} | {per_a} | {per_t} | "
              f"{took_a:.2f} s |")
    n, th_a, _, _ = ours[-1]
    th_t = threaded[-1][1]
    print(f"\nthreads at {n} streams: aio {th_a} vs thread-per-stream {th_t} "
          f"(ratio {th_t / th_a:.1f}x); aio threads at 0 and {n} streams: "
          f"{ours[0][1]} -> {th_a}")


if __name__ == "__main__":
    main()
