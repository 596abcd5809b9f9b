"""The bridge's unary calls on a grpc.aio channel (issue 20: the per-call
cost): one hop to the loop, the call's own awaitable stepped there without a
task or concurrent future of ours, one hop back; results, status errors,
deadlines, cancellation (before and after the call started) and stop, against
a real in-process server."""

from __future__ import annotations

import asyncio
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt import _grpcbridge
from nbgateway.mgmt._grpcbridge import GrpcBridge, aio_loop
from tests.mgmt.test_client_grpc import wait_for
from tests.mgmt.test_grpcbridge_aio import MD, Env


@pytest.fixture
def env():
    e = Env()  # retries on: the ProxyService client's channel
    yield e
    e.close()


def _vtp(ip: str = "100.64.0.10", domain: str = "app.example") -> pb.ValidateTunnelPeerRequest:
    return pb.ValidateTunnelPeerRequest(tunnel_ip=ip, domain=domain)


def _no_tasks_or_futures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the unary path fail loudly if it creates a task on the loop or a
    concurrent future (run_coroutine_threadsafe); return what tried."""
    tried: list[str] = []
    loop = aio_loop().loop
    create_task = loop.create_task

    def no_task(coro, **kw):
        frame = coro.cr_frame if hasattr(coro, "cr_frame") else None
        code = frame.f_code if frame is not None else None
        # grpc.aio's own invocation task is expected; a task of the bridge is not
        if code is not None and code.co_filename == _grpcbridge.__file__:
            tried.append(code.co_name)
        return create_task(coro, **kw)

    monkeypatch.setattr(loop, "create_task", no_task)
    monkeypatch.setattr(_grpcbridge.AioLoop, "submit",
                        lambda self, coro: tried.append("submit") or coro.close())
    return tried


@pytest_twisted.ensureDeferred
async def test_unary_result_errors_and_no_bridge_task(env: Env, monkeypatch) -> None:
    tried = _no_tasks_or_futures(monkeypatch)
    on: list[str] = []
    resp = await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(), timeout=5, metadata=MD)
    on.append(threading.current_thread().name)
    assert (resp.valid, resp.user_id, list(resp.peer_group_ids)) == (True, "u1", ["g1", "g2"])
    resp = await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp("100.64.0.99"),
                                  timeout=5, metadata=MD)
    assert (resp.valid, resp.denied_reason) == (False, "peer_not_found")
    with pytest.raises(errors.ManagementPermissionDeniedError) as cm:
        await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(domain="deny.example"),
                               timeout=5, metadata=MD)
    assert "account-scoped" in str(cm.value)
    with pytest.raises(errors.ManagementUnauthenticatedError):
        await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(), timeout=5,
                               metadata=(("authorization", "Bearer wrong"),))
    with pytest.raises(errors.ManagementTimeoutError):
        await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(domain="block.example"),
                               timeout=0.2, metadata=MD)
    env.servicer.release_blocked.set()
    assert on == [threading.current_thread().name]  # the Deferred fires on the reactor
    assert tried == []
    assert env.bridge.live_calls == 0
    # the token reached the server on every call
    assert env.servicer.authorization.count(f"Bearer {env_token()}") >= 4


def env_token() -> str:
    from tests.mgmt.servicer import TOKEN

    return TOKEN


@pytest_twisted.ensureDeferred
async def test_many_concurrent_calls_each_answered_once(env: Env) -> None:
    ips = [f"100.64.1.{i}" for i in range(2, 60)] + ["100.64.0.10"]
    ds = [env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(ip), timeout=5, metadata=MD)
          for ip in ips]
    fired: list[object] = []
    for d in ds:
        d.addBoth(lambda r: fired.append(r) or r)
    results = [await d for d in ds]
    assert [r.valid for r in results] == [False] * 58 + [True]
    assert len(fired) == len(ips)
    assert env.bridge.live_calls == 0


@pytest_twisted.ensureDeferred
async def test_cancel_after_start_cancels_at_the_server(env: Env) -> None:
    d = env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(domain="block.example"),
                         timeout=10, metadata=MD)
    await wait_for(env.servicer.blocked_entered.is_set, "server handler entered")
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await wait_for(env.servicer.blocked_cancelled.is_set, "server saw the cancellation")
    await wait_for(lambda: env.bridge.live_calls == 0, "call forgotten")


@pytest_twisted.ensureDeferred
async def test_cancel_before_the_loop_starts_it_never_reaches_the_server(env: Env) -> None:
    # hold the loop so the call cannot start before it is cancelled
    gate = threading.Event()
    aio_loop().call(gate.wait, 5)
    d = env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp("100.64.0.77"), timeout=10,
                         metadata=MD)
    d.cancel()
    gate.set()
    with pytest.raises(CancelledError):
        await d
    await wait_for(lambda: env.bridge.live_calls == 0, "call forgotten")
    # a later call goes through: the server never saw the cancelled one
    await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(), timeout=5, metadata=MD)
    assert [r.tunnel_ip for r in env.servicer.requests] == ["100.64.0.10"]


@pytest_twisted.ensureDeferred
async def test_stop_fails_in_flight_calls_once_with_cancelled(env: Env) -> None:
    d = env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(domain="block.example"),
                         timeout=10, metadata=MD)
    await wait_for(env.servicer.blocked_entered.is_set, "server handler entered")
    fired: list[object] = []
    d.addBoth(lambda r: fired.append(r) or r)
    env.bridge.stop()
    with pytest.raises(errors.ManagementCancelledError):
        await d
    await wait_for(env.servicer.blocked_cancelled.is_set, "server saw the cancellation")
    assert len(fired) == 1
    with pytest.raises(errors.ManagementUnavailableError):
        await env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(), timeout=5, metadata=MD)


@pytest_twisted.ensureDeferred
async def test_a_closed_channel_fails_the_call() -> None:
    e = Env()
    try:
        aio_loop().submit(e.channel.close()).result(5)
        with pytest.raises(errors.ManagementError):
            await e.bridge.unary(e.stub.ValidateTunnelPeer, _vtp(), timeout=5, metadata=MD)
        assert e.bridge.live_calls == 0
    finally:
        e.bridge.stop()
        e.server.stop()


def test_per_call_object_is_slotted() -> None:
    # the per-call object is slotted (one per in-flight call, up to 4,096)
    op = _grpcbridge._AioUnary(GrpcBridge(reactor))
    assert not hasattr(op, "__dict__")
    assert isinstance(op.d, Deferred)
    assert not isinstance(op, asyncio.Future)


@pytest_twisted.ensureDeferred
async def test_calls_posted_in_one_turn_share_one_loop_wakeup(env: Env, monkeypatch) -> None:
    loop = aio_loop().loop
    wakeups: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(fn, *args, **kw):
        wakeups.append(fn)
        return real(fn, *args, **kw)

    gate = threading.Event()
    real(gate.wait, 5)  # hold the loop: the reactor's posts queue up meanwhile
    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    ips = [f"100.64.2.{i}" for i in range(2, 12)]
    ds = [env.bridge.unary(env.stub.ValidateTunnelPeer, _vtp(ip), timeout=5, metadata=MD)
          for ip in ips]
    assert len(wakeups) == 1  # ten calls, one wake-up of the loop
    gate.set()
    results = [await d for d in ds]
    assert [r.valid for r in results] == [False] * 10
    assert sorted(r.tunnel_ip for r in env.servicer.requests) == sorted(ips)
    assert env.bridge.live_calls == 0


class FakeReactor:
    def __init__(self) -> None:
        self.queued: list[object] = []

    def callFromThread(self, fn, *args) -> None:
        self.queued.append((fn, args))

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for fn, args in queued:
            fn(*args)


class FakeOp:
    def __init__(self, seen: list, fail: bool = False) -> None:
        self.seen, self.fail = seen, fail

    def _settle(self, ok: bool, value: object) -> None:
        self.seen.append((ok, value))
        if self.fail:
            raise RuntimeError("a broken callback chain")


def test_outcomes_before_the_reactor_drains_share_one_hop() -> None:
    fake = FakeReactor()
    box = _grpcbridge._Inbox(fake)
    seen: list = []
    box.put(FakeOp(seen), True, 1)
    box.put(FakeOp(seen, fail=True), False, ValueError("x"))
    box.put(FakeOp(seen), True, 3)
    assert len(fake.queued) == 1  # three outcomes, one callFromThread
    fake.run()
    # in order, each once; a failing settle does not strand the ones after it
    assert [ok for ok, _ in seen] == [True, False, True]
    assert seen[2] == (True, 3)
    box.put(FakeOp(seen), True, 4)  # after a drain: a new hop
    assert len(fake.queued) == 1
    fake.run()
    assert seen[-1] == (True, 4) and not box.items and not box.pending
