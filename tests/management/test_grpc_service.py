"""ProxyGrpcService lifecycle (Twisted service, TLS, bind addresses) and the pure pieces of
the servicer: failed-auth limiter, one-time tokens, address checks, mapping conversion."""

from __future__ import annotations

import grpc
import pytest
import pytest_twisted

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.management.grpcserver import ProxyGrpcService, grpc_bind_address
from nbgateway.management.model import (
    AccessRestrictions,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.proxymapping import (
    OneTimeTokenStore,
    TokenError,
    per_proxy_mapping,
    proxy_accepts_mapping,
    to_proto_mapping,
)
from nbgateway.management.proxyservice import (
    AuthFailureLimiter,
    batch_size_from_env,
    check_peer_group_access,
    valid_endpoint,
    valid_proxy_address,
)
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import DOMAIN, U_IP, Fixture, md
from tests.selfsigned import loopback_cert

grpc_store, fx = support.grpc_store, support.fx


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def self_signed(tmp_path) -> tuple[str, str, bytes]:
    """:func:`tests.selfsigned.loopback_cert` written to files: (cert path, key path, cert PEM)."""
    key_pem, pem = loopback_cert("nbmanagement-test")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key_pem)
    return str(cert_path), str(key_path), pem


# --- the Twisted service --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_service_tls_roundtrip_and_graceful_stop(fx: Fixture, tmp_path) -> None:
    cert, key, pem = self_signed(tmp_path)
    svc = ProxyGrpcService(fx.store, addr="127.0.0.1:0", cert_path=cert, key_path=key)
    assert svc.server is None  # nothing live before startService
    svc.startService()
    try:
        channel = grpc.secure_channel(
            f"127.0.0.1:{svc.port}", grpc.ssl_channel_credentials(root_certificates=pem)
        )
        stub = pb_grpc.ProxyServiceStub(channel)
        r = stub.ValidateTunnelPeer(
            pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN), metadata=md(fx.token)
        )
        assert r.valid
        # plaintext against the TLS port fails
        plain = pb_grpc.ProxyServiceStub(grpc.insecure_channel(f"127.0.0.1:{svc.port}"))
        with pytest.raises(grpc.RpcError) as exc:
            plain.ValidateTunnelPeer(pb.ValidateTunnelPeerRequest(), metadata=md(fx.token),
                                     timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        await svc.stopService()
    assert svc.server is None and svc.servicer is None and not svc.running
    # the store listener is gone: writes no longer reach a stopped servicer
    assert fx.store._listeners == []


def test_service_requires_cert_and_key_together(fx: Fixture) -> None:
    with pytest.raises(ValueError, match="together"):
        ProxyGrpcService(fx.store, cert_path="c.pem")


def test_bind_addresses() -> None:
    assert grpc_bind_address(":33073") == "[::]:33073"
    assert grpc_bind_address("127.0.0.1:5") == "127.0.0.1:5"
    assert grpc_bind_address("[::1]:7") == "[::1]:7"
    assert grpc_bind_address("mgmt.example:80") == "mgmt.example:80"
    for bad in ("33073", "::1:5", "host:99999", "host:x", "[::1]"):
        with pytest.raises(ValueError):
            grpc_bind_address(bad)


# --- pure pieces ------------------------------------------------------------------------------


def test_auth_failure_limiter_bucket() -> None:
    clock = FakeClock()
    lim = AuthFailureLimiter(clock)
    for _ in range(5):
        assert lim.allowed("10.0.0.1")
        lim.failed("10.0.0.1")
    assert not lim.allowed("10.0.0.1") and lim.allowed("10.0.0.2")
    clock.now += 12.0  # one token back every 12 s
    assert lim.allowed("10.0.0.1")
    lim.failed("10.0.0.1")
    assert not lim.allowed("10.0.0.1")
    clock.now += 15 * 60 + 1  # entries expire 15 min after the last failure
    assert lim.allowed("10.0.0.1")


def test_one_time_tokens() -> None:
    clock = FakeClock()
    store = OneTimeTokenStore(ttl=300, max_tokens=3, clock=clock)
    t = store.issue("acct", "svc")
    assert len(t) == 43 and "=" not in t
    for args, msg in [(("other", "svc"), "account ID mismatch"),
                      (("acct", "other"), "service ID mismatch")]:
        with pytest.raises(TokenError, match=msg):
            store.validate_and_consume(t, *args)
    store.validate_and_consume(t, "acct", "svc")
    with pytest.raises(TokenError, match="invalid token"):
        store.validate_and_consume(t, "acct", "svc")
    old = store.issue("acct", "svc")
    clock.now += 301
    with pytest.raises(TokenError, match="token expired"):
        store.validate_and_consume(old, "acct", "svc")
    tokens = [store.issue("a", str(i)) for i in range(5)]
    assert len(store) == 3  # bounded: the oldest are dropped
    with pytest.raises(TokenError):
        store.validate_and_consume(tokens[0], "a", "0")
    store.validate_and_consume(tokens[4], "a", "4")


def test_batch_size_env() -> None:
    assert batch_size_from_env({}) == 500
    assert batch_size_from_env({"NB_PROXY_SNAPSHOT_BATCH_SIZE": "7"}) == 7
    for bad in ("0", "-3", "abc", ""):
        assert batch_size_from_env({"NB_PROXY_SNAPSHOT_BATCH_SIZE": bad}) == 500


def test_address_and_endpoint_checks() -> None:
    for ok in ("eu.proxy.netbird.io", "10.0.0.1", "fd00::1", "a-b.example."):
        assert valid_proxy_address(ok), ok
    for bad in ("", "a b", "-x.example", "x_y.example", "a" * 64 + ".example"):
        assert not valid_proxy_address(bad), bad
    for ok in ("gw.example:51820", "1.2.3.4:1", "[fd00::1]:51820"):
        assert valid_endpoint(ok), ok
    for bad in ("gw.example", "gw.example:0", "fd00::1:5", "[zz]:5", ":5", "h:65536"):
        assert not valid_endpoint(bad), bad


def _svc(**kw) -> Service:
    base = dict(id="s1", account_id="a", name="n", domain="n.example", proxy_cluster="c",
                session_public_key="pub", access_groups=("g",))
    base.update(kw)
    return Service(**base)


def test_check_peer_group_access_matrix() -> None:
    from nbgateway.management.model import AuthConfig, BearerAuth

    assert not check_peer_group_access(_svc(private=True, access_groups=()), ["g"])
    assert not check_peer_group_access(_svc(private=True, access_groups=None), ["g"])
    assert check_peer_group_access(_svc(private=True), ["x", "g"])
    assert not check_peer_group_access(_svc(private=True), ["x"])
    empty_bearer = AuthConfig(bearer_auth=BearerAuth(True, ()))
    assert check_peer_group_access(_svc(auth=empty_bearer), [])
    gated = AuthConfig(bearer_auth=BearerAuth(True, ("g",)))
    assert check_peer_group_access(_svc(auth=gated), ["g"])
    assert not check_peer_group_access(_svc(auth=gated), ["h"])
    assert check_peer_group_access(_svc(), [])


def test_to_proto_mapping_fields() -> None:
    targets = (
        Target(host="10.0.0.5", port=443, protocol="https", path="/api",
               options=TargetOptions(request_timeout=30_000_000_000, path_rewrite="preserve",
                                     custom_headers={"X-A": "1"})),
        Target(host="fd00::5", port=8080, protocol="http"),
        Target(host="off", port=1, enabled=False),
    )
    m = to_proto_mapping(
        _svc(targets=targets, private=True, pass_host_header=True,
             restrictions=AccessRestrictions(allowed_cidrs=("10.0.0.0/8",))),
        pb.UPDATE_TYPE_CREATED,
    )
    assert [(p.path, p.target) for p in m.path] == [
        ("/api", "https://10.0.0.5/"), ("/", "http://[fd00::5]:8080/")]
    o = m.path[0].options
    assert o.request_timeout.seconds == 30 and o.path_rewrite == pb.PATH_REWRITE_PRESERVE
    assert dict(o.custom_headers) == {"X-A": "1"} and not m.path[1].HasField("options")
    assert m.private and m.pass_host_header and m.mode == "http"
    assert list(m.access_restrictions.allowed_cidrs) == ["10.0.0.0/8"]
    assert m.auth.session_key == "pub" and m.auth.max_session_age_seconds == 86400
    # every field survives the per-proxy copy; only auth_token changes (upstream S1 fix)
    clone = per_proxy_mapping(m, lambda a, s: "tok")
    expected = pb.ProxyMapping()
    expected.CopyFrom(m)
    expected.auth_token = "tok"
    assert clone == expected and m.auth_token == ""
    l4 = to_proto_mapping(
        _svc(mode="tcp", listen_port=10000, targets=(Target(host="10.0.0.5", port=22,
                                                            protocol="tcp", proxy_protocol=True),)),
        pb.UPDATE_TYPE_CREATED,
    )
    assert l4.path[0].target == "10.0.0.5:22" and l4.path[0].options.proxy_protocol
    assert not proxy_accepts_mapping(None, l4)
    assert proxy_accepts_mapping(pb.ProxyCapabilities(supports_custom_ports=False), l4)


@pytest_twisted.ensureDeferred
async def test_wiring_as_child_of_management_service(tmp_path) -> None:
    """The wiring proposed for service.py: a child reading the store opened by the parent."""
    from twisted.internet import reactor

    from nbgateway.management.service import ManagementService

    ms = ManagementService(datadir=str(tmp_path / "data"), api_addr="127.0.0.1:0",
                           reactor=reactor)
    grpc_svc = ProxyGrpcService(store_getter=lambda: ms.store, addr="127.0.0.1:0")
    grpc_svc.setServiceParent(ms)
    assert grpc_svc.server is None
    ms.privilegedStartService()
    ms.startService()
    try:
        _, token = ms.store.proxies.create_token("wiring", account_id=None)
        stub = pb_grpc.ProxyServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_svc.port}"))
        r = stub.ValidateTunnelPeer(
            pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN), metadata=md(token))
        assert not r.valid and r.denied_reason == "service_not_found"
    finally:
        await ms.stopService()
    assert grpc_svc.server is None and ms.store is None
