"""The sliding replay window against a brute-force reference model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.wireguard.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from nbgateway.wireguard.replay import ReplayFilter


class Reference:
    """Accept a counter iff unseen and not older than WINDOW below the maximum seen."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.max = 0

    def validate(self, c: int) -> bool:
        if c >= REJECT_AFTER_MESSAGES:
            return False
        if c in self.seen:
            return False
        if self.max - c > REPLAY_WINDOW_SIZE:
            return False
        self.seen.add(c)
        self.max = max(self.max, c)
        return True


def counters():
    near = st.integers(min_value=0, max_value=3 * REPLAY_WINDOW_SIZE)
    jumps = st.integers(min_value=0, max_value=2**40)
    return st.lists(st.one_of(near, near, jumps), max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.integers(min_value=0, max_value=3 * REPLAY_WINDOW_SIZE),
    st.integers(min_value=0, max_value=2**40),
), max_size=300))
def test_matches_reference(seq):
    f, ref = ReplayFilter(), Reference()
    for c in seq:
        assert f.would_accept(c) == (c not in ref.seen and ref.max - c <= REPLAY_WINDOW_SIZE)
        assert f.validate(c) == ref.validate(c), c


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**20), st.permutations(list(range(64))))
def test_reordering_within_window_accepted_once(base, order):
    f = ReplayFilter()
    for i in order:
        assert f.validate(base + i)
    for i in order:
        assert not f.validate(base + i)


def test_window_is_at_least_2048():
    f = ReplayFilter()
    assert f.validate(5000)
    assert f.validate(5000 - 2048)
    assert REPLAY_WINDOW_SIZE >= 2048


def test_reject_after_messages_limit():
    f = ReplayFilter()
    assert not f.validate(REJECT_AFTER_MESSAGES)
    assert f.validate(REJECT_AFTER_MESSAGES - 1)


def _mixed_counters(steps):
    """Counters from steps: in-order runs (the data path's shortcut), jumps
    ahead and looks back (reordering, replays, too-old packets)."""
    c, out = -1, []
    for kind, k in steps:
        if kind == "run":
            out.extend(range(c + 1, c + 1 + k))
            c += k
        elif kind == "jump":
            c += k
            out.append(c)
        else:
            out.append(max(0, c - k))
    return out


_steps = st.lists(st.one_of(
    st.tuples(st.just("run"), st.integers(1, 3 * 64 + 7)),
    st.tuples(st.just("jump"), st.sampled_from([2, 3, 63, 64, 65, 500, REPLAY_WINDOW_SIZE,
                                                REPLAY_WINDOW_SIZE + 64, 10**6])),
    st.tuples(st.just("back"), st.integers(0, REPLAY_WINDOW_SIZE + 130)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_steps, st.booleans())
def test_in_order_shortcut_matches_reference(steps, inline):
    """accept_next (the shortcut the device inlines) followed by validate is
    exactly the one-by-one reference, across block and ring boundaries."""
    f, ref = ReplayFilter(), Reference()
    for c in _mixed_counters(steps):
        assert f.would_accept(c) == (c not in ref.seen and ref.max - c <= REPLAY_WINDOW_SIZE)
        got = (inline and f.accept_next(c)) or f.validate(c)
        assert got == ref.validate(c), c


def test_long_in_order_run_then_replays_rejected():
    f = ReplayFilter()
    for c in range(3 * REPLAY_WINDOW_SIZE):
        assert f.accept_next(c)
    top = 3 * REPLAY_WINDOW_SIZE - 1
    assert not f.validate(top)
    assert not f.validate(top - REPLAY_WINDOW_SIZE)  # in the window, seen
    assert not f.validate(top - REPLAY_WINDOW_SIZE - 1)  # too old
    assert f.validate(top + 2)  # a gap
    assert f.validate(top + 1)  # filled late
    assert not f.validate(top + 1)
