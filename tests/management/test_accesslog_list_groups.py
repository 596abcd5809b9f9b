"""Access-log list: the group filter (0023), the URL sort and the path substring (0024).

On PostgreSQL ``store.access_logs.list`` totals a ``group_id`` filter from
``access_log_groups`` (entries per account and captured ``user_groups`` set,
kept by statement-level triggers) and finds its page by walking the time
index when the counts say that is cheap; a sort by ``url`` of the account's
every entry is merged from the first entries of each day of
``ix_access_log_entries_day_account_url`` plus the entries too long for it,
and a ``path`` substring's total is counted in that index day by day.
Every shape is checked against a filter-and-sort of every stored entry in
Python, on both backends (SQLite counts and sorts as before), after appends,
a retried batch, retention by age and by row count, the deletion of another
account and a group's renaming; ``access_log_groups`` equals a recount per
account, hour and set after each write on PostgreSQL (revision 0027) and
stays empty on SQLite; the group with time ranges cutting hours (whole hours
summed, the partial ones counted); revisions 0023 to 0027 up and down.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, Group
from nbgateway.management.store import Store, _accesslog_query
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import access_log_entries, access_log_groups, accounts
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW, brute, everything, indexes
from tests.management.test_accesslog_list_values import values_counted, values_table

#: group names, one with a quote and one a prefix of another
NAMES = ("ops", "dev", 'qa "x"', "op", "All")
#: captured sets (None: no groups captured)
SETS = (("All", "ops"), ("All", "dev"), None, ("All",), ("op",), ('qa "x"', "dev"), ())
HOSTS = ("b.example.test", "a.example.test", "b.example.test", "Ä.example.test")
LONG = "/" + "x" * 2100  # a path the per-day URL index cannot hold
#: revision 0001's indexes that revision 0025 drops on PostgreSQL (SQLite keeps
#: the service's; revision 0022 dropped the timestamp's there)
UNREAD = ("ix_access_log_entries_service_id", "ix_access_log_entries_timestamp")
URL_INDEXES = ("ix_access_log_entries_day_account_url", "ix_access_log_entries_account_long_url")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 hours apart (pairs share a timestamp, over many days),
    mixed group sets, hosts and paths (ties in (host, path), some paths too
    long for a btree entry, one long in multi-byte characters)."""
    out = []
    for i in range(start, start + n):
        path = (LONG + str(i % 3) if i % 11 == 0 else "/é" * 700 if i % 37 == 5
                else f"/p{i % 6}" + ("_%" if i % 13 == 2 else ""))
        out.append(AccessLogEntry(
            id=f"{account_id}-{i:05d}", account_id=account_id, service_id=f"svc-{i % 3}",
            timestamp=NOW - timedelta(hours=5 * (i // 2), minutes=i % 7),
            source_ip="10.0.0.1", method="GET", host=HOSTS[i % 4], path=path,
            status_code=(200, 404)[i % 2], user_groups=SETS[(i * 5) % 7]))
    return out


#: time ranges (start, end) of the group filter: hours cut at either end,
#: open at either end, within one hour, on whole hours (``end`` inclusive)
RANGES = (
    (NOW - timedelta(days=3, minutes=-17), NOW - timedelta(minutes=20)),
    (NOW - timedelta(days=10, minutes=3), None),
    (None, NOW - timedelta(days=5, minutes=-1)),
    (NOW - timedelta(days=2, minutes=-5), NOW - timedelta(days=2, minutes=-50)),
    (NOW - timedelta(days=4), NOW - timedelta(days=1)),
    (NOW - timedelta(hours=40), NOW - timedelta(hours=40)),
    (NOW - timedelta(days=1, minutes=-1), NOW - timedelta(days=2)),  # empty (end < start)
)


def range_queries(group_ids: list[str]) -> list[AccessLogQuery]:
    """The group filter with a time range (revision 0027's per-hour counts)."""
    out = []
    for group_id in group_ids:
        for start, end in RANGES:
            for order, page, size in (("desc", 1, 4), ("asc", 2, 3), ("desc", 9, 2)):
                out.append(AccessLogQuery(group_id=group_id, start_date=start, end_date=end,
                                          sort_order=order, page=page, page_size=size))
    return out


def queries(group_ids: list[str]) -> list[AccessLogQuery]:
    Q = AccessLogQuery
    out = range_queries(group_ids)
    for order in ("desc", "asc"):
        for page, size in ((1, 7), (2, 5), (6, 4), (40, 3), (1, 100)):
            out.append(Q(sort_by="url", sort_order=order, page=page, page_size=size))
            for path in ("/P1", "xx", "é", "0", "nomatch", "%", "_"):
                out.append(Q(path=path, sort_order=order, page=page, page_size=size))
            for group_id in group_ids:
                for sort in ("timestamp", "url"):
                    out.append(Q(group_id=group_id, sort_by=sort, sort_order=order,
                                 page=page, page_size=size))
    return out


def check(store: Store, account_id: str) -> None:
    group_ids = sorted(g.id for g in store.groups.list(account_id))
    scenarios.check(store, account_id, queries(group_ids))


def groups_table(conn, *, hourly: bool = True) -> dict[tuple, tuple[str, int]]:
    """``access_log_groups`` by key: (account, hour, set hash) since revision
    0027, (account, set hash) with *hourly* false (revisions 0023-0026)."""
    table = sa.table("access_log_groups", *(sa.column(c.name) for c in access_log_groups.c
                                            if hourly or c.name != "hour"))
    return {(r.account_id, *((r.hour.replace(tzinfo=None),) if hourly else ()),
             bytes(r.groups_key)): (r.user_groups, r.entries)
            for r in conn.execute(sa.select(table))}


def groups_counted(conn, *, hourly: bool = True) -> dict[tuple, tuple[str, int]]:
    """What ``access_log_groups`` must hold, counted in Python: entries per
    account, hour (``date_trunc('hour', timestamp)``; not with *hourly*
    false) and ``user_groups`` set."""
    known = set(conn.execute(sa.select(accounts.c.id)).scalars())
    out: dict[tuple, tuple[str, int]] = {}
    for r in conn.execute(sa.select(access_log_entries)):
        if r.account_id in known and r.user_groups is not None:
            hour = r.timestamp.replace(tzinfo=None, minute=0, second=0, microsecond=0)
            key = (r.account_id, *((hour,) if hourly else ()),
                   hashlib.sha256(r.user_groups.encode()).digest())
            out[key] = (r.user_groups, out.get(key, ("", 0))[1] + 1)
    return out


def same_groups(store: Store) -> None:
    """``access_log_groups`` (and ``access_log_values``, whose triggers
    revision 0025 replaced) equal to a recount (PostgreSQL), empty (SQLite)."""
    with store._read() as conn:
        pg = store.dialect == "postgresql"
        assert groups_table(conn) == (groups_counted(conn) if pg else {})
        assert values_table(conn) == (values_counted(conn) if pg else {})


def add_groups(store: Store, account_id: str) -> None:
    """The groups of :data:`NAMES` (``All`` comes with the account)."""
    have = {g.name for g in store.groups.list(account_id)}
    for g, name in enumerate(NAMES):
        if name not in have:
            store.groups.create(Group(id=f"{account_id}-g{g}", account_id=account_id,
                                      name=name))


def scenario(store: Store, account: Account) -> None:
    def prepare(other: Account) -> None:
        add_groups(store, account.id)
        add_groups(store, other.id)

    scenarios.scenario(store, account, entries, check, prepare=prepare, written=same_groups)
    # the match is on the name the group has now (as before)
    renamed = Group(id=f"{account.id}-g1", account_id=account.id, name="dev2")
    store.groups.update(renamed)
    check(store, account.id)


def test_group_filter_and_url_sort_match_brute_force(store, account):
    scenario(store, account)


@pytest.mark.parametrize("limits", [(True, 0, 0), (False, 10**6, 10**6)])
def test_walked_planned_and_unmerged_pages_give_the_same_answers(store, account, monkeypatch,
                                                                 limits):
    """The group's page walked or planned, the URL page merged per day or
    planned (past :data:`DAY_MAX`), the path's total per day or counted as
    before (past :data:`MAX_DAYS`): the same answers."""
    monkeypatch.setattr(_accesslog_query, "_walk", lambda need, matching, spread: limits[0])
    monkeypatch.setattr(_accesslog_query, "DAY_MAX", limits[1])
    monkeypatch.setattr(_accesslog_query, "MAX_DAYS", limits[2])
    scenario(store, account)


def test_empty_account(store, account):
    add_groups(store, account.id)
    check(store, account.id)
    same_groups(store)


def test_unknown_group_is_refused(store, account):
    from nbgateway.management.errors import ValidationError

    with pytest.raises(ValidationError):
        store.access_logs.list(account.id, AccessLogQuery(group_id="nope"))


def test_another_accounts_group_is_refused(store, account):
    """A group id of another account filters nothing here: it is refused,
    even when that account's entries hold a group of the same name."""
    from nbgateway.management.errors import ValidationError

    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    add_groups(store, account.id)
    add_groups(store, other.id)
    store.access_logs.append_many(entries(account.id, 20) + entries(other.id, 20))
    own = store.access_logs.list(account.id, AccessLogQuery(group_id=f"{account.id}-g1"))
    assert own.total_records > 0
    with pytest.raises(ValidationError):
        store.access_logs.list(account.id, AccessLogQuery(group_id=f"{other.id}-g1"))


def test_group_and_url_reads_are_used_on_postgresql(store, account):
    """PostgreSQL: the group's total comes from ``access_log_groups`` (no
    count of the entries) and the URL page is merged per day."""
    add_groups(store, account.id)
    store.access_logs.append_many(entries(account.id, 60))
    pg = store.dialect == "postgresql"
    with scenarios.statements(store) as statements:
        assert store.access_logs.list(account.id, AccessLogQuery(group_id=f"{account.id}-g0")
                                      ).data
        assert any("access_log_groups" in s for s in statements) == pg
        assert any("count(*)" in s for s in statements) != pg
        statements.clear()
        assert store.access_logs.list(account.id, AccessLogQuery(sort_by="url")).data
        by_day = [s for s in statements if "date_trunc('day'" in s and "LATERAL" in s]
        assert len(by_day) == (1 if pg else 0)
        statements.clear()
        assert store.access_logs.list(account.id, AccessLogQuery(path="p1")).data
        by_day = [s for s in statements if "date_trunc('day'" in s and "LATERAL" in s]
        assert len(by_day) == (1 if pg else 0)


def old_database(conn: sa.Connection, postgres: bool) -> None:
    """Revision 0022 with two accounts' entries (written as then)."""
    migrations.upgrade(conn, "0022")
    for a in ("a1", "a2"):
        scenarios.insert_old_account(conn, a)
    for e in entries("a1", 12) + entries("a2", 5):
        scenarios.insert_old(
            conn, e, status_code=200,
            user_groups=None if e.user_groups is None
            else '["' + '","'.join(g.replace('"', '\\"') for g in e.user_groups) + '"]'
            if e.user_groups else "[]")
    if not postgres:  # SQLite's store counts its batches (0022), not a trigger
        conn.execute(sa.text(
            "INSERT INTO access_log_counts (account_id, entries) "
            "SELECT account_id, count(*) FROM access_log_entries GROUP BY account_id"))
    conn.commit()


def test_migrations_0023_to_0025_up_and_down(db_dsn):
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            old_database(conn, postgres)
            migrations.upgrade(conn, "0023")
            assert groups_table(conn, hourly=False) == (
                groups_counted(conn, hourly=False) if postgres else {})
            assert bool(groups_table(conn, hourly=False)) == postgres
            assert not indexes(conn) & set(URL_INDEXES)
            migrations.upgrade(conn, "0024")
            assert (set(URL_INDEXES) <= indexes(conn)) == postgres
            assert (set(UNREAD) <= indexes(conn)) == postgres
            migrations.upgrade(conn, "0025")  # PostgreSQL: the unread indexes go
            assert not indexes(conn) & {UNREAD[1]}
            assert ("ix_access_log_entries_service_id" in indexes(conn)) != postgres
            migrations.downgrade(conn, "0022")
            assert not indexes(conn) & set(URL_INDEXES)
            assert (set(UNREAD) <= indexes(conn)) == postgres
            assert "access_log_groups" not in sa.inspect(conn).get_table_names()
            conn.execute(access_log_entries.delete().where(access_log_entries.c.id == "a1-00003"))
            conn.commit()  # (the counter's delete trigger stays on SQLite)
            if postgres:  # revision 0019's values triggers are back and count
                assert values_table(conn) == values_counted(conn)
            migrations.upgrade(conn, "head")
            assert groups_table(conn) == (groups_counted(conn) if postgres else {})
            if postgres:  # the triggers are back (0025's values triggers too)
                conn.execute(access_log_entries.delete().where(
                    access_log_entries.c.id == "a1-00001"))
                assert groups_table(conn) == groups_counted(conn)
                assert values_table(conn) == values_counted(conn)
                conn.commit()
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        add_groups(store, "a1")
        stored = everything(store, "a1")
        names = scenarios.Reference(groups={g.id: g.name for g in store.groups.list("a1")})
        for q in (AccessLogQuery(group_id="a1-g0", page_size=3),
                  AccessLogQuery(sort_by="url", sort_order="asc", page=2, page_size=5)):
            page = store.access_logs.list("a1", q)
            assert (page.total_records, [e.id for e in page.data]) == brute(stored, q, names)
    finally:
        store.close()


def test_migration_0027_up_and_down(db_dsn):
    """Revision 0027 keys ``access_log_groups`` by hour (backfilled, kept by
    its triggers on PostgreSQL; empty on SQLite) and its downgrade restores
    revision 0023's per-set table, triggers and counts."""
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    postgres = engine.dialect.name == "postgresql"

    def same(hourly: bool) -> None:
        table = groups_table(conn, hourly=hourly)
        assert table == (groups_counted(conn, hourly=hourly) if postgres else {})
        assert bool(table) == postgres

    try:
        with engine.connect() as conn:
            old_database(conn, postgres)
            migrations.upgrade(conn, "0026")
            same(hourly=False)
            migrations.upgrade(conn, "0027")
            names = {c["name"] for c in sa.inspect(conn).get_columns("access_log_groups")}
            assert "hour" in names
            assert sa.inspect(conn).get_pk_constraint("access_log_groups")[
                "constrained_columns"] == ["account_id", "hour", "groups_key"]
            same(hourly=True)
            # more hours than sets: the backfill counted per hour
            assert len(groups_table(conn)) > len(groups_counted(conn, hourly=False)) or not postgres
            if postgres:  # the triggers count per hour
                conn.execute(access_log_entries.delete().where(
                    access_log_entries.c.id.in_(["a1-00002", "a1-00007"])))
                e = entries("a1", 1, start=40)[0]
                scenarios.insert_old(conn, e, user_groups='["All","ops"]')
                same(hourly=True)
                conn.commit()
            migrations.downgrade(conn, "0026")
            assert "hour" not in {
                c["name"] for c in sa.inspect(conn).get_columns("access_log_groups")}
            same(hourly=False)
            if postgres:  # 0023's triggers are back and count per set
                conn.execute(access_log_entries.delete().where(
                    access_log_entries.c.id == "a1-00003"))
                same(hourly=False)
                conn.commit()
            migrations.upgrade(conn, "head")
            same(hourly=True)
            conn.commit()
    finally:
        engine.dispose()
    store = Store.open(db_dsn)
    try:
        add_groups(store, "a1")
        stored = everything(store, "a1")
        names = scenarios.Reference(groups={g.id: g.name for g in store.groups.list("a1")})
        for q in range_queries(["a1-g0", "a1-g1", "a1-g4"]):
            page = store.access_logs.list("a1", q)
            assert (page.total_records, [e.id for e in page.data]) == brute(stored, q, names)
    finally:
        store.close()


def test_group_range_total_sums_hours_on_postgresql(store, account):
    """PostgreSQL: a group over a time range cut within hours is totalled
    from ``access_log_groups``' whole hours plus the two partial hours
    counted in the entries (no count of the range's every entry); SQLite
    counts the entries.  Both exact."""
    add_groups(store, account.id)
    store.access_logs.append_many(entries(account.id, 80))
    pg = store.dialect == "postgresql"
    start, end = RANGES[0]
    q = AccessLogQuery(group_id=f"{account.id}-g0", start_date=start, end_date=end,
                       page_size=3)
    with scenarios.statements(store) as statements:
        page = store.access_logs.list(account.id, q)
    stored = everything(store, account.id)
    ref = scenarios.reference(store, account.id)
    assert (page.total_records, [e.id for e in page.data]) == brute(stored, q, ref)
    assert page.total_records > 3
    totals = [s for s in statements if "count(*)" in s]
    assert len(totals) == 1
    assert ("access_log_groups" in totals[0]) == pg
    if pg:  # two partial hours counted, the rest summed per hour
        assert totals[0].count("count(*)") == 2
        assert "access_log_groups.hour" in totals[0]


def test_url_page_settings_are_reset(store, account, monkeypatch):
    """The merged URL page runs without sequential scans, parallel workers
    and JIT, and the settings are back after the statement."""
    store.access_logs.append_many(entries(account.id, 40))
    real = _accesslog_query._merged
    seen: list[str] = []

    def spy(conn, q, select):
        rows = real(conn, q, select)
        seen.append(conn.execute(sa.text("SHOW enable_seqscan")).scalar_one())
        return rows

    monkeypatch.setattr(_accesslog_query, "_merged", spy)
    page = store.access_logs.list(account.id, AccessLogQuery(sort_by="url", page_size=5))
    assert len(page.data) == 5
    assert seen == (["on"] if store.dialect == "postgresql" else [])
