"""Benchmark: the upstream client's request write, direct socket write vs.
Twisted's buffered write, alternated in one run (no root needed).

Sequential keep-alive requests of :class:`nbgateway.dial.http11.LeanAgent`
over real loopback TCP (epoll reactor) to a Twisted server in the same
process answering 512 bytes.  Each round runs one subprocess with
``NBGW_UPSTREAM_DIRECT_WRITE=1`` and one with ``=0`` (order alternated) and
reads the process CPU time and wall time per request; medians and their
ratio are printed.  With ``--strace`` (strace installed) one extra pair of
runs is made under ``strace -c -f`` and the ``epoll_ctl`` / ``epoll_wait``
/ ``sendto`` calls per request are printed (the server in the same process
keeps Twisted's buffered write, so the client's saving is the difference).

Run:  .venv/bin/python bench/upstream_write.py [--requests 5000] [--rounds 3] [--strace]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

WARMUP = 200


def child(n: int) -> None:
    import resource
    import time

    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.http_headers import Headers

    from nbgateway.dial import sockwrite
    from nbgateway.dial.http11 import ConnectionPool, LeanAgent

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 512\r\n\r\n" + b"x" * 512

    class Answer(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                _, self.buf = self.buf.split(b"\r\n\r\n", 1)
                self.transport.write(answer)

    class Body(Protocol):
        def __init__(self) -> None:
            self.d: defer.Deferred[None] = defer.Deferred()
            self.size = 0

        def dataReceived(self, data: bytes) -> None:
            self.size += len(data)

        def connectionLost(self, reason: object = None) -> None:
            reactor.callLater(0, self.d.callback, None)  # pooled after this turn

    port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
    pool = ConnectionPool(reactor, 4, 30.0)
    agent = LeanAgent(pool, lambda h, p, tls: TCP4ClientEndpoint(reactor, h, p))
    url = b"http://127.0.0.1:%d/" % port.getHost().port
    out: dict[str, float] = {}

    @defer.inlineCallbacks
    def run() -> Any:
        t0 = ru0 = None
        for i in range(WARMUP + n):
            if i == WARMUP:
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
            r = yield agent.request(b"GET", url, Headers(), None)
            body = Body()
            r.deliverBody(body)
            yield body.d
            assert r.code == 200 and body.size == 512
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_us"] = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / n * 1e6
        out["wall_us"] = (time.perf_counter() - t0) / n * 1e6
        out["direct"] = sockwrite.DirectWriteStats.direct
        out["enabled"] = sockwrite.ENABLED
        reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    print(json.dumps(out))


def once(direct: bool, n: int, strace: str | None = None) -> dict[str, float]:
    env = dict(os.environ, NBGW_UPSTREAM_DIRECT_WRITE="1" if direct else "0")
    cmd = [sys.executable, __file__, "--child", str(n)]
    if strace:
        cmd = ["strace", "-c", "-f", "-o", strace, *cmd]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["enabled"] == direct and (got["direct"] > 0) == direct, got
    return got


def syscalls(path: str, n: int) -> dict[str, float]:
    counts = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) in ("epoll_ctl", "epoll_wait", "sendto", "recvfrom"):
                counts[m.group(2)] = int(m.group(1)) / (n + WARMUP)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    res: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for direct in ((True, False) if r % 2 == 0 else (False, True)):
            res[direct].append(once(direct, args.requests))
    print(f"{args.requests} sequential keep-alive requests x {args.rounds} alternated rounds "
          "(LeanAgent over loopback TCP, server in process), medians:")
    med = {}
    for direct in (True, False):
        cpu = statistics.median(x["cpu_us"] for x in res[direct])
        wall = statistics.median(x["wall_us"] for x in res[direct])
        med[direct] = (cpu, wall)
        print(f"  direct write {'on ' if direct else 'off'}  CPU {cpu:6.1f} us/req  "
              f"wall {wall:6.1f} us/req   rounds CPU "
              + " ".join(f"{x['cpu_us']:.1f}" for x in res[direct]))
    print(f"  on / off: CPU {med[True][0] / med[False][0]:.3f}  "
          f"wall {med[True][1] / med[False][1]:.3f}")
    if args.strace:
        if not shutil.which("strace"):
            print("  (strace not installed: syscall counts skipped)")
            return 0
        n = min(args.requests, 2000)
        with tempfile.TemporaryDirectory() as tmp:
            for direct in (True, False):
                path = os.path.join(tmp, f"s{int(direct)}")
                once(direct, n, path)
                c = syscalls(path, n)
                print(f"  syscalls per request (client + server), direct write "
                      f"{'on ' if direct else 'off'}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
