"""ValidateSession, Authenticate, CreateProxyPeer, SendStatusUpdate, SendAccessLog, GetOIDCURL
and caller identity over real gRPC."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import grpc
import jwt
import pytest
from google.protobuf import timestamp_pb2

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import sessionjwt
from nbgateway.management.model import (
    AccessLogQuery,
    Account,
    AuthConfig,
    BearerAuth,
    Group,
    HeaderAuth,
    PasswordAuth,
    PinAuth,
    User,
    utcnow,
)
from nbgateway.management.proxyservice import AuthFailureLimiter
from nbgateway.management.store import schema
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import (
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    P_IP,
    U_IP,
    X_CAPS,
    Fixture,
    Harness,
    caps,
    make_service,
    md,
    wg_key,
)

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)
    return exc.value


def alice_token(h: Harness, fx: Fixture) -> str:
    r = h.stub.ValidateTunnelPeer(
        pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN), metadata=md(fx.token)
    )
    assert r.valid
    return r.session_token


def vs(h: Harness, fx: Fixture, token: str, domain: str = DOMAIN) -> pb.ValidateSessionResponse:
    return h.stub.ValidateSession(
        pb.ValidateSessionRequest(domain=domain, session_token=token), metadata=md(fx.token)
    )


# --- ValidateSession --------------------------------------------------------------------------


def test_61_session_of_alice_is_valid(harness: Harness, fx: Fixture) -> None:
    r = vs(harness, fx, alice_token(harness, fx))
    assert r.valid and r.user_id == "alice" and r.user_email == "alice@example.com"
    assert list(r.peer_group_ids) == ["grp-admins"]
    assert list(r.peer_group_names) == ["admins"]


def test_62_token_for_other_domain_or_key_is_invalid(harness: Harness, fx: Fixture) -> None:
    other = fx.store.services.create(make_service("other"))
    token = alice_token(harness, fx)
    assert vs(harness, fx, token, other.domain).denied_reason == "invalid_token"
    forged = sessionjwt.sign_session(
        other.session_private_key, subject="alice", domain=DOMAIN, method="oidc"
    )
    r = vs(harness, fx, forged)
    assert not r.valid and r.denied_reason == "invalid_token" and r.user_id == ""
    expired = sessionjwt.sign_session(
        fx.s.session_private_key, subject="alice", domain=DOMAIN, method="oidc",
        now=utcnow().timestamp() - 2 * 86400,
    )
    assert vs(harness, fx, expired).denied_reason == "invalid_token"
    assert vs(harness, fx, "not.a.jwt").denied_reason == "invalid_token"


def test_63_unknown_subject_foreign_user_and_missing_fields(
    harness: Harness, fx: Fixture
) -> None:
    def mint(sub: str) -> str:
        return sessionjwt.sign_session(
            fx.s.session_private_key, subject=sub, domain=DOMAIN, method="oidc"
        )

    assert vs(harness, fx, mint("nobody")).denied_reason == "user_not_found"
    fx.store.accounts.create(Account(id="acct-b"))
    fx.store.users.create(User(id="bob", account_id="acct-b", email="bob@b.example"))
    r = vs(harness, fx, mint("bob"))
    assert r.denied_reason == "account_mismatch" and r.user_id == "" and r.user_email == ""
    assert "missing" in vs(harness, fx, "").denied_reason
    assert "missing" in vs(harness, fx, mint("alice"), "").denied_reason
    assert vs(harness, fx, mint("alice"), "nope.test").denied_reason == "service_not_found"


def test_64_bearer_service_user_not_in_distribution_groups(
    harness: Harness, fx: Fixture
) -> None:
    fx.store.groups.create(Group(id="grp-x", account_id=ACCOUNT, name="x"))
    svc = fx.store.services.create(
        make_service("bearer", auth=AuthConfig(bearer_auth=BearerAuth(True, ("grp-x",))))
    )
    token = sessionjwt.sign_session(
        svc.session_private_key, subject="alice", domain=svc.domain, method="oidc"
    )
    r = vs(harness, fx, token, svc.domain)
    assert not r.valid and r.denied_reason == "not_in_group"
    assert r.user_id == "alice" and r.user_email == "alice@example.com"
    assert list(r.peer_group_ids) == ["grp-admins"]


def test_65_undecodable_public_key_is_invalid_service_config(
    harness: Harness, fx: Fixture
) -> None:
    token = alice_token(harness, fx)
    with fx.store._engine.begin() as conn:
        conn.execute(
            schema.services.update()
            .where(schema.services.c.id == "svc-1")
            .values(session_public_key="%%% not base64 %%%")
        )
    assert vs(harness, fx, token).denied_reason == "invalid_service_config"


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"pending_approval": True}, "pending_approval"), ({"blocked": True}, "user_blocked")],
)
def test_validate_session_pending_or_blocked(
    harness: Harness, fx: Fixture, change: dict, reason: str
) -> None:
    token = alice_token(harness, fx)
    fx.store.users.update(dataclasses.replace(fx.alice, **change))
    r = vs(harness, fx, token)
    assert not r.valid and r.denied_reason == reason and r.user_id == "alice"


# --- Authenticate ----------------------------------------------------------------------------


@pytest.fixture
def secured(fx: Fixture):
    return fx.store.services.create(
        make_service(
            "secured",
            auth=AuthConfig(
                pin_auth=PinAuth(True, "123456"),
                password_auth=PasswordAuth(True, "s3cret"),
                header_auths=(HeaderAuth(True, "X-Api-Key", "key-1"),),
            ),
        )
    )


def authn(h: Harness, fx: Fixture, svc, **oneof) -> pb.AuthenticateResponse:
    return h.stub.Authenticate(
        pb.AuthenticateRequest(id=svc.id, account_id=svc.account_id, **oneof),
        metadata=md(fx.token),
    )


def test_66_pin_authentication(harness: Harness, fx: Fixture, secured) -> None:
    assert fx.store.services.get(ACCOUNT, secured.id).auth.pin_auth.pin.startswith("$argon2id$")
    r = authn(harness, fx, secured, pin=pb.PinRequest(pin="123456"))
    assert r.success and r.session_token
    claims = jwt.decode(
        r.session_token, sessionjwt.load_public_key(secured.session_public_key),
        algorithms=["EdDSA"], audience=secured.domain,
    )
    assert claims["sub"] == "pin-user" and claims["method"] == "pin"
    assert "email" not in claims and "groups" not in claims and "group_names" not in claims
    r = authn(harness, fx, secured, pin=pb.PinRequest(pin="000000"))
    assert not r.success and r.session_token == ""


def test_password_and_header_authentication(harness: Harness, fx: Fixture, secured) -> None:
    def sub(r: pb.AuthenticateResponse) -> str:
        return jwt.decode(r.session_token, options={"verify_signature": False})["sub"]

    assert sub(authn(harness, fx, secured, password=pb.PasswordRequest(password="s3cret"))) == (
        "password-user"
    )
    assert not authn(harness, fx, secured, password=pb.PasswordRequest(password="x")).success
    ok = authn(harness, fx, secured, header_auth=pb.HeaderAuthRequest(
        header_name="x-api-key", header_value="key-1"))
    assert ok.success and sub(ok) == "header-user"
    any_name = authn(harness, fx, secured, header_auth=pb.HeaderAuthRequest(header_value="key-1"))
    assert any_name.success
    assert not authn(harness, fx, secured, header_auth=pb.HeaderAuthRequest(
        header_name="X-Other", header_value="key-1")).success
    assert not authn(harness, fx, secured).success  # no scheme chosen


def test_authenticate_unknown_service_and_scope(harness: Harness, fx: Fixture) -> None:
    err = rpc_error(harness.stub.Authenticate,
                    pb.AuthenticateRequest(id="nope", account_id=ACCOUNT), metadata=md(fx.token))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("get service from store:")
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    err = rpc_error(harness.stub.Authenticate,
                    pb.AuthenticateRequest(id="svc-1", account_id=ACCOUNT), metadata=md(token_b))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# --- CreateProxyPeer -----------------------------------------------------------------------


def one_time_token(h: Harness, fx: Fixture, proxy_id: str = "proxy-x") -> str:
    call = h.stub.GetMappingUpdate(
        pb.GetMappingUpdateRequest(proxy_id=proxy_id, address=CLUSTER,
                                   capabilities=caps(**X_CAPS)),
        metadata=md(fx.token),
    )
    first = next(call)
    call.cancel()
    (m,) = [m for m in first.mapping if m.id == "svc-1"]
    return m.auth_token


def cpp(h: Harness, fx: Fixture, token: str, key: str, **kw) -> pb.CreateProxyPeerResponse:
    req = pb.CreateProxyPeerRequest(service_id=kw.pop("service_id", "svc-1"),
                                    account_id=ACCOUNT, token=token, wireguard_public_key=key,
                                    cluster=CLUSTER, **kw)
    return h.stub.CreateProxyPeer(req, metadata=md(fx.token))


def test_79_create_proxy_peer(harness: Harness, fx: Fixture) -> None:
    token, key = one_time_token(harness, fx), wg_key()
    before = {p.id for p in fx.store.peers.list(ACCOUNT)}
    r = cpp(harness, fx, token, key, wireguard_endpoint="gw.example.com:51820")
    assert r.success
    (new,) = [p for p in fx.store.peers.list(ACCOUNT) if p.id not in before]
    assert new.key == key and new.proxy and new.proxy_cluster == CLUSTER and new.ephemeral
    assert new.name.startswith("proxy-") and len(new.name) == len("proxy-") + 20
    assert new.endpoint == "gw.example.com:51820" and new.ip and new.user_id is None
    all_group = next(g for g in fx.store.groups.list(ACCOUNT) if g.name == "All")
    assert new.id not in all_group.peers
    # reusing the token: Unauthenticated
    err = rpc_error(cpp, harness, fx, token, wg_key())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "token validation: invalid token"
    # same key with a fresh token: success, no new peer
    assert cpp(harness, fx, one_time_token(harness, fx), key).success
    assert len(fx.store.peers.list(ACCOUNT)) == len(before) + 1


def test_create_proxy_peer_bad_input_stores_nothing(harness: Harness, fx: Fixture) -> None:
    token = one_time_token(harness, fx)
    peers = len(fx.store.peers.list(ACCOUNT))
    r = cpp(harness, fx, "", wg_key())
    assert not r.success and r.error_message.startswith("missing required fields")
    for bad_key in ("", "not base64!", "AAAA"):
        err = rpc_error(cpp, harness, fx, token, bad_key)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for bad_ep in ("no-port", "host:0", "host:99999", "bad host:1", "1.2.3.4:x"):
        err = rpc_error(cpp, harness, fx, token, wg_key(), wireguard_endpoint=bad_ep)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_ep
    err = rpc_error(cpp, harness, fx, token, wg_key(), service_id="other")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "token validation: service ID mismatch"
    assert len(fx.store.peers.list(ACCOUNT)) == peers
    # rejected input did not consume a fresh token
    token2 = one_time_token(harness, fx)
    rpc_error(cpp, harness, fx, token2, "AAAA")
    assert cpp(harness, fx, token2, wg_key(), wireguard_endpoint="[2001:db8::1]:51820").success


# --- SendStatusUpdate -----------------------------------------------------------------------


def ssu(h: Harness, fx: Fixture, **kw) -> pb.SendStatusUpdateResponse:
    return h.stub.SendStatusUpdate(pb.SendStatusUpdateRequest(**kw), metadata=md(fx.token))


def test_80_status_update_and_inbound_listener(harness: Harness, fx: Fixture) -> None:
    x = harness.stub.GetMappingUpdate(
        pb.GetMappingUpdateRequest(proxy_id="proxy-x", address=CLUSTER), metadata=md(fx.token)
    )
    next(x)
    ssu(harness, fx, service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ACTIVE,
        certificate_issued=True,
        inbound_listener=pb.ProxyInboundListener(tunnel_ip=P_IP,
                                                 https_port=443, http_port=80))
    s = fx.store.services.get(ACCOUNT, "svc-1")
    assert s.meta.status == "active" and s.meta.certificate_issued_at is not None
    # nbgateway extension (the issue asks for it; upstream ignores the field)
    (li,) = fx.store.proxies.list_inbound_listeners(ACCOUNT)
    assert (li.proxy_id, li.tunnel_ip, li.https_port, li.http_port) == (
        "proxy-x", "100.64.0.99", 443, 80)
    x.cancel()
    # unknown status numbers become "error"
    ssu(harness, fx, service_id="svc-1", account_id=ACCOUNT, status=42)
    assert fx.store.services.get(ACCOUNT, "svc-1").meta.status == "error"


def test_status_update_bad_input(harness: Harness, fx: Fixture) -> None:
    for kw in ({"account_id": ACCOUNT}, {"service_id": "svc-1"}):
        err = rpc_error(ssu, harness, fx, **kw)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "service_id and account_id are required"
    err = rpc_error(ssu, harness, fx, service_id="nope", account_id=ACCOUNT)
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "service nope not found"
    err = rpc_error(ssu, harness, fx, service_id="svc-1", account_id=ACCOUNT,
                    status=pb.PROXY_STATUS_ACTIVE,
                    inbound_listener=pb.ProxyInboundListener(tunnel_ip="999.1.1.1"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(ssu, harness, fx, service_id="svc-1", account_id=ACCOUNT,
                    inbound_listener=pb.ProxyInboundListener(tunnel_ip=U_IP, https_port=70000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fx.store.services.get(ACCOUNT, "svc-1").meta.status == "pending"
    assert fx.store.proxies.list_inbound_listeners(ACCOUNT) == []


# --- SendAccessLog -------------------------------------------------------------------------


def access_log(**kw) -> pb.AccessLog:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(utcnow().replace(microsecond=0))
    base = dict(timestamp=ts, log_id="log-1", account_id=ACCOUNT, service_id="svc-1",
                host=DOMAIN, path="/x", duration_ms=12, method="GET", response_code=200,
                source_ip="::ffff:100.64.0.10", auth_mechanism="oidc", user_id="alice",
                auth_success=True, protocol="http", metadata={"k": "v"})
    base.update(kw)
    return pb.AccessLog(**base)


def logs(fx: Fixture):
    return fx.store.access_logs.list(ACCOUNT, AccessLogQuery()).data


def test_access_log_stored_with_user_groups(harness: Harness, fx: Fixture) -> None:
    harness.stub.SendAccessLog(pb.SendAccessLogRequest(log=access_log()), metadata=md(fx.token))
    (e,) = logs(fx)
    assert e.id == "log-1" and e.source_ip == U_IP and e.duration == 12_000_000
    assert e.user_groups == ("admins",) and e.reason == "" and dict(e.metadata) == {"k": "v"}
    harness.stub.SendAccessLog(
        pb.SendAccessLogRequest(log=access_log(log_id="log-2", auth_success=False)),
        metadata=md(fx.token))
    harness.stub.SendAccessLog(
        pb.SendAccessLogRequest(log=access_log(log_id="log-3", response_code=502)),
        metadata=md(fx.token))
    reasons = {e.id: e.reason for e in logs(fx)}
    assert reasons["log-2"] == "Authentication failed" and reasons["log-3"] == "Request failed"


def test_access_log_bad_input_stores_nothing(harness: Harness, fx: Fixture) -> None:
    send = harness.stub.SendAccessLog
    for req in (
        pb.SendAccessLogRequest(),
        pb.SendAccessLogRequest(log=access_log(source_ip="not-an-ip")),
        pb.SendAccessLogRequest(log=access_log(account_id="")),
        pb.SendAccessLogRequest(log=access_log(protocol="gopher")),
    ):
        err = rpc_error(send, req, metadata=md(fx.token))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    err = rpc_error(send, pb.SendAccessLogRequest(log=access_log()), metadata=md(token_b))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # oversized message: refused by the transport limit
    huge = access_log(metadata={"blob": "x" * (5 * 1024 * 1024)})
    err = rpc_error(send, pb.SendAccessLogRequest(log=huge), metadata=md(fx.token))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert logs(fx) == ()


# --- GetOIDCURL, identity, raw input ---------------------------------------------------------


def test_get_oidc_url_is_unimplemented(harness: Harness, fx: Fixture) -> None:
    err = rpc_error(harness.stub.GetOIDCURL,
                    pb.GetOIDCURLRequest(id="svc-1", account_id=ACCOUNT,
                                         redirect_url=f"https://{DOMAIN}/"),
                    metadata=md(fx.token))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not implemented" in err.details() and "ValidateTunnelPeer" in err.details()


@pytest.mark.parametrize(
    ("metadata", "details"),
    [
        ((), "missing authorization header"),
        ((("authorization", "Basic abc"),), "invalid authorization format"),
        ((("authorization", "Bearer nbx_short"),), "invalid token format"),
    ],
)
def test_caller_identity_failures(harness: Harness, fx: Fixture, metadata, details) -> None:
    err = rpc_error(harness.stub.ValidateTunnelPeer,
                    pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN),
                    metadata=metadata)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and err.details() == details


def test_unknown_expired_and_revoked_tokens(harness: Harness, fx: Fixture) -> None:
    from nbgateway.management.store import _secrets

    req = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN)
    unknown = _secrets.generate_token("nbx_")
    err = rpc_error(harness.stub.ValidateTunnelPeer, req, metadata=md(unknown))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    _, expired = fx.store.proxies.create_token("old", account_id=None,
                                             expires_at=utcnow() - timedelta(minutes=1))
    err = rpc_error(harness.stub.ValidateTunnelPeer, req, metadata=md(expired))
    assert err.details() == "token expired or revoked"
    rec, revoked = fx.store.proxies.create_token("rev", account_id=None)
    assert harness.stub.ValidateTunnelPeer(req, metadata=md(revoked)).valid
    fx.store.proxies.revoke_token(None, rec.id)
    err = rpc_error(harness.stub.ValidateTunnelPeer, req, metadata=md(revoked))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_method_requires_a_token(harness: Harness, fx: Fixture) -> None:
    s = harness.stub
    calls = [
        (s.ValidateTunnelPeer, pb.ValidateTunnelPeerRequest()),
        (s.ValidateSession, pb.ValidateSessionRequest()),
        (s.Authenticate, pb.AuthenticateRequest()),
        (s.CreateProxyPeer, pb.CreateProxyPeerRequest()),
        (s.SendStatusUpdate, pb.SendStatusUpdateRequest()),
        (s.SendAccessLog, pb.SendAccessLogRequest()),
        (s.GetOIDCURL, pb.GetOIDCURLRequest()),
    ]
    bad = (("authorization", "Bearer " + "nbx_" + "A" * 36),)

    def check(call) -> None:
        harness.servicer.limiter = AuthFailureLimiter()  # isolate from the failure limiter
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "invalid token format"

    for fn, req in calls:
        check(lambda fn=fn, req=req: fn(req, metadata=bad))
    check(lambda: next(s.GetMappingUpdate(pb.GetMappingUpdateRequest(proxy_id="p"),
                                          metadata=bad)))
    check(lambda: next(s.SyncMappings(iter([]), metadata=bad)))


def test_failed_auth_rate_limit(harness: Harness, fx: Fixture) -> None:
    req = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN)
    for _ in range(5):
        err = rpc_error(harness.stub.ValidateTunnelPeer, req, metadata=())
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(harness.stub.ValidateTunnelPeer, req, metadata=())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "too many failed authentication attempts"
    # a valid token is checked first and never limited (issue 11.4)
    assert harness.stub.ValidateTunnelPeer(req, metadata=md(fx.token)).valid


def test_raw_bytes_garbage_unknown_fields_and_unknown_methods(
    harness: Harness, fx: Fixture
) -> None:
    raw = harness.channel.unary_unary(
        "/management.ProxyService/ValidateTunnelPeer",
        request_serializer=lambda b: b,
        response_deserializer=pb.ValidateTunnelPeerResponse.FromString,
    )
    err = rpc_error(raw, b"\xff\xff\xff\xff garbage", metadata=md(fx.token))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # unknown fields (field 999, varint) are ignored as proto3 requires
    body = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN).SerializeToString()
    assert raw(body + b"\xb8\x3e\x01", metadata=md(fx.token)).valid
    # SyncMappings with an undecodable first message
    stream = harness.channel.stream_stream(
        "/management.ProxyService/SyncMappings",
        request_serializer=lambda b: b,
        response_deserializer=pb.SyncMappingsResponse.FromString,
    )
    err = rpc_error(lambda: next(stream(iter([b"\x0a\xff"]), metadata=md(fx.token))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # RPCs nbgateway does not serve
    llm = harness.channel.unary_unary(
        "/management.ProxyService/CheckLLMPolicyLimits",
        request_serializer=pb.CheckLLMPolicyLimitsRequest.SerializeToString,
        response_deserializer=pb.CheckLLMPolicyLimitsResponse.FromString,
    )
    err = rpc_error(llm, pb.CheckLLMPolicyLimitsRequest(), metadata=md(fx.token))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("proxy_id", "address", "details"),
    [
        ("", CLUSTER, "proxy_id is required"),
        ("p", "", "proxy address is invalid"),
        ("p", "not a host!", "proxy address is invalid"),
        ("p", "-bad-.example", "proxy address is invalid"),
    ],
)
def test_mapping_stream_init_validation(
    harness: Harness, fx: Fixture, proxy_id: str, address: str, details: str
) -> None:
    call = harness.stub.GetMappingUpdate(
        pb.GetMappingUpdateRequest(proxy_id=proxy_id, address=address), metadata=md(fx.token)
    )
    err = rpc_error(lambda: next(call))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details() == details
    assert fx.store.proxies.list() == []
