"""A gateway's ``proxy_id`` belongs to the token scope that registered it, over gRPC.

Every tenant admin may mint an account-scoped (BYOP) proxy token, and
``GET /api/reverse-proxies/proxies`` shows each tenant the ids of the shared
gateways.  A stream opened with another scope's ``proxy_id`` used to supersede
that gateway's live stream and overwrite its row (account, cluster address):
one tenant could cut every tenant's shared gateway off and move its cluster.
Now the newcomer is refused with ALREADY_EXISTS and nothing of the holder
changes; the same scope reconnecting (a restart, a new token of the same
account) still supersedes its old stream.
"""

from __future__ import annotations

import grpc
import pytest

from nbgateway.management.model import Account
from tests.management import test_grpc_support as support
from tests.management.test_grpc_streams import GmuClient, public
from tests.management.test_grpc_support import ACCOUNT, CLUSTER, Fixture, Harness

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def _refused(client: GmuClient) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client.next()
    return info.value


def test_another_scope_cannot_take_a_live_gateways_proxy_id(harness: Harness,
                                                            fx: Fixture) -> None:
    shared = GmuClient(harness, fx.token, "gw-shared")
    shared.snapshot()
    fx.store.accounts.create(Account(id="acct-b", domain="b.test"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    evil = GmuClient(harness, token_b, "gw-shared", address="b.byop.test")
    err = _refused(evil)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    row = fx.store.proxies.get("gw-shared")
    assert row.account_id is None and row.cluster_address == CLUSTER
    # the shared gateway's stream is untouched: it hears the next change
    after = public(fx, "after")
    seen: set[str] = set()
    for _ in range(20):  # other updates may come first
        seen.update(m.id for m in shared.next().mapping)
        if after.id in seen:
            break
    assert after.id in seen
    shared.close()


def test_a_stored_proxy_id_of_another_scope_is_refused(harness: Harness, fx: Fixture) -> None:
    _, token_a = fx.store.proxies.create_token("a", account_id=ACCOUNT)
    a = GmuClient(harness, token_a, "gw-a", address="a.byop.test")
    a.snapshot()
    a.close()
    a.end()
    fx.store.accounts.create(Account(id="acct-b", domain="b.test"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    err = _refused(GmuClient(harness, token_b, "gw-a", address="b.byop.test"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    row = fx.store.proxies.get("gw-a")
    assert row.account_id == ACCOUNT and row.cluster_address == "a.byop.test"
    # the same account, with a new token, takes its gateway's id back
    _, token_a2 = fx.store.proxies.create_token("a2", account_id=ACCOUNT)
    again = GmuClient(harness, token_a2, "gw-a", address="a.byop.test")
    again.snapshot()
    again.close()


def test_the_same_scope_supersedes_its_old_stream(harness: Harness, fx: Fixture) -> None:
    first = GmuClient(harness, fx.token, "gw-x")
    first.snapshot()
    second = GmuClient(harness, fx.token, "gw-x")
    second.snapshot()
    assert first.end() is not None  # superseded
    second.close()
