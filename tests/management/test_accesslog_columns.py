"""The column-wise batch path: ``decode_batch`` + ``append_columns``.

``NbgwSendAccessLogBatch`` decodes a well-formed batch column-wise
(:func:`decode_batch`: timestamps as epoch microseconds, one check per
column) and the store prepares the columns without a tuple or a
``datetime`` per entry (:func:`prepare_columns`).  Checked here: the driver
rows are exactly those of the per-entry path (:func:`access_log_values` +
:func:`prepare_rows`) on both dialects, for every kind of entry; any
malformed entry sends the batch to the per-entry path (None); the store
skips entries of unknown accounts, counts exactly and stays idempotent; the
RPC refuses a foreign account before storing anything.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.accesslogdecode import access_log_values, decode_batch
from nbgateway.management.model import Account, Group, User
from nbgateway.management.proxyrpcs import AccessLogRpcs
from nbgateway.management.store import Store
from nbgateway.management.store._accesslog import (
    VALUE_FIELDS,
    prepare_columns,
    prepare_rows,
)
from nbgateway.management.store.schema import access_log_entries
from tests.management.conftest import CLUSTER
from tests.management.test_accesslog_ingest import (
    AbortedError,
    Context,
    batch,
    counter,
    message,
    rows_of,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def varied() -> list[pb.AccessLog]:
    """Entries covering every branch of the decoding."""
    return [
        message("acct-1", "e-0"),
        message("acct-1", "e-1", source_ip="::ffff:10.1.2.3", protocol="tcp",
                response_code=502, auth_success=False, agent_network=True,
                nbgw_target="http://10.0.0.1:80", bytes_upload=3, duration_ms=-4),
        message("acct-1", "e-2", response_code=404, metadata={"k": "v", "x\x00": "y"}),
        message("acct-1", "e-3", auth_success=False, protocol=""),
        message("acct-1", "e-4", source_ip="2001:db8::1", protocol="udp", user_id=""),
        message("acct-1", "e-5", source_ip="", timestamp=stamp(0)),  # the epoch itself
        message("acct-1", "e-6", timestamp=stamp(-86_399, 999_999_999)),  # before 1970
        message("acct-1", "e-7", timestamp=stamp(1_796_640_000)),  # a whole second
        message("acct-1", "e-8", timestamp=stamp(1_796_640_000, 999)),  # under a microsecond
        message("acct-1", "e-9", timestamp=stamp(253_402_300_799, 999_999_999)),  # year 9999
        message("acct-1", "e-10", method="M" * 40, path="/\x00", host="h\x00"),
        message("acct-2", "e-11", user_id="bob"),
        message("acct-1", "e-1"),  # a duplicate id inside the batch: the first one wins
        message("acct-1", "", path="/no-id"),  # an id is generated
    ]


def groups_of(account_id: str, user_id: str) -> tuple[str, ...]:
    return (f"{account_id}/{user_id}",)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_columns_give_the_rows_of_the_per_entry_path(dialect):
    logs = varied()
    columns = decode_batch(logs)
    assert columns is not None and len(columns) == len(VALUE_FIELDS)
    values = [access_log_values(e) for e in logs]
    for name, column in zip(VALUE_FIELDS, columns, strict=True):
        want = [v[VALUE_FIELDS.index(name)] for v in values]
        if name == "timestamp":
            want = [(t - EPOCH) // timedelta(microseconds=1) for t in want]
        assert list(column) == want, name
    calls_columns: list[tuple[str, str]] = []
    calls_rows: list[tuple[str, str]] = []

    def capture(into):
        def many(account_id, user_ids):
            into.extend((account_id, u) for u in user_ids)
            return {u: groups_of(account_id, u) for u in user_ids}
        return many

    got = prepare_columns(columns, dialect, capture(calls_columns))
    want = prepare_rows(values, dialect, capture(calls_rows))
    assert calls_columns == calls_rows == sorted(set(calls_rows))
    assert len(got) == len(want) == len(logs) - 1
    idpos = VALUE_FIELDS.index("id")
    assert len(got[-1][idpos]) == 20  # generated (differently on each path)
    assert [r[:idpos] + r[idpos + 1:] for r in got] == [r[:idpos] + r[idpos + 1:] for r in want]
    assert got[:-1] == want[:-1]


def test_sqlite_stamps_are_sqlalchemys_text():
    dialect = sa.create_engine("sqlite://").dialect
    proc = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    logs = [message("acct-1", f"t-{s}-{n}", timestamp=stamp(s, n)) for s, n in [
        (0, 0), (0, 1000), (-1, 999_999_000), (1_796_640_000, 0), (946_782_245, 123_456_789),
        (-62_135_596_800, 0), (253_402_300_799, 999_999_999)]]
    rows = prepare_columns(decode_batch(logs), "sqlite")
    when = VALUE_FIELDS.index("timestamp")
    for e, row in zip(logs, rows, strict=True):
        assert row[when] == proc(e.timestamp.ToDatetime()), e.timestamp


def test_a_missing_timestamp_is_now():
    before = datetime.now(UTC)
    columns = decode_batch([pb.AccessLog(log_id="n", account_id="acct-1"),
                            message("acct-1", "epoch", timestamp=stamp(0))])
    assert columns is not None
    now_us, epoch_us = columns[VALUE_FIELDS.index("timestamp")]
    assert epoch_us == 0
    assert now_us >= int(before.timestamp()) * 1_000_000


@pytest.mark.parametrize("bad", [
    dict(account_id=""), dict(source_ip="not-an-ip"), dict(protocol="gopher"),
    dict(duration_ms=2**62), dict(duration_ms=-(2**62)),
    dict(timestamp=stamp(2**50)), dict(timestamp=stamp(-(2**50))),
    dict(timestamp=stamp(253_402_300_800)), dict(timestamp=stamp(-62_135_596_801)),
    dict(timestamp=stamp(1, -1)), dict(timestamp=stamp(1, 1_000_000_000)),
])
def test_a_malformed_entry_leaves_the_batch_to_the_per_entry_path(bad):
    logs = [message("acct-1", "ok"), message(**{"account_id": "acct-1", "log_id": "bad", **bad})]
    with pytest.raises(ValueError):
        access_log_values(logs[1])
    assert decode_batch(logs) is None
    assert decode_batch([]) == [[]] * len(VALUE_FIELDS)


def test_the_limits_themselves_decode():
    ok = [message("acct-1", "lo", duration_ms=-((2**63 - 1) // 1_000_000),
                  timestamp=stamp(-62_135_596_800)),
          message("acct-1", "hi", duration_ms=(2**63 - 1) // 1_000_000,
                  timestamp=stamp(253_402_300_799, 999_999_999))]
    for e in ok:
        access_log_values(e)
    assert decode_batch(ok) is not None


def test_append_columns_skips_unknown_accounts_and_stays_idempotent(store, account):
    store.groups.create(Group(id="g-dev", account_id=account.id, name="developers"))
    store.users.create(User(id="alice", account_id=account.id, role="user",
                            auto_groups=("g-dev",)))
    logs = [*batch(account.id, "c", 30).logs, message("acct-gone", "gone"),
            *batch(account.id, "d", 5, user_id="").logs]
    assert store.access_logs.append_columns(decode_batch(logs)) == 35
    assert store.access_logs.append_columns(decode_batch(logs)) == 0  # retried
    assert store.access_logs.append_columns(decode_batch([message("acct-gone", "x")])) == 0
    assert store.access_logs.append_columns(decode_batch([])) == 0
    rows = rows_of(store, account.id)
    assert len(rows) == 35 == counter(store, account.id) == store.access_logs.count(account.id)
    got = store.access_logs.get(account.id, "c-0003")
    assert got.user_groups == ("developers",) and got.timestamp == logs[3].timestamp.ToDatetime(
        tzinfo=UTC)
    assert store.access_logs.get(account.id, "d-0001").user_groups is None
    with store._read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(access_log_entries).where(
            access_log_entries.c.id == "gone")).scalar_one() == 0


def test_append_columns_refuses_ragged_columns(store):
    columns = decode_batch(batch("acct-1", "r", 3).logs)
    with pytest.raises(ValueError):
        store.access_logs.append_columns(columns[:-1])
    with pytest.raises(ValueError):
        store.access_logs.append_columns([*columns[:-1], [None]])


def test_batch_rpc_refuses_a_foreign_account_in_a_well_formed_batch(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    rpcs, ctx = AccessLogRpcs(store), Context()
    caller = types.SimpleNamespace(account_id=account.id)
    logs = [*batch(account.id, "a", 20).logs, message(other.id, "foreign"),
            message("acct-3", "third"), *batch(account.id, "b", 5).logs]
    with pytest.raises(AbortedError) as err:
        rpcs.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(logs=logs), ctx, caller)
    assert err.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "acct-2" in err.value.args[1]  # the first foreign entry's account
    assert rows_of(store, account.id) == [] and rows_of(store, other.id) == []
    assert rpcs.rejected == 0
    ok = pb.NbgwSendAccessLogBatchRequest(logs=batch(account.id, "a", 20).logs)
    assert rpcs.NbgwSendAccessLogBatch(ok, ctx, caller).stored == 20
    assert rpcs.NbgwSendAccessLogBatch(ok, ctx, caller).stored == 0
    assert counter(store, account.id) == 20
    assert rpcs.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(), ctx, caller).stored == 0


def test_nullable_columns_and_flags_round_trip_in_any_mix(store, account):
    """SQLite binds a column that is NULL in every row of a batch as a NULL
    literal and agent_network as 0/1: the stored values are those of the
    per-value path, batch by batch, whatever the mix."""
    store.groups.create(Group(id="g-dev", account_id=account.id, name="developers"))
    store.users.create(User(id="alice", account_id=account.id, role="user",
                            auto_groups=("g-dev",)))
    plain = batch(account.id, "p", 4, user_id="")  # metadata, target, groups all NULL
    mixed = [message(account.id, "m-0", metadata={"k": "v"}, nbgw_target="http://t:80",
                     agent_network=True),
             message(account.id, "m-1", user_id=""),
             message(account.id, "m-2", user_id="alice", agent_network=False)]
    rpcs, ctx = AccessLogRpcs(store), Context()
    caller = types.SimpleNamespace(account_id=None)  # a shared gateway: ids as sent
    assert rpcs.NbgwSendAccessLogBatch(plain, ctx, caller).stored == 4
    req = pb.NbgwSendAccessLogBatchRequest(logs=mixed)
    assert rpcs.NbgwSendAccessLogBatch(req, ctx, caller).stored == 3
    p0, m0, m1, m2 = (store.access_logs.get(account.id, i) for i in ("p-0000", "m-0", "m-1", "m-2"))
    assert p0.metadata == {} and p0.upstream_target == "" and p0.user_groups is None
    assert p0.agent_network is False
    assert m0.metadata == {"k": "v"} and m0.upstream_target == "http://t:80"
    assert m0.agent_network is True and m0.user_groups == ("developers",)
    assert m1.user_groups is None and m1.metadata == {} and m1.upstream_target == ""
    assert m2.user_groups == ("developers",) and m2.agent_network is False
    t = access_log_entries
    with store._read() as conn:
        raw = {r.id: r for r in conn.execute(sa.select(
            t.c.id, t.c.metadata, t.c.upstream_target, t.c.user_groups,
            sa.cast(t.c.agent_network, sa.Integer).label("agent")))}
    assert raw["p-0000"].metadata is None and raw["p-0000"].upstream_target is None
    assert raw["p-0000"].user_groups is None and raw["m-1"].user_groups is None
    assert [raw[i].agent for i in ("p-0000", "m-0", "m-2")] == [0, 1, 0]
    assert counter(store, account.id) == 7


def test_sqlite_ingest_connections_spill_only_past_16_mib(tmp_path):
    """A batch's dirty pages stay in the connection's cache up to 4096 pages
    (not the ~500 of the default cache size) before they go to the WAL."""
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    account = store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    assert store.access_logs.append_columns(decode_batch(batch(account.id, "s", 5).logs)) == 5
    seen = 0
    conns = [store._engine.connect() for _ in range(3)]
    try:
        for conn in conns:
            if conn.connection.info.get("nbgw_accesslog_cache_spill"):
                seen += 1
                assert conn.exec_driver_sql("PRAGMA cache_spill").scalar_one() == 4096
    finally:
        for conn in conns:
            conn.close()
        store.close()
    assert seen == 1


def test_empty_columns_bound_as_literals_store_the_same_values(store, account):
    """Geo fields, reason and the nullable columns empty in every row of a
    batch are literals in SQLite's statement: stored as '' / 0 / NULL, as
    bound values would be; a batch with one value set binds the column."""
    from nbgateway.management.model import AccessLogEntry

    T0 = datetime(2026, 12, 1, tzinfo=UTC)
    empty = [AccessLogEntry(id=f"e-{i}", account_id=account.id, timestamp=T0)
             for i in range(3)]
    some = [AccessLogEntry(id="s-0", account_id=account.id, timestamp=T0, country_code="DE",
                           city_name="Berlin", geo_name_id=2950159, subdivision_code="BE",
                           reason="Request failed", status_code=502),
            AccessLogEntry(id="s-1", account_id=account.id, timestamp=T0)]
    assert store.access_logs.append_many(empty) == 3
    assert store.access_logs.append_many(some) == 2
    t = access_log_entries
    with store._read() as conn:
        raw = {r.id: r for r in conn.execute(sa.select(t))}
    for i in ("e-0", "s-1"):
        r = raw[i]
        assert (r.location_country_code, r.location_city_name, r.location_geo_name_id,
                r.subdivision_code, r.reason) == ("", "", 0, "", "")
        assert r.metadata is None and r.upstream_target is None and r.user_groups is None
    s0 = store.access_logs.get(account.id, "s-0")
    assert (s0.country_code, s0.city_name, s0.geo_name_id, s0.subdivision_code, s0.reason) == (
        "DE", "Berlin", 2950159, "BE", "Request failed")
    assert counter(store, account.id) == 5


def test_batch_captures_every_users_groups_in_three_queries(store, account):
    """Users, peers and unknown ids of one batch: the groups the single-entry
    capture gives each, looked up with one query for the users, one for the
    peers among the rest and one for the group names (plus the peers'
    memberships), however many users the batch has."""
    from nbgateway.management.model import Peer

    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    for gid, name in (("g-ops", "ops"), ("g-dev", "developers"), ("g-any", "everyone")):
        store.groups.create(Group(id=gid, account_id=account.id, name=name))
    store.users.create(User(id="alice", account_id=account.id, role="user",
                            auto_groups=("g-ops", "g-dev")))
    store.users.create(User(id="bob", account_id=account.id, role="user"))
    store.users.create(User(id="carol", account_id=other.id, role="user"))
    peer = store.peers.create(Peer(account_id=account.id, name="agent-1", key="k",
                                   groups=["g-any", "g-dev"]))
    users = ["alice", "bob", peer.id, "carol", "nobody"]
    with store._engine.connect() as conn:
        one_by_one = {u: store.access_logs._capture_user_groups(conn, account.id, u)
                      for u in users}
        statements = []
        sa.event.listen(conn, "before_cursor_execute",
                        lambda *args: statements.append(args[2]))
        many = store.access_logs._capture_many(conn, account.id, users)
    assert {u: many.get(u) for u in users} == one_by_one
    assert one_by_one["alice"] == ("ops", "developers") and one_by_one["bob"] == ()
    assert {"everyone", "developers"} <= set(one_by_one[peer.id])
    assert one_by_one["carol"] is None and one_by_one["nobody"] is None
    assert len(statements) <= 4
    logs = [message(account.id, f"u-{i}", user_id=u) for i, u in enumerate(users * 3)]
    assert store.access_logs.append_columns(decode_batch(logs)) == 15
    for i, u in enumerate(users):
        assert store.access_logs.get(account.id, f"u-{i}").user_groups == one_by_one[u]
