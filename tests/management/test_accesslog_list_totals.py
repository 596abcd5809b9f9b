"""Access-log list: the cheap totals and deep pages answer as a brute force does.

``store.access_logs.list`` answers some ``total_records`` without counting
the matching rows (``status=success``: the account's counter minus its
failures; on PostgreSQL a service and/or time range sums whole hours of
``access_log_hours``, revision 0017, and counts the edges) and fetches deep
pages sorted by time through the index first (a deferred join).  For every
such shape the answer (total, page count and the page's entries in order)
must be what filtering and sorting every stored entry in Python gives, after
appends, retention prunes by age and by row count, and the deletion of
another account.  Both backends (the ``store`` fixture); each shape is asked
twice and the whole set many times, so psycopg's generic plans answer too.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, User
from nbgateway.management.store import Store, _accesslog_query
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import access_log_entries, access_log_hours, accounts
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW

SERVICES = ("svc-a", "svc-b", "svc-c")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 minutes apart over hours (pairs share a timestamp,
    so the id breaks ties), of three services, about a fifth failing."""
    out = []
    for i in range(start, start + n):
        status = (200, 302, 404, 200, 500, 200, 401)[i % 7]
        out.append(AccessLogEntry(
            id=f"{account_id}-{i:05d}", account_id=account_id,
            service_id=SERVICES[i % 3 if i % 5 else 0],
            timestamp=NOW - timedelta(minutes=5 * (i // 2)),
            method="GET", host="h.test", path=f"/{i}", status_code=status,
            reason="authentication required" if i % 11 == 0 else ""))
    return out


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
    scenarios.check(store, account_id, queries())


@pytest.fixture
def low_defer(monkeypatch):
    monkeypatch.setattr(_accesslog_query, "DEFER_OFFSET", 4)


def test_totals_and_pages_match_brute_force(store, account, low_defer):
    # hours apart: retention by age (6 h), then by row count, in small steps
    steps = scenarios.Steps(retried=False, older_than=timedelta(hours=6), age_limit=7,
                            rows_limit=9, last=20, last_start=500)
    scenarios.scenario(store, account, entries, check, steps)


def test_empty_account(store, account, low_defer):
    check(store, account.id)


def hours_table(conn) -> dict[tuple[str, datetime, str], int]:
    return {(r.account_id, r.hour, r.service_id): r.entries
            for r in conn.execute(sa.select(access_log_hours))}


def hours_counted(conn) -> dict[tuple[str, datetime, str], int]:
    """What ``access_log_hours`` must hold: the entries of existing accounts by
    (account, hour, service), counted in Python."""
    known = set(conn.execute(sa.select(accounts.c.id)).scalars())
    out: dict[tuple[str, datetime, str], int] = {}
    for r in conn.execute(sa.select(access_log_entries.c.account_id,
                                    access_log_entries.c.timestamp,
                                    access_log_entries.c.service_id)):
        if r.account_id in known:
            key = (r.account_id, r.timestamp.replace(minute=0, second=0, microsecond=0),
                   r.service_id)
            out[key] = out.get(key, 0) + 1
    return out


def test_hour_counts_follow_every_write(store, account):
    """PostgreSQL: the triggers keep ``access_log_hours`` equal to the entries
    (no row left at zero after prunes); SQLite: the table stays empty."""
    postgres = store.dialect == "postgresql"

    def same(store: Store) -> None:
        with store._read() as conn:
            assert hours_table(conn) == (hours_counted(conn) if postgres else {})

    steps = scenarios.Steps(older_than=timedelta(hours=3), age_limit=13, max_rows=5,
                            rows_limit=50, last=0)
    scenarios.scenario(store, account, entries, None, steps, written=same)


def test_migration_backfills_the_hour_counts(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0016")
            for a in ("a1", "a2"):
                scenarios.insert_old_account(conn, a)
            for i in range(8):
                scenarios.insert_old(conn, AccessLogEntry(
                    id=f"e{i}", account_id="a1" if i < 5 else "a2",
                    service_id=f"s{i % 2}", timestamp=NOW - timedelta(minutes=40 * i),
                    method="GET", host="h", path="/", status_code=500 if i == 0 else 200))
            conn.commit()
            migrations.upgrade(conn, "0017")
            postgres = conn.dialect.name == "postgresql"
            assert hours_table(conn) == (hours_counted(conn) if postgres else {})
            assert len(hours_table(conn)) == (8 if postgres else 0)
            migrations.downgrade(conn, "0016")
            assert "access_log_hours" not in sa.inspect(conn).get_table_names()
            conn.execute(access_log_entries.delete().where(access_log_entries.c.id == "e4"))
            conn.commit()
            migrations.upgrade(conn, "head")
            assert hours_table(conn) == (hours_counted(conn) if postgres else {})
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        q = AccessLogQuery(service_id="s1", start_date=NOW - timedelta(hours=4))
        assert store.access_logs.list("a1", q).total_records == 2  # e1, e3
    finally:
        store.close()


@pytest.mark.parametrize("max_ids", [500, 1])
def test_user_email_and_name_filters_match_brute_force(store, account, monkeypatch, max_ids):
    """The users matched by e-mail / name are looked up first and passed as
    ids (or, beyond ``MAX_USER_IDS``, as the subquery): same answers."""
    monkeypatch.setattr(_accesslog_query, "MAX_USER_IDS", max_ids)
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    for a in (account.id, other.id):
        for u in range(4):
            store.users.create(User(id=f"{a}-u{u}", account_id=a, email=f"user{u}@{a}.example",
                                    name=f"User {u}"))
    rows = []
    for i, e in enumerate(entries(account.id, 60) + entries(other.id, 20)):
        rows.append(dataclasses.replace(e, user_id=f"{e.account_id}-u{i % 5}"))  # u4: no user
    store.access_logs.append_many(rows)
    for _ in range(6):
        for filters, users in (({"user_email": "USER1@"}, {1}), ({"user_email": "@"}, {0, 1, 2, 3}),
                               ({"user_name": "user 2"}, {2}), ({"user_email": "nobody"}, set()),
                               ({"user_email": "user", "user_name": "3"}, {3})):
            want = sorted((e for e in rows if e.account_id == account.id
                           and int(e.user_id.rsplit("u", 1)[1]) in users),
                          key=lambda e: (e.timestamp, e.id), reverse=True)
            page = store.access_logs.list(account.id, AccessLogQuery(page_size=7, **filters))
            assert page.total_records == len(want), filters
            assert [e.id for e in page.data] == [e.id for e in want[:7]], filters


def test_failures_index_includes_the_service_on_postgres(db_dsn):
    """Revision 0018 rebuilds ``ix_access_log_entries_failed`` with
    ``service_id`` included (PostgreSQL); its downgrade restores 0015's."""
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))

    def definition(conn) -> str:
        if conn.dialect.name != "postgresql":
            return str(conn.execute(sa.text(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_access_log_entries_failed'"
            )).scalar_one())
        return str(conn.execute(sa.text(
            "SELECT pg_get_indexdef(to_regclass('ix_access_log_entries_failed'))")).scalar_one())

    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0017")
            before = definition(conn)
            migrations.upgrade(conn, "0018")
            after = definition(conn)
            if conn.dialect.name == "postgresql":
                assert "INCLUDE (status_code, service_id)" in after, after
                assert "WHERE ((status_code >= 400) OR (reason <> ''::text))" in after, after
            else:
                assert after == before
            migrations.downgrade(conn, "0017")
            assert definition(conn) == before
    finally:
        engine.dispose()


def test_no_page_query_past_the_end(store, account):
    """An empty result or a page past the end answers without the page query."""
    store.access_logs.append_many(entries(account.id, 12))
    # a page query has an ORDER BY (the totals have no order)
    with scenarios.statements(store, lambda s: "ORDER BY" in s) as statements:
        for q, total, n in ((AccessLogQuery(search="nomatch"), 0, 0),
                            (AccessLogQuery(page=3, page_size=5), 12, 2),
                            (AccessLogQuery(page=4, page_size=5), 12, 0),
                            (AccessLogQuery(page=2, page_size=6, status="failed"), 6, 0)):
            statements.clear()
            page = store.access_logs.list(account.id, q)
            assert (page.total_records, len(page.data)) == (total, n), q
            assert len(statements) == (1 if n else 0), statements
            assert page.total_pages == math.ceil(total / q.page_size)
