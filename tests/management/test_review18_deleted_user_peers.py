"""Review 18 (sec18): revoking a person must revoke the access their devices
carry, also when the person is *deleted* or a device leaves a group through
the peer API.  Real gRPC (ProxyService on loopback), SQLite and PostgreSQL.

1. Deleting a user unsets ``user_id`` on the user's peers and keeps them
   (store/_users.py ``delete``).  ValidateTunnelPeer checks the owner only
   when a peer has one, so the deleted user's laptop goes on reaching every
   private service its groups allow, now as an owner-less peer (identity: the
   peer).  Blocking the same user denies (``user_blocked``): the stronger
   action grants more.  Upstream NetBird deletes a deleted user's peers.
2. ``nb_session`` cookies a gateway minted from a ValidateTunnelPeer answer
   (the tunnel-peer fast path of public services with operator schemes)
   carry the peer's groups; management refuses cookies of the account issued
   before ``sessions_not_before`` when a group loses members through the
   group API, a user is blocked or deleted (``revoke_sessions_in``), but not
   when the same peer leaves the same group through the peer API
   (``peers.update``) or is deleted (``peers.delete``): those cookies keep
   working, from anywhere, until they expire (24 h by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.policy import revoked_session
from nbgateway.management.model import AuthConfig, BearerAuth
from tests.management.test_grpc_support import DOMAIN, U_IP, Fixture, Harness, make_service, md

PUBLIC = "pub.eu.proxy.netbird.io"


@pytest.fixture
def world(store) -> Iterator[tuple[Fixture, Harness]]:
    fx = Fixture(store)  # alice's laptop at U_IP in grp-admins; private DOMAIN for grp-admins
    h = Harness(store, heartbeat_interval=0.2)
    try:
        yield fx, h
    finally:
        h.close()


def _validate(fx: Fixture, h: Harness, domain: str = DOMAIN) -> pb.ValidateTunnelPeerResponse:
    return h.stub.ValidateTunnelPeer(
        pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=domain), metadata=md(fx.token))


def test_a_deleted_users_laptop_no_longer_reaches_private_services(world) -> None:
    fx, h = world
    before = _validate(fx, h)
    assert before.valid and before.user_id == "alice"
    fx.store.users.delete(fx.alice.account_id, "alice")
    after = _validate(fx, h)
    assert not after.valid, (
        f"the deleted user's peer is still let in (as {after.user_id!r}, "
        f"{after.user_email!r}); blocking her would have denied it")
    assert not after.session_token


def _public_bearer_service(fx: Fixture):
    """A public service whose SSO sessions are for grp-admins only."""
    return fx.store.services.create(make_service(
        "pub", sid="svc-pub", domain=PUBLIC,
        auth=AuthConfig(bearer_auth=BearerAuth(enabled=True,
                                               distribution_groups=("grp-admins",)))))


def test_leaving_a_group_through_the_peer_api_ends_the_peers_sessions(world) -> None:
    fx, h = world
    _public_bearer_service(fx)
    minted = _validate(fx, h, PUBLIC)
    assert minted.valid and minted.session_token  # the fast path's cookie
    # alice's laptop leaves grp-admins through the peer API (groups.update of
    # grp-admins without it would have ended the cookie)
    laptop = fx.store.peers.get(fx.u.account_id, fx.u.id)
    fx.store.peers.update(dataclasses.replace(laptop, groups=("grp-other",)))
    assert not _validate(fx, h, PUBLIC).valid  # no new cookie for it
    svc = fx.store.services.get(fx.u.account_id, "svc-pub")
    assert revoked_session(minted.session_token, svc.sessions_not_before), \
        "the cookie minted for grp-admins outlives the peer's removal from grp-admins"


def test_deleting_a_peer_ends_its_sessions(world) -> None:
    fx, h = world
    _public_bearer_service(fx)
    minted = _validate(fx, h, PUBLIC)
    assert minted.valid and minted.session_token
    fx.store.peers.delete(fx.u.account_id, fx.u.id)
    svc = fx.store.services.get(fx.u.account_id, "svc-pub")
    assert revoked_session(minted.session_token, svc.sessions_not_before), \
        "the deleted peer's cookie keeps working"
