"""ValidateTunnelPeer over real gRPC."""

from __future__ import annotations

import dataclasses

import grpc
import jwt
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import Account, AuthConfig, BearerAuth, Peer, User
from nbgateway.management.sessionjwt import load_public_key
from nbgateway.management.store import schema
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import (
    ACCOUNT,
    DOMAIN,
    U_IP,
    Fixture,
    Harness,
    make_service,
    md,
    wg_key,
)

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def vtp(h: Harness, token: str, tunnel_ip: str, domain: str = DOMAIN):
    return h.stub.ValidateTunnelPeer(
        pb.ValidateTunnelPeerRequest(tunnel_ip=tunnel_ip, domain=domain), metadata=md(token)
    )


def decode(token: str, public_b64: str, domain: str = DOMAIN) -> dict:
    return jwt.decode(
        token, load_public_key(public_b64), algorithms=["EdDSA"], audience=domain,
        issuer="netbird-management",
    )


def test_46_member_peer_is_granted(harness: Harness, fx: Fixture) -> None:
    r = vtp(harness, fx.token, U_IP)
    assert r.valid and r.denied_reason == ""
    assert r.user_id == "alice" and r.user_email == "alice@example.com"
    assert list(r.peer_group_ids) == ["grp-admins"]
    assert list(r.peer_group_names) == ["admins"]
    assert r.session_token


def test_47_session_jwt_claims_verify_with_service_key(harness: Harness, fx: Fixture) -> None:
    r = vtp(harness, fx.token, U_IP)
    header = jwt.get_unverified_header(r.session_token)
    assert header["alg"] == "EdDSA" and header["typ"] == "JWT"
    claims = decode(r.session_token, fx.s.session_public_key)
    assert claims["iss"] == "netbird-management"
    assert claims["aud"] == [DOMAIN]
    assert claims["sub"] == "alice"
    assert claims["method"] == "oidc"
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["grp-admins"]
    assert claims["group_names"] == ["admins"]
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["nbf"] == claims["iat"]
    assert "jti" not in claims
    # claim order as upstream emits it
    assert list(claims) == [
        "iss", "sub", "aud", "exp", "nbf", "iat", "method", "email", "groups", "group_names",
    ]
    # and another service's key does not verify it
    other = fx.store.services.create(make_service("other"))
    with pytest.raises(jwt.InvalidSignatureError):
        decode(r.session_token, other.session_public_key)


def test_48_peer_removed_from_group_is_denied(harness: Harness, fx: Fixture) -> None:
    fx.store.peers.update(dataclasses.replace(fx.u, groups=("grp-other",)))
    r = vtp(harness, fx.token, U_IP)
    assert not r.valid and r.denied_reason == "not_in_group"
    assert r.user_id == "alice" and r.user_email == "alice@example.com"
    assert list(r.peer_group_ids) == ["grp-other"]
    assert list(r.peer_group_names) == ["other"]
    assert r.session_token == ""


def test_49_empty_access_groups_in_storage_fail_closed(harness: Harness, fx: Fixture) -> None:
    fx.store.peers.update(dataclasses.replace(fx.u, groups=("grp-admins", "grp-other")))
    for raw in ("[]", None):
        with fx.store._engine.begin() as conn:
            conn.execute(
                schema.services.update()
                .where(schema.services.c.id == "svc-1")
                .values(access_groups=raw)
            )
        r = vtp(harness, fx.token, U_IP)
        assert not r.valid and r.denied_reason == "not_in_group" and not r.session_token


def test_50_user_auto_groups_do_not_count(harness: Harness, fx: Fixture) -> None:
    # alice's AutoGroups contain grp-admins, but the peer itself is only in grp-other
    fx.store.peers.update(dataclasses.replace(fx.u, groups=("grp-other",)))
    assert fx.store.users.get(ACCOUNT, "alice").auto_groups == ("grp-admins",)
    r = vtp(harness, fx.token, U_IP)
    assert not r.valid and r.denied_reason == "not_in_group"


