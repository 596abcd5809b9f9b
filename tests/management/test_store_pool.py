"""The SQLite store's connection pool hands out the most recently returned
connection first: a SQLite connection's page cache is invalidated by other
connections' commits, so the warm one is the last one used.  Consecutive
access-log batches run on one connection, not round the idle ones."""

from __future__ import annotations

from nbgateway.management.accesslogdecode import decode_batch
from nbgateway.management.model import Account
from nbgateway.management.store import Store
from tests.management.conftest import CLUSTER
from tests.management.test_accesslog_ingest import batch


def test_sqlite_batches_reuse_the_warm_connection(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    account = store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    # several idle connections in the pool, each used once
    conns = [store._engine.connect() for _ in range(4)]
    for conn in conns:
        conn.exec_driver_sql("SELECT 1")
    for conn in conns:
        conn.close()
    for i in range(6):
        n = store.access_logs.append_columns(decode_batch(batch(account.id, f"s{i}", 5).logs))
        assert n == 5
    # only one connection ever ingested (each ingesting connection is tagged once)
    held = [store._engine.connect() for _ in range(5)]
    try:
        tagged = [c for c in held if c.connection.info.get("nbgw_accesslog_cache_spill")]
        assert len(tagged) == 1
    finally:
        for conn in held:
            conn.close()
        store.close()
