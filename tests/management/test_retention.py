"""Access-log retention: flag parsing and the background pruner on a fake
clock, over a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from nbgateway.management.model import AccessLogEntry, Account
from nbgateway.management.retention import (
    AccessLogRetention,
    parse_max_age,
    parse_max_rows,
)
from nbgateway.management.tap import Options, makeService

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class ThreadClock(Clock):
    """A fake clock that also hands results 'back from a thread' at once."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


class InlinePool:
    """Runs each job at once and records how many jobs (transactions) ran."""

    def __init__(self):
        self.jobs = 0

    def callInThreadWithCallback(self, on_result, f, *args, **kw):
        self.jobs += 1
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def test_parse_max_age_and_rows():
    assert parse_max_age("30d") == timedelta(days=30)
    assert parse_max_age("12h") == timedelta(hours=12)
    assert parse_max_age("90m") == timedelta(minutes=90)
    assert parse_max_age("3600") == timedelta(hours=1)
    assert parse_max_age("2w") == timedelta(days=14)
    assert parse_max_age("0") is None
    assert parse_max_rows("1_000_000") == 1_000_000 and parse_max_rows("0") is None
    for bad in ("", "-1d", "3y", "1.5d", "abc"):
        with pytest.raises(ValueError):
            parse_max_age(bad)
    with pytest.raises(ValueError):
        parse_max_rows("-5")


def test_flags_env_and_defaults(tmp_path):
    opts = Options(environ={})
    opts.parseOptions(["--datadir", str(tmp_path)])
    assert (opts["access-log-max-age"], opts["access-log-max-rows"]) == ("30d", "1000000")
    svc = makeService(opts)
    assert svc.retention.max_age == timedelta(days=30) and svc.retention.max_rows == 1_000_000
    opts = Options(environ={"NB_MANAGEMENT_ACCESS_LOG_MAX_AGE": "7d",
                            "NB_MANAGEMENT_ACCESS_LOG_MAX_ROWS": "0"})
    opts.parseOptions(["--datadir", str(tmp_path), "--access-log-max-age", "1h"])
    svc = makeService(opts)
    assert svc.retention.max_age == timedelta(hours=1) and svc.retention.max_rows is None
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match="--access-log-max-rows"):
        Options(environ={}).parseOptions(["--access-log-max-rows", "many"])
    assert "NB_MANAGEMENT_ACCESS_LOG_MAX_AGE" in Options(environ={}).getUsage()


def _fill(store, account_id: str, n: int, *, age_step: timedelta) -> None:
    store.access_logs.append_many([
        AccessLogEntry(id=f"{account_id}-{i:05d}", account_id=account_id, service_id="s",
                       timestamp=NOW - age_step * i, path=f"/{i}", method="GET")
        for i in range(n)
    ])


def test_background_pass_prunes_by_age_and_rows_in_small_steps(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    _fill(store, account.id, 300, age_step=timedelta(hours=1))  # 0 h .. 299 h old
    _fill(store, other.id, 50, age_step=timedelta(minutes=1))
    clock, pool = ThreadClock(), InlinePool()
    retention = AccessLogRetention(lambda: store, pool, clock, max_age=timedelta(days=10),
                                   max_rows=40, interval=60, step=25, now=lambda: NOW)
    retention.startService()
    clock.advance(59)
    assert store.access_logs.count(account.id) == 300  # nothing before the first interval
    clock.advance(1)
    # account 1: age keeps 0..239 h (240 rows), then the count keeps the newest 40
    assert store.access_logs.count(account.id) == 40
    assert store.access_logs.get(account.id, f"{account.id}-00000").path == "/0"
    assert store.access_logs.count(other.id) == 40  # 50 fresh rows, 40 kept
    assert retention.deleted == 270 and retention.passes == 1
    # small transactions: 260 rows of account 1 in steps of at most 25
    assert pool.jobs >= 1 + 260 // 25
    # new rows later: the next pass trims again
    _fill(store, other.id, 5, age_step=timedelta(seconds=1))  # ids 0..4 already exist
    store.access_logs.append_many([AccessLogEntry(id=f"new-{i}", account_id=other.id,
                                                  service_id="s", timestamp=NOW)
                                   for i in range(7)])
    clock.advance(60)
    assert store.access_logs.count(other.id) == 40 and retention.passes == 2
    retention.stopService()
    assert not clock.getDelayedCalls()


def test_retention_off_and_failures_do_not_stop_the_loop(store, account):
    clock, pool = ThreadClock(), InlinePool()
    off = AccessLogRetention(lambda: store, pool, clock, max_age=None, max_rows=None)
    off.startService()
    assert not off.enabled and not clock.getDelayedCalls()

    class Broken:
        class access_logs:  # noqa: N801
            @staticmethod
            def account_ids():
                raise RuntimeError("database gone")

    retention = AccessLogRetention(lambda: Broken, pool, clock, max_age=timedelta(days=1),
                                   max_rows=None, interval=10)
    retention.startService()
    clock.advance(10)
    clock.advance(10)
    assert retention.passes == 0 and pool.jobs == 2  # tried each interval, still scheduled
    assert clock.getDelayedCalls()
    retention.stopService()
