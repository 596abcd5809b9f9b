"""Memory per roster peer in one account, and the per-packet hot path beside it.

One :class:`~nbgateway.accounts.AccountRuntime` (the fake management and peer
channel of ``tests/test_accounts.py``) is fed a peer storm as the proxy peer
sees it: maps of 10, 20, ... N peers (each peer by its IPv4 and IPv6 tunnel
address, one inbound rule per address and service port, one DNS A record
per peer), every map serialized, parsed and converted by
``mgmt/netmap.convert`` as the peer channel does.  Printed per peer, between
the first map and the last (``gc`` run first):

* ``heap``: the Python heap kept (tracemalloc), and the top files;
* ``peak``: tracemalloc's peak over the storm (the transients);
* ``rss``: the process's RSS growth (a separate run without tracemalloc);
* ``lookup`` and ``filter``: ns per allowed-IPs lookup (``lookup_packed``) and
  per filter decision (``PacketFilter.allows``), over the roster's addresses
  and as many misses, IPv4 and IPv6.

``--before PATH`` runs every measurement alternately (``--rounds``) on the
tree at PATH (a ``git worktree`` of an older commit, imported first through
``sys.path``) and on this tree, in fresh child processes, and prints both
with their ratio::

    git worktree add /tmp/h4-before 55279f6
    .venv/bin/python bench/peer_memory.py --peers 2000 --before /tmp/h4-before

``--real`` (root: network namespace) runs bench/scale.py's peer storm
instead: real management and gateway processes, N peers created one by one
through REST in one account; per tree (the gateway process imports the tree
through ``PYTHONPATH``; management and this process are this tree) it prints
the time from the last create until the gateway's roster holds them all and
the gateway's RSS growth per peer 2 s after that and again after
``--settle`` seconds (past the gateway's 60-s ``malloc_trim``: what an idle
peer keeps)::

    .venv/bin/python bench/peer_memory.py --real --before /tmp/h4-before

``--real --probe`` also asks the gateway (``NBGW_MALLOC_PROBE``, SIGUSR2; see
``nbgateway/tap.malloc_probe_on_signal``) for its allocator figures before
the storm and after ``--settle``, and prints their growth per peer: glibc's
bytes in use per malloc arena (``heap0`` the reactor's, ``heap1`` the gRPC
threads') and free in them, pymalloc's arenas and blocks, object counts,
and the RSS growth per mapping (``/proc/PID/smaps``);
``NBGW_MALLOC_PROBE_TRACE=1`` in the environment adds tracemalloc (kept as
``--probe-path``.{before,after}.trace, compare them by line).
``--env KEY=VALUE`` sets a variable for this tree's gateway only: an A/B of a
switch with ``--before`` naming the same tree.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import ipaddress
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree() -> str:
    return os.environ.get("NBGW_BENCH_TREE") or _HERE


def v4(i: int) -> str:
    return f"100.64.{(i + 2) // 250}.{(i + 2) % 250 + 1}"


def v6(i: int) -> str:
    return f"fd00::{i + 2:x}"


def storm_map(pb: Any, n: int, serial: int, keys: list[str]) -> Any:
    nm = pb.NetworkMap(Serial=serial)
    nm.peerConfig.address = "100.64.0.1/10"
    zone = nm.DNSConfig.CustomZones.add(Domain="peers.test")
    for i in range(n):
        ips = (v4(i), v6(i))
        nm.remotePeers.add(wgPubKey=keys[i], allowedIps=[ips[0] + "/32", ips[1] + "/128"],
                           fqdn=f"p{i}.peers.test")
        zone.Records.add(Name=f"p{i}.peers.test", Type=1, Class="IN", TTL=300, RData=ips[0])
        for ip in ips:
            for port in ("80", "443"):
                nm.FirewallRules.append(pb.FirewallRule(
                    PolicyID=b"private-access", PeerIP=ip, Direction=pb.IN, Action=pb.ACCEPT,
                    Protocol=pb.TCP, Port=port))
    return nm


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(peers: int, step: int, trace: bool, lines: int, group: str) -> dict[str, Any]:
    sys.path.insert(0, _tree())
    from nbgateway._proto import management_pb2 as pb
    from nbgateway.mgmt.netmap import convert
    from nbgateway.wireguard.keys import key_to_base64
    from tests.test_accounts import Channel, Mgmt, make, mapping

    keys = [key_to_base64(hashlib.sha256(b"peer%d" % i).digest()) for i in range(peers)]
    store, registry, _, _ = make(Mgmt())
    store.apply_batch([mapping("s1")], False)
    channel = Channel.instances[0]
    runtime = registry.get("acct")

    def feed(n: int, serial: int) -> None:
        wire = storm_map(pb, n, serial, keys).SerializeToString()
        channel.on_map(convert(pb.NetworkMap.FromString(wire)))

    feed(step, 1)
    gc.collect()
    if trace:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
    rss0 = rss_kib()
    t0 = time.perf_counter()
    serial = 1
    for n in range(2 * step, peers + 1, step):
        serial += 1
        feed(n, serial)
    storm_s = time.perf_counter() - t0
    gc.collect()
    added = peers - step
    out: dict[str, Any] = {"storm_s": storm_s, "rss": (rss_kib() - rss0) * 1024 / added}
    assert len(runtime.device.peers) == peers, len(runtime.device.peers)
    if trace:
        after = tracemalloc.take_snapshot()
        out["peak"] = tracemalloc.get_traced_memory()[1] / added
        tracemalloc.stop()
        stats = after.compare_to(before, group)
        out["heap"] = sum(s.size_diff for s in stats) / added
        out["files"] = [(s.traceback[0].filename.replace(_tree() + "/", "")
                         .rsplit("/lib/python3", 1)[-1]
                         + (f":{s.traceback[0].lineno}" if group == "lineno" else ""),
                         s.size_diff / added)
                        for s in stats[:lines]]
    # the hot path: allowed-IPs longest-prefix match and the filter
    rng = random.Random(7)
    hits = [ipaddress.ip_address(f(i)).packed for i in range(peers) for f in (v4, v6)]
    misses = [ipaddress.ip_address(a).packed for a in
              [f"100.65.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(peers)]
              + [f"fd01::{rng.randrange(1 << 16):x}" for _ in range(peers)]]
    probe = hits + misses
    rng.shuffle(probe)
    table, filt = runtime.device.allowed_ips, runtime.stack.filter
    lookup = table.lookup_packed
    allows = filt.allows
    best_l = best_f = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for a in probe:
            lookup(a)
        best_l = min(best_l, time.perf_counter() - t)
        t = time.perf_counter()
        for a in probe:
            allows(a, 6, 443)
        best_f = min(best_f, time.perf_counter() - t)
    out["lookup_ns"] = best_l / len(probe) * 1e9
    out["filter_ns"] = best_f / len(probe) * 1e9
    # same decisions on both trees: a digest of every answer
    digest = hashlib.sha256()
    for a in probe:
        p = lookup(a)
        digest.update(p.public_key if p is not None else b"-")
        for proto, port in ((6, 443), (6, 22), (17, 53), (1, None)):
            digest.update(b"1" if allows(a, proto, port) else b"0")
    out["answers"] = digest.hexdigest()[:16]
    return out


def smaps(pid: int) -> dict[str, int]:
    """Resident bytes per mapping of ``pid``: ``[heap]``, other named ones by
    name, anonymous ones by start address."""
    out: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else "anon@" + head[0].split("-")[0]
            elif head[0] == "Rss:":
                out[name] = out.get(name, 0) + int(head[1]) * 1024
    return out


def malloc_heaps(xml: str) -> dict[str, int]:
    """From glibc's malloc_info XML: bytes in use per arena (``heap<N>``:
    its system bytes minus its free ones) and the mmapped chunks."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml).getroot()
    out: dict[str, int] = {}
    for heap in root.findall("heap"):
        free = sum(int(t.get("size", 0)) for t in heap.findall("total")
                   if t.get("type") in ("fast", "rest"))
        system = sum(int(t.get("size", 0)) for t in heap.findall("system")
                     if t.get("type") == "current")
        out[f"heap{heap.get('nr')}"] = system - free
        out[f"heap{heap.get('nr')}_free"] = free
    for t in root.findall("total"):
        if t.get("type") == "mmap":
            out["mmap_chunks"] = int(t.get("count", 0))
    return out


