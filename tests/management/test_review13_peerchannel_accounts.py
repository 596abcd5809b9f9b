"""Review 13: the peer channel (Login / Sync) between two accounts whose peers
use the same tunnel addresses, over real gRPC, SQLite and PostgreSQL.

Tunnel addresses are unique per account only, so A's and B's laptops are
both 100.64.0.10 and their gateways' proxy peers both 100.64.0.99 (a shared
gateway has one proxy peer per account).  Pinned:

* each peer's Login answers its own account's address and FQDN;
* a proxy peer's map lists its own account's peers only (never the other
  account's laptop at the same address), with its own account's services'
  DNS records and firewall sources; a laptop's map lists its own account's
  proxy peer only;
* a change in B (a new peer, which B's gateway receives) pushes nothing that
  names B into A's streams: A's next map (after a change of its own) still
  has only A's.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.management.peerchannel import add_to_server
from tests.management.test_peerchannel import (
    CLUSTER,
    WAIT,
    PeerClient,
    SyncStream,
    remote_keys,
    synth_records,
)

A, B = "acct-a", "acct-b"
LAPTOP_IP, PROXY_IP = "100.64.0.10", "100.64.0.99"


@pytest.fixture
def stub(store, tmp_path) -> Iterator[pb_grpc.ManagementServiceStub]:
    srv = LoopServer()
    servicer = add_to_server(srv, store, ServerKey.load_or_create(str(tmp_path / "wg.key")))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ManagementServiceStub(channel)
    servicer.close()
    channel.close()
    srv.stop(grace=None).wait(WAIT)


def _account(store, stub, account: str) -> dict:
    store.accounts.create(Account(id=account, domain=f"{account}.test"))
    laptop, proxy = PeerClient(stub), PeerClient(stub)
    lp = store.peers.create(Peer(account_id=account, name=f"{account}-laptop", key=laptop.key,
                                 ip=LAPTOP_IP, dns_label="laptop"))
    store.peers.create(Peer(account_id=account, name=f"{account}-proxy", key=proxy.key,
                            ip=PROXY_IP, proxy=True, proxy_cluster=CLUSTER, connected=True,
                            ephemeral=True, endpoint="127.0.0.1:51820"))
    group = store.groups.create(Group(account_id=account, name="admins", peers=(lp.id,)))
    domain = f"{account}-app.{CLUSTER}"
    store.services.create(Service(
        account_id=account, name="app", domain=domain, private=True,
        access_groups=(group.id,),
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                        port=8080, options=TargetOptions(direct_upstream=True)),)))
    return {"laptop": laptop, "proxy": proxy, "domain": domain, "group": group.id}


def test_same_addresses_in_two_accounts_never_cross(store, stub) -> None:
    a, b = _account(store, stub, A), _account(store, stub, B)
    for who, account in ((a, A), (b, B)):
        login = who["laptop"].login()
        assert login.peerConfig.address.startswith(LAPTOP_IP)
        assert login.peerConfig.fqdn.endswith(f"{account}.test"), login.peerConfig.fqdn
    streams = {name: SyncStream(who[kind]) for name, who, kind in (
        ("a-proxy", a, "proxy"), ("b-proxy", b, "proxy"),
        ("a-laptop", a, "laptop"), ("b-laptop", b, "laptop"))}
    try:
        first = {name: s.next() for name, s in streams.items()}
        assert remote_keys(first["a-proxy"]) == {a["laptop"].key}
        assert remote_keys(first["b-proxy"]) == {b["laptop"].key}
        assert remote_keys(first["a-laptop"]) == {a["proxy"].key}
        assert remote_keys(first["b-laptop"]) == {b["proxy"].key}
        for name, m in first.items():
            other = b if name.startswith("a-") else a
            names = {r[0] for r in synth_records(m)}
            assert not [n for n in names if other["domain"] in n], (name, names)
            text = m.SerializeToString()
            for key in (other["laptop"].key, other["proxy"].key):
                assert key.encode() not in text, name
        # B changes: a new peer and a service; then A changes too
        extra = PeerClient(stub)
        store.peers.create(Peer(account_id=B, name="b-extra", key=extra.key,
                                ip="100.64.0.11", groups=(b["group"],)))
        a_new = PeerClient(stub)
        store.peers.create(Peer(account_id=A, name="a-extra", key=a_new.key, ip="100.64.0.12",
                                groups=(a["group"],)))
        streams["b-proxy"].wait_for(lambda m: extra.key in remote_keys(m))  # B's own hears it
        got = streams["a-proxy"].wait_for(lambda m: a_new.key in remote_keys(m))
        assert remote_keys(got) == {a["laptop"].key, a_new.key}
        assert extra.key.encode() not in got.SerializeToString()
        while not streams["a-proxy"].maps.empty():  # nothing queued names B either
            m = streams["a-proxy"].maps.get_nowait()
            assert extra.key not in remote_keys(m) and b["laptop"].key not in remote_keys(m)
    finally:
        for s in streams.values():
            s.cancel()
