"""In-process handshake burst: the reactor cost of one initiation at N accounts.

A :class:`~nbgateway.wireguard.mux.DeviceMux` with ``--accounts`` account
devices (``--peers`` roster peers each, all with real keys) is fed one
initiation from each of ``--burst`` distinct peers (round-robin over the
accounts, each from its own source address), built by
:class:`bench._handshakes.Initiator`, in socket-read-sized batches of
``--read`` datagrams, as the UDP adapter would; the mux's drain calls run on
a minimal loop whose clock is this thread's CPU time (``--wall``: monotonic).
No sockets, no namespaces.

Two phases per round:

* ``first``: the burst's first initiations.  With ``--cookies`` (default) the
  mux's queue puts the devices under load, so most get a cookie reply (the
  MAC1 routing scan plus the cookie, no DH); without, every one does the DH.
* ``retry``: every initiator that got a cookie retries with MAC2 (the retry's
  key work prepared beforehand, as the real bench does): each does the DH.

Printed per phase: initiations handled, cookie replies, responses, thread CPU
per initiation (``time.thread_time``: the reactor thread's own cost, less
sensitive to other processes' load than wall time) and wall time.
``--profile`` prints the top of a cProfile of both phases.

``--before PATH`` runs the same world in a child process with ``PATH`` (a
``git worktree`` of another commit) first on ``PYTHONPATH``, interleaved with
the current tree, ``--rounds`` times each, and prints both side by side.

  .venv/bin/python bench/handshake_burst.py --accounts 1000 --burst 1000
  .venv/bin/python bench/handshake_burst.py --before /tmp/burst-wt --rounds 3
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import io
import itertools
import json
import os
import pstats
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


#: the harness's time: this thread's CPU time, as if the reactor had a core
#: to itself (other processes' load on the shared bench machine then changes
#: little); ``--wall`` uses time.monotonic
now = time.thread_time


class LoopClock:
    """``IReactorTime`` on :func:`now` with a run loop for callLater."""

    def __init__(self) -> None:
        self._calls: list = []
        self._seq = itertools.count()

    def seconds(self) -> float:
        return now()

    def callLater(self, delay, f, *a, **kw):
        call = _Call(self, now() + delay, f, a, kw)
        heapq.heappush(self._calls, (call.time, next(self._seq), call))
        return call

    def run_due(self) -> int:
        """One reactor turn: run the calls due now (not those they schedule)."""
        n = 0
        t = now()
        due = []
        while self._calls and self._calls[0][0] <= t:
            due.append(heapq.heappop(self._calls)[2])
        for call in due:
            if call.cancelled:
                continue
            call.called = True
            call.f(*call.a, **call.kw)
            n += 1
        return n


class _Call:
    def __init__(self, clock, when, f, a, kw) -> None:
        self.time, self.f, self.a, self.kw = when, f, a, kw
        self.cancelled = self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True

    def getTime(self) -> float:
        return self.time


class _Link:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendDatagram(self, data: bytes, addr) -> None:
        self.sent.append((bytes(data), addr))


def _key(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(32))


def build(accounts: int, peers: int, burst: int, cookies: bool, seed: int = 1,
          mux_args: dict | None = None):
    from bench._handshakes import Initiator
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import public_key
    from nbgateway.wireguard.mux import DeviceMux

    rng = random.Random(seed)
    clock = LoopClock()
    kw = dict(mux_args or {})
    if not cookies:
        kw["under_load_depth"] = 1 << 30
    mux = DeviceMux(clock, **kw)
    link = _Link()
    mux.link = link
    devices = []
    for a in range(accounts):
        dev = WireGuardDevice(_key(rng), clock, rng=random.Random(a),
                              index_registry=mux.registry,
                              under_load_threshold=1 << 30 if not cookies else 256)
        for p in range(peers):
            dev.add_peer(public_key(_key(rng)),
                         allowed_ips=[f"100.{64 + a // 250}.{a % 250}.{p + 1}/32"])
        mux.add(dev)
        devices.append(dev)
    inis = []
    for i in range(burst):
        dev = devices[i % accounts]
        priv = _key(rng)
        dev.add_peer(public_key(priv), allowed_ips=[f"100.120.{i // 250}.{i % 250 + 1}/32"])
        ini = Initiator(priv, dev.public_key, index=10_000 + i, rng=random.Random(i))
        ini.prepare(2)
        inis.append(ini)
    mux.link = link
    return clock, mux, link, inis


class DataDevice:
    """Stands for the established peer's account device: each socket read's
    transport data costs ``cost`` seconds of this thread's CPU (a busy loop)."""

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.reads = 0

    def datagramsReceived(self, batch) -> None:
        self.reads += 1
        end = time.thread_time() + self.cost
        while time.thread_time() < end:
            pass


DATA_INDEX = 0xDA7A


def data_reads(n: int) -> list[tuple[bytes, tuple[str, int]]]:
    datagram = struct.pack("<II", 4, DATA_INDEX) + bytes(8 + 1200)
    return [(datagram, ("198.19.0.1", 51820))] * n


