"""Shared scaffolding of the access-log list tests: a scenario, a brute force, the comparison.

The ``tests/management/test_accesslog_list_*.py`` files each check some
shapes of ``store.access_logs.list`` against a filter-and-sort of every
stored entry in Python.  What they share lives here:

* :func:`brute` -- the reference: every filter and sort of
  :class:`AccessLogQuery`, ties broken by id, then the page;
* :func:`check` -- every stored entry read page by page, then each query
  asked twice (psycopg's generic plans answer too) and its total, page
  count and page's ids compared with :func:`brute`;
* :func:`scenario` -- appends (two accounts), a retried batch, retention by
  age and by row count in small steps, the other account's deletion and
  more appends, with a check after each step;
* :func:`statements`, :func:`indexes`, :func:`insert_old` -- the SQL seen,
  the table's indexes and a row written at an older revision.

Each test file keeps its own entries, queries and what else it checks.
The leading underscore keeps pytest from collecting this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account
from nbgateway.management.store import Store
from nbgateway.management.store.schema import access_log_entries

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
#: the account the scenario adds beside the test's own, then deletes
OTHER = Account(id="acct-2", domain="other.test")


def failed(e: AccessLogEntry) -> bool:
    """The list's ``status=failed``: a status of 400 or more, or a failure reason."""
    return e.status_code >= 400 or e.reason != ""


@dataclasses.dataclass(frozen=True)
class Reference:
    """What :func:`brute` needs besides the entries, read from the store."""

    #: group id -> the name it has now (``group_id`` matches by name)
    groups: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: user id -> (e-mail, name) of the account's users
    users: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    #: the distinct methods in the database's order (its collation); empty: Python's
    methods: Sequence[str] = ()


def reference(store: Store, account_id: str) -> Reference:
    with store._read() as conn:
        methods = list(conn.execute(sa.select(access_log_entries.c.method).distinct()
                                    .order_by(access_log_entries.c.method)).scalars())
    return Reference(groups={g.id: g.name for g in store.groups.list(account_id)},
                     users={u.id: (u.email, u.name) for u in store.users.list(account_id)},
                     methods=methods)


def _matches(e: AccessLogEntry, q: AccessLogQuery, ref: Reference,
             users: set[str] | None) -> bool:
    s = (q.search or "").lower()
    return ((not q.user_id or e.user_id == q.user_id)
            and (users is None or e.user_id in users)
            and (not q.group_id or ref.groups[q.group_id] in (e.user_groups or ()))
            and (not q.service_id or e.service_id == q.service_id)
            and (not q.source_ip or e.source_ip == q.source_ip)
            and (not q.host or q.host.lower() in e.host.lower())
            and (not q.path or q.path.lower() in e.path.lower())
            and (not q.method or e.method.upper() == q.method.upper())
            and (q.status_code is None or e.status_code == q.status_code)
            and (q.status != "failed" or failed(e))
            and (q.status != "success" or not failed(e))
            and (not s or any(s in v.lower() for v in (e.host, e.path, e.user_id,
                                                       e.source_ip, e.reason)))
            and (q.start_date is None or e.timestamp >= q.start_date)
            and (q.end_date is None or e.timestamp <= q.end_date))


def _sort_key(sort_by: str, ref: Reference) -> Callable[[AccessLogEntry], tuple]:
    """The sort's columns (text as bytes: the indexes' order), then the id."""
    def method(e: AccessLogEntry) -> object:
        return ref.methods.index(e.method) if ref.methods else e.method

    columns: dict[str, Callable[[AccessLogEntry], tuple]] = {
        "timestamp": lambda e: (e.timestamp,),
        "url": lambda e: (e.host.encode(), e.path.encode()),
        "host": lambda e: (e.host.encode(),), "path": lambda e: (e.path.encode(),),
        "method": lambda e: (method(e), e.timestamp),
        "status_code": lambda e: (e.status_code, e.timestamp),
        "duration": lambda e: (e.duration,), "source_ip": lambda e: (e.source_ip.encode(),),
        "user_id": lambda e: (e.user_id.encode(),),
        "auth_method": lambda e: (e.auth_method_used.encode(),),
        "reason": lambda e: (e.reason.encode(),)}
    key = columns[sort_by]
    return lambda e: (*key(e), e.id)


def brute(stored: Iterable[AccessLogEntry], q: AccessLogQuery,
          ref: Reference = Reference()) -> tuple[int, list[str]]:
    """(total, the page's ids) of *q* over *stored*."""
    users = None
    if q.user_email or q.user_name:
        users = {u for u, (mail, name) in ref.users.items()
                 if (not q.user_email or q.user_email.lower() in mail.lower())
                 and (not q.user_name or q.user_name.lower() in name.lower())}
    rows = [e for e in stored if _matches(e, q, ref, users)]
    rows.sort(key=_sort_key(q.sort_by, ref), reverse=q.sort_order == "desc")
    lo = (q.page - 1) * q.page_size
    return len(rows), [e.id for e in rows[lo:lo + q.page_size]]


def everything(store: Store, account_id: str) -> list[AccessLogEntry]:
    """The account's every entry, read 100 a page."""
    out: list[AccessLogEntry] = []
    p = 1
    while True:
        page = store.access_logs.list(account_id, AccessLogQuery(page=p, page_size=100))
        out.extend(page.data)
        if len(page.data) < 100:
            return out
        p += 1


