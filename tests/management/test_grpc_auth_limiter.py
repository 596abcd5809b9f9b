"""The failed-authentication limiter cannot lock out a valid token (issue 11.4).

A real ProxyGrpcService on loopback and real grpcio channels: garbage tokens
from the gateway's own address spend that address's *failure* budget, but the
valid token is checked first and always accepted (unary, server-streaming and
bidi methods), also once the token cache has expired.  Failures keep being
limited.
"""

from __future__ import annotations

import grpc
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import proxyservice
from nbgateway.management.store import _secrets
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import DOMAIN, U_IP, Fixture, Harness, md

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

REQ = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN)


def _code(fn, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)
    return exc.value.code()


def _garbage() -> list[tuple[tuple[str, str], ...]]:
    """Every kind of failure a hostile client on the same host can send."""
    return [
        (),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer nbx_short"),),
        md(_secrets.generate_token(_secrets.PROXY_TOKEN_PREFIX)),  # well formed, unknown
        md("nbx_" + "A" * 36),
    ]


def test_garbage_from_the_same_address_never_locks_out_a_valid_token(
    harness: Harness, fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no positive cache: every call with the valid token goes to the store
    monkeypatch.setattr(proxyservice, "TOKEN_CACHE_SECONDS", 0.0)
    stub = harness.stub
    for _ in range(3):  # 15 failures: far beyond the burst of 5
        for metadata in _garbage():
            assert _code(stub.ValidateTunnelPeer, REQ, metadata=metadata) in (
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # failures from this address are now limited ...
    assert _code(stub.ValidateTunnelPeer, REQ, metadata=()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ... but the valid token is accepted, by every kind of method
    assert stub.ValidateTunnelPeer(REQ, metadata=md(fx.token)).valid
    stream = stub.GetMappingUpdate(
        pb.GetMappingUpdateRequest(proxy_id="gw-1", address="gw.example"), metadata=md(fx.token))
    assert isinstance(next(stream), pb.GetMappingUpdateResponse)
    stream.cancel()
    # interleaving one bad attempt between good ones changes nothing for the good ones
    for _ in range(5):
        assert _code(stub.ValidateTunnelPeer, REQ, metadata=md("nbx_" + "B" * 36)) \
            == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ValidateTunnelPeer(REQ, metadata=md(fx.token)).valid


def test_failure_budget_is_per_source(harness: Harness, fx: Fixture) -> None:
    """Failures still cost budget: 5 UNAUTHENTICATED, then RESOURCE_EXHAUSTED
    for failing callers from that address only (another source is untouched)."""
    codes = [_code(harness.stub.ValidateTunnelPeer, REQ, metadata=()) for _ in range(6)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert harness.servicer.limiter.allowed("127.0.0.2")
    assert not harness.servicer.limiter.allowed("127.0.0.1")
