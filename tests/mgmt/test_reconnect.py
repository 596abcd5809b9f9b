"""Backoff and reconnect loop, driven by task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from nbgateway.mgmt.reconnect import (
    INITIAL_INTERVAL,
    MAX_INTERVAL,
    MULTIPLIER,
    AttemptResult,
    Backoff,
    Reconnector,
)


def test_spec_constants() -> None:
    assert (INITIAL_INTERVAL, MULTIPLIER, MAX_INTERVAL) == (0.8, 1.7, 10.0)


def test_backoff_grows_by_multiplier_up_to_max_interval() -> None:
    b = Backoff(random=lambda: 0.5)  # midpoint of the jitter window = the interval
    delays = [b.next_delay() for _ in range(8)]
    assert delays[0] == pytest.approx(0.8)
    assert delays[1] == pytest.approx(0.8 * 1.7)
    assert delays[2] == pytest.approx(0.8 * 1.7 * 1.7)
    assert delays[-1] == pytest.approx(10.0)
    assert max(delays) == pytest.approx(10.0)


def test_backoff_jitter_spans_zero_to_twice_the_interval() -> None:
    assert Backoff(random=lambda: 0.0).next_delay() == 0.0
    assert Backoff(random=lambda: 0.999999).next_delay() == pytest.approx(1.6, rel=1e-5)


def test_backoff_max_delay_caps_after_the_jitter() -> None:
    b = Backoff(initial=60.0, max_interval=60.0, randomization=0.2, random=lambda: 1.0,
                max_delay=60.0)
    assert b.next_delay() == 60.0  # 72 without the cap
    assert Backoff(initial=60.0, max_interval=60.0, randomization=0.2,
                   random=lambda: 1.0).next_delay() == pytest.approx(72.0)


def test_backoff_reset_returns_to_initial() -> None:
    b = Backoff(random=lambda: 0.5)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.next_delay() == pytest.approx(0.8)


class Attempts:
    def __init__(self) -> None:
        self.pending: list[Deferred[object]] = []

    def __call__(self) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.pending.append(d)
        return d


class BoomError(Exception):
    def __init__(self, connected: bool) -> None:
        super().__init__("stream broke")
        self.connected = connected


def test_reconnector_retries_with_growing_delay_when_never_connected() -> None:
    clock, attempts = Clock(), Attempts()
    r = Reconnector(clock, attempts, Backoff(random=lambda: 0.5))
    r.start()
    assert len(attempts.pending) == 1
    attempts.pending[-1].errback(BoomError(connected=False))
    assert r.last_delay == pytest.approx(0.8)
    clock.advance(0.79)
    assert len(attempts.pending) == 1
    clock.advance(0.02)
    assert len(attempts.pending) == 2
    attempts.pending[-1].errback(BoomError(connected=False))
    assert r.last_delay == pytest.approx(0.8 * 1.7)


def test_reconnector_resets_backoff_after_a_connected_attempt() -> None:
    clock, attempts = Clock(), Attempts()
    r = Reconnector(clock, attempts, Backoff(random=lambda: 0.5))
    r.start()
    for _ in range(3):
        attempts.pending[-1].errback(BoomError(connected=False))
        clock.advance(r.last_delay)
    assert r.last_delay > 2.0
    attempts.pending[-1].errback(BoomError(connected=True))
    assert r.last_delay == pytest.approx(0.8)
    clock.advance(0.8)
    attempts.pending[-1].callback(AttemptResult(connected=True))  # clean end also retries
    assert r.last_delay == pytest.approx(0.8)
    assert r.attempts == 5


def test_reconnector_stop_cancels_running_attempt_and_pending_retry() -> None:
    clock, attempts = Clock(), Attempts()
    r = Reconnector(clock, attempts, Backoff(random=lambda: 0.5))
    r.start()
    first = attempts.pending[0]
    r.stop()
    assert first.called  # cancelled
    first.addErrback(lambda f: None)
    assert clock.getDelayedCalls() == []

    r2 = Reconnector(clock, attempts, Backoff(random=lambda: 0.5))
    r2.start()
    attempts.pending[-1].errback(BoomError(connected=False))
    assert len(clock.getDelayedCalls()) == 1
    r2.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert r2.attempts == 1


def test_reconnector_survives_attempt_raising_synchronously() -> None:
    clock = Clock()
    calls = []

    def attempt() -> Deferred[object]:
        calls.append(1)
        raise RuntimeError("dial failed")

    r = Reconnector(clock, attempt, Backoff(random=lambda: 0.5))
    r.start()
    clock.advance(0.8)
    assert len(calls) == 2
    r.stop()
