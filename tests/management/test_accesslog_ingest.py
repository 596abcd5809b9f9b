"""Access-log batch ingestion straight from protobuf messages, on both backends.

``NbgwSendAccessLogBatch`` builds ``VALUE_FIELDS`` tuples from the messages
(:func:`access_log_values`, no ``AccessLogEntry`` per entry), the store
prepares them column-wise (:func:`prepare_rows`) and writes them with
:func:`executemany_rows` (SQLite: ``executemany`` of tuples; PostgreSQL: a
binary ``COPY`` into a staging table and one ``INSERT ... SELECT``, or one
``INSERT ... VALUES`` for a few rows).  The guarantees checked here: one
count type on both backends and an exact ``stored`` count (retries store
nothing twice), counters exact, user groups captured at write time,
malformed entries skipped and counted, the token's scope enforced per entry,
the same values as the single-entry path.
"""

from __future__ import annotations

import dataclasses
import types
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.errors import ValidationError
from nbgateway.management.model import AccessLogEntry, Account, Group, User
from nbgateway.management.proxyrpcs import AccessLogRpcs, access_log_record, access_log_values
from nbgateway.management.store._accesslog import (
    VALUE_FIELDS,
    entry_values,
    executemany_rows,
    prepare_rows,
)
from nbgateway.management.store.schema import access_log_counts, access_log_entries

T0 = datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC)


class AbortedError(Exception):
    pass


