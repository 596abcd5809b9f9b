"""Access log: a user's lists read from the covering user index (revision 0026).

On PostgreSQL a list of one ``user_id`` that also filters on the service,
the method or the status code, or sorts by duration, method or status code,
finds its count and its page's ids in ``ix_access_log_entries_account_user_time``
alone (``INCLUDE (duration, status_code, service_id, method)``), then
fetches the page's rows.  Checked here against a filter-and-sort of every
stored entry in Python on both backends (SQLite lists as before), both
directions, several pages including past the end, after appends, a retried
batch, retention by age and by rows and another account's deletion; that
the index really covers those statements (an index-only scan is possible);
and 0026 up and down.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store, _accesslog_query
from nbgateway.management.store._base import StoreBase, normalise_dsn
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW, brute, everything

USERS = ("alice", "bob", "")
METHODS = ("GET", "POST", "DELETE", "GET", "put")
CODES = (200, 404, 302, 500, 200, 401)
DURATIONS = (5_000, 90, 5_000, 1_200_000, 90, 7, 33_000)
INDEX = "ix_access_log_entries_account_user_time"


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 hours apart (pairs share a timestamp), with ties in
    every covered column, two users and anonymous entries."""
    return [AccessLogEntry(
        id=f"{account_id}-{i:05d}", account_id=account_id, service_id=f"svc-{i % 3}",
        timestamp=NOW - timedelta(hours=5 * (i // 2), minutes=(i // 2) % 7),
        source_ip="203.0.113.7", method=METHODS[i % 5], host=f"h{i % 2}.test",
        path=f"/p{i % 11}", duration=DURATIONS[i % 7], status_code=CODES[i % 6],
        reason="denied" if i % 9 == 0 else "", user_id=USERS[(i * 5 // 6) % 3],
        auth_method_used="oidc")
        for i in range(start, start + n)]


PAGES = ((1, 7), (2, 5), (30, 4), (1, 100))
FILTERS = ({}, dict(service_id="svc-1"), dict(method="get"), dict(method="PUT"),
           dict(status_code=500), dict(status_code=404), dict(status_code=200),
           dict(service_id="svc-2", method="POST"), dict(service_id="svc-2", status_code=401),
           dict(start_date=NOW - timedelta(days=5), service_id="svc-1"),
           dict(start_date=NOW - timedelta(days=9), end_date=NOW - timedelta(days=2),
                method="GET", status_code=200),
           dict(service_id="svc-9"))


def queries() -> list[AccessLogQuery]:
    out = []
    for order in ("desc", "asc"):
        for page, size in PAGES:
            for user in ("alice", "bob", "nobody"):
                for sort in ("timestamp", "duration", "method", "status_code"):
                    for f in FILTERS:
                        out.append(AccessLogQuery(user_id=user, sort_by=sort, sort_order=order,
                                                  page=page, page_size=size, **f))
    return out


def check(store: Store, account_id: str) -> None:
    scenarios.check(store, account_id, queries())


def test_covered_user_lists_match_brute_force(store, account):
    scenarios.scenario(store, account, entries, check)


def test_which_lists_are_covered(store):
    Q = AccessLogQuery
    pg = store.dialect == "postgresql"
    covered = (Q(user_id="u", sort_by="duration"), Q(user_id="u", service_id="s"),
               Q(user_id="u", method="GET", sort_by="method"),
               Q(user_id="u", status_code=404, sort_by="status_code", sort_order="asc"),
               Q(user_id="u", start_date=NOW, method="GET"), Q(user_id="u", page=2),
               Q(user_id="u", start_date=NOW, page=3, sort_order="asc"))
    not_covered = (Q(user_id="u"), Q(user_id="u", start_date=NOW, end_date=NOW),
                   Q(user_id="u", sort_by="url"), Q(user_id="u", path="/p"),
                   Q(user_id="u", status="failed", sort_by="duration"),
                   Q(user_email="a", sort_by="duration"), Q(sort_by="duration"),
                   Q(service_id="s", method="GET"))
    assert [_accesslog_query._user_covered(store, q) for q in covered] == [pg] * len(covered)
    assert not any(_accesslog_query._user_covered(store, q) for q in not_covered)


def _statements(store: Store, account_id: str, q: AccessLogQuery) -> list[tuple[str, object]]:
    """(statement, parameters) of the list call's reads of ``access_log_entries``."""
    seen: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, *args):
        if "access_log_entries" in statement:
            seen.append((statement, parameters))

    sa.event.listen(store._engine, "before_cursor_execute", grab)
    try:
        store.access_logs.list(account_id, q)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", grab)
    return seen


def test_user_index_covers_the_statements(store, account):
    """On PostgreSQL the count and the page's ids of a covered list can be
    read by an index-only scan of the user index (every column they read is
    in it): with plain index, bitmap and sequential scans disabled, the plan
    still reads that index alone.  SQLite lists as before."""
    store.access_logs.append_many(entries(account.id, 120))
    q = AccessLogQuery(user_id="alice", service_id="svc-1", status_code=404,
                       sort_by="duration", page=2, page_size=3)
    assert brute(entries(account.id, 120), q)[0] > 3  # a count and a page
    statements = _statements(store, account.id, q)
    assert len(statements) == 2  # the count, the page
    if store.dialect != "postgresql":
        return
    with store._engine.connect() as conn:
        raw = conn.connection.driver_connection
        for name in ("enable_seqscan", "enable_bitmapscan", "enable_indexscan"):
            raw.execute(f"SET LOCAL {name} = off")
        for statement, parameters in statements:
            plan = "\n".join(r[0] for r in raw.execute(
                "EXPLAIN " + statement, parameters, prepare=False).fetchall())
            assert f"Index Only Scan using {INDEX}" in plan, plan
            if "count(" not in statement:  # the page: ids first, then their rows
                assert "JOIN" in statement
        conn.rollback()


def _include(conn) -> str | None:
    """The INCLUDE list of the user index (None without the index)."""
    if conn.dialect.name != "postgresql":
        names = {i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}
        return None if INDEX not in names else "?"
    row = conn.execute(sa.text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": INDEX}).scalar()
    if row is None:
        return None
    return row.split("INCLUDE", 1)[1].strip() if "INCLUDE" in row else ""


def test_migration_0026_up_and_down(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    pg = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0025")
            assert _include(conn) == ("" if pg else None)
            migrations.upgrade(conn, "0026")
            assert _include(conn) == (
                "(duration, status_code, service_id, method)" if pg else None)
            names = {i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}
            assert "ix_access_log_entries_account_user_building" not in names
            migrations.downgrade(conn, "0025")
            assert _include(conn) == ("" if pg else None)
            migrations.upgrade(conn, "head")
            conn.commit()
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        store.accounts.create(Account(id="a1", domain="a1.test"))
        store.access_logs.append_many(entries("a1", 40))
        stored = everything(store, "a1")
        for q in (AccessLogQuery(user_id="bob", sort_by="duration", page=2, page_size=3),
                  AccessLogQuery(user_id="alice", method="GET", page_size=4)):
            page = store.access_logs.list("a1", q)
            assert (page.total_records, [e.id for e in page.data]) == brute(stored, q)
    finally:
        store.close()