def test_51_machine_peer_identity_is_the_peer(harness: Harness, fx: Fixture) -> None:
    m = fx.store.peers.create(
        Peer(account_id=ACCOUNT, name="agent-1", key=wg_key(), ip="100.64.0.20",
             groups=("grp-admins",))
    )
    r = vtp(harness, fx.token, "100.64.0.20")
    assert r.valid and r.user_id == m.id and r.user_email == "agent-1"
    claims = decode(r.session_token, fx.s.session_public_key)
    assert claims["sub"] == m.id and claims["email"] == "agent-1"


def test_52_unknown_tunnel_ip_is_peer_not_found(harness: Harness, fx: Fixture) -> None:
    r = vtp(harness, fx.token, "100.64.0.250")
    assert not r.valid and r.denied_reason == "peer_not_found" and r.user_id == ""


def test_53_lookup_is_scoped_to_the_service_account(harness: Harness, fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-b"))
    fx.store.peers.create(Peer(account_id="acct-b", name="b-peer", key=wg_key(), ip="100.64.0.11"))
    r = vtp(harness, fx.token, "100.64.0.11")
    assert not r.valid and r.denied_reason == "peer_not_found"


@pytest.mark.parametrize(
    ("tunnel_ip", "domain", "reason"),
    [
        ("not-an-ip", DOMAIN, "invalid_tunnel_ip"),
        ("300.1.1.1", DOMAIN, "invalid_tunnel_ip"),
        ("", DOMAIN, "missing domain or tunnel_ip"),
        (U_IP, "", "missing domain or tunnel_ip"),
    ],
)
def test_54_bad_tunnel_ip_or_missing_fields(
    harness: Harness, fx: Fixture, tunnel_ip: str, domain: str, reason: str
) -> None:
    r = vtp(harness, fx.token, tunnel_ip, domain)
    assert not r.valid and r.denied_reason == reason and r.user_id == ""


def test_55_unknown_domain(harness: Harness, fx: Fixture) -> None:
    r = vtp(harness, fx.token, U_IP, "nope.example.com")
    assert not r.valid and r.denied_reason == "service_not_found"


def test_56_byop_token_of_other_account_is_permission_denied(
    harness: Harness, fx: Fixture
) -> None:
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    with pytest.raises(grpc.RpcError) as exc:
        vtp(harness, token_b, U_IP)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert exc.value.details() == "account-scoped token cannot access account acct-1"
    # the account's own BYOP token works
    _, token_a = fx.store.proxies.create_token("a", account_id=ACCOUNT)
    assert vtp(harness, token_a, U_IP).valid


def test_57_group_lookup_failure_is_peer_not_found(harness: Harness, fx: Fixture) -> None:
    def broken(account_id: str, peer_id: str):
        raise RuntimeError("database went away")

    harness.servicer.tunnel_peers.peer_group_refs = broken
    r = vtp(harness, fx.token, U_IP)
    assert not r.valid and r.denied_reason == "peer_not_found"


def test_58_non_private_bearer_service_gates_on_peer_groups(
    harness: Harness, fx: Fixture
) -> None:
    bearer = fx.store.services.create(
        make_service("bearer", auth=AuthConfig(bearer_auth=BearerAuth(True, ("grp-admins",))))
    )
    open_ = fx.store.services.create(make_service("open"))
    outsider = fx.store.peers.create(
        Peer(account_id=ACCOUNT, name="outsider", key=wg_key(), ip="100.64.0.30",
             groups=("grp-other",))
    )
    assert vtp(harness, fx.token, U_IP, bearer.domain).valid
    r = vtp(harness, fx.token, outsider.ip, bearer.domain)
    assert not r.valid and r.denied_reason == "not_in_group"
    # non-private, non-bearer: any peer of the account
    assert vtp(harness, fx.token, outsider.ip, open_.domain).valid
    machine = fx.store.peers.create(
        Peer(account_id=ACCOUNT, name="nogroups", key=wg_key(), ip="100.64.0.31")
    )
    fx.store.peers.update(dataclasses.replace(machine, groups=()))
    assert vtp(harness, fx.token, machine.ip, open_.domain).valid


def test_59_ipv6_tunnel_address(harness: Harness, fx: Fixture) -> None:
    u = fx.store.peers.get(ACCOUNT, fx.u.id)
    assert u.ipv6
    r = vtp(harness, fx.token, u.ipv6)
    assert r.valid and r.user_id == "alice"
    # a v4-mapped address is the v4 peer
    assert vtp(harness, fx.token, "::ffff:" + U_IP).valid


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pending_approval": True}, "pending_approval"),
        ({"blocked": True}, "user_blocked"),
    ],
)
def test_60_pending_or_blocked_owner_is_denied_before_group_check(
    harness: Harness, fx: Fixture, change: dict, reason: str
) -> None:
    fx.store.users.update(dataclasses.replace(fx.alice, **change))
    # even outside the groups, the status check wins
    fx.store.peers.update(dataclasses.replace(fx.u, groups=("grp-other",)))
    r = vtp(harness, fx.token, U_IP)
    assert not r.valid and r.denied_reason == reason and r.session_token == ""
    assert r.user_id == "alice" and list(r.peer_group_ids) == ["grp-other"]


