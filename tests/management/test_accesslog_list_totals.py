"""Access-log list: the cheap totals and deep pages answer as a brute force does.

``store.access_logs.list`` answers some ``total_records`` without counting
the matching rows (``status=success``: the account's counter minus its
failures) and fetches deep pages sorted by time through the index first
(a deferred join).  For every such shape the answer (total, page count and
the page's entries in order) must be what filtering and sorting every stored
entry in Python gives, after appends, retention prunes by age and by row
count, and the deletion of another account.  Both backends (the ``store``
fixture); each shape is asked more than 5 times so psycopg's generic plans
answer too.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store, _accesslog_query

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SERVICES = ("svc-a", "svc-b", "svc-c")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries minutes apart over several hours (pairs share a timestamp,
    so the id breaks ties), of three services, about a fifth failing."""
    out = []
    for i in range(start, start + n):
        status = (200, 302, 404, 200, 500, 200, 401)[i % 7]
        out.append(AccessLogEntry(
            id=f"{account_id}-{i:05d}", account_id=account_id,
            service_id=SERVICES[i % 3 if i % 5 else 0],
            timestamp=NOW - timedelta(minutes=7 * (i // 2)),
            method="GET", host="h.test", path=f"/{i}", status_code=status,
            reason="authentication required" if i % 11 == 0 else ""))
    return out


def failed(e: AccessLogEntry) -> bool:
    return e.status_code >= 400 or e.reason != ""


def brute(stored: list[AccessLogEntry], q: AccessLogQuery) -> tuple[int, list[str]]:
    """(total, the page's ids) of *q* over *stored* (sort by time only)."""
    rows = [e for e in stored if
            (not q.service_id or e.service_id == q.service_id)
            and (q.status != "failed" or failed(e))
            and (q.status != "success" or not failed(e))
            and (q.start_date is None or e.timestamp >= q.start_date)
            and (q.end_date is None or e.timestamp <= q.end_date)]
    rows.sort(key=lambda e: (e.timestamp, e.id), reverse=q.sort_order == "desc")
    lo = (q.page - 1) * q.page_size
    return len(rows), [e.id for e in rows[lo:lo + q.page_size]]


def queries() -> list[AccessLogQuery]:
    Q = AccessLogQuery
    h = timedelta(hours=1)
    out = [Q(page_size=9), Q(status="success", page_size=9), Q(status="failed", page_size=9),
           Q(service_id="svc-b", page_size=9), Q(service_id="svc-a", status="success"),
           Q(service_id="nope"), Q(status="success", sort_order="asc", page=3, page_size=4)]
    for start, end in ((NOW - 3 * h, None), (None, NOW - 2 * h), (NOW - 5 * h, NOW - h),
                       (NOW - 5.5 * h, NOW - 1.25 * h), (NOW - 2.2 * h, NOW - 1.9 * h),
                       (NOW - 4 * h, NOW - 4 * h), (NOW - 8 * h, NOW - 3 * h + timedelta(
                           microseconds=1)), (NOW + h, None), (NOW - 99 * h, NOW - 90 * h)):
        for extra in ({}, {"status": "success"}, {"status": "failed"},
                      {"service_id": "svc-c"}, {"service_id": "svc-a", "status": "success"}):
            out.append(Q(start_date=start, end_date=end, page_size=6, **extra))
    for page in (1, 2, 5, 13, 40):  # deep pages (DEFER_OFFSET lowered below)
        for extra in ({}, {"status": "failed"}, {"start_date": NOW - 6 * h},
                      {"sort_order": "asc"}, {"status": "success"}):
            out.append(Q(page=page, page_size=5, **extra))
    return out


def check(store: Store, account_id: str) -> None:
    stored = store.access_logs.list(account_id, AccessLogQuery(page_size=100))
    everything: list[AccessLogEntry] = []
    p = 1
    while True:
        page = store.access_logs.list(account_id, AccessLogQuery(page=p, page_size=100))
        everything.extend(page.data)
        if len(page.data) < 100:
            break
        p += 1
    assert len(everything) == stored.total_records
    for _ in range(2):
        for q in queries():
            page = store.access_logs.list(account_id, q)
            want_total, want_ids = brute(everything, q)
            assert (page.total_records, [e.id for e in page.data]) == (want_total, want_ids), q
            assert page.total_pages == math.ceil(want_total / q.page_size)


@pytest.fixture
def low_defer(monkeypatch):
    monkeypatch.setattr(_accesslog_query, "DEFER_OFFSET", 4)


def test_totals_and_pages_match_brute_force(store, account, low_defer):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    store.access_logs.append_many(entries(account.id, 150) + entries(other.id, 40))
    store.access_logs.append(entries(account.id, 1, start=150)[0])
    check(store, account.id)
    check(store, other.id)
    # retention by age, then by row count, in small steps
    while store.access_logs.prune_step(account.id, older_than=NOW - timedelta(hours=6),
                                       max_rows=None, limit=7):
        pass
    check(store, account.id)
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=61, limit=9):
        pass
    assert store.access_logs.count(account.id) == 61
    check(store, account.id)
    store.accounts.delete(other.id)
    store.access_logs.append_many(entries(account.id, 20, start=500))
    check(store, account.id)


def test_empty_account(store, account, low_defer):
    check(store, account.id)
