"""CreateProxyPeer never answers success for a key another account holds, over gRPC.

WireGuard public keys are unique across the management.  When the key a
gateway presents for account A is already a peer of another account (say a
stock peer some other tenant registered with that public key, which is no
secret), answering ``success`` would leave A without its gateway's proxy peer
while the gateway believes it has one; the call is refused (ALREADY_EXISTS)
and nothing is stored or changed.  The same key in the same account stays the
gateway's idempotent re-registration.
"""

from __future__ import annotations

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import Account, Peer
from tests.management import test_grpc_support as support
from tests.management.test_grpc_rpcs import cpp, one_time_token, rpc_error
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, wg_key

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def test_a_key_held_by_another_accounts_peer_is_refused(harness: Harness, fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-b", domain="b.test"))
    key = wg_key()
    squat = fx.store.peers.create(Peer(account_id="acct-b", name="squat", key=key))
    before = fx.store.peers.list(ACCOUNT)
    err = rpc_error(cpp, harness, fx, one_time_token(harness, fx), key,
                    wireguard_endpoint="gw.example.com:51820")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    assert fx.store.peers.list(ACCOUNT) == before
    assert fx.store.peers.get("acct-b", squat.id) == squat


def test_a_stock_peer_of_the_same_account_is_no_proxy_peer(harness: Harness,
                                                          fx: Fixture) -> None:
    key = wg_key()
    stock = fx.store.peers.create(Peer(account_id=ACCOUNT, name="laptop", key=key))
    err = rpc_error(cpp, harness, fx, one_time_token(harness, fx), key)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    assert fx.store.peers.get(ACCOUNT, stock.id) == stock


def test_the_gateways_own_proxy_peer_is_reused(harness: Harness, fx: Fixture) -> None:
    key = wg_key()
    assert cpp(harness, fx, one_time_token(harness, fx), key).success
    n = len(fx.store.peers.list(ACCOUNT))
    r = cpp(harness, fx, one_time_token(harness, fx), key, wireguard_endpoint="gw.test:51820")
    assert isinstance(r, pb.CreateProxyPeerResponse) and r.success
    assert len(fx.store.peers.list(ACCOUNT)) == n
    (mine,) = [p for p in fx.store.peers.list(ACCOUNT) if p.key == key]
    assert mine.proxy and mine.endpoint == "gw.test:51820"
