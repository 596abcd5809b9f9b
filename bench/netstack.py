"""Benchmark: the gateway's user-space TCP against the wireguard-go baseline.

Measured in the same run (the box is noisy):

* ``wg-go``: wireguard-go <-> wireguard-go, kernel TCP at both ends (iperf3,
  one stream each direction, ``bench/wg_baseline.py``);
* ``upload``: one TCP stream from the kernel (in a namespace, through
  wireguard-go) into a sink on the gateway's netstack (WireGuardDevice ->
  Stack -> TCPLayer -> TunnelTCPTransport); ``download``: a source on the
  gateway streaming to the kernel.  Printed as Mbit/s and as a ratio of the
  matching wg-go direction (target >= 0.5);
* the time for the kernel to open 1,000 connections to a netstack listener
  (each completed with a 1-byte request/response);
* memory per idle established connection (tracemalloc, both ends of 1,000
  connections between two in-memory stacks; target <= 16 KiB);
* the same two figures with 1,000 connections opened by the kernel all at
  once (non-blocking connects) through the real tunnel: time from the
  client's start to the gateway's 1,000th accepted connection, and the
  gateway process's traced memory per idle connection (connection +
  transport + protocol + whatever the device and stack keep for it).

Run as root:  .venv/bin/python bench/netstack.py [--mib 256] [--seconds 5]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import textwrap
import time
import tracemalloc

try:
    from bench._testbed import Testbed, unavailable_reason
    from bench.wg_baseline import measure_wg_go_baseline
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import Testbed, unavailable_reason
    from wg_baseline import measure_wg_go_baseline

from twisted.internet import defer, interfaces, task, threads
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from tests.interop.netstack_gateway import GW4, kernel_peer_args, start_gateway

MIB = 1024 * 1024

KERNEL = textwrap.dedent('''
    import socket, sys, time
    mode, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "up":
        s = socket.create_connection((host, 9000), timeout=120)
        buf = b"u" * (1 << 20)
        t = time.perf_counter()
        left = n
        while left > 0:
            k = s.send(buf[: min(left, len(buf))])
            left -= k
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(100)
        dt = time.perf_counter() - t
        assert int(reply) == n, reply
        print(n * 8 / dt / 1e6, flush=True)
    elif mode == "down":
        s = socket.create_connection((host, 9001), timeout=120)
        t = time.perf_counter()
        got = 0
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            got += len(d)
        dt = time.perf_counter() - t
        assert got == n, got
        print(n * 8 / dt / 1e6, flush=True)
    else:
        t = time.perf_counter()
        socks = []
        for _ in range(n):
            c = socket.create_connection((host, 9002), timeout=30)
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            socks.append(c)
        dt = time.perf_counter() - t
        for c in socks:
            c.close()
        print(dt, flush=True)
''')


class Sink(Protocol):
    def __init__(self) -> None:
        self.n = 0

    def dataReceived(self, data: bytes) -> None:
        self.n += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(str(self.n).encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


implementer(interfaces.IHalfCloseableProtocol)(Sink)


@implementer(interfaces.IPushProducer)
class Source(Protocol):
    """Streams ``n`` bytes with backpressure, then closes."""

    n = 0
    chunk = b"d" * 65536

    def connectionMade(self) -> None:
        self.left = self.n
        self.paused = False
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            k = min(self.left, len(self.chunk))
            self.transport.write(self.chunk[:k])
            self.left -= k
        if self.left == 0 and not self.paused:
            self.left = -1
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = -1


class Echo1(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


async def _gateway_runs(reactor, nbytes: int, conns: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with Testbed() as tb:
        gw = start_gateway(tb, reactor)
        try:
            stack = gw.stack
            await TunnelServerEndpoint(stack, 9000).listen(Factory.forProtocol(Sink))
            Source.n = nbytes
            await TunnelServerEndpoint(stack, 9001).listen(Factory.forProtocol(Source))
            await TunnelServerEndpoint(stack, 9002, backlog=1024).listen(
                Factory.forProtocol(Echo1))
            for mode, count in (("up", nbytes), ("down", nbytes), ("accept", conns)):
                res = await threads.deferToThread(
                    gw.ns.run, [sys.executable, "-c", KERNEL, mode, GW4, str(count)],
                    timeout=600)
                out[mode] = float(res.stdout.strip())
            out.update(await _concurrent_idle(reactor, gw, 9003, conns))
            out["tcp_rto"] = stack.tcp.counters["tcp_rto"]
        finally:
            await gw.close()
    return out


class _Idle(Protocol):
    def connectionLost(self, reason) -> None:
        self.factory.lost += 1


class _IdleFactory(Factory):
    """Idle protocols; records the wall time of the ``target``-th accept."""

    protocol = _Idle

    def __init__(self, target: int) -> None:
        self.target = target
        self.accepted = self.lost = 0
        self.reached_at: float | None = None

    def buildProtocol(self, addr):
        self.accepted += 1
        if self.accepted == self.target:
            self.reached_at = time.time()
        return super().buildProtocol(addr)


async def _until(reactor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await task.deferLater(reactor, 0.02, lambda: None)
    return True


async def _concurrent_idle(reactor, gw, port_no: int, n: int) -> dict[str, float]:
    """The kernel opens ``n`` connections at once through the tunnel and keeps
    them idle; seconds to the gateway's n-th accept and traced bytes per
    connection in this process."""
    factory = _IdleFactory(n)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        port = await TunnelServerEndpoint(gw.stack, port_no, backlog=n).listen(factory)
        proc = gw.ns.popen(kernel_peer_args("idle", GW4, port_no, n), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        try:
            start = float((await threads.deferToThread(proc.stdout.readline)).split()[1])
            if not await _until(reactor, lambda: factory.reached_at is not None, 60):
                raise RuntimeError(f"only {factory.accepted} of {n} connections accepted")
            connected = (await threads.deferToThread(proc.stdout.readline)).split()
            assert connected[:2] == ["CONNECTED", str(n)], connected
            await task.deferLater(reactor, 1.0, lambda: None)  # idle: delayed ACKs done
            gc.collect()
            per_conn = (tracemalloc.get_traced_memory()[0] - base) / n
        finally:
            proc.stdin.close()
            await threads.deferToThread(proc.wait, 30)
        await _until(reactor, lambda: factory.lost >= factory.accepted, 30)
        await port.stopListening()
    finally:
        tracemalloc.stop()
    return {"concurrent_accept": factory.reached_at - start, "concurrent_mem": per_conn}


def idle_memory_per_connection(n: int = 1000) -> float:
    """Bytes per idle established connection end (connection + transport +
    protocol), from two in-memory stacks on a task.Clock."""
    from nbgateway.netstack.testing import make_stack_pair

    clock = task.Clock()
    a, b, _link = make_stack_pair(clock)
    TunnelServerEndpoint(b, 80, backlog=n).listen(Factory.forProtocol(Echo1))

    class Hi(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hi")

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        TunnelClientEndpoint(a, "100.64.0.2", 80).connect(Factory.forProtocol(Hi))
    for _ in range(2000):
        calls = clock.getDelayedCalls()
        if not calls:
            break
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
        if clock.seconds() > 5.0:
            break
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(b.tcp.conns) == n, len(b.tcp.conns)
    del a, b, _link, clock
    gc.collect()  # free the in-memory stacks before the timed runs
    return used / (2 * n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="bytes per bulk direction (MiB)")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 -t for the baseline")
    parser.add_argument("--conns", type=int, default=1000)
    args = parser.parse_args(argv)
    reason = unavailable_reason(need=("iperf3", "ss"))
    if reason is not None:
        print(f"netstack bench unavailable: {reason}")
        return 2
    mem = idle_memory_per_connection(args.conns)
    base = measure_wg_go_baseline(args.seconds)
    t0 = time.perf_counter()

    async def run(reactor):
        res = await _gateway_runs(reactor, args.mib * MIB, args.conns)
        report(args, base, res, mem, time.perf_counter() - t0)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)), [])  # exits the process
    return 0


def report(args, base: dict[str, float], res: dict[str, float], mem: float,
           elapsed: float) -> None:
    print(f"wg-go <-> wg-go (kernel TCP both ends): forward {base['forward']:.0f} Mbit/s, "
          f"reverse {base['reverse']:.0f} Mbit/s")
    print(f"kernel -> wg-go -> gateway netstack (upload, {args.mib} MiB): "
          f"{res['up']:.0f} Mbit/s  ratio {res['up'] / base['forward']:.2f}")
    print(f"gateway netstack -> wg-go -> kernel (download, {args.mib} MiB): "
          f"{res['down']:.0f} Mbit/s  ratio {res['down'] / base['reverse']:.2f}")
    print(f"kernel opens {args.conns} connections to a netstack listener (1-byte echo each): "
          f"{res['accept']:.2f} s ({args.conns / res['accept']:.0f}/s)")
    print(f"memory per idle established connection end: {mem / 1024:.1f} KiB (target <= 16)")
    print(f"kernel opens {args.conns} connections at once through the tunnel: "
          f"{res['concurrent_accept']:.2f} s to the last accept; gateway memory per idle "
          f"connection {res['concurrent_mem'] / 1024:.1f} KiB (tracemalloc, whole process)")
    print(f"(gateway TCP retransmission timeouts during the run: {res['tcp_rto']:.0f}; "
          f"total {elapsed:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
