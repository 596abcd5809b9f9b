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
from datetime import timedelta

import pytest

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store, _accesslog_query
from nbgateway.management.store._base import StoreBase, normalise_dsn
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW, brute, everything, indexes

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


def check(store: Store, account_id: str) -> None:
    scenarios.check(store, account_id, queries())


def scenario(store: Store, account: Account) -> None:
    scenarios.scenario(store, account, entries, check)


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
    with scenarios.statements(store) as statements:
        for q in (AccessLogQuery(source_ip=IPS[1]), AccessLogQuery(sort_by="duration"),
                  AccessLogQuery(source_ip=IPS[1], sort_by="duration", sort_order="asc")):
            statements.clear()
            assert store.access_logs.list(account.id, q).data
            by_day = [s for s in statements if "date_trunc('day'" in s and "LATERAL" in s]
            assert len(by_day) == (2 if store.dialect == "postgresql" and q.source_ip
                                   else 1 if store.dialect == "postgresql" else 0), q


def test_migration_0020_up_and_down(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0019")
            scenarios.insert_old_account(conn, "a1")
            for e in entries("a1", 12):
                scenarios.insert_old(conn, e)
            conn.commit()
            assert not indexes(conn) & set(INDEXES)
            migrations.upgrade(conn, "0020")
            assert (indexes(conn) >= set(INDEXES)) == postgres
            assert not postgres or set(INDEXES) <= indexes(conn)
            migrations.downgrade(conn, "0019")
            assert not indexes(conn) & set(INDEXES)
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