class Context:
    """The part of a grpc.ServicerContext the RPC uses."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortedError(code, details)


def message(account_id: str, log_id: str, **kw) -> pb.AccessLog:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(T0)
    base = dict(timestamp=ts, log_id=log_id, account_id=account_id, service_id="svc-1",
                host="app.netbird.test", path=f"/{log_id}", duration_ms=7, method="GET",
                response_code=200, source_ip="100.64.0.10", auth_mechanism="oidc",
                user_id="alice", auth_success=True, protocol="http", bytes_download=10)
    base.update(kw)
    return pb.AccessLog(**base)


def batch(account_id: str, prefix: str, n: int, **kw) -> pb.NbgwSendAccessLogBatchRequest:
    return pb.NbgwSendAccessLogBatchRequest(
        logs=[message(account_id, f"{prefix}-{i:04d}", **kw) for i in range(n)])


def rows_of(store, account_id: str) -> list[sa.Row]:
    with store._read() as conn:
        return list(conn.execute(
            sa.select(access_log_entries).where(access_log_entries.c.account_id == account_id)
            .order_by(access_log_entries.c.id)))


def counter(store, account_id: str) -> int:
    with store._read() as conn:
        return conn.execute(sa.select(access_log_counts.c.entries).where(
            access_log_counts.c.account_id == account_id)).scalar_one_or_none() or 0


@pytest.fixture
def alice(store, account):
    store.groups.create(Group(id="g-dev", account_id=account.id, name="developers"))
    return store.users.create(User(id="alice", account_id=account.id, role="user",
                                   auto_groups=("g-dev",)))


def test_values_are_the_records_fields_in_order():
    md = {"k": "v", "x": "y"}
    e = message("acct-1", "v-1", source_ip="::ffff:10.1.2.3", protocol="tcp",
                response_code=502, auth_success=False, metadata=md, agent_network=True,
                nbgw_target="http://10.0.0.1:80", bytes_upload=3, duration_ms=-4)
    values = access_log_values(e)
    record = access_log_record(e)
    assert len(values) == len(VALUE_FIELDS)
    assert entry_values(record) == values and values[20] == md
    assert record.timestamp == T0 and record.timestamp.tzinfo is UTC
    assert record.source_ip == "10.1.2.3" and record.duration == -4_000_000
    assert record.reason == "" and record.user_groups is None  # tcp: no HTTP reason
    http = access_log_record(message("acct-1", "v-2", response_code=404))
    assert http.reason == "Request failed" and http.metadata == {}
    assert entry_values(http)[VALUE_FIELDS.index("metadata")] == {}
    assert access_log_values(message("acct-1", "v-2"))[VALUE_FIELDS.index("metadata")] is None
    no_ts = pb.AccessLog(log_id="v-3", account_id="acct-1")
    assert access_log_values(no_ts)[3].tzinfo is UTC


@pytest.mark.parametrize("bad", [
    dict(account_id=""), dict(source_ip="not-an-ip"), dict(protocol="gopher"),
    dict(duration_ms=2**62), dict(timestamp=timestamp_pb2.Timestamp(seconds=2**50)),
    dict(timestamp=timestamp_pb2.Timestamp(seconds=1, nanos=-1)),
])
def test_malformed_values_raise_value_error(bad):
    with pytest.raises(ValueError):
        access_log_values(message(**{"account_id": "acct-1", "log_id": "bad", **bad}))


def test_batch_rpc_stores_once_with_exact_counts_and_groups(store, account, alice):
    rpcs, ctx = AccessLogRpcs(store), Context()
    caller = types.SimpleNamespace(account_id=None)  # a shared gateway: ids as sent
    big, small = batch(account.id, "big", 60), batch(account.id, "small", 3)
    assert rpcs.NbgwSendAccessLogBatch(big, ctx, caller).stored == 60  # COPY on PostgreSQL
    assert rpcs.NbgwSendAccessLogBatch(small, ctx, caller).stored == 3  # VALUES there
    assert rpcs.NbgwSendAccessLogBatch(big, ctx, caller).stored == 0  # retried
    assert rpcs.NbgwSendAccessLogBatch(small, ctx, caller).stored == 0
    mixed = pb.NbgwSendAccessLogBatchRequest(logs=[*big.logs[50:], *batch(
        account.id, "new", 10).logs, big.logs[55]])
    assert rpcs.NbgwSendAccessLogBatch(mixed, ctx, caller).stored == 10
    rows = rows_of(store, account.id)
    assert len(rows) == len({r.id for r in rows}) == 73
    assert counter(store, account.id) == 73 == store.access_logs.count(account.id)
    got = store.access_logs.get(account.id, "big-0007")
    assert got.user_groups == ("developers",) and got.timestamp == T0
    assert got.duration == 7_000_000 and got.bytes_download == 10 and got.source_ip == "100.64.0.10"
    assert got.upstream_target == "" and got.metadata == {} and got.agent_network is False
    # groups are captured when written: a later change does not rewrite stored entries
    store.groups.create(Group(id="g-ops", account_id=account.id, name="ops"))
    with store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET auto_groups = :g WHERE id = 'alice'"),
                     {"g": '["g-ops"]'})
    assert rpcs.NbgwSendAccessLogBatch(batch(account.id, "later", 20), ctx, caller).stored == 20
    assert store.access_logs.get(account.id, "later-0001").user_groups == ("ops",)
    assert store.access_logs.get(account.id, "big-0001").user_groups == ("developers",)
    nobody = batch(account.id, "anon", 20, user_id="")
    assert rpcs.NbgwSendAccessLogBatch(nobody, ctx, caller).stored == 20
    assert store.access_logs.get(account.id, "anon-0003").user_groups is None


def test_batch_rpc_skips_and_counts_malformed_entries(store, account):
    rpcs, ctx = AccessLogRpcs(store), Context()
    caller = types.SimpleNamespace(account_id=None)  # a global token
    logs = [*batch(account.id, "ok", 30).logs,
            message(account.id, "bad-ip", source_ip="nope"),
            message(account.id, "bad-duration", duration_ms=-(2**62)),
            message(account.id, "bad-ts", timestamp=timestamp_pb2.Timestamp(seconds=-(2**50))),
            message(account_id="", log_id="no-account"),
            message("acct-gone", "unknown-account")]
    req = pb.NbgwSendAccessLogBatchRequest(logs=logs)
    assert rpcs.NbgwSendAccessLogBatch(req, ctx, caller).stored == 30
    assert rpcs.rejected == 4  # the unknown account's entry is well-formed: skipped by the store
    assert [r.id for r in rows_of(store, account.id)] == [f"ok-{i:04d}" for i in range(30)]
    assert counter(store, account.id) == 30


def test_batch_rpc_enforces_scope_on_every_entry(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    rpcs, ctx = AccessLogRpcs(store), Context()
    caller = types.SimpleNamespace(account_id=account.id)
    logs = [*batch(account.id, "a", 20).logs, message(account.id, "bad", protocol="x"),
            message(other.id, "foreign"), *batch(account.id, "b", 5).logs]
    with pytest.raises(AbortedError) as err:
        rpcs.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(logs=logs), ctx, caller)
    assert err.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert rpcs.rejected == 0 and rows_of(store, account.id) == []
    assert rows_of(store, other.id) == [] and counter(store, other.id) == 0
    # a global token may send several accounts' entries in one batch
    both = pb.NbgwSendAccessLogBatchRequest(logs=[*batch(account.id, "a", 20).logs,
                                                  *batch(other.id, "o", 20).logs])
    glob = types.SimpleNamespace(account_id=None)
    assert rpcs.NbgwSendAccessLogBatch(both, ctx, glob).stored == 40
    assert counter(store, account.id) == 20 == counter(store, other.id)


@pytest.mark.parametrize("size", [1, 16, 17, 200])
def test_executemany_rows_counts_inserted_rows_on_every_backend(store, account, size):
    """One contract on both backends: an int, the rows inserted (stored ids
    are not counted), also for a second insert in the same transaction (the
    PostgreSQL staging table does not replay the first one's rows)."""
    values = [entry_values(AccessLogEntry(id=f"r-{i:04d}", account_id=account.id,
                                          service_id="s", timestamp=T0))
              for i in range(2 * size)]
    first, second = values[:size], values[size:]
    dialect = store._engine.dialect.name
    with store._engine.begin() as conn:
        n = executemany_rows(conn, prepare_rows(first, dialect))
        assert type(n) is int and n == size
        assert executemany_rows(conn, prepare_rows(second, dialect)) == size
    with store._engine.begin() as conn:
        assert executemany_rows(conn, prepare_rows(values, dialect)) == 0
        assert executemany_rows(conn, []) == 0
    assert counter(store, account.id) == 2 * size == len(rows_of(store, account.id))


def test_prepare_rows_sanitises_column_wise(store, account):
    long_id = "x" * 300
    values = [
        entry_values(AccessLogEntry(id=long_id, account_id=account.id, service_id="s\x00",
                                    method="M" * 40, source_ip="::ffff:10.0.0.9",
                                    metadata={"a\x00": "b"}, timestamp=T0,
                                    upstream_target="", user_groups=("g\x00",))),
        # the same id once truncated: a duplicate inside the batch, the first one wins
        entry_values(AccessLogEntry(id=long_id + "y", account_id=account.id, service_id="t",
                                    timestamp=T0)),
        entry_values(AccessLogEntry(id="", account_id=account.id, timestamp=None)),
    ]
    assert store.access_logs.append_values(values) == 2
    first = store.access_logs.get(account.id, "x" * 255)
    assert first.service_id == "s\ufffd" and first.method == "M" * 32
    assert first.source_ip == "10.0.0.9" and first.metadata == {"a\ufffd": "b"}
    assert first.user_groups == ("g\ufffd",) and first.upstream_target == ""
    generated = [r for r in rows_of(store, account.id) if r.id != "x" * 255]
    assert len(generated) == 1 and len(generated[0].id) == 20


def test_naive_timestamps_are_refused(store, account):
    naive = AccessLogEntry(id="n", account_id=account.id, timestamp=datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        store.access_logs.append_many([naive])
    assert rows_of(store, account.id) == []


def test_stored_timestamp_text_is_sqlalchemys(store, account):
    """SQLite stores DATETIME as text and the list compares it as text: the
    batch path writes exactly what SQLAlchemy's bind processor writes (also
    for a whole second, where isoformat() alone would drop the fraction)."""
    stamps = [T0.replace(microsecond=0), T0, T0 + timedelta(microseconds=1),
              datetime(1999, 1, 2, 3, 4, 5, tzinfo=UTC)]
    store.access_logs.append_many([AccessLogEntry(id=f"b-{i}", account_id=account.id,
                                                  timestamp=t) for i, t in enumerate(stamps)])
    for i, t in enumerate(stamps):
        store.access_logs.append(AccessLogEntry(id=f"s-{i}", account_id=account.id,
                                                timestamp=t))
    ts = access_log_entries.c.timestamp
    with store._read() as conn:
        raw = dict(conn.execute(sa.select(access_log_entries.c.id, sa.cast(ts, sa.String))).all())
    for i, t in enumerate(stamps):
        assert raw[f"b-{i}"] == raw[f"s-{i}"]
        assert store.access_logs.get(account.id, f"b-{i}").timestamp == t
    if store.dialect == "sqlite":
        dialect = store._engine.dialect
        proc = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
        for i, t in enumerate(stamps):
            assert raw[f"b-{i}"] == proc(t.replace(tzinfo=None))


@pytest.mark.parametrize("size", [3, 40])
def test_a_value_out_of_range_refuses_the_batch_and_the_store_stays_usable(store, account, size):
    """A value the column cannot hold (bytes_upload beyond BIGINT) fails the
    batch as a ValidationError (422), on the COPY path too, with nothing
    stored; the next batch on the same pooled connections goes through."""
    entries = [AccessLogEntry(id=f"o-{i}", account_id=account.id, timestamp=T0)
               for i in range(size)]
    bad = [*entries[:-1], dataclasses.replace(entries[-1], bytes_upload=2**64)]
    with pytest.raises(ValidationError):
        store.access_logs.append_many(bad)
    assert rows_of(store, account.id) == [] and counter(store, account.id) == 0
    for _ in range(3):  # every pooled connection that may have seen the failure
        assert store.access_logs.append_many(entries) in (size, 0)
    assert len(rows_of(store, account.id)) == size == counter(store, account.id)
