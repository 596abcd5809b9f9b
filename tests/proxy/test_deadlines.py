"""The shared request deadlines (nbgateway.dial.deadlines) on task.Clock:
exact firing, order, cancellation, several delays, re-entrancy, bounded
memory, one timer for many requests, the lingering timer (no timer call per
request when requests come one at a time, nothing left in the reactor once it
has fired or after stop_lingering());
and through the reverse proxy: 504 at request_timeout for requests in flight
together, on one timer."""

from __future__ import annotations

import random

from twisted.internet import defer, task

from nbgateway.dial.deadlines import COMPACT_AT, Deadlines
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import PathRouter, parse_target
from nbgateway.routes.service import ProxyService, TargetOptions
from tests.proxy.test_reverse_streaming import _FakeRequest


def test_fires_at_the_exact_time_in_order():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[tuple[str, float]] = []
    dl.add(1.0, lambda: fired.append(("a", clock.seconds())))
    clock.advance(0.25)
    dl.add(1.0, lambda: fired.append(("b", clock.seconds())))
    clock.advance(0.74)
    assert fired == []
    clock.advance(0.01)
    assert fired == [("a", 1.0)]
    clock.advance(0.2)
    assert fired == [("a", 1.0)]
    clock.advance(0.05)
    assert fired == [("a", 1.0), ("b", 1.25)]
    assert len(dl) == 0 and clock.getDelayedCalls() == []


def test_many_in_flight_share_one_timer_and_cancelled_ones_never_fire():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[int] = []
    handles = []
    for i in range(1000):
        handles.append(dl.add(30.0, lambda i=i: fired.append(i)))
        clock.advance(0.001)
        if i % 3 != 0:
            handles[i].cancel()
    assert dl.armed == 1 and len(clock.getDelayedCalls()) == 1
    assert len(dl) == len([i for i in range(1000) if i % 3 == 0])
    clock.advance(31)
    assert fired == [i for i in range(1000) if i % 3 == 0]
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_several_delays_fire_in_deadline_order():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[str] = []
    dl.add(5.0, lambda: fired.append("5"))
    dl.add(1.0, lambda: fired.append("1"))  # earlier than the armed timer: re-armed
    dl.add(3.0, lambda: fired.append("3"))
    clock.advance(1.0)
    assert fired == ["1"]
    clock.advance(2.0)
    assert fired == ["1", "3"]
    clock.advance(2.0)
    assert fired == ["1", "3", "5"]
    # all due in one firing: still in deadline order
    dl.add(2.0, lambda: fired.append("b"))
    dl.add(1.0, lambda: fired.append("a"))
    clock.advance(10)
    assert fired[-2:] == ["a", "b"]


def test_last_cancel_leaves_the_timer_lingering_until_it_fires_then_nothing():
    clock = task.Clock()
    dl = Deadlines(clock)
    a = dl.add(1.0, lambda: None)
    b = dl.add(2.0, lambda: None)
    a.cancel()
    assert len(clock.getDelayedCalls()) == 1
    b.cancel()
    b.cancel()  # twice is harmless
    assert len(dl) == 0 and not a.active() and not b.active()
    # the timer lingers (armed for a's old deadline) instead of being cancelled
    assert dl.lingering() and len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)  # it fires, finds nothing pending and stays off
    assert clock.getDelayedCalls() == [] and not dl.lingering() and len(dl) == 0


