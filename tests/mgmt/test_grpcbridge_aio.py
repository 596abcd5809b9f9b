"""The bridge's asyncio mode (grpc.aio channels, what the gateway uses) against
a real in-process server: back-pressure, errors, bidi, cancellation, and the
slim per-stream state of issue 18 (no thread, lock, event or concurrent
future per stream; a credit future only while a message is out)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.mgmt._grpcbridge import GrpcBridge, StreamCall, aio_loop
from nbgateway.mgmt.session import ManagementTarget, make_channel
from tests.mgmt import _grpcbridge_cases as cases
from tests.mgmt._grpcbridge_cases import MD
from tests.mgmt.servicer import CannedProxyService, Server, mapping
from tests.mgmt.test_client_grpc import wait_for


class Env:
    def __init__(self, **channel: object) -> None:
        self.servicer = CannedProxyService()
        self.server = Server(self.servicer)
        target = ManagementTarget(f"http://127.0.0.1:{self.server.port}")
        self.channel = aio_loop().run(lambda: make_channel(target, aio=True, **channel))
        self.stub = pb_grpc.ProxyServiceStub(self.channel)
        self.bridge = GrpcBridge(reactor)

    def close(self) -> None:
        self.bridge.stop()
        aio_loop().submit(self.channel.close()).result(5)
        self.server.stop()

    def gmu(self, on_message, metadata=MD) -> StreamCall:
        return self.bridge.server_stream(
            self.stub.GetMappingUpdate, pb.GetMappingUpdateRequest(proxy_id="p", address="c"),
            on_message, metadata=metadata)


@pytest.fixture
def env():
    e = Env(retries=False)
    yield e
    e.close()


@pytest_twisted.ensureDeferred
async def test_one_message_in_flight_and_no_per_stream_thread_state(env: Env) -> None:
    def started(call: StreamCall) -> None:
        assert not hasattr(call, "__dict__")  # slots
        assert call._thread is None and call._credit is None

    def held_back(call: StreamCall) -> None:
        assert call._aio_waiter is not None  # waiting for this message's credit

    call = await cases.one_message_in_flight(env, started=started, held_back=held_back)
    # idle (the server holds the stream open): no credit future kept
    await wait_for(lambda: call._aio_waiter is None, "credit returned")
    assert call._task is not None and not call._task.done()
    call.cancel()
    with pytest.raises(errors.ManagementCancelledError):
        await call.done
    await wait_for(lambda: call._task is None, "task ended")
    assert env.bridge.live_calls == 0


@pytest_twisted.ensureDeferred
async def test_handler_failure_cancels_the_stream(env: Env) -> None:
    call = await cases.handler_failure_cancels_the_stream(env)
    await wait_for(lambda: call._task is None, "task ended")


test_server_error_on_stream_is_mapped = cases.test_server_error_on_stream_is_mapped
test_bidi_requests_flow_from_the_reactor_and_clean_close = (
    cases.test_bidi_requests_flow_from_the_reactor_and_clean_close)


@pytest_twisted.ensureDeferred
async def test_stop_cancels_a_stream_waiting_for_credit(env: Env) -> None:
    env.servicer.snapshot = [[mapping("s1", "a.example")], [mapping("s2", "b.example")]]
    held: list[Deferred[None]] = []

    def on_message(msg: object) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        held.append(d)
        return d

    call = env.gmu(on_message)
    await wait_for(lambda: len(held) == 1, "first message")
    env.bridge.stop()  # the task is parked on the credit future: it must end
    with pytest.raises(errors.ManagementCancelledError):
        await call.done
    await wait_for(lambda: call._task is None, "task ended")
    held[0].callback(None)  # a late credit is harmless
    assert env.bridge.live_calls == 0


@pytest_twisted.ensureDeferred
async def test_receive_limit_holds_with_retries_off() -> None:
    """``retries=False`` (grpc.enable_retries 0) keeps the receive limit: an
    oversize message fails the stream (unlike grpc.minimal_stack)."""
    e = Env(retries=False, max_receive_bytes=64)
    try:
        e.servicer.snapshot = [[mapping(f"s{i}", f"{i}.example") for i in range(5)]]
        call = e.gmu(lambda m: None)
        with pytest.raises(errors.ManagementRateLimitedError) as info:
            await call.done
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert call.messages_received == 0
    finally:
        e.close()
