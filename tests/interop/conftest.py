"""Fixtures for the real-peer interop tests (see ``testbed.py``).

``testbed`` skips with the precise reason when this machine cannot run
wireguard-go in namespaces (the suite turns that skip into a failure when
``NBGW_REQUIRE_INTEROP=1``); on teardown it removes everything the test created
and fails the test if anything is left behind.
"""

from __future__ import annotations

import pytest

from tests.interop.testbed import Testbed, current_netns_inode, unavailable_reason


def require_testbed(*need: str) -> None:
    """Skip the calling test unless the testbed (and executables ``need``) work here."""
    reason = unavailable_reason(need=tuple(need))
    if reason is not None:
        pytest.skip(reason)


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
