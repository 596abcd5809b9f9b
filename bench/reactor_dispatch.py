"""Per-event reactor overhead on the gateway's hot sockets: a real
``EPollReactor`` in one process (the "gateway"), a load generator in
another, a request/response exchange at a fixed rate.

The gateway process holds the WireGuard UDP port of
:mod:`nbgateway.wireguard.udp` (``udp.listen``: a ``BatchingPort`` and a
``WireGuardProtocol`` with the gateway's end-of-turn output) and ``--conns``
upstream connections (Twisted ``tcp.Client``, ``reactor.connectTCP``), the
two kinds of descriptor the gateway's reactor serves per request.  Its
"device" maps a request datagram to one upstream connection and writes up
to ``--request`` bytes to it (as the gateway writes a request head:
``dial/sockwrite.write``, straight to the socket when nothing is queued;
``--upstream-write twisted``: ``transport.write``, as for a TLS upstream);
when that connection has read the upstream's response, one datagram leaves
on the UDP port to the client.  ``--front tcp``: the clients are TCP
connections to a listener instead (the public listener's path), and the
response goes back with ``transport.write`` on the client's ``tcp.Server``.

The generator (plain sockets, ``selectors``) sends requests at ``--rate``
per second round-robin over the connections (at most one outstanding per
connection), runs the upstream end of every connection (reads a request,
writes the response at once; request and response sizes varied per request
between half and the full ``--request``/``--response``) and reads the
responses.

Printed per request: the gateway process's CPU (``time.process_time``
between the warm-up's end and the last response), and with ``--count`` the
reactor events (``epoll_wait`` returns, ready descriptors by kind and
direction, UDP datagrams per ``doRead``).  ``--against DIR`` alternates
subprocesses with another checkout's package (same run, median of
``--rounds`` each); ``--compare`` alternates this tree with Twisted's
dispatch (``NBGW_LEAN_DISPATCH=0``) and with
:mod:`nbgateway.service.loop`'s; ``--compare-writes`` the lean dispatch
without and with deferred TCP writers (``NBGW_LEAN_WRITES``).

Instructions (load-independent): ``--callgrind`` runs the gateway process
under ``valgrind --tool=callgrind`` twice, with ``--requests`` and twice as
many, and prints the difference over the extra requests (instructions per
request, start-up cancelled out) for each variant; use a low ``--rate``
(200: every request alone in its turns).

Usage: python bench/reactor_dispatch.py [--rate 3000] [--requests 20000] [--conns 16]
                                        [--front udp|tcp] [--upstream-write gateway|twisted]
                                        [--rounds 5] [--count] [--callgrind]
                                        [--against DIR | --compare | --compare-writes]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time

HEAD = struct.Struct("!HI")  # connection index, sequence number
WARMUP = 500


# -- the load generator (its own process) -----------------------------------------------


def generator(args: argparse.Namespace) -> int:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(args.conns)
    udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_sock.bind(("127.0.0.1", 0))
    udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    print(json.dumps({"tcp": lst.getsockname()[1], "udp": udp_sock.getsockname()[1]}),
          flush=True)
    gw_port = int(sys.stdin.readline())
    gw = ("127.0.0.1", gw_port)
    upstreams = []
    for _ in range(args.conns):
        c, _addr = lst.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        upstreams.append(c)
    udp_sock.setblocking(False)
    rnd = random.Random(7)
    sel = selectors.DefaultSelector()
    sel.register(udp_sock, selectors.EVENT_READ, None)
    fronts: list[socket.socket] = []
    if args.front == "tcp":  # the clients: one TCP connection each to the gateway
        for i in range(args.conns):
            f = socket.create_connection(gw)
            f.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f.sendall(HEAD.pack(i, 0))  # "hello": which connection this is
            f.setblocking(False)
            fronts.append(f)
            sel.register(f, selectors.EVENT_READ, ("front", i))
    front_need = [0] * args.conns
    pending = {}  # upstream socket -> bytes of request still expected
    for i, c in enumerate(upstreams):
        sel.register(c, selectors.EVENT_READ, i)
    busy = [False] * args.conns
    queue: list[int] = []
    sent = done = 0
    total = args.requests
    interval = 1.0 / args.rate
    start = time.monotonic()
    while done < total:
        now = time.monotonic()
        due = min(total, int((now - start) / interval) + 1)
        while sent < due:
            queue.append(sent)
            sent += 1
        while queue and not busy[queue[0] % args.conns]:
            k = queue.pop(0)
            i = k % args.conns
            busy[i] = True
            if fronts:
                body = HEAD.pack(i, k).ljust(rnd.randint(60, 200), b"r")
                fronts[i].sendall(struct.pack("!I", len(body) + 4) + body)
            else:
                udp_sock.sendto(HEAD.pack(i, k).ljust(rnd.randint(60, 200), b"r"), gw)
        wait = max(0.0, start + sent * interval - time.monotonic()) if sent < total else 0.5
        for key, _ev in sel.select(wait):
            if key.data is None:
                while True:
                    try:
                        data = udp_sock.recv(65536)
                    except BlockingIOError:
                        break
                    busy[HEAD.unpack_from(data)[0]] = False
                    done += 1
                continue
            c = key.fileobj
            data = c.recv(65536)
            if not data:
                return 1
            if isinstance(key.data, tuple):  # a response on a client connection
                i = key.data[1]
                if front_need[i] == 0:
                    front_need[i] = struct.unpack_from("!I", data)[0]
                front_need[i] -= len(data)
                if front_need[i] <= 0:
                    front_need[i] = 0
                    busy[i] = False
                    done += 1
                continue
            need = pending.get(c, 0)
            if need == 0:  # a new request: its size is in its first 4 bytes
                need = struct.unpack_from("!I", data)[0]
            need -= len(data)
            pending[c] = need
            if need <= 0:
                size = rnd.randint(args.response // 2, args.response)
                c.sendall(struct.pack("!I", size) + b"s" * (size - 4))
    return 0


# -- the gateway side (its own process, the measured one) ---------------------------------


def gateway(args: argparse.Namespace) -> dict:
    from twisted.internet import epollreactor

    epollreactor.install()
    from collections import Counter

    from twisted.internet import protocol, reactor

    from nbgateway.wireguard import udp

    lean = False
    try:
        from nbgateway.service import loop
    except ImportError:  # an older tree: Twisted's dispatch
        loop = None
    if loop is not None:
        lean = loop.install(reactor)

    gen = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "gen",
                            "--conns", str(args.conns), "--rate", str(args.rate),
                            "--requests", str(args.requests), "--response",
                            str(args.response), "--front", args.front],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ports = json.loads(gen.stdout.readline())
    client = ("127.0.0.1", ports["udp"])
    rnd = random.Random(11)
    state = {"served": 0, "t0": None, "t1": None, "batches": 0, "datagrams": 0}

    class Upstream(protocol.Protocol):
        def __init__(self) -> None:
            self.need = 0
            self.reply = b""

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)

        def request(self, head: bytes) -> None:
            size = rnd.randint(args.request // 2, args.request)
            self.reply = head
            payload = struct.pack("!I", size) + b"q" * (size - 4)
            if direct_write is not None:  # as the gateway writes a request head
                direct_write(self.transport, payload)
            else:
                self.transport.write(payload)

        def dataReceived(self, data: bytes) -> None:
            if self.need == 0:
                self.need = struct.unpack_from("!I", data)[0]
            self.need -= len(data)
            if self.need <= 0:
                self.need = 0
                if args.front == "tcp":
                    size = rnd.randint(args.response // 2, args.response)
                    fronts[HEAD.unpack_from(self.reply)[0]].transport.write(
                        struct.pack("!I", size) + self.reply.ljust(size - 4, b"p"))
                else:
                    device.link.sendDatagram(
                        self.reply.ljust(min(1400, args.response), b"p"), client)
                state["served"] += 1
                n = state["served"]
                if n == WARMUP:
                    state["t0"] = time.process_time()
                if n == args.requests:
                    state["t1"] = time.process_time()
                    reactor.stop()

    class Device:
        link = None

        def __init__(self) -> None:
            self.events: Counter = Counter()

        def datagramsReceived(self, batch) -> None:
            state["batches"] += 1
            state["datagrams"] += len(batch)
            for data, _addr in batch:
                conns[HEAD.unpack_from(data)[0]].request(data[:HEAD.size])

        def datagramReceived(self, data, addr) -> None:
            self.datagramsReceived([(data, addr)])

    class Front(protocol.Protocol):
        """A client's connection (``--front tcp``): length-prefixed requests."""

        def __init__(self) -> None:
            self.buf = b""

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            if len(self.buf) >= HEAD.size and self not in fronts.values():
                fronts[HEAD.unpack_from(self.buf)[0]] = self
                self.buf = self.buf[HEAD.size:]
            while len(self.buf) >= 4 and len(self.buf) >= struct.unpack_from("!I", self.buf)[0]:
                size = struct.unpack_from("!I", self.buf)[0]
                msg, self.buf = self.buf[4:size], self.buf[size:]
                conns[HEAD.unpack_from(msg)[0]].request(msg[:HEAD.size])

    direct_write = None
    if args.upstream_write == "gateway":
        try:
            from nbgateway.dial.sockwrite import write as direct_write
        except ImportError:
            direct_write = None
    fronts: dict[int, Front] = {}
    device = Device()
    if args.front == "tcp":
        front_factory = protocol.Factory.forProtocol(Front)
        port = reactor.listenTCP(0, front_factory, interface="127.0.0.1")
    else:
        port = udp.listen(reactor, device, 0, "127.0.0.1")
    conns: list[Upstream] = []
    factory = protocol.ClientFactory()
    factory.protocol = Upstream

    def connected(p) -> None:
        conns.append(p)

    from twisted.internet.endpoints import TCP4ClientEndpoint
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", ports["tcp"])
    for _ in range(args.conns):
        ep.connect(factory).addCallback(connected)

    counts = Counter()
    if args.count:
        real = reactor._poller
        udp_fd = port.fileno()

        class CountingPoller:
            def __getattr__(self, name):
                return getattr(real, name)

            def poll(self, timeout=-1, maxevents=-1):
                events = real.poll(timeout, maxevents)
                if state["t0"] is not None:
                    counts["polls"] += 1
                    for fd, ev in events:
                        kind = ("udp" if fd == udp_fd else
                                "front" if fd in front_fds else "upstream")
                        if ev & 1:
                            counts[f"{kind}_read"] += 1
                        if ev & 4:
                            counts[f"{kind}_write"] += 1
                        if ev & ~5:
                            counts[f"{kind}_other"] += 1
                return events

        reactor._poller = CountingPoller()

    front_fds: set[int] = set()

    def go() -> None:
        if len(conns) < args.conns:
            reactor.callLater(0.01, go)
            return
        gen.stdin.write(f"{port.getHost().port}\n")
        gen.stdin.flush()
        if args.front == "tcp":
            reactor.callLater(0.01, known)

    def known() -> None:
        if len(fronts) < args.conns:
            reactor.callLater(0.01, known)
            return
        front_fds.update(f.transport.fileno() for f in fronts.values())
        state["b0"] = (state["batches"], state["datagrams"])

    reactor.callLater(0, go)
    reactor.run()
    gen.wait(timeout=30)
    n = args.requests - WARMUP
    out = {"lean": lean, "deferred_writes": loop is not None and loop.defers_writes(reactor),
           "direct_upstream_write": direct_write is not None,
           "cpu_us_per_request": (state["t1"] - state["t0"]) / n * 1e6}
    if args.count:
        out.update({k: round(v / n, 3) for k, v in sorted(counts.items())})
        out["datagrams_per_udp_read"] = round(state["datagrams"] / max(1, state["batches"]), 3)
    return out


