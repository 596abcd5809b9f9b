"""Access-log list: the per-day reads of revision 0020 answer as a brute force does.

On PostgreSQL ``store.access_logs.list`` counts a ``source_ip`` filter (with
or without a time range) one day at a time in
``ix_access_log_entries_day_account_ip``, and merges the page of such a
filter (any sort) or of a sort of the account's every entry by
``duration`` from the first entries of each day (``_day_page``).  Every
shape is checked against a filter-and-sort of every stored entry in Python,
on both backends (SQLite plans them as before), after appends, a retried
batch, retention by age and by row count, and the deletion of another
account; the merged and the planned page give the same answers; revision
0020 up and down.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store, _accesslog_query
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import access_log_entries

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
IPS = ("203.0.113.7", "10.0.0.1", "2001:db8::1", "203.0.113.70")
#: durations with ties (the page breaks them by id)
DURATIONS = (5_000, 90, 5_000, 1_200_000, 90, 7, 33_000)
INDEXES = ("ix_access_log_entries_day_account_ip", "ix_access_log_entries_day_account_duration")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 hours apart (pairs share a timestamp: several per day,
    over many days), mixed source IPs, durations and status codes."""
    return [AccessLogEntry(
        id=f"{account_id}-{i:05d}", account_id=account_id, service_id=f"svc-{i % 3}",
        timestamp=NOW - timedelta(hours=5 * (i // 2), minutes=i % 7),
        source_ip=IPS[(i * 7 // 3) % 4], method="GET", host="app.example.test",
        path=f"/{i}", duration=DURATIONS[i % 7], status_code=(200, 404, 302, 500)[i % 4])
        for i in range(start, start + n)]


def brute(stored: list[AccessLogEntry], q: AccessLogQuery) -> tuple[int, list[str]]:
    """(total, the page's ids) of *q* over *stored*."""
    rows = [e for e in stored
            if (not q.source_ip or e.source_ip == q.source_ip)
            and (q.start_date is None or e.timestamp >= q.start_date)
            and (q.end_date is None or e.timestamp <= q.end_date)]
    key = {"timestamp": lambda e: (e.timestamp, e.id),
           "duration": lambda e: (e.duration, e.id),
           "status_code": lambda e: (e.status_code, e.timestamp, e.id)}[q.sort_by]
    rows.sort(key=key, reverse=q.sort_order == "desc")
    lo = (q.page - 1) * q.page_size
    return len(rows), [e.id for e in rows[lo:lo + q.page_size]]


def queries() -> list[AccessLogQuery]:
    Q = AccessLogQuery
    out = []
    for order in ("desc", "asc"):
        for page, size in ((1, 7), (2, 5), (6, 4), (40, 3), (1, 100)):
            out.append(Q(sort_by="duration", sort_order=order, page=page, page_size=size))
            for ip in (*IPS, "203.0.113", "192.0.2.1"):
                for sort in ("timestamp", "duration", "status_code"):
                    out.append(Q(source_ip=ip, sort_by=sort, sort_order=order, page=page,
                                 page_size=size))
            out.append(Q(source_ip=IPS[0], start_date=NOW - timedelta(days=3, hours=2),
                         end_date=NOW - timedelta(hours=13), sort_order=order, page=page,
                         page_size=size))
    return out


def everything(store: Store, account_id: str) -> list[AccessLogEntry]:
    out: list[AccessLogEntry] = []
    p = 1
    while True:
        page = store.access_logs.list(account_id, AccessLogQuery(page=p, page_size=100))
        out.extend(page.data)
        if len(page.data) < 100:
            return out
        p += 1


def check(store: Store, account_id: str) -> None:
    stored = everything(store, account_id)
    assert len(stored) == store.access_logs.count(account_id)
    for _ in range(2):  # twice: psycopg's generic plans answer too
        for q in queries():
            page = store.access_logs.list(account_id, q)
            want_total, want_ids = brute(stored, q)
            assert (page.total_records, [e.id for e in page.data]) == (want_total, want_ids), q
            assert page.total_pages == math.ceil(want_total / q.page_size)


def scenario(store: Store, account: Account) -> None:
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    store.access_logs.append_many(entries(account.id, 150) + entries(other.id, 40))
    store.access_logs.append(entries(account.id, 1, start=150)[0])
    store.access_logs.append_many(entries(account.id, 160))  # a retried batch, 9 new
    check(store, account.id)
    check(store, other.id)
    while store.access_logs.prune_step(account.id, older_than=NOW - timedelta(days=12),
                                       max_rows=None, limit=11):
        pass
    check(store, account.id)
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=61, limit=8):
        pass
    assert store.access_logs.count(account.id) == 61
    check(store, account.id)
    store.accounts.delete(other.id)
    store.access_logs.append_many(entries(account.id, 30, start=400))
    check(store, account.id)


def test_day_reads_match_brute_force(store, account):
    scenario(store, account)


@pytest.mark.parametrize("limits", [(0, 10**6), (0, 0), (10**6, 0)])
def test_planned_pages_and_counts_give_the_same_answers(store, account, monkeypatch, limits):
    """Past :data:`DAY_MAX` the page is planned as before, past
    :data:`MAX_DAYS` the source IP is counted as before: the same answers."""
    monkeypatch.setattr(_accesslog_query, "DAY_MAX", limits[0])
    monkeypatch.setattr(_accesslog_query, "MAX_DAYS", limits[1])
    scenario(store, account)


def test_day_reads_are_used_on_postgresql(store, account):
    """The per-day statements run on PostgreSQL (and only there)."""
    store.access_logs.append_many(entries(account.id, 60))
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(store._engine, "before_cursor_execute", seen)
    try:
        for q in (AccessLogQuery(source_ip=IPS[1]), AccessLogQuery(sort_by="duration"),
                  AccessLogQuery(source_ip=IPS[1], sort_by="duration", sort_order="asc")):
            statements.clear()
            assert store.access_logs.list(account.id, q).data
            by_day = [s for s in statements if "date_trunc('day'" in s and "LATERAL" in s]
            assert len(by_day) == (2 if store.dialect == "postgresql" and q.source_ip
                                   else 1 if store.dialect == "postgresql" else 0), q
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", seen)


def _indexes(conn) -> set[str]:
    return {i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}


def test_migration_0020_up_and_down(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0019")
            conn.execute(sa.text(
                "INSERT INTO accounts (id, domain, network_v4, network_v6) "
                "VALUES ('a1', 'a1.test', '100.64.0.0/10', 'fd00::/64')"))
            for e in entries("a1", 12):
                conn.execute(access_log_entries.insert().values(
                    id=e.id, account_id="a1", service_id=e.service_id, timestamp=e.timestamp,
                    location_connection_ip=e.source_ip, location_country_code="",
                    location_city_name="", location_geo_name_id=0, subdivision_code="",
                    method="GET", host=e.host, path=e.path, duration=e.duration,
                    status_code=e.status_code, reason="", user_id="", auth_method_used="",
                    bytes_upload=0, bytes_download=0, protocol="http", agent_network=False))
            conn.commit()
            assert not _indexes(conn) & set(INDEXES)
            migrations.upgrade(conn, "0020")
            assert (_indexes(conn) >= set(INDEXES)) == postgres
            assert not postgres or set(INDEXES) <= _indexes(conn)
            migrations.downgrade(conn, "0019")
            assert not _indexes(conn) & set(INDEXES)
            migrations.upgrade(conn, "head")
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        stored = everything(store, "a1")
        assert len(stored) == 12
        for q in (AccessLogQuery(source_ip=IPS[0], page_size=3),
                  AccessLogQuery(sort_by="duration", sort_order="asc", page=2, page_size=5)):
            page = store.access_logs.list("a1", q)
            assert (page.total_records, [e.id for e in page.data]) == brute(stored, q)
    finally:
        store.close()


def test_source_ip_entries_span_days():
    """The fixture's point: an IP's entries and the durations spread over days."""
    rows = entries("a", 150)
    days = {e.timestamp.date() for e in rows if e.source_ip == IPS[0]}
    assert len(days) > 10
    assert len({e.duration for e in rows}) < len(rows)  # ties
    assert dataclasses.replace(rows[0]).id == rows[0].id
