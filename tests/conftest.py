"""Suite-wide policy.

1. Interop tests may skip only where they are not required: with
   ``NBGW_REQUIRE_INTEROP=1`` (set by ``.ci/run``) a skipped test under
   ``tests/interop/`` is reported as a failure, so a CI machine that lost root,
   namespaces, TUN or wireguard-go cannot go green by skipping.

2. twisted.trial TestCases and pytest-twisted tests share one process.
   pytest-twisted runs the global reactor in a greenlet once it is started,
   and a trial TestCase cannot spin a reactor that is already running.  So:
   plain synchronous test functions are called directly (pytest-twisted would
   otherwise start its reactor for every test function), and modules that use
   pytest-twisted run after everything else.

3. The throwaway PostgreSQL cluster of ``tests/pgcluster.py`` (started on
   first use when ``NBGW_TEST_PG_DSN`` is unset) is stopped at session end.

4. Management's per-account REST rate limits are off for the processes and
   services the suite starts (``NB_MANAGEMENT_API_WRITE_RATE`` /
   ``NB_MANAGEMENT_API_READ_RATE`` = 0 unless set): a module shares one
   server and one account across its tests, so its writes add up to more
   than the limit's burst on a slow machine and a test saw 429 for what it
   checks.  The limits themselves are tested where a test sets them
   (tests/management/test_rest_ratelimit.py, test_quota_api.py).
"""

from __future__ import annotations

import inspect
import os

import pytest
import pytest_twisted

REQUIRE_INTEROP = os.environ.get("NBGW_REQUIRE_INTEROP") == "1"

for _rate in ("NB_MANAGEMENT_API_WRITE_RATE", "NB_MANAGEMENT_API_READ_RATE"):
    os.environ.setdefault(_rate, "0")  # see 4. above


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_INTEROP or not report.skipped or hasattr(report, "wasxfail"):
        return  # an expected failure (xfail) is not a skipped interop test
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


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Call plain synchronous test functions ourselves; leave async ones
    (pytest-twisted decorated, coroutine functions) to pytest-twisted."""
    func = pyfuncitem.obj
    inner = getattr(getattr(func, "hypothesis", None), "inner_test", func)
    if (
        pytest_twisted._get_mark(func) is not None
        or inspect.iscoroutinefunction(func)
        or inspect.iscoroutinefunction(inner)
        or inspect.isasyncgenfunction(func)
    ):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    result = func(**{name: pyfuncitem.funcargs[name] for name in names})
    if result is not None and hasattr(result, "addCallbacks"):
        raise TypeError(
            f"{pyfuncitem.nodeid} returned a Deferred: decorate it with "
            "@pytest_twisted.ensureDeferred / inlineCallbacks or use a trial TestCase")
    return True


def pytest_sessionfinish(session, exitstatus):
    """Stop the throwaway PostgreSQL cluster if this session started one
    (tests/pgcluster.py starts it on first use)."""
    from tests import pgcluster

    pgcluster.stop()
