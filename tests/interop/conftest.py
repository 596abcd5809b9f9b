"""Fixtures for the real-peer interop tests (see ``testbed.py``).

``testbed`` skips with the precise reason when this machine cannot run
wireguard-go in namespaces (the suite turns that skip into a failure when
``NBGW_REQUIRE_INTEROP=1``); on teardown it removes everything the test created
and fails the test if anything is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.interop.testbed import Testbed, current_netns_inode, unavailable_reason

W = TypeVar("W")


def require_testbed(*need: str) -> None:
    """Skip the calling test unless the testbed (and executables ``need``) work here."""
    reason = unavailable_reason(need=tuple(need))
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def world_on_testbed(make: Callable[[Testbed], W], *need: str, logs: tuple[str, ...] = (),
                  tail: int = 4000) -> Iterator[W]:
    """``make(Testbed())``, for a module fixture's ``with``, once the testbed (and
    executables ``need``) work here; afterwards the testbed is closed, printing the
    last ``tail`` bytes of each log in ``logs``, and must have left nothing behind."""
    require_testbed(*need)
    tb = Testbed()
    try:
        yield make(tb)
    finally:
        left = tb.close_with_log_tails(*logs, tail=tail)
    assert not left, left


@pytest.fixture
def testbed():
    require_testbed("ping")
    home = current_netns_inode()
    tb = Testbed()
    try:
        yield tb
    finally:
        left = tb.close()
    assert not left, f"testbed teardown left: {left}"
    # inside_netns() must always have switched the thread back.
    assert current_netns_inode() == home, "test thread left in another network namespace"
