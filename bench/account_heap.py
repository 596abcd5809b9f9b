"""Python heap per idle account on one in-process gateway (tracemalloc).

Builds a real :class:`~nbgateway.service.GatewayService` (in-memory fake
management, a fake peer channel fed network-map protobufs converted by
``mgmt/netmap.convert`` as the real peer channel does), brings up 1 account,
snapshots the heap, brings up N more (10 peers and 10 private HTTP services
each, 4 rules per peer address as the management sends them), snapshots
again and prints the difference per account, grouped by file (and the top
lines with ``--lines``).  Also the RSS difference of the process (the fake
channel means no grpc stream state: that part is in bench/scale.py)::

    .venv/bin/python bench/account_heap.py --accounts 30
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import tempfile
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner

from nbgateway._proto import management_pb2 as mpb
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import load
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.mgmt.netmap import convert
from nbgateway.service import GatewayService
from nbgateway.wireguard.keys import key_to_base64

PEERS = 10
#: RSS (KiB) after the last bring_up's services were registered, then after
#: their network maps were applied (tunnels up)
phases: dict[str, int] = {}
SERVICES = 10


class Channel:
    instances: dict[str, Channel] = {}

    def __init__(self, account_id: str, private_key: bytes, on_map) -> None:
        self.on_map = on_map
        Channel.instances[account_id] = self

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _NoLog(list):
    def append(self, _item: object) -> None:
        pass


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def network_map(index: int) -> mpb.NetworkMap:
    nm = mpb.NetworkMap(Serial=1)
    nm.peerConfig.address = f"100.64.{index // 200}.{index % 200 + 1}/10"
    nm.peerConfig.fqdn = f"gw{index}.peers.test"
    for i in range(PEERS):
        # any 32 bytes are a peer key the device accepts (no DH until a handshake)
        key = key_to_base64(hashlib.sha256(f"{index}/{i}".encode()).digest())
        ips = (f"100.{66 + index // 250}.{index % 250}.{i + 1}", f"fd00:{index:x}::{i + 2:x}")
        nm.remotePeers.add(wgPubKey=key, allowedIps=[ips[0] + "/32", ips[1] + "/128"],
                           fqdn=f"p{i}.peers.test")
        for ip in ips:
            for port in ("80", "443"):
                nm.FirewallRules.append(mpb.FirewallRule(
                    PolicyID=b"private-access", PeerIP=ip, Direction=mpb.IN,
                    Action=mpb.ACCEPT, Protocol=mpb.TCP, Port=port))
    zone = nm.DNSConfig.CustomZones.add(Domain="peers.test.")
    for i in range(PEERS):
        zone.Records.add(Name=f"p{i}.peers.test.", Type=1, Class="IN", TTL=300,
                         RData=f"100.{66 + index // 250}.{index % 250}.{i + 1}")
    return nm


@defer.inlineCallbacks
def bring_up(svc: GatewayService, mgmt: FakeManagementClient, first: int, count: int):
    mappings = []
    for a in range(first, first + count):
        for s in range(SERVICES):
            mappings.append(pb.ProxyMapping(
                type=pb.UPDATE_TYPE_CREATED, id=f"svc{a}-{s}", account_id=f"acct{a}",
                domain=f"s{s}.a{a}.example", auth_token="tok", private=True,
                path=[pb.PathMapping(path="/", target=f"http://10.0.{a % 250}.{s + 1}:8080/")]))
    yield mgmt.snapshot(mappings) if first == 0 else defer.gatherResults(
        [svc.store.apply_batch([m], False) or defer.succeed(None) for m in mappings])
    yield task.deferLater(svc.reactor, 0.2, lambda: None)
    phases["services"] = rss_kib()
    for a in range(first, first + count):
        result = Channel.instances[f"acct{a}"].on_map(convert(network_map(a)))
        if isinstance(result, defer.Deferred):
            yield result
    yield task.deferLater(svc.reactor, 0.2, lambda: None)
    phases["tunnels"] = rss_kib()


def snapshot() -> tracemalloc.Snapshot | None:
    gc.collect()
    if not tracemalloc.is_tracing():
        return None
    return tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),))


@defer.inlineCallbacks
def main(reactor, args):
    # as twistd does, begin logging (here to nowhere): before that, Twisted keeps
    # every event, debug ones included, in a 64k-event buffer (with the
    # mapping store's redacted mappings: bench bookkeeping, not gateway memory)
    globalLogBeginner.beginLoggingTo([lambda _event: None], redirectStandardIO=False)
    if not args.rss_only:  # tracemalloc's own traces inflate the RSS figures
        tracemalloc.start(1)
    config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "0",
                   "datadir": tempfile.mkdtemp(prefix="nbgw-heap-"), "private": True,
                   "health_addr": "", "addr": "127.0.0.1:0"}, {"NB_PROXY_TOKEN": "t"})
    mgmt = FakeManagementClient()
    mgmt.calls = _NoLog()  # the fake's call log is test bookkeeping, not gateway state
    svc = GatewayService(config, reactor=reactor, management=mgmt, peer_channel_factory=Channel)
    svc.privilegedStartService()
    svc.startService()
    yield bring_up(svc, mgmt, 0, 1)
    yield task.deferLater(reactor, 0.2, lambda: None)
    rss0 = rss_kib()
    before = snapshot()
    n = args.accounts
    yield bring_up(svc, mgmt, 1, n)
    print(f"RSS per extra account: {(phases['services'] - rss0) / n:.1f} KiB registering "
          f"its services, {(phases['tunnels'] - phases['services']) / n:.1f} KiB applying "
          "its network map")
    yield task.deferLater(reactor, 0.2, lambda: None)
    rss1 = rss_kib()
    after = snapshot()
    ready = sum(1 for r in svc.accounts.runtimes.values() if r.state == "ready")
    print(f"accounts ready: {ready} ({n} added over a 1-account baseline, "
          f"{PEERS} peers and {SERVICES} services each)")
    print(f"RSS per extra account: {(rss1 - rss0) / n:.1f} KiB (no grpc: fake peer channel"
          f"{'' if after is None else '; tracemalloc on: --rss-only for RSS without it'})")
    if after is None:  # --rss-only: what the twistd gateway's MallocTrimmer gives back
        from nbgateway.tap import MallocTrimmer

        trimmer = MallocTrimmer(None)
        if trimmer.trim_now():
            print(f"after malloc_trim(0) ({trimmer.last_seconds * 1000:.1f} ms): RSS per extra "
                  f"account {(rss_kib() - rss0) / n:.1f} KiB")
    if before is None or after is None:
        yield svc.stopService()
        return
    stats = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in stats)
    print(f"Python heap per extra account: {total / n / 1024:.1f} KiB (tracemalloc)")
    for s in stats[:args.top]:
        if s.size_diff:
            name = s.traceback[0].filename.replace(os.getcwd() + "/", "")
            print(f"  {s.size_diff / n / 1024:7.2f} KiB  {name}")
    if args.lines:
        for s in after.compare_to(before, "lineno")[:args.lines]:
            fr = s.traceback[0]
            print(f"  {s.size_diff / n / 1024:7.2f} KiB  {s.count_diff / n:6.1f} blocks  "
                  f"{fr.filename.replace(os.getcwd() + '/', '')}:{fr.lineno}")
    yield svc.stopService()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=30)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--lines", type=int, default=0)
    p.add_argument("--rss-only", action="store_true", help="RSS without tracemalloc")
    task.react(main, (p.parse_args(),))
