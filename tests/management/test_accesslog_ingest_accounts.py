"""Batch ingestion of several accounts at once, and PostgreSQL's batch insert.

A batch may mix accounts (a gateway serves several): the ``user_groups`` of
all its entries are captured with one lookup for the batch (users, peers,
their memberships, group names: at most four queries, whatever the number
of accounts), each entry getting what the single-entry capture gives, a
user, peer or group of another account never counting.  On PostgreSQL the
staged rows go in with one plain ``INSERT ... SELECT`` that leaves out ids
already stored (``NOT EXISTS``) in account/user/time order, planned per
batch (never a prepared generic plan); a single append committing one of
the batch's ids while the batch inserts makes the batch's transaction retry,
and the count stays exact.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from nbgateway.management.accesslogdecode import decode_batch
from nbgateway.management.model import Account, Group, Peer, User
from nbgateway.management.store._accesslog import (
    _sql,
    entry_values,
    executemany_rows,
    prepare_rows,
)
from nbgateway.management.store.schema import access_log_entries as ale
from tests.management.test_accesslog_ingest import counter, message, rows_of


@pytest.fixture
def accounts(store):
    """Three accounts, each with groups, users and a peer; ``shared`` is a
    user of acct-b only."""
    made = []
    for a in ("acct-a", "acct-b", "acct-c"):
        made.append(store.accounts.create(Account(id=a, domain=f"{a}.test")))
        for g in ("ops", "dev"):
            store.groups.create(Group(id=f"{a}-{g}", account_id=a, name=f"{g}-{a}"))
        store.users.create(User(id=f"{a}-alice", account_id=a, role="user",
                                auto_groups=(f"{a}-ops", f"{a}-dev")))
        store.users.create(User(id=f"{a}-bob", account_id=a, role="user"))
    store.users.create(User(id="shared", account_id="acct-b", role="user",
                            auto_groups=("acct-b-dev",)))
    return made


def test_a_multi_account_batch_captures_groups_in_one_lookup(store, accounts):
    peers = {a.id: store.peers.create(Peer(account_id=a.id, name="agent", key=f"k-{a.id}",
                                           groups=[f"{a.id}-ops"])) for a in accounts}
    users = {a.id: [f"{a.id}-alice", f"{a.id}-bob", peers[a.id].id, "shared", "nobody", ""]
             for a in accounts}
    # every entry's account in turn (a 3-account batch), each user several times
    logs = [message(a.id, f"m-{a.id}-{i}-{u_i}", user_id=users[a.id][u_i])
            for i in range(2) for u_i in range(6) for a in accounts]
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(" ".join(statement.split()))

    sa.event.listen(store._engine, "before_cursor_execute", seen)
    try:
        assert store.access_logs.append_columns(decode_batch(logs)) == len(logs)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", seen)
    lookups = [s for s in statements
               if s.upper().startswith("SELECT") and any(
                   f"FROM {t}" in s for t in ("users", "peers", "group_peers", "groups"))]
    assert len(lookups) <= 4, lookups
    with store._engine.connect() as conn:
        for a in accounts:
            want = {u: store.access_logs._capture_user_groups(conn, a.id, u)
                    for u in users[a.id]}
            got = {r.user_id: (tuple(g) if (g := json.loads(r.user_groups or "null")) is not None
                               else None)
                   for r in rows_of(store, a.id)}
            assert got == want, a.id
            assert want[f"{a.id}-alice"] == (f"ops-{a.id}", f"dev-{a.id}")
            assert f"ops-{a.id}" in want[peers[a.id].id]
            assert want[f"{a.id}-bob"] == ()
            # a user of another account (and unknown ids) are not captured
            assert want["nobody"] is None and want[""] is None
            assert want["shared"] == (("dev-acct-b",) if a.id == "acct-b" else None)
            assert counter(store, a.id) == 12


def test_one_account_capture_is_the_same_lookup(store, accounts):
    """``_capture_many`` (one account) gives what the batch lookup gives."""
    with store._engine.connect() as conn:
        one = store.access_logs._capture_many(conn, "acct-b", ["acct-b-alice", "shared",
                                                               "acct-a-alice", "nobody"])
        many = store.access_logs._capture_accounts(
            conn, {"acct-a": ["acct-a-alice", "shared"], "acct-b": ["acct-b-alice", "shared"]})
    assert one == {"acct-b-alice": ("ops-acct-b", "dev-acct-b"), "shared": ("dev-acct-b",)}
    assert many == {"acct-a": {"acct-a-alice": ("ops-acct-a", "dev-acct-a")},
                    "acct-b": {"acct-b-alice": ("ops-acct-b", "dev-acct-b"),
                               "shared": ("dev-acct-b",)}}


#: the tests of PostgreSQL's batch insert run on PostgreSQL only (not generated for SQLite)
_ON_POSTGRESQL = pytest.mark.parametrize(
    "db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


@_ON_POSTGRESQL
def test_pg_batch_insert_skips_stored_ids_in_order_and_is_never_prepared(store, accounts):
    with store._engine.connect() as conn:
        sql = _sql(conn.dialect)["insert"]
        assert "NOT EXISTS" in sql and "ON CONFLICT" not in sql
        assert "ORDER BY account_id, user_id, timestamp RETURNING" in sql
        raw = conn.connection.driver_connection
        threshold = raw.prepare_threshold
        stored = 0
        for b in range(8):  # past psycopg's prepare threshold (5)
            values = [entry_values(e) for e in store_entries(b)]
            stored += executemany_rows(conn, prepare_rows(values, "postgresql"))
            assert raw.prepare_threshold == threshold
        # batch b holds ids of batch b - 1 (half of them) and 10 new ones
        assert stored == 20 + 7 * 10
        prepared = conn.exec_driver_sql(
            "SELECT statement FROM pg_prepared_statements").scalars().all()
        assert not [s for s in prepared if "nbgw_access_log_stage" in s], prepared
        conn.commit()
    assert sum(counter(store, a.id) for a in accounts) == 90
    with store._read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ale)).scalar_one() == 90


def store_entries(b: int):
    """Batch *b*: 20 entries over the three accounts, ids 10*b .. 10*b + 19."""
    from nbgateway.management.model import AccessLogEntry, utcnow

    now = utcnow()
    return [AccessLogEntry(id=f"p-{i:04d}", account_id=("acct-a", "acct-b", "acct-c")[i % 3],
                           service_id="svc", timestamp=now, user_id=f"u{i % 4}",
                           user_groups=("g",), host="h", path=f"/{i}", method="GET",
                           status_code=200)
            for i in range(10 * b, 10 * b + 20)]


@_ON_POSTGRESQL
def test_pg_a_single_append_racing_the_batch_insert_keeps_the_count_exact(store, accounts):
    """The single append's uncommitted row holds an id of the batch: the
    batch's insert waits for it, fails with a unique violation when it
    commits, and the store retries the batch, which then leaves that id out."""
    logs = [message(("acct-a", "acct-b")[i % 2], f"race-{i:04d}") for i in range(40)]
    single = [entry_values(e) for e in store_entries(0)[:1]]
    single = [(logs[5].log_id, "acct-b", *single[0][2:])]
    holder = store._engine.connect()
    holder.begin()
    assert executemany_rows(holder, prepare_rows(single, "postgresql")) == 1
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(
        store.access_logs.append_columns(decode_batch(logs))))
    t.start()
    try:
        deadline = time.monotonic() + 10
        with store._engine.connect() as watch:
            while time.monotonic() < deadline:  # the batch's insert waits on the row
                if watch.exec_driver_sql(  # waiting for the single append's transaction
                        "SELECT count(*) FROM pg_locks WHERE NOT granted "
                        "AND locktype = 'transactionid'").scalar_one():
                    break
                time.sleep(0.02)
            else:
                rows = watch.exec_driver_sql(
                    "SELECT state, wait_event_type, wait_event, left(query, 120) "
                    "FROM pg_stat_activity").all()
                pytest.fail(f"the batch's insert did not wait for the single append: {rows}")
        holder.commit()
    finally:
        holder.close()
        t.join(30)
    assert result == [39]
    # race-0005 (acct-b) stored once, by the single append; the batch the other 39
    assert counter(store, "acct-a") == 20 and counter(store, "acct-b") == 20
    assert len({r.id for r in rows_of(store, "acct-a") + rows_of(store, "acct-b")}) == 40