def probe(pid: int, path: str, tag: str) -> dict[str, Any]:
    """The gateway's NBGW_MALLOC_PROBE figures (nbgateway/tap.py), fresh;
    its malloc_info XML and tracemalloc snapshot are kept as PATH.<tag>.*"""
    import signal

    if os.path.exists(path):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):
        if os.path.exists(path):
            break
        time.sleep(0.1)
    with open(path) as f:
        got: dict[str, Any] = json.load(f)
    got["smaps"] = smaps(pid)
    if os.path.exists(path + ".xml"):
        got.update(malloc_heaps(path + ".xml"))
    for ext in (".xml", ".trace"):  # kept per probe: PATH.<tag>.xml, PATH.<tag>.trace
        if os.path.exists(path + ext):
            os.replace(path + ext, f"{path}.{tag}{ext}")
    return got


def show_probe(before: dict[str, Any], after: dict[str, Any], peers: int) -> None:
    """Per-peer growth of every probe figure, and the mappings that grew."""
    keys = [k for k in after if k != "smaps" and isinstance(after[k], int)]
    print("    probe, per peer: " + "  ".join(
        f"{k} {(after[k] - before.get(k, 0)) / peers:+.0f}" for k in keys), flush=True)
    grew: dict[str, int] = {}
    for name, rss in after["smaps"].items():
        kind = name if not name.startswith("anon@") else "anon"
        grew[kind] = grew.get(kind, 0) + rss - before["smaps"].get(name, 0)
    for name, rss in before["smaps"].items():
        if name not in after["smaps"]:
            kind = name if not name.startswith("anon@") else "anon"
            grew[kind] = grew.get(kind, 0) - rss
    print("    mappings, RSS per peer: " + "  ".join(
        f"{os.path.basename(k)} {v / peers:+.0f}" for k, v in
        sorted(grew.items(), key=lambda kv: -abs(kv[1]))[:6]), flush=True)