def test_60_unresolvable_owner_is_user_not_found(harness: Harness, fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-b"))
    fx.store.users.create(User(id="bob", account_id="acct-b", email="bob@b.example"))
    for owner in ("ghost", "bob"):  # missing, and a user of another account
        with fx.store._engine.begin() as conn:
            conn.execute(
                schema.peers.update().where(schema.peers.c.id == fx.u.id).values(user_id=owner)
            )
        r = vtp(harness, fx.token, U_IP)
        assert not r.valid and r.denied_reason == "user_not_found"
        assert r.user_id == owner and r.user_email == "alice-laptop" and not r.session_token


def test_denied_reason_matrix_values_are_from_the_catalogue(
    harness: Harness, fx: Fixture
) -> None:
    catalogue = {
        "missing domain or tunnel_ip", "invalid_tunnel_ip", "service_not_found",
        "user_not_found", "peer_not_found", "not_in_group", "pending_approval", "user_blocked",
        "invalid_service_config",
    }
    seen = set()
    for ip, dom in [("", DOMAIN), ("x", DOMAIN), (U_IP, "nope.test"), ("100.64.0.77", DOMAIN)]:
        seen.add(vtp(harness, fx.token, ip, dom).denied_reason)
    fx.store.peers.update(dataclasses.replace(fx.u, groups=()))
    seen.add(vtp(harness, fx.token, U_IP).denied_reason)
    assert seen <= catalogue and len(seen) == 5


def test_missing_private_key_is_invalid_service_config(harness: Harness, fx: Fixture) -> None:
    with fx.store._engine.begin() as conn:
        conn.execute(
            schema.services.update()
            .where(schema.services.c.id == "svc-1")
            .values(session_private_key="")
        )
    r = vtp(harness, fx.token, U_IP)
    assert not r.valid and r.denied_reason == "invalid_service_config" and not r.session_token


def test_disabled_service_is_still_validated(harness: Harness, fx: Fixture) -> None:
    fx.store.services.update(dataclasses.replace(fx.s, enabled=False))
    assert vtp(harness, fx.token, U_IP).valid


def test_the_listener_account_extension_must_match_the_services_account(
        harness: Harness, fx: Fixture) -> None:
    """``nbgw_account_id`` (our field 1001): a gateway asking for a peer of
    another account's tunnel gets a denial and no session token; the
    service's own account, or no account (an upstream gateway), as before."""
    def ask(account_id: str) -> pb.ValidateTunnelPeerResponse:
        return harness.stub.ValidateTunnelPeer(
            pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN,
                                         nbgw_account_id=account_id),
            metadata=md(fx.token))

    mismatch = ask("acct-somebody-else")
    assert not mismatch.valid and mismatch.denied_reason == "account_mismatch"
    assert mismatch.session_token == "" and mismatch.user_id == ""
    assert list(mismatch.peer_group_ids) == []
    same = ask(ACCOUNT)
    assert same.valid and same.user_id == "alice" and same.session_token
    assert vtp(harness, fx.token, U_IP).valid
