"""review19 F4: every request deadline of every account (and every pool's
idle sweep) is on one shared :class:`~nbgateway.dial.deadlines.Deadlines`
timer, which keeps one FIFO per distinct delay and, each time it fires,
walks every FIFO (``_fire``) and then every FIFO's head again
(``_arm_next``).  The delay is the target's ``request_timeout``, which a
tenant sets per target at nanosecond precision (up to 5 minutes): an account
whose targets use K distinct timeouts, each with a request waiting on its
own never-answering upstream, makes every firing of the gateway's timer cost
O(K) -- about 1.7 ms at K=2,000 and 14 ms at K=10,000 on the test machine,
per timed-out request of any account, so a stream of short-timeout requests
to such targets keeps the one reactor busy for every tenant.  The work of a
firing should not grow with the number of distinct delays pending.

Counted, not timed: the Python line events executed inside
nbgateway/dial/deadlines.py while account B's one deadline fires."""

from __future__ import annotations

import sys

from twisted.internet import task

from nbgateway.dial import deadlines as deadlines_mod
from nbgateway.dial.deadlines import Deadlines

_FILE = deadlines_mod.__file__


class _Owner:
    due: float | None = None

    def __init__(self, fired: list) -> None:
        self.fired = fired

    def deadline_expired(self) -> None:
        self.fired.append(self)


def _lines_for_one_firing(distinct_delays: int) -> int:
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    # account A: one slow request per target, each target its own timeout
    for i in range(distinct_delays):
        dl.add_owner(120.0 + i * 1e-6, _Owner(fired))
    # account B: one request with a short timeout
    b = _Owner(fired)
    dl.add_owner(1.0, b)
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != _FILE:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        clock.advance(1.0)
    finally:
        sys.settrace(None)
    assert fired == [b]
    return count


def test_a_firing_costs_the_same_whatever_other_accounts_distinct_timeouts():
    few = _lines_for_one_firing(10)
    many = _lines_for_one_firing(2000)
    assert many <= 2 * few + 50, (
        f"one firing ran {many} lines of deadlines.py with 2,000 distinct delays pending "
        f"({few} with 10)")


def test_deadlines_of_many_distinct_delays_still_fire_exactly_and_in_order():
    clock = task.Clock()
    dl = Deadlines(clock)
    fired: list = []
    owners = []
    for i in range(500):
        o = _Owner(fired)
        o.i = i
        dl.add_owner(10.0 - i * 0.01, o)  # later added, earlier due
        owners.append(o)
    for o in owners[::3]:
        o.due = None  # cancelled
    clock.advance(10.0)
    want = [o for o in reversed(owners) if owners.index(o) % 3 != 0]
    assert fired == want
    assert clock.getDelayedCalls() == [] or not dl.pending()
