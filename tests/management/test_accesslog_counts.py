"""Access-log totals: the per-account counter (revision 0015) stays exact.

``store.access_logs.list`` answers the unfiltered ``total_records`` from
``access_log_counts`` (kept by triggers) and filtered totals with
``count(*)``; both must equal what is stored after every write path:
single and batch appends (retried batches, duplicates inside a batch,
unknown accounts), retention by age and by row count, account deletion and
the migration's backfill of a populated database.  ``status=failed`` reads
the partial index ``ix_access_log_entries_failed``: its answers must be
those of the condition.  Both backends (the ``store`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import access_log_counts, access_log_entries

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def entry(account_id: str, i: int, *, age: timedelta = timedelta(0), status: int = 200,
          reason: str = "", user_id: str = "") -> AccessLogEntry:
    return AccessLogEntry(id=f"{account_id}-{i:05d}", account_id=account_id, service_id="svc",
                          timestamp=NOW - age, method="GET", host="h.test", path=f"/{i}",
                          status_code=status, reason=reason, user_id=user_id)


def stored(store: Store, account_id: str) -> int:
    with store._read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(access_log_entries).where(
            access_log_entries.c.account_id == account_id)).scalar_one()


def counter(store: Store, account_id: str) -> int | None:
    with store._read() as conn:
        return conn.execute(sa.select(access_log_counts.c.entries).where(
            access_log_counts.c.account_id == account_id)).scalar_one_or_none()


def total(store: Store, account_id: str, **filters) -> int:
    page = store.access_logs.list(account_id, AccessLogQuery(page_size=7, **filters))
    assert page.total_pages == -(-page.total_records // 7)
    return page.total_records


def test_totals_exact_after_appends_and_retried_batches(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    assert total(store, account.id) == 0 and counter(store, account.id) is None
    store.access_logs.append(entry(account.id, 0))
    store.access_logs.append(entry(account.id, 0))  # the same id again: not stored twice
    assert total(store, account.id) == 1 == stored(store, account.id)
    batch = [entry(account.id, i) for i in range(1, 40)] + [
        entry(other.id, i) for i in range(25)]
    assert store.access_logs.append_many(batch) == 64
    assert store.access_logs.append_many(batch) == 0  # a retried batch
    # overlapping batch, a duplicate inside it and an account that does not exist
    again = [entry(account.id, i) for i in range(35, 50)] + [entry(account.id, 49)] + [
        entry("acct-gone", 1)]
    assert store.access_logs.append_many(again) == 10
    for account_id, n in ((account.id, 50), (other.id, 25)):
        assert total(store, account_id) == n == stored(store, account_id)
        assert counter(store, account_id) == n
    assert counter(store, "acct-gone") is None
    # a filter that matches everything counts the same rows as the counter
    assert total(store, account.id, start_date=NOW - timedelta(days=1)) == 50


def test_totals_exact_after_retention_by_age_and_rows(store, account):
    store.access_logs.append_many(
        [entry(account.id, i, age=timedelta(hours=i)) for i in range(120)])
    while store.access_logs.prune_step(account.id, older_than=NOW - timedelta(hours=100),
                                       max_rows=None, limit=7):
        pass
    assert total(store, account.id) == 101 == stored(store, account.id)  # 0..100 h old
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=30, limit=9):
        pass
    assert total(store, account.id) == 30 == stored(store, account.id)
    assert counter(store, account.id) == 30
    page = store.access_logs.list(account.id, AccessLogQuery(page=5, page_size=7))
    assert [e.path for e in page.data] == ["/28", "/29"]  # the newest 30 kept, newest first


def test_account_deletion_zeroes_its_total(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    store.access_logs.append_many([entry(account.id, i) for i in range(12)]
                                  + [entry(other.id, i) for i in range(3)])
    store.accounts.delete(account.id)
    assert stored(store, account.id) == 0
    assert counter(store, account.id) is None  # the counter row went with the account
    assert total(store, other.id) == 3 == counter(store, other.id)


def test_status_filters_answer_as_the_condition(store, account):
    rows = [entry(account.id, 0, status=200), entry(account.id, 1, status=399),
            entry(account.id, 2, status=400), entry(account.id, 3, status=503),
            entry(account.id, 4, status=200, reason="authentication required"),
            entry(account.id, 5, status=302, user_id="u1"),
            entry(account.id, 6, status=404, user_id="u1")]
    store.access_logs.append_many(rows)
    for _ in range(7):  # past psycopg's prepare threshold: generic plans answer the same
        failed = store.access_logs.list(account.id, AccessLogQuery(status="failed"))
        ok = store.access_logs.list(account.id, AccessLogQuery(status="success"))
        assert sorted(e.path for e in failed.data) == ["/2", "/3", "/4", "/6"]
        assert failed.total_records == 4
        assert sorted(e.path for e in ok.data) == ["/0", "/1", "/5"] and ok.total_records == 3
        assert total(store, account.id, status="failed", user_id="u1") == 1
        assert total(store, account.id, status="success", status_code=302) == 1
        assert total(store, account.id) == 7


def test_migration_backfills_the_counter(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0014")
            for a in ("a1", "a2"):
                conn.execute(sa.text(
                    "INSERT INTO accounts (id, domain, network_v4, network_v6) "
                    f"VALUES ('{a}', '{a}.test', '100.64.0.0/10', 'fd00::/64')"))
            for i in range(6):  # e5: of an account that no longer exists, not counted
                conn.execute(access_log_entries.insert().values(
                    id=f"e{i}", account_id="a1" if i < 3 else "a2" if i < 5 else "gone",
                    service_id="s",
                    timestamp=NOW, location_connection_ip="", location_country_code="",
                    location_city_name="", location_geo_name_id=0, subdivision_code="",
                    method="GET", host="h", path="/", duration=0,
                    status_code=500 if i == 0 else 200, reason="", user_id="",
                    auth_method_used="", bytes_upload=0, bytes_download=0, protocol="http",
                    agent_network=False))
            conn.commit()
            migrations.upgrade(conn, "0015")
            counts = {r.account_id: r.entries for r in conn.execute(sa.select(access_log_counts))}
            assert counts == {"a1": 3, "a2": 2}
            migrations.downgrade(conn, "0014")
            assert "access_log_counts" not in sa.inspect(conn).get_table_names()
            conn.execute(access_log_entries.delete().where(access_log_entries.c.id == "e4"))
            conn.commit()
            migrations.upgrade(conn, "head")
            counts = {r.account_id: r.entries for r in conn.execute(sa.select(access_log_counts))}
            assert counts == {"a1": 3, "a2": 1}
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        assert total(store, "a1") == 3 and total(store, "a1", status="failed") == 1
    finally:
        store.close()


def _sqlite_insert_trigger(conn) -> bool:
    return conn.execute(sa.text(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
        "AND name = 'access_log_counts_insert'")).scalar_one() == 1


def test_sqlite_counts_inserts_per_batch_without_a_row_trigger(store, account):
    """Revision 0022: on SQLite no trigger runs per inserted entry; the store
    raises each account's counter by what the batch stored for it (batches
    of several accounts, ids already stored, duplicates inside the batch)."""
    with store._read() as conn:
        if store.dialect == "postgresql":
            assert conn.execute(sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'access_log_counts_insert'"
            )).scalar_one() == 1  # PostgreSQL keeps its statement trigger
        else:
            assert not _sqlite_insert_trigger(conn)
            assert "ix_access_log_entries_timestamp" not in {
                i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}
    others = [store.accounts.create(Account(id=f"batch-{k}", domain=f"o{k}.test"))
              for k in range(3)]
    ids = [account.id] + [o.id for o in others]
    seen: dict[str, set[str]] = {a: set() for a in ids}
    for round_ in range(4):  # overlapping batches over 1, 2, 3, 4 accounts
        batch = [entry(a, round_ * 5 + i) for i in range(7) for a in ids[: 1 + round_]]
        batch.append(entry(ids[0], round_ * 5))  # a duplicate inside the batch
        before = sum(len(v) for v in seen.values())
        for e in batch:
            seen[e.account_id].add(e.id)
        assert store.access_logs.append_many(batch) == sum(
            len(v) for v in seen.values()) - before
        for a in ids:
            assert (counter(store, a) or 0) == len(seen[a]) == stored(store, a) == total(store, a)
    assert store.access_logs.append_many(batch) == 0  # a retried batch
    store.access_logs.append(entry(others[2].id, 1000))
    store.access_logs.append(entry(others[2].id, 1000))  # the same id: not counted twice
    for a in ids:
        assert counter(store, a) == len(seen[a]) + (a == others[2].id) == stored(store, a)


def test_sqlite_migration_0022_hands_counting_over(tmp_path):
    """0021 -> 0022 drops the SQLite insert trigger, 0022 -> 0021 brings it
    back; the counter stays exact across both (raw inserts count only while
    the trigger exists, the store's inserts always)."""
    dsn = f"sqlite:///{tmp_path}/m.db"
    engine = StoreBase.build_engine(normalise_dsn(dsn, None))

    def raw(conn, i: int) -> None:
        conn.execute(access_log_entries.insert().values(
            id=f"raw{i}", account_id="a1", service_id="s", timestamp=NOW,
            location_connection_ip="", location_country_code="", location_city_name="",
            location_geo_name_id=0, subdivision_code="", method="GET", host="h", path="/",
            duration=0, status_code=200, reason="", user_id="", auth_method_used="",
            bytes_upload=0, bytes_download=0, protocol="http", agent_network=False))

    def count(conn) -> int:
        return conn.execute(sa.select(access_log_counts.c.entries)).scalar_one()

    def indexes(conn) -> set[str]:
        return {i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}

    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0021")
            conn.execute(sa.text(
                "INSERT INTO accounts (id, domain, network_v4, network_v6) "
                "VALUES ('a1', 'a1.test', '100.64.0.0/10', 'fd00::/64')"))
            raw(conn, 0)
            conn.commit()
            assert _sqlite_insert_trigger(conn) and count(conn) == 1
            migrations.upgrade(conn, "0022")
            assert not _sqlite_insert_trigger(conn)
            assert "ix_access_log_entries_timestamp" not in indexes(conn)
            raw(conn, 1)  # not the store: nothing counts it any more
            conn.commit()
            assert count(conn) == 1
            conn.execute(access_log_entries.delete().where(access_log_entries.c.id == "raw1"))
            conn.commit()
            assert count(conn) == 0  # the delete trigger stays (0 = 1 - 1: raw1 was uncounted)
            conn.execute(access_log_counts.update().values(entries=1))
            conn.commit()
        store = Store.open(dsn)
        try:
            assert store.access_logs.append_many([entry("a1", i) for i in range(3)]) == 3
            assert counter(store, "a1") == 4 == stored(store, "a1")
        finally:
            store.close()
        with engine.connect() as conn:
            migrations.downgrade(conn, "0021")
            assert _sqlite_insert_trigger(conn)
            assert "ix_access_log_entries_timestamp" in indexes(conn)
            raw(conn, 2)
            conn.commit()
            assert count(conn) == 5
    finally:
        engine.dispose()


def test_sqlite_time_queries_use_the_account_time_index(tmp_path):
    """Without ``ix_access_log_entries_timestamp`` (revision 0022) SQLite
    answers the account's time range (the list's dates, retention by age)
    from ``(account_id, timestamp, id)``, not a scan."""
    store = Store.open(f"sqlite:///{tmp_path}/p.db")
    try:
        store.accounts.create(Account(id="a1", domain="a1.test"))
        store.access_logs.append_many([entry("a1", i, age=timedelta(hours=i)) for i in range(50)])
        ale = access_log_entries
        queries = [
            sa.select(ale.c.id).where(ale.c.account_id == "a1", ale.c.timestamp < NOW)
            .order_by(ale.c.timestamp.asc(), ale.c.id.asc()).limit(7),
            sa.select(ale).where(ale.c.account_id == "a1", ale.c.timestamp >= NOW)
            .order_by(ale.c.timestamp.desc(), ale.c.id.desc()).limit(7),
        ]
        with store._read() as conn:
            for q in queries:
                sql = str(q.compile(conn, compile_kwargs={"literal_binds": True}))
                plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                assert "ix_access_log_entries_account_time" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
        while store.access_logs.prune_step("a1", older_than=NOW - timedelta(hours=20),
                                           max_rows=None, limit=4):
            pass
        assert stored(store, "a1") == 21 == counter(store, "a1")
    finally:
        store.close()