def test_one_request_at_a_time_makes_no_timer_call_per_request():
    """A request alone (one connection): its deadline is added and cancelled
    on the lingering timer, without a callLater/cancel pair each."""
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[int] = []
    for i in range(1000):  # 1000 requests of 1 ms each, one at a time: 1 s
        h = dl.add(30.0, lambda i=i: fired.append(i))
        clock.advance(0.001)
        h.cancel()
    assert dl.armed == 1 and len(clock.getDelayedCalls()) == 1
    # a request in flight when the lingering timer fires: re-armed for it,
    # and it fires at its own exact deadline
    clock.advance(28.0)  # t = 29.0; the lingering timer is armed for 30.0
    last = dl.add(30.0, lambda: fired.append(-1))  # due at 59.0
    assert dl.armed == 1
    clock.advance(1.0)  # the lingering timer fires: nothing due, re-armed for 59.0
    assert fired == [] and dl.armed == 2 and len(clock.getDelayedCalls()) == 1
    clock.advance(28.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [-1] and not last.active()
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_an_earlier_deadline_than_the_lingering_timer_rearms_it():
    clock = task.Clock()
    dl = Deadlines(clock)
    dl.add(30.0, lambda: None).cancel()  # lingers, armed for 30.0
    fired: list[float] = []
    dl.add(2.0, lambda: fired.append(clock.seconds()))
    assert len(clock.getDelayedCalls()) == 1  # the lingering timer was replaced
    clock.advance(2.0)
    assert fired == [2.0]
    assert clock.getDelayedCalls() == []  # nothing pending: no timer either


def test_stop_lingering_cancels_the_idle_timer_and_keeps_pending_deadlines():
    clock = task.Clock()
    dl = Deadlines(clock)
    dl.add(5.0, lambda: None).cancel()
    assert dl.lingering()
    dl.stop_lingering()
    assert clock.getDelayedCalls() == [] and not dl.lingering()
    # pending deadlines still fire at their time; the last one gone, no timer
    fired: list[float] = []
    dl.add(1.0, lambda: fired.append(clock.seconds()))
    other = dl.add(2.0, lambda: fired.append(-1.0))
    dl.stop_lingering()  # with a deadline pending: the timer stays
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    assert fired == [1.0]
    other.cancel()
    assert clock.getDelayedCalls() == [] and len(dl) == 0
    assert Deadlines(clock, linger=False).linger is False


def test_functions_may_add_and_cancel_deadlines_while_firing():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[str] = []
    later = dl.add(1.0, lambda: fired.append("cancelled-by-first"))  # same instant
    clock.advance(0.0)

    def first() -> None:
        fired.append("first")
        later.cancel()
        dl.add(0.5, lambda: fired.append("added"))

    dl2 = dl.add(0.0, first)
    assert dl2.active()
    clock.advance(0.0)
    assert fired == ["first"]
    clock.advance(0.5)
    assert fired == ["first", "added"]
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_a_failing_function_does_not_stop_the_others():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[int] = []
    dl.add(1.0, lambda: 1 / 0)
    dl.add(1.0, lambda: fired.append(2))
    clock.advance(1.0)
    assert fired == [2]
    assert len(dl) == 0


def test_memory_is_bounded_by_live_deadlines_when_a_slow_one_holds_the_head():
    clock = task.Clock()
    dl = Deadlines(clock)
    slow = dl.add(30.0, lambda: None)  # holds the FIFO's head
    for _ in range(10 * COMPACT_AT):
        dl.add(30.0, lambda: None).cancel()
    fifo = slow.fifo
    assert fifo is not None and len(fifo.entries) <= 2 * COMPACT_AT + 2
    assert len(dl) == 1


def test_the_last_cancel_empties_every_fifo_with_one_delay_or_several():
    """When nothing is left pending every FIFO is emptied (its dead entries
    too): with one delay in use (the common case, cleared without a loop)
    and with several."""
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[str] = []
    first = dl.add(30.0, lambda: fired.append("first"))
    behind = dl.add(30.0, lambda: fired.append("behind"))
    last = dl.add(30.0, lambda: fired.append("last"))
    behind.cancel()  # dead behind a live head
    first.cancel()
    fifo = last.fifo
    assert fifo is not None and list(fifo.entries) == [last]
    last.cancel()
    assert len(fifo.entries) == 0 and fifo.dead == 0 and len(dl) == 0
    other = dl.add(5.0, lambda: fired.append("other"))
    again = dl.add(30.0, lambda: fired.append("again"))
    dead = dl.add(5.0, lambda: fired.append("dead"))
    dead.cancel()
    other.cancel()
    again.cancel()
    assert all(len(f.entries) == 0 and f.dead == 0 for f in dl._fifos.values())
    assert len(dl) == 0
    kept = dl.add(30.0, lambda: fired.append("kept"))
    clock.advance(31)
    assert fired == ["kept"] and not kept.active()


def test_random_schedule_matches_a_reference():
    rnd = random.Random(7)
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list[tuple[int, float]] = []
    expected: dict[int, float] = {}
    handles = {}
    for i in range(3000):
        delay = rnd.choice([0.5, 1.0, 2.5])
        handles[i] = dl.add(delay, lambda i=i: fired.append((i, clock.seconds())))
        expected[i] = clock.seconds() + delay
        if rnd.random() < 0.6:
            victim = rnd.randrange(i + 1)
            if handles[victim].active():
                handles[victim].cancel()
                expected.pop(victim, None)
        clock.advance(rnd.choice([0.0, 0.001, 0.01, 0.1]))
    clock.advance(5)
    assert sorted(i for i, _ in fired) == sorted(expected)
    # each at its exact deadline (task.Clock fires at the advance's end at worst)
    for i, at in fired:
        assert at >= expected[i] - 1e-9
    assert clock.getDelayedCalls() == [] and len(dl) == 0


class _NeverAgent:
    def __init__(self) -> None:
        self.cancelled = 0

    def request(self, *a, **kw):
        def cancel(d: defer.Deferred) -> None:
            self.cancelled += 1
        return defer.Deferred(cancel)


class _Pools:
    def __init__(self) -> None:
        self.agent_obj = _NeverAgent()

    def agent(self, *a, **kw):
        return self.agent_obj


def test_proxy_requests_in_flight_get_504_at_their_timeout_on_one_timer():
    clock = task.Clock()
    pools = _Pools()
    proxy = ReverseProxy(clock, pools, lambda account, direct: object(), clock=clock)
    route = parse_target("/", "http://100.64.0.9:8080/", TargetOptions(request_timeout=2.0))
    service = ProxyService("acc", "u.example", PathRouter([route]))
    requests = []
    for _ in range(20):
        request = _FakeRequest(None)
        proxy.render(request, RequestContext(service=service))
        requests.append(request)
        clock.advance(0.05)
    assert proxy.deadlines.armed == 1 and len(proxy.deadlines) == 20
    clock.advance(2.0 - 20 * 0.05)  # the first one's deadline
    assert requests[0].code == 504 and requests[1].code is None
    clock.advance(0.05 * 19)
    assert [r.code for r in requests] == [504] * 20
    assert all(r.finished for r in requests)
    assert pools.agent_obj.cancelled == 20
    assert clock.getDelayedCalls() == []


def test_the_proxy_shares_the_pools_timer_and_closing_the_pools_leaves_none():
    from nbgateway.dial.pool import UpstreamPools

    clock = task.Clock()
    pools = UpstreamPools(clock)
    proxy = ReverseProxy(clock, pools, lambda account, direct: object(), clock=clock)
    assert proxy.deadlines is pools.deadlines
    assert pools.pool("acc", False, False).idle_deadlines is pools.deadlines
    proxy.deadlines.add(30.0, lambda: None).cancel()
    assert proxy.deadlines.lingering() and len(clock.getDelayedCalls()) == 1
    pools.close_account("acc")  # the last pool: the lingering timer goes
    assert clock.getDelayedCalls() == []
    proxy.deadlines.add(30.0, lambda: None).cancel()
    pools.close()  # shutdown: no lingering from now on
    assert clock.getDelayedCalls() == []
    proxy.deadlines.add(30.0, lambda: None).cancel()
    assert clock.getDelayedCalls() == []
    # a proxy on another clock than its pools keeps its own deadlines
    other = ReverseProxy(clock, UpstreamPools(task.Clock()), lambda a, d: object(), clock=clock)
    assert other.deadlines is not pools.deadlines and other.deadlines.clock is clock
