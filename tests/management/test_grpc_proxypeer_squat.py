"""CreateProxyPeer refuses a squatted key before it spends the one-time token.

Another tenant may register a gateway's per-account public key first (keys
are unique across the management).  The refusal (ALREADY_EXISTS) comes
before the token is consumed, so the gateway rotates its key and registers
the new one with the same token instead of waiting for a fresh mapping.
"""

from __future__ import annotations

import grpc

from nbgateway.management.model import Account, Peer
from tests.management import test_grpc_support as support
from tests.management.test_grpc_rpcs import cpp, one_time_token, rpc_error
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, wg_key

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def test_the_token_survives_a_squatted_key_and_registers_a_rotated_one(harness: Harness,
                                                                      fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-squat", domain="squat.test"))
    squatted = wg_key()
    squat = fx.store.peers.create(Peer(account_id="acct-squat", name="squat", key=squatted))
    token = one_time_token(harness, fx)
    err = rpc_error(cpp, harness, fx, token, squatted)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    assert "belongs to another peer" in err.details()
    rotated = wg_key()
    assert cpp(harness, fx, token, rotated).success  # the same token, not spent
    mine = fx.store.peers.get_by_key(rotated)
    assert mine is not None and mine.account_id == ACCOUNT and mine.proxy
    assert fx.store.peers.get("acct-squat", squat.id) == squat
    # ... and spent now
    err = rpc_error(cpp, harness, fx, token, wg_key())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err


def test_a_bad_token_with_a_squatted_key_still_registers_nothing(harness: Harness,
                                                                fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-squat", domain="squat.test"))
    squatted = wg_key()
    fx.store.peers.create(Peer(account_id="acct-squat", name="squat", key=squatted))
    before = fx.store.peers.list(ACCOUNT)
    for key in (squatted, wg_key()):
        err = rpc_error(cpp, harness, fx, "not-a-token", key)
        assert err.code() in (grpc.StatusCode.ALREADY_EXISTS,
                              grpc.StatusCode.UNAUTHENTICATED), err
    assert fx.store.peers.list(ACCOUNT) == before
