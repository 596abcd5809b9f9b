"""Memory per account of the gateway's peer channel alone (issue 18).

Starts the REAL management peer channel (``nbgateway.management.peerchannel``
on the asyncio gRPC server) in a separate process over a SQLite store with
one proxy peer per account, then runs one ``PeerChannelClient`` per account in
this process, as the gateway does (Login, then a ``Sync`` stream held open on
the shared channel): RSS and Python heap (tracemalloc) per extra account
between 1 and 1 + N connected clients, each having received its map.

The clients carry the gateway's ProxyService token, so their Syncs share one
``NbgwSyncMany`` stream (mgmt/peermux.py) unless ``NBGW_PEER_CHANNEL_MUX=0``
(one ``Sync`` stream per account, as before). ``--ab R`` runs R rounds of
both, interleaved, each in a fresh child process::

    .venv/bin/python bench/peerchannel_memory.py --accounts 100
    .venv/bin/python bench/peerchannel_memory.py --accounts 1000 --ab 2
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task

from nbgateway.management.model import Account, Peer
from nbgateway.management.store import Store
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.wireguard.keys import generate_private_key, public_key

CLUSTER = "eu.proxy.netbird.io"
SERVER = """
import sys
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.peerchannel import add_to_server
from nbgateway.management.proxyservice import ProxyServiceServicer
from nbgateway.management.store import Store
store = Store.open(sys.argv[1], known_clusters=[sys.argv[3]])
_, token = store.proxies.create_token("bench", account_id=None)
server = LoopServer()
add_to_server(server, store, sys.argv[2], poll_interval=0.2, coalesce_delay=0.01,
              authenticate=ProxyServiceServicer(store)._authenticate_async)
print(server.add_insecure_port("127.0.0.1:0"), token, flush=True)
server.start()
sys.stdin.read()
"""


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@defer.inlineCallbacks
def wait_until(reactor, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("clients did not all receive their map")
        yield task.deferLater(reactor, 0.1, lambda: None)


@defer.inlineCallbacks
def main(reactor, args):
    n = args.accounts
    tmp = tempfile.mkdtemp(prefix="nbgw-pc-")
    dsn = f"sqlite:///{tmp}/store.db"
    store = Store.open(dsn, known_clusters=[CLUSTER])
    keys = []
    for i in range(n + 1):
        store.accounts.create(Account(id=f"acct-{i}", domain=f"a{i}.netbird.test"))
        key = generate_private_key()
        store.peers.create(Peer(
            account_id=f"acct-{i}", name="proxy", proxy=True, proxy_cluster=CLUSTER,
            key=base64.b64encode(public_key(key)).decode(), ephemeral=True,
            endpoint="127.0.0.1:51820"))
        keys.append(key)
    store.close()
    server = subprocess.Popen([sys.executable, "-c", SERVER, dsn, f"{tmp}/wg.key", CLUSTER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port_text, token = server.stdout.readline().split()
    port = int(port_text)
    metadata = (("authorization", f"Bearer {token}"),)
    maps: dict[int, int] = {}
    clients = []

    def start(i: int) -> None:
        c = PeerChannelClient(reactor, f"http://127.0.0.1:{port}", keys[i],
                              lambda _nm, i=i: maps.__setitem__(i, 1),
                              hostname="gw-bench", name=f"acct-{i}",
                              mux_metadata=metadata)
        c.start()
        clients.append(c)

    try:
        if args.trace:
            tracemalloc.start(1)
        start(0)
        yield wait_until(reactor, lambda: len(maps) == 1, 30)
        yield task.deferLater(reactor, 1.0, lambda: None)
        gc.collect()
        rss0 = rss_kib()
        snap0 = tracemalloc.take_snapshot() if args.trace else None
        for i in range(1, n + 1):
            start(i)
        yield wait_until(reactor, lambda: len(maps) == n + 1, 120)
        yield task.deferLater(reactor, 2.0, lambda: None)
        gc.collect()
        rss1 = rss_kib()
        muxed = sum(c.syncs_muxed for c in clients)
        own = sum(c.syncs_own for c in clients)
        print(f"{n} peer channels (Login + Sync, empty map; {muxed} on the shared "
              f"stream, {own} own Sync streams) over 1: "
              f"RSS {(rss1 - rss0) / n:.1f} KiB per account")
        if snap0 is not None:
            stats = tracemalloc.take_snapshot().compare_to(snap0, args.group)
            print(f"Python heap {sum(s.size_diff for s in stats) / n / 1024:.1f} KiB per account")
            for s in stats[:args.top]:
                frame = s.traceback[0]
                where = frame.filename if args.group == "filename" else \
                    f"{frame.filename}:{frame.lineno}"
                print(f"  {s.size_diff / n / 1024:7.2f} KiB  {where}")
    finally:
        yield defer.DeferredList([defer.maybeDeferred(c.stop) for c in clients])
        server.stdin.close()
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--trace", action="store_true", help="also the Python heap (tracemalloc)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--group", choices=("filename", "lineno"), default="filename",
                   help="tracemalloc grouping of the heap lines")
    p.add_argument("--ab", type=int, default=0, metavar="ROUNDS",
                   help="interleave ROUNDS runs with NBGW_PEER_CHANNEL_MUX=1 and =0")
    args = p.parse_args()
    if args.ab:
        for r in range(args.ab):
            for mux in ("1", "0"):
                cmd = [sys.executable, os.path.abspath(__file__),
                       "--accounts", str(args.accounts)]
                env = dict(os.environ, NBGW_PEER_CHANNEL_MUX=mux)
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                for line in out.stdout.splitlines():
                    print(f"round {r + 1} NBGW_PEER_CHANNEL_MUX={mux}: {line}", flush=True)
    else:
        task.react(main, (args,))
