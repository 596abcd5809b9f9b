"""The grpcio thread bridge against a real in-process server (loopback TCP)."""

from __future__ import annotations

import grpc
import pytest
import pytest_twisted
from twisted.internet import reactor

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.mgmt._grpcbridge import GrpcBridge, map_rpc_error
from tests.mgmt import _grpcbridge_cases as cases
from tests.mgmt._grpcbridge_cases import MD
from tests.mgmt.servicer import CannedProxyService, Server
from tests.mgmt.test_client_grpc import wait_for


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_map_rpc_error_by_status_code() -> None:
    cases = {
        grpc.StatusCode.UNAVAILABLE: errors.ManagementUnavailableError,
        grpc.StatusCode.DEADLINE_EXCEEDED: errors.ManagementTimeoutError,
        grpc.StatusCode.UNAUTHENTICATED: errors.ManagementUnauthenticatedError,
        grpc.StatusCode.PERMISSION_DENIED: errors.ManagementPermissionDeniedError,
        grpc.StatusCode.UNIMPLEMENTED: errors.ManagementUnimplementedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ManagementRateLimitedError,
        grpc.StatusCode.CANCELLED: errors.ManagementCancelledError,
    }
    for code, cls in cases.items():
        err = map_rpc_error(FakeRpcError(code, "why"))
        assert type(err) is cls
        assert err.code == code.name and err.details == "why"
    other = map_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "db down"))
    assert type(other) is errors.ManagementError
    assert str(other) == "INTERNAL: db down"
    assert isinstance(map_rpc_error(KeyError("x")), errors.ManagementError)


class Env:
    def __init__(self) -> None:
        self.servicer = CannedProxyService()
        self.server = Server(self.servicer)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = pb_grpc.ProxyServiceStub(self.channel)
        self.bridge = GrpcBridge(reactor)

    def close(self) -> None:
        self.bridge.stop()
        self.channel.close()
        self.server.stop()

    def request(self) -> pb.GetMappingUpdateRequest:
        return pb.GetMappingUpdateRequest(proxy_id="p", address="c")

    def gmu(self, on_message, metadata=MD):
        return self.bridge.server_stream(
            self.stub.GetMappingUpdate, self.request(), on_message, metadata=metadata
        )


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


@pytest_twisted.ensureDeferred
async def test_server_stream_one_message_in_flight_on_the_reactor_thread(env: Env) -> None:
    call = await cases.one_message_in_flight(env)
    call.cancel()
    with pytest.raises(errors.ManagementCancelledError):
        await call.done
    await wait_for(lambda: not call._thread.is_alive(), "reader thread exit")


@pytest_twisted.ensureDeferred
async def test_handler_failure_cancels_the_stream(env: Env) -> None:
    await cases.handler_failure_cancels_the_stream(env)


test_server_error_on_stream_is_mapped = cases.test_server_error_on_stream_is_mapped
test_bidi_requests_flow_from_the_reactor_and_clean_close = (
    cases.test_bidi_requests_flow_from_the_reactor_and_clean_close)


@pytest_twisted.ensureDeferred
async def test_stop_cancels_streams_and_joins_threads(env: Env) -> None:
    env.servicer.snapshot = [[]]
    call = env.gmu(lambda m: None)
    await wait_for(lambda: call.messages_received == 1, "snapshot")
    env.bridge.stop()
    assert not call._thread.is_alive()
    with pytest.raises(errors.ManagementCancelledError):
        await call.done
    assert env.bridge.live_calls == 0
    late = env.gmu(lambda m: None)
    with pytest.raises(errors.ManagementUnavailableError):
        await late.done
    with pytest.raises(errors.ManagementUnavailableError):
        await env.bridge.unary(
            env.stub.ValidateSession, pb.ValidateSessionRequest(), timeout=1, metadata=MD
        )


@pytest_twisted.ensureDeferred
async def test_unary_inflight_bound_fails_fast_and_frees_on_completion(env: Env) -> None:
    bridge = GrpcBridge(reactor, max_inflight=1)
    env_close = env.close

    def close() -> None:
        bridge.stop()
        env_close()

    env.close = close
    blocked = bridge.unary(
        env.stub.ValidateTunnelPeer,
        pb.ValidateTunnelPeerRequest(tunnel_ip="100.64.0.10", domain="block.example"),
        timeout=10,
        metadata=MD,
    )
    with pytest.raises(errors.ManagementUnavailableError):
        await bridge.unary(
            env.stub.ValidateSession, pb.ValidateSessionRequest(), timeout=10, metadata=MD
        )
    assert bridge.refused == 1
    env.servicer.release_blocked.set()
    assert (await blocked).denied_reason == "released"
    resp = await bridge.unary(
        env.stub.ValidateSession,
        pb.ValidateSessionRequest(domain="d", session_token="good"),
        timeout=10,
        metadata=MD,
    )
    assert resp.valid