# -- the driver ---------------------------------------------------------------------------


def _run_child(args, tree: str, env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = tree
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "gateway", "--conns",
           str(args.conns), "--rate", str(args.rate), "--requests", str(args.requests),
           "--request", str(args.request), "--response", str(args.response)]
    if args.count:
        cmd.append("--count")
    cmd += ["--front", args.front, "--upstream-write", args.upstream_write]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _callgrind(args, tree: str, env_extra: dict) -> float:
    """Instructions per request: callgrind totals of the gateway process for
    ``--requests`` and twice as many, the difference over the extra ones."""
    totals = []
    for n in (args.requests, 2 * args.requests):
        out = f"/tmp/reactor_dispatch.callgrind.{os.getpid()}"
        env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0", **env_extra)
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               os.path.abspath(__file__), "--role", "gateway", "--conns", str(args.conns),
               "--rate", str(args.rate), "--requests", str(n), "--request",
               str(args.request), "--response", str(args.response)]
        cmd += ["--front", args.front, "--upstream-write", args.upstream_write]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        with open(out) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
        os.unlink(out)
        totals.append(total)
    return (totals[1] - totals[0]) / args.requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=("driver", "gateway", "gen"), default="driver",
                   help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=3000.0, help="requests per second")
    p.add_argument("--requests", type=int, default=20000, help="requests per run")
    p.add_argument("--conns", type=int, default=16, help="upstream connections")
    p.add_argument("--request", type=int, default=400, help="upstream request bytes (max)")
    p.add_argument("--response", type=int, default=1200, help="upstream response bytes (max)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", action="store_true", help="count reactor events per request")
    p.add_argument("--against", metavar="DIR", help="another checkout to alternate with")
    p.add_argument("--compare", action="store_true",
                   help="this tree with NBGW_LEAN_DISPATCH=0 against this tree")
    p.add_argument("--front", choices=("udp", "tcp"), default="udp",
                   help="the clients: datagrams on the WireGuard UDP port, or one TCP "
                        "connection each to a listener (the public listener's path)")
    p.add_argument("--upstream-write", choices=("gateway", "twisted"), default="gateway",
                   help="upstream requests as the gateway writes them (dial/sockwrite: at "
                        "once when nothing is queued), or with transport.write (TLS "
                        "upstreams, large bodies)")
    p.add_argument("--compare-writes", action="store_true",
                   help="this tree with NBGW_LEAN_WRITES=0 against this tree")
    p.add_argument("--callgrind", action="store_true",
                   help="instructions per request under callgrind (use a low --rate)")
    args = p.parse_args(argv)
    if args.role == "gen":
        return generator(args)
    if args.role == "gateway":
        print(json.dumps(gateway(args)))
        return 0
    here = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    variants = {"this tree": (here, {})}
    if args.against:
        variants = {"against": (args.against, {}), "this tree": (here, {})}
    elif args.compare:
        variants = {"Twisted's dispatch": (here, {"NBGW_LEAN_DISPATCH": "0"}),
                    "lean dispatch": (here, {"NBGW_LEAN_DISPATCH": "1"})}
    elif args.compare_writes:
        variants = {"writers registered": (here, {"NBGW_LEAN_WRITES": "0"}),
                    "writers deferred": (here, {"NBGW_LEAN_WRITES": "1"})}
    if args.callgrind:
        for name, (tree, env) in variants.items():
            print(f"{name}: {_callgrind(args, tree, env):,.0f} instructions per request")
        return 0
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (tree, env) in variants.items():
            results[name].append(_run_child(args, tree, env))
    medians = {}
    for name, runs in results.items():
        cpu = [r["cpu_us_per_request"] for r in runs]
        medians[name] = statistics.median(cpu)
        print(f"{name}: lean={runs[0]['lean']} deferred={runs[0]['deferred_writes']} "
              f"direct upstream write={runs[0]['direct_upstream_write']}\n"
              f"   CPU per request {medians[name]:.2f} us "
              f"(runs {', '.join(f'{c:.2f}' for c in cpu)})")
        if args.count:
            keys = [k for k in runs[0] if k not in ("lean", "cpu_us_per_request",
                                                     "deferred_writes", "direct_upstream_write")]
            print("   per request: " + ", ".join(
                f"{k} {statistics.median(r[k] for r in runs)}" for k in keys))
    if len(medians) == 2:
        a, b = medians.values()
        print(f"ratio (second / first): {b / a:.3f}  ({b - a:+.2f} us per request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
