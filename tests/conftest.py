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


def pytest_collection_modifyitems(session, config, items):
    """Run tests driven by pytest-twisted after everything else.

    pytest-twisted runs the global reactor in a greenlet for the rest of the
    session once its first test starts; twisted.trial TestCases spin the reactor
    themselves and cannot run after that.  Both styles are allowed in this
    suite, so the pytest-twisted ones go last (stable order otherwise).
    """

    def uses_pytest_twisted(item) -> bool:
        module = getattr(item, "module", None)
        return module is not None and "pytest_twisted" in vars(module)

    items.sort(key=uses_pytest_twisted)