def feed(clock, mux, datagrams, read: int, data: DataDevice | None,
         data_per_read: int = 32) -> dict:
    """Feed ``datagrams`` in socket reads of ``read`` (with ``data``: each read
    also carries ``data_per_read`` transport datagrams of the established peer,
    and reads go on until the queue is empty), one reactor turn (the due
    calls) after each read; thread CPU, wall and the data reads per second."""
    c0, w0 = time.thread_time(), now()
    reads0 = data.reads if data is not None else 0
    extra = data_reads(data_per_read) if data is not None else []
    per = max(1, read - len(extra))
    i = 0
    while i < len(datagrams) or mux.handshake_queue_depth:
        chunk = datagrams[i:i + per]
        i += len(chunk)
        if chunk or extra:
            mux.datagramsReceived(chunk + extra)
        clock.run_due()
    wall = now() - w0
    return {"cpu": time.thread_time() - c0, "wall": wall,
            "data_reads_per_s": (data.reads - reads0) / wall if data is not None else 0.0}


def data_rate(clock, mux, data: DataDevice, seconds: float = 0.3) -> float:
    """Data reads per second with no handshakes (the "before" of the ratio)."""
    extra = data_reads(32)
    r0, w0 = data.reads, now()
    while now() - w0 < seconds:
        mux.datagramsReceived(extra)
        clock.run_due()
    return (data.reads - r0) / (now() - w0)


def run_once(args) -> dict:
    from bench._handshakes import receiver_index

    mux_args = {"busy_share": args.busy_share} if args.busy_share else None
    clock, mux, link, inis = build(args.accounts, args.peers, args.burst, not args.no_cookies,
                                   mux_args=mux_args)
    data = None
    if args.data_ms > 0:
        data = DataDevice(args.data_ms / 1000)
        mux.registry.claim(DATA_INDEX, data)
    by_index = {ini.index: ini for ini in inis}
    addrs = [(f"198.18.{i // 250}.{i % 250 + 1}", 40000 + i) for i in range(len(inis))]
    prof = cProfile.Profile() if args.profile else None
    out = {}
    pending = list(range(len(inis)))
    for phase in ("first", "retry"):
        if not pending:
            break
        rate0 = data_rate(clock, mux, data) if data is not None else 0.0
        t = time.monotonic()
        datagrams = [(inis[i].initiation(t), addrs[i]) for i in pending]
        link.sent.clear()
        before = mux.counters_total
        data_cpu0 = data.reads if data is not None else 0
        if prof is not None:
            prof.enable()
        r = feed(clock, mux, datagrams, args.read, data)
        if prof is not None:
            prof.disable()
        after = mux.counters_total
        results = {"done": 0, "cookie": 0, "ignored": 0}
        for datagram, _addr in link.sent:
            ini = by_index.get(receiver_index(datagram))
            if ini is not None:
                results[ini.receive(datagram, time.monotonic())] += 1
        pending = [i for i, ini in enumerate(inis) if not ini.done]
        n = len(datagrams)
        hs_cpu = r["cpu"] - (data.reads - data_cpu0) * data.cost if data is not None else r["cpu"]
        out[phase] = {
            "initiations": n, "responses": results["done"], "cookies": results["cookie"],
            "us_cpu_per_init": hs_cpu / n * 1e6, "wall_s": r["wall"],
            "data_ratio": r["data_reads_per_s"] / rate0 if rate0 else None,
            "time_budget_spent": after["handshake_queue_time_budget_spent"]
            - before["handshake_queue_time_budget_spent"],
        }
    out["completed"] = sum(ini.done for ini in inis)
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        out["profile"] = s.getvalue()
    mux.close()
    return out


def _child(tree: str, argv: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + str(ROOT))
    cmd = [sys.executable, str(ROOT / "bench" / "handshake_burst.py"), "--json", *argv]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                     text=True, cwd=tree).stdout)


def _line(label: str, r: dict) -> str:
    parts = [f"{label:8s} completed {r['completed']}"]
    for phase in ("first", "retry"):
        if phase in r:
            p = r[phase]
            parts.append(f"{phase}: {p['initiations']} init, {p['cookies']} cookies, "
                         f"{p['responses']} resp, {p['us_cpu_per_init']:7.0f} us CPU/init, "
                         f"{p['wall_s']:.2f} s"
                         + (f", data {p['data_ratio']:.2f} x" if p.get("data_ratio") else ""))
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--peers", type=int, default=10, help="roster peers per account")
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--read", type=int, default=64, help="datagrams per socket read")
    ap.add_argument("--no-cookies", action="store_true",
                    help="never under load: every first initiation does the DH")
    ap.add_argument("--data-ms", type=float, default=0.0,
                    help="an established peer: each read also carries transport data "
                         "costing this many ms of CPU; prints its rate during the burst "
                         "as a ratio to the rate just before")
    ap.add_argument("--busy-share", type=float, default=None,
                    help="DeviceMux(busy_share=...) (trees that have it)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--before", metavar="PATH", help="worktree of the previous commit")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--wall", action="store_true",
                    help="time.monotonic as the clock instead of the thread's CPU time")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.wall:
        global now
        now = time.monotonic
    if args.json:
        print(json.dumps(run_once(args)))
        return 0
    if args.before:
        child_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = child_argv.index("--before")
        del child_argv[i:i + 2]
        if "--rounds" in child_argv:
            i = child_argv.index("--rounds")
            del child_argv[i:i + 2]
        for rnd in range(args.rounds):
            for label, tree in (("before", args.before), ("after", str(ROOT))):
                print(f"round {rnd + 1} " + _line(label, _child(tree, child_argv)), flush=True)
        return 0
    for rnd in range(args.rounds):
        r = run_once(args)
        print(f"round {rnd + 1} " + _line("this", r), flush=True)
        if "profile" in r:
            print(r["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