def real_storm(tree: str | None, peers: int, settle: float,
               probe_path: str | None = None,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """One storm against real processes (see the module docstring)."""
    sys.path.insert(0, _HERE)
    from bench._testbed import Testbed
    from bench.scale import Scaled, rss_kib
    from tests.interop.test_private_e2e import wait_for

    saved = os.environ.get("PYTHONPATH")
    extra = dict(env or {})
    if probe_path:
        extra["NBGW_MALLOC_PROBE"] = probe_path
    saved_env = {k: os.environ.get(k) for k in extra}
    tb = Testbed()
    try:
        w = Scaled(tb, 1, 1, 1)
        w.start_upstream()
        w.start_management()
        if tree:
            os.environ["PYTHONPATH"] = tree
        os.environ.update(extra)  # the gateway's only
        try:
            w.start_gateway(w.proxy_token)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        wait_for(lambda: w.active_services() >= 1, 60, "the service active", interval=0.2)
        pid = w.gateway_pid()
        base = w.metric("nbgateway_wireguard_peers")
        time.sleep(2)
        # the probe trims (its rss_trimmed): before the baseline, not after it
        p0 = probe(pid, probe_path, "before") if probe_path else None
        rss0 = rss_kib(pid)
        group = w.groups[w.default_account]
        for i in range(peers):
            w.rest("POST", "/peers", {"name": f"storm{i}", "groups": [group]})
        last = time.monotonic()
        wait_for(lambda: w.metric("nbgateway_wireguard_peers") >= base + peers, 120,
                 "the storm's peers in the roster", interval=0.1)
        lag = time.monotonic() - last
        time.sleep(2)
        rss1 = rss_kib(pid)
        time.sleep(max(0.0, settle - 2))
        rss2 = rss_kib(pid)
        if p0 is not None and probe_path:
            show_probe(p0, probe(pid, probe_path, "after"), peers)
        return {"roster_s": lag, "rss": (rss1 - rss0) * 1024 / peers,
                "rss_settled": (rss2 - rss0) * 1024 / peers}
    finally:
        tb.close()


def main_real(args: argparse.Namespace) -> None:
    try:
        from bench._limits import lift_management_limits
    except ImportError:  # run as a script from bench/
        from _limits import lift_management_limits  # type: ignore[no-redef]

    lift_management_limits()  # throughput, not the per-account limits
    # "now" is this script's tree through PYTHONPATH too, so a run from a
    # worktree measures that worktree's gateway (not the editable install)
    trees: list[tuple[str, str | None]] = [("now", _HERE)]
    if args.before:
        trees.insert(0, ("before", os.path.abspath(args.before)))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    env = dict(kv.split("=", 1) for kv in args.env)
    for r in range(args.rounds):
        for name, tree in trees:
            got = real_storm(tree, args.peers, args.settle,
                             args.probe_path if args.probe else None,
                             env if name == "now" else None)
            results[name].append(got)
            print(f"round {r + 1} {name:6}: roster complete {got['roster_s']:4.1f} s after the "
                  f"last create; RSS per peer {got['rss']:6.0f} B (+2 s), "
                  f"{got['rss_settled']:6.0f} B (+{args.settle:.0f} s)", flush=True)
    if args.before:
        for label, agg in (("medians", statistics.median), ("means", statistics.fmean)):
            print(f"\n{label} (before -> now, ratio now/before):")
            for k in ("roster_s", "rss", "rss_settled"):
                b = agg(x[k] for x in results["before"])
                n = agg(x[k] for x in results["now"])
                print(f"  {k:12} {b:9.1f} -> {n:9.1f}  ({n / b:.2f})")


def run_child(tree: str | None, args: argparse.Namespace, trace: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if tree:
        env["NBGW_BENCH_TREE"] = tree
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--peers", str(args.peers),
           "--step", str(args.step), "--lines", str(args.lines), "--group", args.group]
    if trace:
        cmd.append("--trace")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"child failed ({tree or 'this tree'}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=2000)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lines", type=int, default=8)
    ap.add_argument("--group", choices=("filename", "lineno"), default="filename",
                    help="heap breakdown by file or by line")
    ap.add_argument("--before", help="tree of the comparison (a git worktree)")
    ap.add_argument("--real", action="store_true",
                    help="real management and gateway processes (root, netns)")
    ap.add_argument("--settle", type=float, default=65.0,
                    help="--real: seconds after the roster is complete for the second RSS")
    ap.add_argument("--probe", action="store_true",
                    help="--real: the gateway's allocator figures before the storm and "
                         "after --settle (NBGW_MALLOC_PROBE, SIGUSR2; the gateway must "
                         "be a tree that has it)")
    ap.add_argument("--probe-path", default="/tmp/nbgw-malloc-probe.json",
                    help="--probe: the gateway's probe file (one per concurrent run)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="--real: set in the environment of this tree's gateway only "
                         "(an A/B of a switch: --before the same tree)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.peers, args.step, args.trace, args.lines, args.group)))
        return
    if args.real:
        main_real(args)
        return
    trees: list[tuple[str, str | None]] = [("now", None)]
    if args.before:
        trees.insert(0, ("before", os.path.abspath(args.before)))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, tree in trees:
            traced = run_child(tree, args, True)
            plain = run_child(tree, args, False)
            traced["rss"], traced["storm_s"] = plain["rss"], plain["storm_s"]
            results[name].append(traced)
            print(f"round {r + 1} {name:6}: heap {traced['heap']:7.0f} B/peer  "
                  f"peak {traced['peak']:7.0f} B/peer  rss {traced['rss']:7.0f} B/peer  "
                  f"storm {traced['storm_s']:5.2f} s  lookup {traced['lookup_ns']:5.0f} ns  "
                  f"filter {traced['filter_ns']:5.0f} ns  answers {traced['answers']}",
                  flush=True)
    for name, _ in trees:
        print(f"\n{name}: heap kept per peer by file (last round)")
        for filename, size in results[name][-1]["files"]:
            print(f"  {size:8.0f} B  {filename}")
    if args.before:
        print("\nmedians (before -> now, ratio now/before):")
        for k in ("heap", "peak", "rss", "storm_s", "lookup_ns", "filter_ns"):
            b = statistics.median(x[k] for x in results["before"])
            n = statistics.median(x[k] for x in results["now"])
            print(f"  {k:10} {b:9.1f} -> {n:9.1f}  ({n / b:.2f})")
        same = {x["answers"] for x in results["before"] + results["now"]}
        print(f"  lookup and filter answers identical: {len(same) == 1}")


if __name__ == "__main__":
    main()
