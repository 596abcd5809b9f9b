"""Suite-wide policy: interop tests may skip only where they are not required.

With ``NBGW_REQUIRE_INTEROP=1`` (set by ``.ci/run``) a skipped test under
``tests/interop/`` is reported as a failure, so a CI machine that lost root,
namespaces, TUN or wireguard-go cannot go green by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_INTEROP = os.environ.get("NBGW_REQUIRE_INTEROP") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_INTEROP or not report.skipped:
        return
    if "tests/interop/" not in str(item.fspath).replace(os.sep, "/"):
        return
    report.outcome = "failed"
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.longrepr = f"interop test skipped but NBGW_REQUIRE_INTEROP=1: {reason}"
