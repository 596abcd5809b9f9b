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


# -- the owner protocol (Deadlines.add_owner): cancel is `owner.due = None` --


class _Owner:
    """A request-like owner: ``due`` set by add_owner, None cancels."""

    due: float | None = None

    def __init__(self, clock: task.Clock, fired: list, name: object) -> None:
        self.clock = clock
        self.fired = fired
        self.name = name

    def deadline_expired(self) -> None:
        assert self.due is None  # cleared before the call
        self.fired.append((self.name, self.clock.seconds()))


def test_owners_fire_at_their_exact_deadline_and_cancelled_ones_never():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    owners = []
    for i in range(300):
        owner = _Owner(clock, fired, i)
        dl.add_owner(30.0, owner)
        assert owner.due == clock.seconds() + 30.0
        owners.append(owner)
        clock.advance(0.0625)  # exact in binary: the times below are exact
        if i % 3:
            owner.due = None  # cancelled: no call
    assert dl.armed == 1 and len(dl) == 100
    clock.advance(30.0 - 300 * 0.0625)  # t = 30.0: the first one's deadline
    assert fired == [(0, 30.0)]
    clock.advance(0.0625 * 3 - 0.001)
    assert fired == [(0, 30.0)]  # not a moment early
    clock.advance(0.001)
    assert fired == [(0, 30.0), (3, 30.1875)]
    for _ in range(300):  # one step at a time: each fires at its exact time
        clock.advance(0.0625)
    assert fired == [(i, 30.0 + i * 0.0625) for i in range(0, 300, 3)]
    assert all(o.due is None for o in owners)
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_a_request_alone_makes_no_timer_call_and_leaves_one_entry():
    """One request at a time: each add_owner drops its predecessor's dead
    entry, so the FIFO holds one entry, and the timer is armed once."""
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    owner = None
    for i in range(1000):
        owner = _Owner(clock, fired, i)
        dl.add_owner(30.0, owner)
        clock.advance(0.001)
        owner.due = None
        assert len(dl._fifos[30.0].entries) == 1
    assert dl.armed == 1 and len(clock.getDelayedCalls()) == 1 and dl.lingering()
    clock.advance(30.0)  # the lingering timer fires, finds only the dead entry
    assert fired == [] and clock.getDelayedCalls() == []
    assert len(dl._fifos[30.0].entries) == 0 and not dl.lingering()


def test_an_owner_added_again_leaves_a_stale_entry_that_holds_up_nothing():
    """An owner that cancelled and was added again (a later deadline): its
    old entry is dead, not a later deadline at the FIFO's head blocking the
    entries behind it; the owner fires once, at its new deadline."""
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    again = _Owner(clock, fired, "again")
    slow = _Owner(clock, fired, "slow")
    dl.add_owner(10.0, again)  # due 10
    dl.add_owner(10.0, slow)   # due 10 (same instant)
    clock.advance(1.0)
    other = _Owner(clock, fired, "other")
    dl.add_owner(10.0, other)  # due 11
    again.due = None
    dl.add_owner(10.0, again)  # due 11, its old entry still at the head
    slow.due = None
    clock.advance(9.0)  # t = 10: nothing live due
    assert fired == []
    clock.advance(1.0)  # t = 11
    assert fired == [("other", 11.0), ("again", 11.0)]
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_owner_memory_is_bounded_by_the_live_ones_behind_a_slow_head():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    slow = _Owner(clock, fired, "slow")
    dl.add_owner(30.0, slow)  # holds the head
    live = []
    for i in range(10 * COMPACT_AT):
        owner = _Owner(clock, fired, i)
        dl.add_owner(30.0, owner)
        if i % 50 == 0:
            live.append(owner)  # a few stay pending
        else:
            owner.due = None
        fifo = dl._fifos[30.0]
        assert len(fifo.entries) <= max(COMPACT_AT, 2 * (len(live) + 1)) + 1
    assert len(dl) == len(live) + 1
    clock.advance(30.0)
    assert [n for n, _ in fired] == ["slow"] + [o.name for o in live]


