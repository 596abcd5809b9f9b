"""ManagedChannel: the channel / bridge / reconnect / stream lifecycle both management clients use.

Driven with task.Clock and fake channel, stub and stream objects; the real
grpcio paths are covered by test_client_grpc.py and test_peerclient.py, which
run both clients over it.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from nbgateway import errors
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.mgmt.session import ManagedChannel, ManagementTarget


class FakeChannel:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeStub:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel


class FakeStream:
    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1
        if not self.done.called:
            self.done.errback(errors.ManagementCancelledError("cancelled"))


def _session(clock: Clock, channel: FakeChannel, **kw) -> ManagedChannel:
    return ManagedChannel(
        clock,
        ManagementTarget("http://127.0.0.1:1"),
        FakeStub,
        name="test",
        channel_factory=lambda: channel,
        backoff=Backoff(random=lambda: 0.5),
        **kw,
    )


def _failed(d: Deferred) -> Failure:
    out: list[Failure] = []
    d.addErrback(out.append)
    assert len(out) == 1
    return out[0]


def test_nothing_is_live_before_open_and_unary_fails_closed() -> None:
    channel = FakeChannel()
    s = _session(Clock(), channel)
    assert (s.channel, s.stub, s.bridge, s.is_open) == (None, None, None, False)
    f = _failed(s.unary("Anything", object(), timeout=1.0))
    assert f.check(errors.ManagementUnavailableError)


def test_open_builds_stub_on_channel_and_close_closes_an_owned_channel_once() -> None:
    channel = FakeChannel()
    s = _session(Clock(), channel)
    s.open()
    s.open()  # idempotent
    assert s.is_open and s.stub.channel is channel
    s.close()
    s.close()
    assert channel.closed == 1
    assert (s.channel, s.stub, s.bridge) == (None, None, None)


def test_a_channel_the_caller_owns_is_not_closed() -> None:
    channel = FakeChannel()
    s = _session(Clock(), channel, owns_channel=False)
    s.open()
    s.close()
    assert channel.closed == 0


def test_supervise_retries_after_the_backoff_delay_and_close_cancels_the_retry() -> None:
    clock = Clock()
    s = _session(clock, FakeChannel())
    s.open()
    attempts: list[Deferred[object]] = []

    def attempt() -> Deferred[object]:
        d: Deferred[object] = Deferred()
        attempts.append(d)
        return d

    s.supervise(attempt)
    assert len(attempts) == 1
    with pytest.raises(RuntimeError):
        s.supervise(attempt)
    attempts[0].errback(errors.ManagementUnavailableError("down"))
    clock.advance(0.79)
    assert len(attempts) == 1
    clock.advance(0.02)  # Backoff(random=0.5) -> first delay 0.8 s
    assert len(attempts) == 2
    attempts[1].errback(errors.ManagementUnavailableError("down"))
    s.close()
    clock.advance(60)
    assert len(attempts) == 2
    assert clock.getDelayedCalls() == []


def test_close_cancels_the_running_attempt() -> None:
    s = _session(Clock(), FakeChannel())
    s.open()
    cancelled: list[Deferred[object]] = []
    running: Deferred[object] = Deferred(cancelled.append)
    s.supervise(lambda: running)
    s.close()
    assert cancelled == [running]
    assert running.called


def test_watch_tracks_the_current_stream_and_ends_through_the_callback() -> None:
    s = _session(Clock(), FakeChannel())
    stream = FakeStream()
    seen: list[object] = []

    def ended(result: object) -> Failure:
        seen.append(result)
        return Failure(errors.ManagementStreamClosedError("closed by server"))

    d = s.watch(stream, ended)  # type: ignore[arg-type]
    assert s.stream is stream
    stream.done.callback(None)
    assert seen == [None]
    assert s.stream is None
    assert _failed(d).check(errors.ManagementStreamClosedError)


def test_cancelling_the_watch_cancels_the_stream() -> None:
    s = _session(Clock(), FakeChannel())
    stream = FakeStream()
    d = s.watch(stream, lambda r: r if isinstance(r, Failure) else Failure(ValueError()))  # type: ignore[arg-type]
    d.cancel()
    assert stream.cancelled == 1
    # the stream's own cancellation outcome is what the watch ends with
    assert _failed(d).check(errors.ManagementCancelledError)
    assert s.stream is None


def test_connected_changes_reach_the_callback_once_and_its_errors_stay_inside() -> None:
    calls: list[bool] = []

    def on_state(value: bool) -> None:
        calls.append(value)
        raise RuntimeError("health sink broke")

    s = _session(Clock(), FakeChannel(), on_state=on_state)
    s.set_connected(True)
    s.set_connected(True)
    s.open()
    s.close()  # drops to False
    assert calls == [True, False]
    assert s.connected is False
