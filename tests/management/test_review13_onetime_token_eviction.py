"""Review 13 (finding): one account's mapping streams evict another account's
one-time ``CreateProxyPeer`` tokens, over real gRPC.

Every mapping a gateway receives carries a fresh one-time token
(``per_proxy_mapping``), kept in one management-wide bounded table
(:class:`~nbgateway.management.proxymapping.OneTimeTokenStore`, 200,000 by
default, oldest evicted first).  Any tenant admin can mint an account-scoped
proxy token and open mapping streams as often as it likes (or update its
services, which issues a token per service to every gateway of the cluster):
each snapshot issues one token per service of the account.  Once the table
is full, the victim account's token -- handed to the victim's gateway seconds
ago for its private service -- is evicted, and the gateway's
``CreateProxyPeer`` fails ``UNAUTHENTICATED: token validation: invalid
token``: the victim's private service gets no proxy peer.  The bound here is
64 instead of 200,000 so the test stays fast; the arithmetic is the same
(1,000 services x 200 stream opens).

Expected: the table evicts from the account that holds the most tokens, so
an account never loses its tokens to another account's flood.
"""

from __future__ import annotations

import dataclasses

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import Account
from nbgateway.management.proxymapping import OneTimeTokenStore, TokenError
from tests.management import test_grpc_support as support
from tests.management.test_grpc_streams import GmuClient
from tests.management.test_grpc_support import (
    ACCOUNT,
    Fixture,
    Harness,
    cluster_target,
    make_service,
    md,
    wg_key,
)

grpc_store, fx = support.grpc_store, support.fx

EVIL = "acct-evil"
EVIL_CLUSTER = "evil.byop.test"
BOUND = 64


def test_a_flood_of_one_account_keeps_another_accounts_tokens() -> None:
    tokens = OneTimeTokenStore(max_tokens=BOUND)
    victim = tokens.issue(ACCOUNT, "svc-1")
    for i in range(5 * BOUND):
        tokens.issue(EVIL, f"evil-{i % 8}")
    assert len(tokens) == BOUND
    tokens.validate_and_consume(victim, ACCOUNT, "svc-1")  # raised TokenError before
    try:
        tokens.validate_and_consume(victim, ACCOUNT, "svc-1")
    except TokenError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a one-time token was accepted twice")


def test_another_accounts_streams_do_not_evict_the_victims_proxy_peer_token(
        fx: Fixture) -> None:
    h = Harness(fx.store, heartbeat_interval=0.2)
    h.servicer.tokens.max_tokens = BOUND  # the servicer's own table, smaller
    try:
        # the victim's (shared) gateway receives svc-1 (private) and its token
        shared = GmuClient(h, fx.token, "gw-shared",
                           capabilities=pb.ProxyCapabilities(supports_private_service=True))
        got = {m.id: m.auth_token for m in shared.snapshot()}
        assert got.get("svc-1"), got
        victim_token = got["svc-1"]
        # a hostile tenant: its own scoped proxy token, its own (BYOP) cluster
        # and 8 services on it; it opens streams and reads their snapshots
        fx.store.accounts.create(Account(id=EVIL, domain="evil.test"))
        _, evil_token = fx.store.proxies.create_token("evil", account_id=EVIL)
        first = GmuClient(h, evil_token, "gw-evil", address=EVIL_CLUSTER)
        assert first.snapshot() == []
        for i in range(8):
            fx.store.services.create(make_service(
                f"evil{i}", account_id=EVIL, domain=f"evil{i}.{EVIL_CLUSTER}",
                targets=(dataclasses.replace(cluster_target(), target_id=EVIL_CLUSTER),)))
        first.close()
        for i in range(2 * BOUND // 8):
            c = GmuClient(h, evil_token, f"gw-evil-{i}", address=EVIL_CLUSTER)
            assert len(c.snapshot()) == 8
            c.close()
        # the victim's gateway now registers its proxy peer with its token
        try:
            r = h.stub.CreateProxyPeer(pb.CreateProxyPeerRequest(
                service_id="svc-1", account_id=ACCOUNT, token=victim_token,
                wireguard_public_key=wg_key(), cluster=support.CLUSTER), metadata=md(fx.token))
        except grpc.RpcError as exc:  # today: UNAUTHENTICATED "invalid token"
            raise AssertionError(f"victim's CreateProxyPeer refused: {exc.code()} "
                                 f"{exc.details()}") from None
        assert r.success
        shared.close()
    finally:
        h.close()
