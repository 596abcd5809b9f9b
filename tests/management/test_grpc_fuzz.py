"""Arbitrary request bytes never crash the server or produce INTERNAL/UNKNOWN, and a
rejected request stores nothing (hypothesis, modest example count, real gRPC)."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import AccessLogQuery
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, md

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
}
METHODS = {
    "ValidateTunnelPeer": pb.ValidateTunnelPeerResponse,
    "ValidateSession": pb.ValidateSessionResponse,
    "SendStatusUpdate": pb.SendStatusUpdateResponse,
    "SendAccessLog": pb.SendAccessLogResponse,
    "CreateProxyPeer": pb.CreateProxyPeerResponse,
    "Authenticate": pb.AuthenticateResponse,
}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(sorted(METHODS)), body=st.binary(max_size=200))
def test_random_request_bytes(harness: Harness, fx: Fixture, method: str, body: bytes) -> None:
    call = harness.channel.unary_unary(
        f"/management.ProxyService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=METHODS[method].FromString,
    )
    peers_before = len(fx.store.peers.list(ACCOUNT))
    logs_before = fx.store.access_logs.list(ACCOUNT, AccessLogQuery()).total_records
    status_before = fx.store.services.get(ACCOUNT, "svc-1").meta
    try:
        call(body, metadata=md(fx.token), timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code in ALLOWED, (method, body, code)
    if code != grpc.StatusCode.OK:  # a rejected request stores nothing
        assert len(fx.store.peers.list(ACCOUNT)) == peers_before
        assert fx.store.access_logs.list(ACCOUNT, AccessLogQuery()).total_records == logs_before
        assert fx.store.services.get(ACCOUNT, "svc-1").meta == status_before
