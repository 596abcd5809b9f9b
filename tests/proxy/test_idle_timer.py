"""The fast path's idle timeout runs from the end of the last response.

``fast_done`` records when a response ended instead of resetting twisted's
idle timer per response; a timer that fires before the idle time is over
waits the rest (and the wait after that is the full timeout again).  The
closing times are those of a reset per response."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.address import IPv4Address

from tests.proxy.test_fast_values import _channel, _Recording

PEER = IPv4Address("TCP", "100.64.0.10", 1)
HEAD = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def _serve(res: _Recording, channel, clock: task.Clock, hold_for: float) -> None:
    channel.dataReceived(HEAD)
    clock.advance(hold_for)
    req = res.held.pop()
    req.write(b"ok")
    req.finish()


def test_idle_time_runs_from_the_last_response_end():
    clock = task.Clock()
    res = _Recording(hold=True)
    channel, client = _channel(res, PEER, clock, timeout=10.0)
    for _ in range(4):  # responses end at 3, 7, 11 and 15 (two timer periods)
        clock.advance(1)
        _serve(res, channel, clock, 3)
    assert client.value().count(b"HTTP/1.1 200 OK\r\n") == 4
    clock.advance(9.9)  # 24.9: 9.9 s after the last response
    assert not client.disconnecting
    clock.advance(0.2)  # 25.1
    assert client.disconnecting


def test_a_timer_that_fires_early_waits_the_rest_then_full_periods():
    clock = task.Clock()
    res = _Recording(hold=True)
    channel, client = _channel(res, PEER, clock, timeout=10.0)
    _serve(res, channel, clock, 4)  # armed at 0, the response ends at 4
    clock.advance(6.5)  # 10.5: the timer fired at 10 and waits until 14
    assert not client.disconnecting
    assert channel.timeOut == 10.0  # the configured timeout stays
    _serve(res, channel, clock, 1)  # a request at 10.5, its response ends at 11.5
    clock.advance(9.9)  # 21.4: the timer fired at 14, 9.9 s after the last response
    assert not client.disconnecting
    clock.advance(0.2)  # 21.6
    assert client.disconnecting


def test_a_partial_head_and_a_request_in_flight_keep_their_rules():
    clock = task.Clock()
    res = _Recording(hold=True)
    channel, client = _channel(res, PEER, clock, timeout=10.0)
    channel.dataReceived(HEAD)
    clock.advance(25)  # a request in flight is never idle
    assert not client.disconnecting
    req = res.held.pop()
    req.write(b"ok")
    req.finish()  # ends at 25
    clock.advance(5)
    channel.dataReceived(b"GET /b HTT")  # a partial head at 30 restarts the idle time
    clock.advance(9.9)
    assert not client.disconnecting
    clock.advance(0.2)
    assert client.disconnecting


def test_no_idle_timeout_means_none():
    clock = task.Clock()
    res = _Recording(hold=True)
    channel, client = _channel(res, PEER, clock, timeout=None)
    _serve(res, channel, clock, 1)
    clock.advance(10_000)
    assert not client.disconnecting and not clock.getDelayedCalls()
