"""In-process cost of the peer channel's per-account work: old path vs the memo.

Seeds ``--accounts`` accounts in a SQLite store as ``bench/scale.py`` does
(10 peers in one group, 10 services cycling private HTTP, public HTTP,
private/public TCP) plus one connected proxy peer per account, then measures,
alternating old and new on the same accounts in the same run:

* render, cold: what a proxy peer's Sync stream did for its first map before
  (``load_account_view``: one read transaction per table, ``users.list``,
  ``build_network_map``, the encoded response and its fingerprint, the access
  digest) against :class:`~nbgateway.management.mapcache.MapCache` with an
  empty memo (one read transaction, the same building);
* render after the proxy peer's own "connected" write / a status report: the
  old path again (the generation changed: everything is read and built again)
  against the memo (a re-read of the changed row, nothing built);
* Login: the old full view read + map build against the peer-and-account read.

Run:  .venv/bin/python bench/mapbuild.py [--accounts 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import statistics
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from nbgateway._proto import management_pb2 as pb  # noqa: E402
from nbgateway.management.mapcache import MapCache  # noqa: E402
from nbgateway.management.model import (  # noqa: E402
    Account,
    Group,
    Peer,
    Service,
    ServiceStatus,
    Target,
    TargetOptions,
)
from nbgateway.management.networkmap import (  # noqa: E402
    build_network_map,
    own_network_map,
    to_proto_network_map,
    to_proto_peer_config,
)
from nbgateway.management.peerchannel import access_digest  # noqa: E402
from nbgateway.management.peerhub import PeerUpdateHub  # noqa: E402
from nbgateway.management.store import Store  # noqa: E402
from nbgateway.management.synthetic import load_account_view  # noqa: E402

CLUSTER = "gw.test"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _target(mode: str, port: int) -> Target:
    return Target(host="127.0.0.1", port=port, protocol=mode, target_id=CLUSTER,
                  target_type="cluster", options=TargetOptions(direct_upstream=True))


def seed(store: Store, accounts: int) -> list[tuple[str, Peer, str]]:
    """(account id, its proxy peer, one service id) per account."""
    out = []
    public_port, tunnel_port = 20000, 30000
    for a in range(accounts):
        account_id = f"acct-{a:05d}"
        store.accounts.create(Account(id=account_id, domain=f"a{a}.netbird.test"))
        group = store.groups.create(Group(account_id=account_id, name="devs"))
        peers = [store.peers.create(Peer(account_id=account_id, name=f"p{p}", key=_key()))
                 for p in range(10)]
        store.groups.add_peers(account_id, group.id, [p.id for p in peers])
        first = ""
        for s in range(10):
            kind, kw = s % 4, {}
            name = f"s{s}-a{a}"
            if kind == 0:
                kw = dict(private=True, access_groups=(group.id,),
                          targets=(_target("http", 8081),))
            elif kind == 2 and s % 3 == 2:
                tunnel_port += 1
                kw = dict(private=True, access_groups=(group.id,), mode="tcp",
                          listen_port=tunnel_port, targets=(_target("tcp", 7),))
            elif kind == 3:
                public_port += 1
                kw = dict(mode="tcp", listen_port=public_port, targets=(_target("tcp", 7),))
            else:
                kw = dict(targets=(_target("http", 8081),))
            svc = store.services.create(Service(account_id=account_id, name=name,
                                                domain=f"{name}.{CLUSTER}", **kw))
            first = first or svc.id
        proxy = store.peers.create(Peer(account_id=account_id, name="gw", key=_key(),
                                        proxy=True, proxy_cluster=CLUSTER, connected=True))
        out.append((account_id, proxy, first))
    return out


def _response(nm) -> tuple[pb.SyncResponse, bytes]:
    netmap = to_proto_network_map(nm, 1, source_prefixes=True)
    resp = pb.SyncResponse(peerConfig=netmap.peerConfig, NetworkMap=netmap,
                           remotePeersIsEmpty=netmap.remotePeersIsEmpty)
    resp.remotePeers.extend(netmap.remotePeers)
    resp.NetworkMap.Serial = 0
    return resp, resp.SerializeToString(deterministic=True)


def old_render(store: Store, account_id: str, peer_id: str) -> bytes:
    view = load_account_view(store, account_id)  # the old _ViewCache, after a change
    _, fp = _response(build_network_map(view, peer_id))
    return fp + access_digest(view, store.users.list(account_id))


def new_render(cache: MapCache, account_id: str, peer_id: str) -> bytes:
    entry = cache.get(account_id)  # as ManagementServicer._render: the encoded map is kept
    fp = entry.memo(("sync", peer_id),
                    lambda: _response(build_network_map(entry.view, peer_id))[1])
    return fp + entry.memo("digest", lambda: access_digest(entry.view, entry.users))


def old_login(store: Store, key: str) -> bytes:
    peer = store.peers.get_by_key(key)
    view = load_account_view(store, peer.account_id)
    return to_proto_peer_config(build_network_map(view, peer.id)).SerializeToString()


def new_login(store: Store, key: str) -> bytes:
    peer, account = store.peers.get_by_key_with_account(key)
    return to_proto_peer_config(own_network_map(peer, account)).SerializeToString()


def per_account_ms(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(*item)
    return 1000 * (time.perf_counter() - t0) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/store.db", known_clusters=(CLUSTER,))
        t0 = time.monotonic()
        world = seed(store, args.accounts)
        print(f"seeded {args.accounts} accounts in {time.monotonic() - t0:.1f} s", flush=True)
        # the old code (its fingerprint of the old view) and the new give equal answers
        probe = MapCache(store)
        for account_id, proxy, _ in world[:5]:
            assert old_render(store, account_id, proxy.id) == new_render(
                probe, account_id, proxy.id)
            assert old_login(store, proxy.key) == new_login(store, proxy.key)
        rows: dict[str, list[float]] = {}

        def record(name: str, value: float) -> None:
            rows.setdefault(name, []).append(value)

        items = [(a, p.id) for a, p, _ in world]
        for _ in range(args.rounds):
            record("render cold: old", per_account_ms(
                lambda a, p: old_render(store, a, p), items))
            cache = MapCache(store)
            hub = PeerUpdateHub(cache.changed)
            store.add_listener(hub.on_change)
            try:
                record("render cold: new", per_account_ms(
                    functools.partial(new_render, cache), items))
                # a status report and a client's "connected" per account, then re-render
                for a, _proxy, svc in world:
                    store.services.set_status(a, svc, ServiceStatus.ACTIVE)
                    client = store.peers.list(a, proxy=False, limit=1)[0]
                    store.peers.set_connected(a, client.id, True)
                record("re-render after status/connected: old", per_account_ms(
                    lambda a, p: old_render(store, a, p), items))
                record("re-render after status/connected: new", per_account_ms(
                    functools.partial(new_render, cache), items))
            finally:
                store.remove_listener(hub.on_change)
            keys = [(p.key,) for _, p, _ in world]
            record("Login: old", per_account_ms(lambda k: old_login(store, k), keys))
            record("Login: new", per_account_ms(lambda k: new_login(store, k), keys))
        store.close()
    print(f"per account, median of {args.rounds} rounds over {args.accounts} accounts "
          f"(old and new alternate in each round):")
    for name, values in rows.items():
        print(f"  {name:<42} {statistics.median(values):7.2f} ms")
    for what in ("render cold", "re-render after status/connected", "Login"):
        old = statistics.median(rows[f"{what}: old"])
        new = statistics.median(rows[f"{what}: new"])
        print(f"  {what:<42} old/new = {old / new:5.1f}x")


if __name__ == "__main__":
    main()
