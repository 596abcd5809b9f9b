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
