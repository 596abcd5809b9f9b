"""Gateway side of the access log: reactor-thread cost per request.

Compares, against a real grpcio ProxyService on 127.0.0.1 (in this process,
storing nothing), the reactor thread's CPU time per access-log entry of

* ``per-request``: the old pipeline, one ``SendAccessLog`` unary call per
  request (a grpcio call object and a done-callback hop each);
* ``batched``: :class:`nbgateway.observe.accesslog.AccessLogger` (a deque
  append per request; one ``NbgwSendAccessLogBatch`` per linger window, one in
  flight).

Reported: reactor-thread CPU microseconds per entry (``time.thread_time`` of
the reactor thread) and process CPU per entry (grpcio's threads included),
for ``--entries`` entries offered in bursts of ``--burst`` per reactor turn.

Run:  .venv/bin/python bench/accesslog_ship.py [--entries 20000] [--burst 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from twisted.internet import defer, reactor, task  # noqa: E402

from nbgateway._proto import proxy_service_pb2 as pb  # noqa: E402
from nbgateway.mgmt.client import GrpcManagementClient  # noqa: E402
from nbgateway.observe.accesslog import AccessLogger, build_entry, new_log_id  # noqa: E402
from tests.mgmt.servicer import TOKEN, CannedProxyService, Server  # noqa: E402


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


async def _run(mode: str, client: GrpcManagementClient, sink: Sink, n: int, burst: int):
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
    sink = Sink()
    server = Server(sink)
    client = GrpcManagementClient(reactor, server.url, TOKEN, address="bench.example",
                                  private=True)
    client.startService()
    try:
        await _run("batched", client, sink, 1000, args.burst)  # warm up both paths
        await _run("per-request", client, sink, 1000, args.burst)
        print(f"{args.entries:,} entries, bursts of {args.burst}:")
        old = await _run("per-request", client, sink, args.entries, args.burst)
        new = await _run("batched", client, sink, args.entries, args.burst)
        print(f"reactor-thread cost: batched / per-request = {new / old:.3f}")
    finally:
        client.stopService()
        server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--burst", type=int, default=100)
    a = p.parse_args()
    task.react(lambda _r: defer.ensureDeferred(main(a)))
