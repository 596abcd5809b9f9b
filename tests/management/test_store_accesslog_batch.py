"""store.access_logs: batch append (one transaction, idempotent on the entry id)
and retention by age and by per-account row count, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, User

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _entries(account_id: str, n: int, *, start: int = 0, user_id: str = "") -> list[AccessLogEntry]:
    return [
        AccessLogEntry(
            id=f"{account_id}-log-{i:06d}",
            account_id=account_id,
            service_id="svc-1",
            timestamp=T0 + timedelta(seconds=i),
            method="GET",
            host="app.netbird.test",
            path=f"/p{i}",
            status_code=200,
            protocol="http",
            user_id=user_id,
        )
        for i in range(start, start + n)
    ]


def _ids(store, account_id: str) -> list[str]:
    out: list[str] = []
    page = 1
    while True:
        got = store.access_logs.list(
            account_id, AccessLogQuery(page=page, page_size=100, sort_order="asc")
        )
        out.extend(e.id for e in got.data)
        if page >= got.total_pages:
            return out
        page += 1


def test_batch_is_stored_once_even_when_retried(store, account):
    batch = _entries(account.id, 250)
    assert store.access_logs.append_many(batch) == 250
    # the same batch again (a retry after a lost answer) and an overlapping one
    assert store.access_logs.append_many(batch) == 0
    assert store.access_logs.append_many(_entries(account.id, 100, start=200)) == 50
    ids = _ids(store, account.id)
    assert len(ids) == len(set(ids)) == 300
    # a single append of a stored id does not duplicate either, and answers
    # with the entry as stored, not the one it was given
    again = store.access_logs.append(dataclasses.replace(batch[0], path="/changed"))
    assert again.id == batch[0].id and again.path == batch[0].path
    assert store.access_logs.count(account.id) == 300
    fresh = store.access_logs.append(dataclasses.replace(batch[0], id="single-new"))
    assert fresh.id == "single-new" and store.access_logs.count(account.id) == 301


def test_batch_duplicate_inside_one_batch_and_unknown_account(store, account):
    batch = _entries(account.id, 3)
    batch.append(batch[1])
    batch += _entries("no-such-account", 2)
    assert store.access_logs.append_many(batch) == 3
    assert store.access_logs.count(account.id) == 3
    assert store.access_logs.count("no-such-account") == 0
    assert store.access_logs.append_many([]) == 0


def test_batch_captures_user_groups_and_sanitises(store, account):
    store.users.create(User(id="alice", account_id=account.id, role="user"))
    [e] = _entries(account.id, 1, user_id="alice")
    bad = AccessLogEntry(
        id="nul", account_id=account.id, service_id="s", path="/a\x00b",
        method="M" * 40, source_ip="::ffff:10.0.0.9",
    )
    assert store.access_logs.append_many([e, bad]) == 2
    got = store.access_logs.get(account.id, e.id)
    assert got.user_groups == ()  # alice exists, without auto groups
    nul = store.access_logs.get(account.id, "nul")
    assert nul.path == "/a\ufffdb" and nul.method == "M" * 32 and nul.source_ip == "10.0.0.9"


def _prune_all(store, account_id: str, **kw) -> int:
    total = 0
    while True:
        n = store.access_logs.prune_step(account_id, limit=40, **kw)
        assert n <= 40
        total += n
        if n < 40:
            return total


def test_prune_by_age_in_small_steps(store, account):
    store.access_logs.append_many(_entries(account.id, 200))
    cutoff = T0 + timedelta(seconds=130)
    assert store.access_logs.prune_step(account.id, older_than=cutoff, max_rows=None,
                                        limit=40) == 40
    assert _prune_all(store, account.id, older_than=cutoff, max_rows=None) == 90
    ids = _ids(store, account.id)
    assert ids == [f"{account.id}-log-{i:06d}" for i in range(130, 200)]


def test_prune_by_row_count_keeps_newest_per_account(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    store.access_logs.append_many(_entries(account.id, 150) + _entries(other.id, 30))
    assert _prune_all(store, account.id, older_than=None, max_rows=100) == 50
    assert _ids(store, account.id) == [f"{account.id}-log-{i:06d}" for i in range(50, 150)]
    assert store.access_logs.count(other.id) == 30  # other accounts untouched
    # age and count together: age first, then the rest beyond the count
    cutoff = T0 + timedelta(seconds=60)
    assert _prune_all(store, account.id, older_than=cutoff, max_rows=50) == 50
    assert _ids(store, account.id) == [f"{account.id}-log-{i:06d}" for i in range(100, 150)]
    assert {"acct-1", "acct-2"} <= set(store.access_logs.account_ids())


def test_prune_limit_validated(store, account):
    from nbgateway.management.errors import ValidationError

    with pytest.raises(ValidationError):
        store.access_logs.prune_step(account.id, older_than=None, max_rows=1, limit=0)


def test_list_and_retention_queries_use_the_account_time_index(store, account):
    """The default list order (account, newest first) and retention's oldest-first
    scan are answered from ix_access_log_entries_account_time, without a sort."""
    import sqlalchemy as sa

    store.access_logs.append_many(_entries(account.id, 50))
    sql = ("SELECT id FROM access_log_entries WHERE account_id = :a "
           "ORDER BY timestamp DESC, id DESC LIMIT 10")
    with store._engine.connect() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + sql),
                                                         {"a": account.id}))
        else:
            plan = "\n".join(str(r[-1]) for r in conn.execute(
                sa.text("EXPLAIN QUERY PLAN " + sql), {"a": account.id}))
    assert "ix_access_log_entries_account_time" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_batch_stores_the_same_instant_as_a_single_append(store, account):
    """The batch path hands rows to the driver itself: an aware timestamp in
    another zone is stored as the same instant, and both paths sort together."""
    from datetime import timezone

    plus2 = timezone(timedelta(hours=2))
    single = AccessLogEntry(id="single", account_id=account.id, service_id="s",
                            timestamp=T0 + timedelta(microseconds=5))
    batch = AccessLogEntry(id="batch", account_id=account.id, service_id="s",
                           timestamp=(T0 + timedelta(seconds=1)).astimezone(plus2))
    store.access_logs.append(single)
    store.access_logs.append_many([batch])
    assert store.access_logs.get(account.id, "batch").timestamp == T0 + timedelta(seconds=1)
    assert store.access_logs.get(account.id, "single").timestamp == single.timestamp
    assert _ids(store, account.id) == ["single", "batch"]
    window = AccessLogQuery(start_date=T0 + timedelta(seconds=1))
    assert [e.id for e in store.access_logs.list(account.id, window).data] == ["batch"]


def test_batch_is_one_insert_with_no_stored_id_lookup(store, account):
    """A batch is one INSERT ... ON CONFLICT DO NOTHING, counted by the insert
    itself; no SELECT of stored ids first (on PostgreSQL that lookup, an IN
    list of 500 ids, was planned once, generically, while the table was small,
    and psycopg reused the prepared statement: a sequential scan per batch
    that made ingestion ~20x slower between ~20,000 rows and the next
    auto-analyze).  PostgreSQL: the rows go to the session's staging table
    with a binary COPY and one INSERT ... SELECT ... RETURNING counts what it
    inserted (up to 16 rows: one INSERT ... VALUES ... RETURNING); SQLite: one
    executemany whose rowcount is the count."""
    import sqlalchemy as sa

    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(" ".join(statement.split()))

    store.access_logs.append_many(_entries(account.id, 40))
    sa.event.listen(store._engine, "before_cursor_execute", seen)
    try:
        # 20 new, 20 stored: the count is the new ones only
        assert store.access_logs.append_many(_entries(account.id, 40, start=20)) == 20
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", seen)
    on_table = [s for s in statements if "access_log_entries" in s]
    lookups = [s for s in on_table if s.upper().startswith("SELECT")]
    inserts = [s for s in on_table if "INSERT INTO ACCESS_LOG_ENTRIES" in s.upper()]
    assert lookups == [], on_table
    assert len(inserts) == 1, on_table
    if store.dialect == "postgresql":
        assert "FROM nbgw_access_log_stage" in inserts[0] and "RETURNING" in inserts[0]
    else:
        assert "ON CONFLICT (id) DO NOTHING" in inserts[0], inserts[0]
    assert store.access_logs.count(account.id) == 60


def test_a_users_entries_are_listed_from_the_user_index(store, account):
    """PostgreSQL: a regular user's list (its own user_id, newest first) and its
    count are answered from ix_access_log_entries_account_user_time (revision
    0016), not by reading every entry of the account.  SQLite has no such
    index (the ingesting process would pay for it) and lists the same."""
    import sqlalchemy as sa

    store.users.create(User(id="alice", account_id=account.id, role="user"))
    store.access_logs.append_many(_entries(account.id, 20, user_id="alice"))
    store.access_logs.append_many(_entries(account.id, 30, start=20))
    where = "WHERE account_id = :a AND user_id = :u"
    queries = (f"SELECT id FROM access_log_entries {where} ORDER BY timestamp DESC, id DESC "
               "LIMIT 10", f"SELECT count(*) FROM access_log_entries {where}")
    indexes = {i["name"] for i in sa.inspect(store._engine).get_indexes("access_log_entries")}
    if store.dialect == "postgresql":
        with store._engine.connect() as conn:
            conn.execute(sa.text("SET enable_seqscan = off"))
            for sql in queries:
                plan = "\n".join(r[0] for r in conn.execute(
                    sa.text("EXPLAIN " + sql), {"a": account.id, "u": "alice"}))
                assert "ix_access_log_entries_account_user_time" in plan, plan
                assert "Sort" not in plan, plan
    else:
        assert "ix_access_log_entries_account_user_time" not in indexes
    page = store.access_logs.list(
        account.id, AccessLogQuery(user_id="alice", page_size=5))
    assert page.total_records == 20 and len(page.data) == 5
    assert all(e.user_id == "alice" for e in page.data)
    assert [e.id for e in page.data] == [f"{account.id}-log-{i:06d}" for i in (19, 18, 17, 16, 15)]


def test_sqlite_connections_checkpoint_the_wal_every_10000_pages(tmp_path):
    """Every pooled SQLite connection (the writer included) checkpoints its WAL
    after 10,000 pages rather than SQLite's 1,000 (pages the batches rewrite
    are copied once per checkpoint), and stays in WAL mode, synchronous=NORMAL."""
    from nbgateway.management.store import Store

    store = Store.open(f"sqlite:///{tmp_path}/w.db")
    try:
        store.accounts.create(Account(id="a1", domain="a1.test"))
        conns = [store._engine.connect() for _ in range(3)]
        try:
            for conn in conns:
                pragma = conn.exec_driver_sql
                assert pragma("PRAGMA wal_autocheckpoint").scalar_one() == 10_000
                assert pragma("PRAGMA journal_mode").scalar_one() == "wal"
                assert pragma("PRAGMA synchronous").scalar_one() == 1  # NORMAL
        finally:
            for conn in conns:
                conn.close()
    finally:
        store.close()
