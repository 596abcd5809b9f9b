"""The batch RPC's rows equal the single-append path's, table by table, on both backends.

``NbgwSendAccessLogBatch`` takes the column path (``decode_batch``, then
``store.access_logs.append_columns``: one account check, the batch's
user-group capture as driver SQL with the ids as one parameter, literal
columns left out of the rows) or, when an entry is malformed, the per-entry
path (``access_log_values`` and ``append_values``).  The reference is the
single append (``access_log_record`` then ``store.access_logs.append`` per
entry: its own capture through Core queries, every column a parameter).
Two stores with the same directory ingest the same varied batches, one each
way; then every table the ingestion writes must hold the same rows:
``access_log_entries`` (every column), ``access_log_counts`` and, on
PostgreSQL, ``access_log_hours``, ``access_log_values`` and
``access_log_groups`` (kept by triggers), each also equal to a recount of
the stored entries where the test can count it simply.

The batches mix accounts (one unknown), users of the account, of another
account, unknown users and peers, group lists holding ids of another account,
names and user ids with quotes, backslashes, braces, commas and non-ASCII
text, NULs and over-long values, IPv4-mapped addresses, metadata on some
entries, failures, duplicate ids inside a batch, malformed entries and a
retried batch (nothing stored twice, counters unchanged).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.accesslogdecode import access_log_record, decode_batch
from nbgateway.management.errors import NotFound
from nbgateway.management.model import Account, Group, Peer, User
from nbgateway.management.proxyrpcs import AccessLogRpcs
from nbgateway.management.store import Store
from nbgateway.management.store.schema import users
from tests import pgcluster

CLUSTER = "eu.proxy.netbird.io"
ACCOUNTS = ("acct-a", "acct-b", 'acct-"c\\{,}')
#: user ids the directory holds (per account: the account id + one of these)
ODD_USERS = ("u0", 'u"q', "u\\b", "u{1,2}", "u ü", "u,x", "")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_stores(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Store, Store]]:
    """Two fresh stores on the same backend: the batch path's and the reference's."""
    if request.param == "sqlite":
        stores = [Store.open(f"sqlite:///{tmp_path / f's{i}.db'}", known_clusters=[CLUSTER])
                  for i in range(2)]
        try:
            yield stores[0], stores[1]
        finally:
            for s in stores:
                s.close()
        return
    import psycopg

    dsn = pgcluster.dsn()
    if dsn is None:
        pytest.fail(pgcluster.unavailable_reason() or "no PostgreSQL")
    schemas = ["nbgw_t_" + uuid.uuid4().hex[:16] for _ in range(2)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in dsn else "?"
    stores = []
    try:
        for schema in schemas:
            stores.append(Store.open(f"{dsn}{sep}options=-csearch_path%3D{schema}",
                                     known_clusters=[CLUSTER]))
        yield stores[0], stores[1]
    finally:
        for s in stores:
            s.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _directory(store: Store) -> list[str]:
    """Accounts, groups (names with quotes, backslashes, non-ASCII), users with
    group lists (several, none, NULL, another account's group id), a peer
    with groups; the same ids in every store.  Returns the peers' ids."""
    peer_ids = []
    for k, a in enumerate(ACCOUNTS):
        store.accounts.create(Account(id=a, domain=f"d{k}.test"))
        for g, name in enumerate(("ops", 'the "devs"', "back\\slash", "ünï", "a,b")):
            store.groups.create(Group(id=f"{a}-g{g}", account_id=a, name=name))
        for u, suffix in enumerate(ODD_USERS):
            if not suffix:
                continue
            groups_ = [f"{a}-g{g}" for g in range(u % 4)]
            store.users.create(User(id=f"{a}-{suffix}", account_id=a, email=f"{u}@{k}.test",
                                    name=f"U{u}", auto_groups=tuple(groups_)))
            if u == 3:  # a stray id of another account's group (not through the API)
                text = json.dumps([*groups_, f"{ACCOUNTS[(k + 1) % 3]}-g1"])
                with store._engine.begin() as conn:
                    conn.execute(sa.update(users).where(users.c.id == f"{a}-{suffix}")
                                 .values(auto_groups=text))
        peer = store.peers.create(Peer(id=f"{a}-peer", account_id=a, name=f"agent{k}",
                                       key=f"key-{k}",
                                       groups=[f"{a}-g{k}", f"{a}-g4"]))
        peer_ids.append(peer.id)
    return peer_ids


def _users(peers: list[str]) -> list[str]:
    ids = [f"{a}-{s}" for a in ACCOUNTS for s in ODD_USERS if s]
    return [*ids, *peers, "", "", "", "nobody", "acct-a-u0\x00", "x" * 300]


def _entry(rng: random.Random, users: list[str], n: int, t0: int, *,
           accounts: tuple[str, ...] = ACCOUNTS) -> pb.AccessLog:
    a = rng.choice(accounts)
    r = rng.random()
    e = pb.AccessLog(
        log_id=f"id-{n}-{rng.getrandbits(40):x}", account_id=a,
        service_id=rng.choice(("svc-1", "svc-2", "s" * 300)),
        host=rng.choice(("app.test", "APP.test", "h\x00st")), path=rng.choice(("/", "/a?b", "/ü")),
        duration_ms=rng.randrange(0, 5000), method=rng.choice(("GET", "POST", "DELETE")),
        response_code=rng.choice((200, 200, 200, 302, 404, 500)),
        source_ip=rng.choice(("10.0.0.1", "203.0.113.9", "::ffff:10.1.2.3", "2001:db8::1", "")),
        auth_mechanism=rng.choice(("", "oidc")), user_id=rng.choice(users),
        auth_success=r > 0.05, protocol=rng.choice(("http", "http", "", "tcp")),
        bytes_upload=rng.randrange(1 << 20), bytes_download=rng.randrange(1 << 30),
        agent_network=r < 0.3, nbgw_target=rng.choice(("", "10.0.0.2:80")))
    if r < 0.1:
        e.metadata["k"] = "v\x00" if r < 0.02 else "v"
    us = t0 + rng.randrange(0, 7_200_000_000)
    e.timestamp.seconds, e.timestamp.nanos = us // 1_000_000, us % 1_000_000 * 1000
    return e


def _batches(peers: list[str], seed: int) -> list[list[pb.AccessLog]]:
    """Varied batches: sizes around the PostgreSQL VALUES/COPY threshold and
    larger, one account or several, literal columns present or not,
    duplicates, malformed entries, an unknown account, a retry."""
    rng = random.Random(seed)
    users = _users(peers)
    t0 = 1_796_000_000_000_000
    out: list[list[pb.AccessLog]] = []
    n = 0
    for size in (1, 5, 16, 17, 40, 300, 600):
        for one in (True, False):
            accts = (rng.choice(ACCOUNTS),) if one else ACCOUNTS
            batch = []
            for _ in range(size):
                batch.append(_entry(rng, users, n, t0, accounts=accts))
                n += 1
            if size >= 17 and rng.random() < 0.5:
                batch.append(batch[rng.randrange(len(batch))])  # a duplicate id
            out.append(batch)
    for size in (17, 300):  # HTTP entries only, none from an agent network: literal columns
        batch = [_entry(rng, users, n + i, t0) for i in range(size)]
        n += size
        for e in batch:
            e.protocol, e.agent_network = "http", False
        out.append(batch)
    bad = [_entry(rng, users, n + i, t0) for i in range(50)]
    bad[7].duration_ms = 2**62  # malformed: the per-entry path, skipped
    bad[9].source_ip = "not-an-ip"
    bad[11].account_id = "acct-gone"  # unknown account: skipped
    out.append(bad)
    out.append(out[-3])  # a retried batch
    return out


class _Ctx:
    def abort(self, code, details):
        raise AssertionError(f"{code}: {details}")


class _Caller:
    account_id = None


def _dump(store: Store) -> dict[str, list[tuple]]:
    """Every row of the tables the ingestion writes, sorted."""
    out: dict[str, list[tuple]] = {}
    with store._read() as conn:
        names = set(sa.inspect(conn).get_table_names())
        for table in ("access_log_entries", "access_log_counts", "access_log_hours",
                      "access_log_values", "access_log_groups"):
            if table in names:
                rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
                out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


def _recount(store: Store) -> None:
    """``access_log_counts`` and (PostgreSQL) the hours' totals equal a count."""
    with store._read() as conn:
        counted = dict(conn.execute(sa.text(
            "SELECT account_id, count(*) FROM access_log_entries GROUP BY account_id")).all())
        kept = {a: n for a, n in conn.execute(sa.text(
            "SELECT account_id, entries FROM access_log_counts")).all() if n}
        assert kept == counted
        if conn.dialect.name == "postgresql":
            hours = dict(conn.execute(sa.text(
                "SELECT account_id, sum(entries) FROM access_log_hours GROUP BY account_id "
                "HAVING sum(entries) > 0")).all())
            assert hours == counted
            values = dict(conn.execute(sa.text(
                "SELECT account_id, sum(entries) FROM access_log_values GROUP BY account_id "
                "HAVING sum(entries) > 0")).all())
            assert values == counted


@pytest.mark.parametrize("seed", [1, 2])
def test_batch_rows_equal_single_appends(two_stores, seed):
    batch_store, ref_store = two_stores
    peers = _directory(batch_store)
    assert _directory(ref_store) == peers
    rpc = AccessLogRpcs(batch_store)
    columnar = 0
    for batch in _batches(peers, seed):
        req = pb.NbgwSendAccessLogBatchRequest(logs=batch)
        req = pb.NbgwSendAccessLogBatchRequest.FromString(req.SerializeToString())
        columnar += decode_batch(req.logs) is not None
        got = rpc.NbgwSendAccessLogBatch(req, _Ctx(), _Caller()).stored
        want = 0
        for e in req.logs:
            try:
                record = access_log_record(e)
            except ValueError:
                continue
            before = ref_store.access_logs.count(record.account_id) if record.account_id in \
                ACCOUNTS else 0
            try:
                ref_store.access_logs.append(record)
            except NotFound:
                continue
            want += ref_store.access_logs.count(record.account_id) - before
        assert got == want
    assert columnar >= 10  # most batches took the column path
    assert rpc.rejected == 2 * 1  # the malformed entries of the bad batch (not its retry)
    batch_rows, ref_rows = _dump(batch_store), _dump(ref_store)
    assert batch_rows.keys() == ref_rows.keys()
    for table in ref_rows:
        assert batch_rows[table] == ref_rows[table], table
    assert len(batch_rows["access_log_entries"]) > 1800
    _recount(batch_store)