def same_as_brute(store: Store, account_id: str, q: AccessLogQuery,
                  stored: Sequence[AccessLogEntry], ref: Reference) -> None:
    """One list of *q*: its total, page count and page's ids as :func:`brute`'s."""
    page = store.access_logs.list(account_id, q)
    want_total, want_ids = brute(stored, q, ref)
    assert (page.total_records, [e.id for e in page.data]) == (want_total, want_ids), q
    assert page.total_pages == math.ceil(want_total / q.page_size), q


def check(store: Store, account_id: str, queries: Iterable[AccessLogQuery]) -> None:
    """Every one of *queries* answers as :func:`brute` over every stored entry."""
    stored = everything(store, account_id)
    assert len(stored) == store.access_logs.count(account_id)
    ref = reference(store, account_id)
    queries = list(queries)
    for _ in range(2):  # twice: psycopg's generic plans answer too
        for q in queries:
            same_as_brute(store, account_id, q, stored, ref)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The sizes of :func:`scenario`'s steps."""

    #: the account's first batch (the other account's: 40), then one entry more
    first: int = 150
    #: a retried batch: the first again plus 9 new entries
    retried: bool = True
    #: retention by age: entries older than ``NOW - older_than``, *age_limit* a step
    older_than: timedelta = timedelta(days=12)
    age_limit: int = 11
    #: retention by row count: down to *max_rows*, *rows_limit* a step
    max_rows: int = 61
    rows_limit: int = 8
    #: appended after the other account's deletion: *last* entries from index *last_start*
    last: int = 30
    last_start: int = 400


def scenario(store: Store, account: Account, entries: Callable[..., list[AccessLogEntry]],
             check: Callable[[Store, str], None] | None, steps: Steps = Steps(), *,
             prepare: Callable[[Account], None] | None = None,
             written: Callable[[Store], None] | None = None) -> None:
    """Appends, a retried batch, retention by age and by rows, the other
    account's deletion and more appends; *check* (store, account id) after
    each step (the other account's too, before its deletion) and *written*
    (store) after each write.  *entries* (account id, n, start=) makes the
    entries; *prepare* (the other account) runs once that account exists."""
    def wrote() -> None:
        if written is not None:
            written(store)

    def checked(account_id: str) -> None:
        if check is not None:
            check(store, account_id)

    other = store.accounts.create(OTHER)
    if prepare is not None:
        prepare(other)
    store.access_logs.append_many(entries(account.id, steps.first) + entries(other.id, 40))
    store.access_logs.append(entries(account.id, 1, start=steps.first)[0])
    if steps.retried:
        store.access_logs.append_many(entries(account.id, steps.first + 10))
    wrote()
    checked(account.id)
    checked(other.id)
    while store.access_logs.prune_step(account.id, older_than=NOW - steps.older_than,
                                       max_rows=None, limit=steps.age_limit):
        pass
    wrote()
    checked(account.id)
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=steps.max_rows,
                                       limit=steps.rows_limit):
        pass
    assert store.access_logs.count(account.id) == steps.max_rows
    wrote()
    checked(account.id)
    store.accounts.delete(other.id)
    wrote()
    if steps.last:
        store.access_logs.append_many(entries(account.id, steps.last, start=steps.last_start))
        wrote()
        checked(account.id)


@contextlib.contextmanager
def statements(store: Store, keep: Callable[[str], bool] = lambda s: True
               ) -> Iterator[list[str]]:
    """The SQL statements the store runs meanwhile (those *keep* accepts)."""
    seen: list[str] = []

    def listen(conn, cursor, statement, *args) -> None:
        if keep(statement):
            seen.append(statement)

    sa.event.listen(store._engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", listen)


def indexes(conn: sa.Connection) -> set[str]:
    """The names of ``access_log_entries``' indexes."""
    return {i["name"] for i in sa.inspect(conn).get_indexes("access_log_entries")}


def insert_old(conn: sa.Connection, e: AccessLogEntry, **columns: object) -> None:
    """*e* as a row of ``access_log_entries`` at an older revision: revision
    0001's columns (location and byte counts empty, protocol http), *columns*
    replacing or adding some."""
    row: dict[str, object] = dict(
        id=e.id, account_id=e.account_id, service_id=e.service_id, timestamp=e.timestamp,
        location_connection_ip=e.source_ip, location_country_code="", location_city_name="",
        location_geo_name_id=0, subdivision_code="", method=e.method, host=e.host,
        path=e.path, duration=e.duration, status_code=e.status_code, reason=e.reason,
        user_id=e.user_id, auth_method_used=e.auth_method_used, bytes_upload=0,
        bytes_download=0, protocol="http", agent_network=False)
    conn.execute(access_log_entries.insert().values({**row, **columns}))


def insert_old_account(conn: sa.Connection, account_id: str) -> None:
    """An account row written at an older revision (bare SQL: no store)."""
    conn.execute(sa.text(
        "INSERT INTO accounts (id, domain, network_v4, network_v6) "
        "VALUES (:id, :domain, '100.64.0.0/10', 'fd00::/64')"),
        {"id": account_id, "domain": f"{account_id}.test"})