def test_owners_and_handles_share_the_timer_in_deadline_order():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    dl.add_owner(3.0, _Owner(clock, fired, "owner3"))
    handle = dl.add(1.0, lambda: fired.append(("handle1", clock.seconds())))
    dl.add_owner(2.0, _Owner(clock, fired, "owner2"))
    dl.add(2.5, lambda: fired.append(("handle2.5", clock.seconds())))
    clock.advance(10)
    assert [n for n, _ in fired] == ["handle1", "owner2", "handle2.5", "owner3"]
    assert not handle.active() and clock.getDelayedCalls() == []


def test_disarm_idle_and_stop_lingering_with_owners():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    owner = _Owner(clock, fired, "a")
    dl.add_owner(5.0, owner)
    dl.disarm_idle()  # pending: the timer stays
    assert len(clock.getDelayedCalls()) == 1 and not dl.lingering()
    owner.due = None
    assert dl.lingering()
    dl.stop_lingering()  # nothing pending: cancelled now
    assert clock.getDelayedCalls() == [] and not dl.lingering()
    owner2 = _Owner(clock, fired, "b")
    dl.add_owner(5.0, owner2)  # pending deadlines still fire after that
    clock.advance(5.0)
    assert fired == [("b", 5.0)] and clock.getDelayedCalls() == []


def test_an_owner_may_add_itself_again_from_deadline_expired():
    """The exchange's progress re-arm: add_owner from deadline_expired."""
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []

    class Rearming(_Owner):
        def deadline_expired(self) -> None:
            super().deadline_expired()
            if len(self.fired) < 3:
                dl.add_owner(2.0, self)

    dl.add_owner(2.0, Rearming(clock, fired, "r"))
    clock.advance(2.0)
    clock.advance(2.0)
    clock.advance(2.0)
    clock.advance(2.0)
    assert fired == [("r", 2.0), ("r", 4.0), ("r", 6.0)]
    assert clock.getDelayedCalls() == []


def test_random_owner_schedule_matches_a_reference():
    """Owners and handles mixed on the same FIFOs, random cancellations."""
    rnd = random.Random(11)
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    expected: dict[int, float] = {}
    owners: dict[int, _Owner] = {}
    handles: dict[int, object] = {}
    for i in range(3000):
        delay = rnd.choice([0.5, 1.0, 2.5])
        if rnd.random() < 0.5:
            owners[i] = _Owner(clock, fired, i)
            dl.add_owner(delay, owners[i])
        else:
            handles[i] = dl.add(delay, lambda i=i: fired.append((i, clock.seconds())))
        expected[i] = clock.seconds() + delay
        if rnd.random() < 0.6:
            victim = rnd.randrange(i + 1)
            if victim in owners and owners[victim].due is not None:
                owners[victim].due = None
                expected.pop(victim, None)
            elif victim in handles and handles[victim].active():  # type: ignore[attr-defined]
                handles[victim].cancel()  # type: ignore[attr-defined]
                expected.pop(victim, None)
        clock.advance(rnd.choice([0.0, 0.001, 0.01, 0.1]))
    clock.advance(5)
    assert sorted(i for i, _ in fired) == sorted(expected)
    for i, at in fired:
        assert at >= expected[i] - 1e-9
    assert clock.getDelayedCalls() == [] and len(dl) == 0


def test_an_owner_deadline_counts_from_the_time_the_caller_read():
    """``add_owner(delay, owner, now)``: the caller's reading of the clock
    (the proxy's upstream start) is the start; without one, the clock's."""
    clock = task.Clock()
    clock.advance(10.0)
    dl = Deadlines(clock)
    fired: list = []
    given, read = _Owner(clock, fired, "given"), _Owner(clock, fired, "read")
    dl.add_owner(5.0, given, 9.0)
    dl.add_owner(5.0, read)
    assert (given.due, read.due) == (14.0, 15.0)
    clock.advance(4.0)
    assert fired == [("given", 14.0)]
    clock.advance(1.0)
    assert fired == [("given", 14.0), ("read", 15.0)]
