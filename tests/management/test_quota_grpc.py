"""The peer quota on the gRPC path: a gateway registering a proxy peer
(CreateProxyPeer) for an account at its peer quota gets RESOURCE_EXHAUSTED,
over real gRPC, and nothing is stored."""

from __future__ import annotations

import grpc
import pytest

from nbgateway.management.quotas import Quotas
from tests.management import test_grpc_support as support
from tests.management.test_grpc_rpcs import cpp, one_time_token
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, wg_key

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def test_create_proxy_peer_at_peer_quota(harness: Harness, fx: Fixture) -> None:
    have = len(fx.store.peers.list(ACCOUNT))
    fx.store.quotas = Quotas({"peers": have})
    token, key = one_time_token(harness, fx), wg_key()
    with pytest.raises(grpc.RpcError) as exc:
        cpp(harness, fx, token, key)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert exc.value.details() == ("create proxy peer: quota exceeded: at most "
                                   f"{have} peers per account (delete some first, or ask "
                                   "the operator for more)")
    assert len(fx.store.peers.list(ACCOUNT)) == have
    assert fx.store.peers.get_by_key(key) is None
    # room again: the next registration works
    fx.store.quotas = Quotas({"peers": have + 1})
    assert cpp(harness, fx, one_time_token(harness, fx), key).success
    assert len(fx.store.peers.list(ACCOUNT)) == have + 1
