"""Access-log list: totals and sorts from ``access_log_values`` answer as a brute force does.

On PostgreSQL ``store.access_logs.list`` totals a filter on nothing but
service, host substring, method, status code and status from
``access_log_values`` (revision 0019, kept by statement-level triggers), and
reads a page sorted by ``status_code`` or ``method`` value by value from the
per-value counts.  Ties within a value are broken by time, then id, in the
sort's direction, on both backends.  Every shape is checked against a
filter-and-sort of every stored entry in Python after appends, a retried
batch, retention by age and by row count, and the deletion of another
account; the table itself must equal a recount after each write (PostgreSQL)
or stay empty (SQLite).  Migration 0019's backfill and downgrade too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import access_log_entries, access_log_values, accounts
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW, everything

SERVICES = ("svc-a", "svc-b", "svc-c")
HOSTS = ("App.Example.test", "api.example.test", "h\u00e9.test")
METHODS = ("GET", "POST", "get", "DELETE", "PUT")
CODES = (200, 302, 404, 200, 500, 200, 401, 304, 502)


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 minutes apart (pairs share a timestamp), mixed services,
    hosts, methods (two spellings of GET), status codes and failure reasons."""
    out = []
    for i in range(start, start + n):
        out.append(AccessLogEntry(
            id=f"{account_id}-{i:05d}", account_id=account_id,
            service_id=SERVICES[i % 3], timestamp=NOW - timedelta(minutes=5 * (i // 2)),
            method=METHODS[(i // 3) % 5], host=HOSTS[(i // 2) % 3], path=f"/{i}",
            status_code=CODES[i % 9],
            reason="authentication required" if i % 13 == 0 else ""))
    return out


def queries() -> list[AccessLogQuery]:
    Q = AccessLogQuery
    out = []
    filters = ({}, {"method": "get"}, {"method": "DELETE"}, {"status_code": 200},
               {"status_code": 404}, {"host": "EXAMPLE"}, {"host": "\u00e9"},
               {"host": "nomatch"}, {"service_id": "svc-b", "method": "POST"},
               {"service_id": "svc-a", "method": "GET", "status_code": 200},
               {"status": "failed", "method": "PUT"}, {"status": "success", "host": "api"},
               {"status_code": 401, "status": "success"}, {"service_id": "svc-c"},
               {"status": "failed"}, {"method": "GET", "start_date": NOW - timedelta(hours=2)})
    for f in filters:
        for sort in ("timestamp", "status_code", "method"):
            for order in ("desc", "asc"):
                for page, size in ((1, 7), (3, 5), (9, 4)):
                    out.append(Q(sort_by=sort, sort_order=order, page=page, page_size=size, **f))
    return out


def check(store: Store, account_id: str) -> None:
    """The brute force sorts methods in the database's order (its collation)."""
    scenarios.check(store, account_id, queries())


def values_table(conn) -> dict[tuple, tuple[str, int]]:
    return {(r.account_id, r.service_id, bytes(r.host_key), r.method, r.status_code, r.failed):
            (r.host, r.entries) for r in conn.execute(sa.select(access_log_values))}


def values_counted(conn) -> dict[tuple, tuple[str, int]]:
    """What ``access_log_values`` must hold, counted in Python."""
    known = set(conn.execute(sa.select(accounts.c.id)).scalars())
    out: dict[tuple, tuple[str, int]] = {}
    for r in conn.execute(sa.select(access_log_entries)):
        if r.account_id in known:
            key = (r.account_id, r.service_id, hashlib.sha256(r.host.encode()).digest(),
                   r.method, r.status_code, r.status_code >= 400 or r.reason != "")
            out[key] = (r.host, out.get(key, ("", 0))[1] + 1)
    return out


def same_values(store: Store) -> None:
    with store._read() as conn:
        want = values_counted(conn) if store.dialect == "postgresql" else {}
        assert values_table(conn) == want


def test_totals_and_value_sorts_match_brute_force(store, account):
    steps = scenarios.Steps(first=120, older_than=timedelta(hours=4), max_rows=37)
    scenarios.scenario(store, account, entries, check, steps, written=same_values)


def test_empty_account(store, account):
    check(store, account.id)
    same_values(store)


def test_value_sort_reads_only_the_values_of_the_page(store, account):
    """PostgreSQL: a page sorted by status code reads the per-value counts,
    then one statement per value the page covers (none past the end)."""
    rows = [dataclasses.replace(e, status_code=(200, 404, 500)[min(i // 10, 2)])
            for i, e in enumerate(entries(account.id, 30))]
    store.access_logs.append_many(rows)
    with scenarios.statements(store, lambda s: "access_log_entries" in s and "ORDER BY" in s
                              ) as statements:
        for page, size, n, reads in ((1, 5, 5, 1), (2, 8, 8, 2), (1, 30, 30, 3), (4, 10, 0, 0)):
            statements.clear()
            got = store.access_logs.list(account.id, AccessLogQuery(
                sort_by="status_code", page=page, page_size=size))
            assert (got.total_records, len(got.data)) == (30, n)
            if store.dialect == "postgresql":
                assert len(statements) == reads, statements


def test_migration_backfills_and_drops_the_value_counts(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0018")
            for a in ("a1", "a2"):
                scenarios.insert_old_account(conn, a)
            for i in range(9):
                scenarios.insert_old(conn, AccessLogEntry(
                    id=f"e{i}", account_id="a1" if i < 6 else "a2",
                    service_id=f"s{i % 2}", timestamp=NOW - timedelta(minutes=40 * i),
                    method=("GET", "POST")[i % 3 == 0], host=HOSTS[i % 3], path="/",
                    status_code=(200, 500, 200)[i % 3], reason="denied" if i == 4 else ""))
            conn.commit()
            migrations.upgrade(conn, "0019")
            postgres = conn.dialect.name == "postgresql"
            assert values_table(conn) == (values_counted(conn) if postgres else {})
            assert bool(values_table(conn)) == postgres
            migrations.downgrade(conn, "0018")
            assert "access_log_values" not in sa.inspect(conn).get_table_names()
            conn.execute(access_log_entries.delete().where(access_log_entries.c.id == "e4"))
            conn.commit()
            migrations.upgrade(conn, "head")
            assert values_table(conn) == (values_counted(conn) if postgres else {})
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        assert store.access_logs.list("a1", AccessLogQuery(method="get")).total_records == 3
        page = store.access_logs.list("a1", AccessLogQuery(sort_by="status_code"))
        assert [e.id for e in page.data] == ["e1", "e0", "e2", "e3", "e5"]
    finally:
        store.close()


@pytest.mark.parametrize("walk", [True, False])
def test_pages_walked_or_planned_give_the_same_answers(store, account, monkeypatch, walk):
    """A page read by the time index walk (``_walk`` chooses it at scale from
    the counts: other scans off, the service filter as an expression) or as
    PostgreSQL plans it: the same answers (forced either way here)."""
    from nbgateway.management.store import _accesslog_query

    walked: list[bool] = []
    real = _accesslog_query._walked

    def spy(conn, select):
        walked.append(True)
        rows = real(conn, select)
        settings = conn.execute(sa.text("SHOW enable_seqscan")).scalar_one()
        assert settings == "on"  # reset after the statement
        return rows

    monkeypatch.setattr(_accesslog_query, "_walk", lambda need, matching, spread: walk)
    monkeypatch.setattr(_accesslog_query, "_walked", spy)
    store.access_logs.append_many(entries(account.id, 90))
    check(store, account.id)
    assert bool(walked) == (walk and store.dialect == "postgresql")


def test_walk_choice():
    walk = __import__("nbgateway.management.store._accesslog_query",
                      fromlist=["_walk"])._walk
    assert walk(50, 18_000, (1_000_000, 125_000))  # ~2,800 entries read < the service's
    assert not walk(50, 300, (1_000_000, 125_000))  # ~167,000 > 125,000
    assert walk(50, 125_000, (1_000_000, None))
    assert not walk(50, 200, (1_000_000, None))  # 250,000 > WALK_MAX
    assert not walk(1, 0, (10, None))


def test_source_ip_filter_matches_brute_force(store, account):
    """The exact source-IP filter: totals and pages as a brute force, after
    appends and a prune (no counts table answers it: an index was measured
    and not kept, docs/management.md)."""
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    ips = ("203.0.113.7", "10.0.0.1", "2001:db8::1")
    rows = [dataclasses.replace(e, source_ip=ips[i % 3])
            for i, e in enumerate(entries(account.id, 60) + entries(other.id, 30))]
    store.access_logs.append_many(rows)

    def same() -> None:
        stored = everything(store, account.id)
        for ip in (*ips, "203.0.113.70", "203.0.113"):
            want = sorted((e for e in stored if e.source_ip == ip),
                          key=lambda e: (e.timestamp, e.id), reverse=True)
            for page in (1, 2):
                got = store.access_logs.list(account.id, AccessLogQuery(
                    source_ip=ip, page=page, page_size=8))
                assert got.total_records == len(want), ip
                assert [e.id for e in got.data] == [e.id for e in want[8 * page - 8:8 * page]]

    same()
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=25, limit=7):
        pass
    same()
