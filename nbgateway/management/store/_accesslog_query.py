"""Store part: the access-log query behind ``GET /api/events/proxy``.

Owns the filters, sort columns and paging of ``store.access_logs.list``: the
account's entries filtered (service, user, source IP, method, status class,
status code, group, time range, substrings), sorted by a NetBird sort field
with the id as tie-breaker, one page at a time, with the exact total.

Totals that are not counted row by row: the unfiltered total is the
account's counter (``access_log_counts``); a service and/or a time range on
PostgreSQL sums whole hours of ``access_log_hours`` and counts the partial
hours at the edges; ``status=success`` over those is that minus the
failures, which the partial index ``ix_access_log_entries_failed`` counts.
Deep pages sorted by time skip their offset in the index (deferred join).

On PostgreSQL, filters on nothing but service, host substring, method,
status code and status are totalled from ``access_log_values`` (revision
0019, kept by triggers), and a sort by ``status_code`` or ``method`` under
such filters reads the per-value counts there first, then each value's part
of the page in time order (ties within a value broken by time, then id, on
both backends).

Also on PostgreSQL: a ``group_id`` filter alone or with a time range is
totalled from ``access_log_groups`` (revisions 0023 and 0027, entries per
hour and captured ``user_groups`` set; a range's partial hours at the ends
counted in the time index), and the group alone's page walks the time index
when that is cheap; a sort by
``url`` of every entry is merged per day from revision 0024's index, as the
duration sort is from revision 0020's.  A ``path`` substring alone is
counted day by day in revision 0024's index (index-only), and its page by
time reads only the days it falls in.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import ACCESS_LOG_SORT_FIELDS, AccessLogPage, AccessLogQuery
from nbgateway.management.store._accesslog import (
    AccessLogRecords,
    _clean,
    row_access_log,
)
from nbgateway.management.store._base import dumps
from nbgateway.management.store.schema import access_log_counts as alc
from nbgateway.management.store.schema import access_log_entries as ale
from nbgateway.management.store.schema import access_log_groups as alg
from nbgateway.management.store.schema import access_log_hours as alh
from nbgateway.management.store.schema import access_log_values as alv
from nbgateway.management.store.schema import groups, users

if TYPE_CHECKING:
    from nbgateway.management.store import Store

MAX_PAGE_SIZE = 100

#: at most this many users matched by e-mail / name are passed as a list of ids
MAX_USER_IDS = 500

#: from this offset on, a page sorted by time over an index-only filter skips
#: its offset in the index and fetches only the page's rows
DEFER_OFFSET = 1000

#: a failed entry (``status=failed``), as ``ix_access_log_entries_failed``'s predicate
_FAILED = "status_code >= 400 OR reason <> ''"

_SORT_COLUMNS = {
    "timestamp": (ale.c.timestamp,),
    "url": (ale.c.host, ale.c.path),
    "host": (ale.c.host,),
    "path": (ale.c.path,),
    # then by time: a page of a value is read in the time index (_value_pages)
    "method": (ale.c.method, ale.c.timestamp),
    "status_code": (ale.c.status_code, ale.c.timestamp),
    "duration": (ale.c.duration,),
    "source_ip": (ale.c.location_connection_ip,),
    "user_id": (ale.c.user_id,),
    "auth_method": (ale.c.auth_method_used,),
    "reason": (ale.c.reason,),
}
assert set(_SORT_COLUMNS) == set(ACCESS_LOG_SORT_FIELDS)


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _caseless(value: str) -> bool:
    """Whether *value* is ASCII without a letter (an id, an address, a path
    of digits and punctuation): lowering a text never makes or unmakes such
    a substring (only letters have case mappings, and they map to letters),
    so it is matched without ``lower()``."""
    return value.isascii() and not any(c.isalpha() for c in value)


def _contains(column: sa.ColumnElement, value: str) -> sa.ColumnElement[bool]:
    """Whether *column* holds *value*, ignoring case.  A caseless *value*
    (:func:`_caseless`) is matched on the text as stored: ``lower()`` of
    every text tested was most of a ``path`` count's time (a million index
    entries per account) and of ``search``'s five columns."""
    if _caseless(value):
        return column.like(_like(value), escape="\\")
    return sa.func.lower(column).like(_like(value), escape="\\")


def _user_ids(
    store: Store, ucond: list[sa.ColumnElement[bool]]
) -> list[str] | sa.Select[tuple[str]]:
    """The ids of the account's users matching *ucond* (e-mail / name
    substrings), looked up first: a list of ids lets PostgreSQL count and
    page each user's entries in ``ix_access_log_entries_account_user_time``
    instead of reading every entry of the account against a subquery.  More
    than :data:`MAX_USER_IDS` matches: the subquery (bounded parameters)."""
    select = sa.select(users.c.id).where(*ucond)
    with store._read() as conn:
        ids = list(conn.execute(select.limit(MAX_USER_IDS + 1)).scalars())
    return select if len(ids) > MAX_USER_IDS else ids


def _group_element(store: Store, account_id: str, group_id: str) -> str:
    """The JSON element of *group_id*'s name (``"name"``) as :func:`_row`
    writes it in ``user_groups``.  ValidationError for a group id that is
    not the account's."""
    with store._read() as conn:
        name = conn.execute(
            sa.select(groups.c.name).where(
                groups.c.account_id == account_id, groups.c.id == group_id
            )
        ).scalar_one_or_none()
    if name is None:
        raise ValidationError(f"unknown group_id {group_id!r}")
    return (dumps([_clean(name)]) or "[]")[1:-1]


def _holds(store: Store, column: sa.ColumnElement, element: str) -> sa.ColumnElement[bool]:
    """Whether the ``user_groups`` JSON in *column* holds *element*.

    ``user_groups`` is the compact JSON array written by :func:`_row`, so an
    element is exactly ``["name"`` or ``,"name"`` (a quote inside a name is
    escaped, so neither can occur inside another element).  The match is on
    the name the group has now; the account's other filters (account id,
    time range) still use their indexes."""
    # exact, case-sensitive substring positions (SQLite's LIKE ignores case)
    find = sa.func.strpos if store.dialect == "postgresql" else sa.func.instr
    return sa.or_(find(column, "[" + element) == 1, find(column, "," + element) > 0)


def _only(q: AccessLogQuery, *allowed: str) -> bool:
    """Whether *q* filters on nothing but the *allowed* fields (falsy = no filter)."""
    return not any(
        getattr(q, f) not in (None, "") for f in _FILTERS if f not in allowed
    )


_FILTERS = ("search", "service_id", "source_ip", "host", "path", "user_id", "user_email",
            "user_name", "method", "status", "status_code", "start_date", "end_date",
            "group_id")


def _index_only(q: AccessLogQuery) -> bool:
    """Whether the filters are answered by ``(account_id, timestamp, id)`` or
    the failures index alone (a time range, ``status=failed``)."""
    return _only(q, "start_date", "end_date", "status") and q.status != "success"


#: a user's list that revision 0026's user index answers alone (PostgreSQL):
#: the filters its key and INCLUDE columns hold, and the sorts
_USER_FILTERS = ("user_id", "service_id", "method", "status_code", "start_date", "end_date")
_USER_SORTS = ("timestamp", "duration", "method", "status_code")


def _user_covered(store: Store, q: AccessLogQuery) -> bool:
    """Whether *q* is one user's list whose count and page ids revision
    0026's ``(account_id, user_id, timestamp, id) INCLUDE (duration,
    status_code, service_id, method)`` holds (PostgreSQL), other than the
    first page of a plain range of it (a user, and a time range, sorted by
    time: the index's first entries, read as before; a later page skips its
    offset in the index alone)."""
    if store.dialect != "postgresql" or not q.user_id or q.sort_by not in _USER_SORTS:
        return False
    if not _only(q, *_USER_FILTERS):
        return False
    return (q.sort_by != "timestamp" or q.page > 1
            or not _only(q, "user_id", "start_date", "end_date"))


def _covered_page(
    q: AccessLogQuery, conds: list[sa.ColumnElement[bool]], offset: int
) -> sa.Select:
    """A user's page (:func:`_user_covered`): its ids and sort keys read from
    the user index alone (an index-only scan of the user's entries, sorted
    there for a sort by duration, method or status code), then only the
    page's rows fetched (the same rows in the same order as one sort)."""
    direction = sa.asc if q.sort_order == "asc" else sa.desc
    keys = (*_SORT_COLUMNS[q.sort_by], ale.c.id)
    ids = (sa.select(*keys).where(*conds).order_by(*(direction(c) for c in keys))
           .limit(q.page_size))
    ids = (ids.offset(offset) if offset else ids).subquery("p")
    return (sa.select(ale).join(ids, ale.c.id == ids.c.id)
            .order_by(*(direction(ids.c[c.name]) for c in keys)))


def _count(*conds: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return sa.select(sa.func.count()).select_from(ale).where(*conds).scalar_subquery()


_HOUR = timedelta(hours=1)


def _hour(t: datetime) -> datetime:
    """The hour *t* is in (``date_trunc('hour', timestamp)`` of naive UTC)."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _in_range(
    account_id: str, service_id: str | None, start: datetime | None, end: datetime | None,
    group: tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]] | None = None,
) -> sa.ColumnElement[int]:
    """Entries of the account (of the service, if given) with ``start <=
    timestamp <= end``: the whole hours in between summed from
    ``access_log_hours`` (PostgreSQL, kept by triggers, revision 0017), the
    partial hours at either end counted in the ``(account_id, timestamp,
    id)`` index.  With *group* (its test on ``access_log_groups`` and on the
    entries; no service): the group's entries, the whole hours summed from
    ``access_log_groups`` (revision 0027) instead."""
    where = [ale.c.account_id == account_id]
    table = alh if group is None else alg
    hours = [table.c.account_id == account_id]
    if group is not None:
        hours.append(group[0])
        where.append(group[1])
    elif service_id:
        where.append(ale.c.service_id == service_id)
        hours.append(alh.c.service_id == service_id)
    first = None if start is None else _hour(start)  # the first whole hour
    if first is not None and start is not None and first < start:
        first += _HOUR
    last = None if end is None else _hour(end)  # the hours before it are whole
    if first is not None and last is not None and first >= last:  # no whole hour
        return _count(*where, ale.c.timestamp >= start, ale.c.timestamp <= end)
    edges: list[sa.ColumnElement[int]] = []
    if first is not None:
        hours.append(table.c.hour >= first)
        if start is not None and start < first:
            edges.append(_count(*where, ale.c.timestamp >= start, ale.c.timestamp < first))
    if last is not None:
        hours.append(table.c.hour < last)
        edges.append(_count(*where, ale.c.timestamp >= last, ale.c.timestamp <= end))
    whole: sa.ColumnElement[int] = sa.cast(
        sa.func.coalesce(
            sa.select(sa.func.sum(table.c.entries)).where(*hours).scalar_subquery(), 0),
        sa.BigInteger,
    )
    for edge in edges:
        whole = whole + edge
    return whole


#: the filters ``access_log_values`` answers (its key's columns)
_VALUE_FILTERS = ("service_id", "host", "method", "status_code", "status")

#: sorts whose page is read value by value (:func:`_value_pages`)
_VALUE_SORTS = {"status_code": (alv.c.status_code, ale.c.status_code),
                "method": (alv.c.method, ale.c.method)}


def _values_where(
    store: Store, account_id: str, q: AccessLogQuery
) -> list[sa.ColumnElement[bool]] | None:
    """*q*'s filters as conditions on ``access_log_values`` (the same entries
    as the list's conditions on ``access_log_entries``), or None when the
    table cannot answer: SQLite (not kept there) or a filter outside its key."""
    if store.dialect != "postgresql" or not _only(q, *_VALUE_FILTERS):
        return None
    where = [alv.c.account_id == account_id]
    if q.service_id:
        where.append(alv.c.service_id == q.service_id)
    if q.host:
        where.append(_contains(alv.c.host, q.host))
    if q.method:
        where.append(sa.func.upper(alv.c.method) == q.method.upper())
    if q.status_code is not None:
        where.append(alv.c.status_code == q.status_code)
    if q.status == "failed":
        where.append(alv.c.failed.is_(True))
    elif q.status == "success":
        where.append(alv.c.failed.is_(False))
    return where


def _value_counts(
    conn: sa.Connection, q: AccessLogQuery, where: list[sa.ColumnElement[bool]]
) -> list[tuple[object, int]]:
    """(value, entries) of the sort column under *where*, in the page's order."""
    column = _VALUE_SORTS[q.sort_by][0]
    direction = sa.asc if q.sort_order == "asc" else sa.desc
    n = sa.func.sum(alv.c.entries)
    select = (sa.select(column, n).where(*where).group_by(column)
              .having(n > 0).order_by(direction(column)))
    return [(v, int(c)) for v, c in conn.execute(select)]


def _value_total(where: list[sa.ColumnElement[bool]]) -> sa.Select[tuple[int]]:
    """The entries under *where*, summed from ``access_log_values``."""
    return sa.select(sa.cast(sa.func.coalesce(sa.func.sum(alv.c.entries), 0),
                             sa.BigInteger)).where(*where)


def _spread(conn: sa.Connection, account_id: str, q: AccessLogQuery) -> tuple[int, int | None]:
    """(the account's entries, the service's entries or None without a
    service filter) from ``access_log_values``, for :func:`_walk`."""
    n = sa.func.sum(alv.c.entries)
    cols = [n, n.filter(alv.c.service_id == q.service_id)] if q.service_id else [n, sa.null()]
    account, service = conn.execute(sa.select(*cols).where(alv.c.account_id == account_id)).one()
    return int(account or 0), (int(service or 0) if q.service_id else None)


#: a page walks the account's time index when that reads at most this many entries
WALK_MAX = 200_000

#: what a walked page's statement is planned with (SET LOCAL, reset after it):
#: no scan but an index's, no sort (so only the ``(account_id, timestamp, id)``
#: index gives the order; the timestamp-only index would need one), no
#: parallel workers, and no JIT (its compilation, ~90 ms, is triggered by the
#: whole-index cost the planner puts on a walk it expects to end early)
_WALK_SETTINGS = {"enable_seqscan": "off", "enable_bitmapscan": "off", "enable_sort": "off",
                  "enable_incremental_sort": "off", "max_parallel_workers_per_gather": "0",
                  "jit": "off"}

_WALK_ON = sa.text("SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in _WALK_SETTINGS.items()))
_WALK_OFF = sa.text(
    "SELECT set_config(name, reset_val, true) FROM pg_settings WHERE name IN ("
    + ", ".join(f"'{name}'" for name in _WALK_SETTINGS) + ")")


def _walk(need: int, matching: int, spread: tuple[int, int | None]) -> bool:
    """Whether to read a page by walking the account's ``(account_id,
    timestamp, id)`` index: when the entries read to the page's *need*-th
    match (expected from the counts: *matching* of the account's entries
    match) are fewer than the service's entries (what its index would read)
    and :data:`WALK_MAX`.  PostgreSQL's own estimate for a filter on a
    service, a method and a status code (columns it takes as independent)
    or on a host substring is far off, and it reads every entry of the
    service or of the account (0.1-2 s at a million) where the walk reads a
    few thousand."""
    account, service = spread
    bound = WALK_MAX if service is None else min(service, WALK_MAX)
    return matching > 0 and need * account <= matching * bound


def _walked(conn: sa.Connection, select: sa.Select) -> list[sa.Row]:
    """*select*'s rows, planned with the time index walk as its only cheap
    path (:data:`_WALK_SETTINGS` for this statement; the same rows either way)."""
    conn.execute(_WALK_ON)
    try:
        return list(conn.execute(select).all())
    finally:
        conn.execute(_WALK_OFF)


def _value_pages(
    conn: sa.Connection, q: AccessLogQuery, conds: list[sa.ColumnElement[bool]],
    counts: list[tuple[object, int]], offset: int, spread: tuple[int, int | None],
) -> list[sa.Row]:
    """The page of a sort by a value column: the values whose entries the
    page's ``[offset, offset + page_size)`` covers (from *counts*), each
    value's part read in time order (``(account_id, timestamp, id)`` index,
    or the failures index for a failing status code) with its own offset."""
    column = _VALUE_SORTS[q.sort_by][1]
    direction = sa.asc if q.sort_order == "asc" else sa.desc
    order = (direction(ale.c.timestamp), direction(ale.c.id))
    end = offset + q.page_size
    rows: list[sa.Row] = []
    first = 0  # the rank of the value's first entry
    for value, n in counts:
        if first + n > offset and first < end:
            skip = max(0, offset - first)
            extra = [column == value]
            if q.sort_by == "status_code" and isinstance(value, int) and value >= 400:
                extra.append(sa.text(f"({_FAILED})"))  # implied: the failures index applies
            limit = min(n - skip, end - first - skip)
            walk = _walk(skip + limit, n, spread)
            select = (sa.select(ale).where(*conds, *extra)
                      .order_by(*order).limit(limit))
            if skip:
                select = select.offset(skip)
            rows.extend(_walked(conn, select) if walk else conn.execute(select).all())
        first += n
        if first >= end:
            break
    return rows


#: a page merged from per-day reads (:func:`_day_page`) reads at most this many
#: index entries (days x (offset + page_size)); beyond, the page is planned
DAY_MAX = 100_000

#: a source IP's total is counted day by day (:func:`_day_total`) over at most
#: this many days (an entry's bad clock could stretch an account's span)
MAX_DAYS = 5_000


def _day(column: sa.ColumnElement) -> sa.ColumnElement:
    """``date_trunc('day', column)``, the unit literal: the expression of
    revision 0020's indexes, also in a generic (prepared) plan."""
    return sa.func.date_trunc(sa.literal_column("'day'"), column)


def _days(account_id: str) -> sa.Subquery:
    """Every day from the account's first entry's to its last's (the two ends
    of ``(account_id, timestamp, id)``), in the statement's own snapshot."""
    span = (sa.select(sa.func.min(ale.c.timestamp).label("lo"),
                      sa.func.max(ale.c.timestamp).label("hi"))
            .where(ale.c.account_id == account_id).subquery("s"))
    day = sa.func.generate_series(_day(span.c.lo), _day(span.c.hi),
                                  sa.literal_column("interval '1 day'"))
    return sa.select(day.label("day")).select_from(span).subquery("d")


def _day_count(conn: sa.Connection, account_id: str) -> int:
    """How many days :func:`_days` spans (0 without entries)."""
    days = (sa.func.date_part(sa.literal_column("'day'"), _day(sa.func.max(ale.c.timestamp))
                              - _day(sa.func.min(ale.c.timestamp))) + 1)
    n = conn.execute(sa.select(days).where(ale.c.account_id == account_id)).scalar_one()
    return 0 if n is None else int(n)


def _per_day(account_id: str, conds: list[sa.ColumnElement[bool]]
             ) -> tuple[sa.Subquery, sa.Lateral]:
    """The account's days (:func:`_days`) and, joined to each, the count of
    its entries under *conds* that day (a lateral subquery, column ``n``):
    one index range per day of a day-leading index."""
    d = _days(account_id)
    n = (sa.select(sa.func.count().label("n")).select_from(ale)
         .where(*conds, _day(ale.c.timestamp) == d.c.day).lateral("t"))
    return d, n


def _path_days(conn: sa.Connection, account_id: str, conds: list[sa.ColumnElement[bool]]
               ) -> tuple[list[tuple[datetime, int]], int]:
    """A path substring's matches per day (the days that have any, in time
    order), counted in revision 0024's per-day URL index (index-only: the
    substring is tested on the index's entries), and the long URLs' matches
    (not in that index) apart; one statement, planned with
    :data:`_URL_SETTINGS`."""
    d, n = _per_day(account_id, [*conds, sa.text(f"NOT ({_LONG_URL})")])
    days = sa.select(d.c.day, n.c.n).select_from(d.join(n, sa.true())).where(n.c.n > 0)
    long = sa.select(sa.null(), _count(*conds, sa.text(f"({_LONG_URL})")))
    rows = _with_url_settings(conn, sa.union_all(days, long))
    per_day = sorted((day, int(k)) for day, k in rows if day is not None)
    return per_day, sum(int(k) for day, k in rows if day is None)


def _path_page(q: AccessLogQuery, conds: list[sa.ColumnElement[bool]],
               per_day: list[tuple[datetime, int]], offset: int) -> sa.Select:
    """The page of a path substring sorted by time, from its matches per day
    (:func:`_path_days`, no long URL among them): only the days the page's
    ``[offset, offset + page_size)`` falls in are read, in the per-day URL
    index (index-only: it includes the timestamp), then the page's rows
    fetched by id (the same rows in the same order as one sort: a later day's
    entries are all later, ties broken by id).  Planned by PostgreSQL, a rare
    substring's page walked the account's time index to its last match (2-5 s
    at a million entries)."""
    desc = q.sort_order != "asc"
    direction = sa.desc if desc else sa.asc
    wanted: list[datetime] = []
    before = 0  # matches on the days before the first wanted one, in the page's order
    end = offset + q.page_size
    first = 0
    for day, n in (reversed(per_day) if desc else per_day):
        if first + n > offset and first < end:
            if not wanted:
                before = first
            wanted.append(day)
        first += n
        if first >= end:
            break
    # the matches of those days, read in the URL index (an OFFSET 0 subquery:
    # sorted and limited outside, PostgreSQL walked the time index instead)
    found = (sa.select(ale.c.timestamp, ale.c.id)
             .where(*conds, sa.text(f"NOT ({_LONG_URL})"), _day(ale.c.timestamp).in_(wanted))
             .offset(sa.literal_column("0")).subquery("f"))
    ids = (sa.select(found.c.timestamp, found.c.id)
           .order_by(direction(found.c.timestamp), direction(found.c.id)).limit(q.page_size))
    ids = (ids.offset(offset - before) if offset > before else ids).subquery("p")
    return (sa.select(ale).join(ids, ale.c.id == ids.c.id)
            .order_by(direction(ids.c.timestamp), direction(ids.c.id)))


def _day_total(account_id: str, conds: list[sa.ColumnElement[bool]]) -> sa.Select[tuple[int]]:
    """The entries under *conds*, counted day by day (one index range per day
    of ``ix_access_log_entries_day_account_ip`` for a source IP), summed in
    one statement."""
    d, n = _per_day(account_id, conds)
    total: sa.ColumnElement[int] = sa.func.coalesce(sa.func.sum(n.c.n), 0)
    return sa.select(sa.cast(total, sa.BigInteger)).select_from(d.join(n, sa.true()))


#: the entries revision 0024's per-day URL index cannot hold (host and path
#: over 2,000 bytes together), as that index's and the long-URL index's
#: predicates: literal text, so that a generic (prepared) plan proves them
_LONG_URL = "octet_length(host) + octet_length(path) > 2000"


def _day_page(
    account_id: str, q: AccessLogQuery, conds: list[sa.ColumnElement[bool]], offset: int
) -> sa.Select:
    """The page of *conds* in *q*'s order, merged from the first ``offset +
    page_size`` entries of each day (revisions 0020 and 0024's indexes lead
    with the day), then its rows fetched by id: the same rows in the same
    order as one sort of every entry (ties broken by id, the last key).

    A sort by URL reads the days in ``ix_access_log_entries_day_account_url``,
    which holds the entries whose host and path fit a btree entry; the first
    ``offset + page_size`` of the others (``ix_access_log_entries_account_long_url``,
    normally none) are merged in as one more part."""
    direction = sa.asc if q.sort_order == "asc" else sa.desc
    keys = (*_SORT_COLUMNS[q.sort_by], ale.c.id)
    order = [direction(c) for c in keys]
    need = offset + q.page_size
    d = _days(account_id)
    url = q.sort_by == "url"
    short = [sa.text(f"NOT ({_LONG_URL})")] if url else []
    per_day = (sa.select(*keys).where(*conds, *short, _day(ale.c.timestamp) == d.c.day)
               .order_by(*order).limit(need).lateral("t"))
    parts: sa.Select | sa.CompoundSelect = sa.select(*per_day.c).select_from(
        d.join(per_day, sa.true()))
    if url:
        long = (sa.select(*keys).where(*conds, sa.text(f"({_LONG_URL})"))
                .order_by(*order).limit(need).subquery("l"))
        parts = sa.union_all(parts, sa.select(*long.c))
    merged = parts.subquery("m")
    ids = (sa.select(*merged.c).order_by(*(direction(merged.c[c.name]) for c in keys))
           .limit(q.page_size))
    ids = (ids.offset(offset) if offset else ids).subquery("p")
    return (sa.select(ale).join(ids, ale.c.id == ids.c.id)
            .order_by(*(direction(ids.c[c.name]) for c in keys)))


#: a merged page's statement runs without JIT (SET LOCAL, reset after it):
#: the planner takes generate_series for 1,000 days and puts a cost on the
#: per-day reads that triggers compilation (about 10 ms, the read ~5 ms)
_JIT_OFF = sa.text("SELECT set_config('jit', 'off', true)")
_JIT_RESET = sa.text("SELECT set_config(name, reset_val, true) FROM pg_settings "
                     "WHERE name = 'jit'")


def _without_jit(conn: sa.Connection, select: sa.Select) -> list[sa.Row]:
    conn.execute(_JIT_OFF)
    try:
        return list(conn.execute(select).all())
    finally:
        conn.execute(_JIT_RESET)


#: what a page merged by URL is planned with (SET LOCAL, reset after it): no
#: JIT (as above), no parallel workers and no sequential scan.  PostgreSQL
#: has no statistics on the long-URL predicate and takes a third of the
#: account's entries to match it (normally none do): it planned that part
#: with parallel workers (12-30 ms to start them for no rows) or, in a
#: generic plan, as a scan of the account's every entry (1.7 s)
_URL_SETTINGS = {"jit": "off", "max_parallel_workers_per_gather": "0", "enable_seqscan": "off"}
_URL_ON = sa.text("SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in _URL_SETTINGS.items()))
_URL_OFF = sa.text(
    "SELECT set_config(name, reset_val, true) FROM pg_settings WHERE name IN ("
    + ", ".join(f"'{name}'" for name in _URL_SETTINGS) + ")")


def _with_url_settings(conn: sa.Connection, select: sa.Select) -> list[sa.Row]:
    """*select*'s rows, planned with :data:`_URL_SETTINGS` (reset after it)."""
    conn.execute(_URL_ON)
    try:
        return list(conn.execute(select).all())
    finally:
        conn.execute(_URL_OFF)


def _merged(conn: sa.Connection, q: AccessLogQuery, select: sa.Select) -> list[sa.Row]:
    """The rows of a page merged from per-day reads (:func:`_day_page`)."""
    if q.sort_by != "url":
        return _without_jit(conn, select)
    return _with_url_settings(conn, select)


def _by_day(store: Store, q: AccessLogQuery) -> str | None:
    """Which of revisions 0020 and 0024's per-day reads answers *q*
    (PostgreSQL): "ip" (a source IP, optionally in a time range: the total
    and the page in any order), "duration" or "url" (a sort of the account's
    every entry), "path" (a path substring alone: the total), or None."""
    if store.dialect != "postgresql":
        return None
    if q.source_ip and _only(q, "source_ip", "start_date", "end_date"):
        return "ip"
    if q.sort_by in ("duration", "url") and _only(q):
        return q.sort_by
    if q.path and _only(q, "path"):
        return "path"  # the total per day; the page by time from the days it falls in
    return None


def _group_counts(
    store: Store, account_id: str, q: AccessLogQuery, element: str | None
) -> sa.Select[tuple[int, int]] | None:
    """(the group's entries, the account's entries) from ``access_log_groups``
    and ``access_log_counts`` (PostgreSQL, revisions 0023 and 0027) when *q*
    filters on nothing but the group and a time range, in one statement; else
    None.  The group alone sums its sets' every hour; with a time range, the
    whole hours in the range plus the partial hours at its ends counted in
    the time index (:func:`_in_range`)."""
    if (store.dialect != "postgresql" or element is None
            or not _only(q, "group_id", "start_date", "end_date")):
        return None
    holds = _holds(store, alg.c.user_groups, element)
    matching: sa.ColumnElement[int]
    if q.start_date is not None or q.end_date is not None:
        matching = _in_range(account_id, None, q.start_date, q.end_date,
                             (holds, _holds(store, ale.c.user_groups, element)))
    else:
        matching = sa.func.coalesce(sa.select(sa.func.sum(alg.c.entries)).where(
            alg.c.account_id == account_id, holds).scalar_subquery(), 0)
    account = sa.func.coalesce(
        sa.select(alc.c.entries).where(alc.c.account_id == account_id).scalar_subquery(), 0)
    return sa.select(sa.cast(matching, sa.BigInteger), sa.cast(account, sa.BigInteger))


def _total(
    store: Store, account_id: str, q: AccessLogQuery, conds: list[sa.ColumnElement[bool]]
) -> sa.Select[tuple[int]]:
    """The exact ``total_records`` of *conds*, as one statement (one snapshot).

    The account's every entry: its counter (``access_log_counts``, kept by
    triggers).  A service and/or a time range (PostgreSQL): whole hours from
    ``access_log_hours`` plus the edges (:func:`_in_range`).
    ``status=success`` over either: that minus the failures
    (``ix_access_log_entries_failed``), instead of counting the ~95 % of
    entries that succeeded.  Otherwise ``count(*)`` of the conditions."""
    everything: sa.ColumnElement[int]
    if q.status == "failed" or not _only(q, "service_id", "start_date", "end_date", "status"):
        return sa.select(sa.func.count()).select_from(ale).where(*conds)
    if not (q.service_id or q.start_date or q.end_date):
        everything = sa.func.coalesce(
            sa.select(alc.c.entries).where(alc.c.account_id == account_id).scalar_subquery(), 0
        )
    elif store.dialect == "postgresql":
        everything = _in_range(account_id, q.service_id, q.start_date, q.end_date)
    else:
        return sa.select(sa.func.count()).select_from(ale).where(*conds)
    if q.status != "success":
        return sa.select(everything)
    failures = [ale.c.account_id == account_id, sa.text(f"({_FAILED})")]
    if q.service_id:
        # as an expression, so the service_id index is no candidate: the
        # failures index holds the service (0018) and answers alone
        failures.append(ale.c.service_id.concat("") == q.service_id)
    if q.start_date is not None:
        failures.append(ale.c.timestamp >= q.start_date)
    if q.end_date is not None:
        failures.append(ale.c.timestamp <= q.end_date)
    return sa.select(everything - _count(*failures))


def list_page(store: Store, account_id: str, query: AccessLogQuery) -> AccessLogPage:
    """Filtered, sorted, paginated access log of the account. ValidationError
    for a bad page, page_size (1..100), sort_by or sort_order."""
    q = query
    if q.page < 1:
        raise ValidationError("page must be at least 1")
    if not 1 <= q.page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    if q.sort_by not in _SORT_COLUMNS:
        raise ValidationError(f"invalid sort_by {q.sort_by!r}")
    if q.sort_order not in ("asc", "desc"):
        raise ValidationError(f"invalid sort_order {q.sort_order!r}")
    if q.status not in (None, "", "success", "failed"):
        raise ValidationError(f"invalid status {q.status!r}")
    conds: list[sa.ColumnElement[bool]] = [ale.c.account_id == account_id]
    if q.service_id:
        conds.append(ale.c.service_id == q.service_id)
    if q.search:
        conds.append(
            sa.or_(
                _contains(ale.c.host, q.search),
                _contains(ale.c.path, q.search),
                _contains(ale.c.user_id, q.search),
                _contains(ale.c.location_connection_ip, q.search),
                _contains(ale.c.reason, q.search),
            )
        )
    if q.source_ip:
        conds.append(ale.c.location_connection_ip == q.source_ip)
    if q.host:
        conds.append(_contains(ale.c.host, q.host))
    if q.path:
        conds.append(_contains(ale.c.path, q.path))
    if q.user_id:
        conds.append(ale.c.user_id == q.user_id)
    if q.method:
        conds.append(sa.func.upper(ale.c.method) == q.method.upper())
    if q.user_email or q.user_name:
        ucond = [users.c.account_id == account_id]
        if q.user_email:
            ucond.append(_contains(users.c.email, q.user_email))
        if q.user_name:
            ucond.append(_contains(users.c.name, q.user_name))
        conds.append(ale.c.user_id.in_(_user_ids(store, ucond)))
    # literal text, the predicate of ix_access_log_entries_failed: with bound
    # values a generic (prepared) plan could not prove it and skip the index
    failed = sa.text(f"({_FAILED})")  # parenthesised: ANDed with the others
    if q.status == "failed":
        conds.append(failed)
    elif q.status == "success":
        conds.append(sa.text(f"NOT ({_FAILED})"))
    covered = _user_covered(store, q)
    if q.status_code is not None:
        conds.append(ale.c.status_code == q.status_code)
        if q.status_code >= 400 and q.status != "failed" and not covered:
            # implied (a failure), stated so ix_access_log_entries_failed applies
            # (not to a user's covered list: the user index holds no reason)
            conds.append(failed)
    group = _group_element(store, account_id, q.group_id) if q.group_id else None
    if group is not None:
        conds.append(_holds(store, ale.c.user_groups, group))
    if q.start_date is not None:
        conds.append(ale.c.timestamp >= q.start_date)
    if q.end_date is not None:
        conds.append(ale.c.timestamp <= q.end_date)
    direction = sa.asc if q.sort_order == "asc" else sa.desc
    order = [direction(c) for c in _SORT_COLUMNS[q.sort_by]] + [direction(ale.c.id)]
    offset = (q.page - 1) * q.page_size

    def page_of(conds: list[sa.ColumnElement[bool]]) -> sa.Select:
        if covered:
            return _covered_page(q, conds, offset)
        page = sa.select(ale).where(*conds).order_by(*order).limit(q.page_size)
        if offset >= DEFER_OFFSET and q.sort_by == "timestamp" and _index_only(q):
            # a deep page: skip the offset's rows in the index alone, then fetch
            # the page's rows (a "deferred join": the same rows, in the same order)
            ids = (sa.select(ale.c.id).where(*conds).order_by(*order)
                   .limit(q.page_size).offset(offset))
            return sa.select(ale).where(ale.c.id.in_(ids.scalar_subquery())).order_by(*order)
        return page.offset(offset) if offset else page

    values = None
    if q.host or q.method or q.status_code is not None or q.sort_by in _VALUE_SORTS:
        values = _values_where(store, account_id, q)
    by_day = _by_day(store, q)
    grouped = _group_counts(store, account_id, q, group)
    with store._read() as conn:
        if grouped is not None:
            # the group's total from the per-set counts; its page walks the
            # time index when that reads few entries (a common group); in a
            # time range the page is planned as before (from the range's end)
            total, account = (int(n) for n in conn.execute(grouped).one())
            ranged = q.start_date is not None or q.end_date is not None
            if offset >= total:
                rows = []
            elif q.sort_by == "timestamp" and not ranged and _walk(
                    offset + q.page_size, total, (account, None)):
                rows = _walked(conn, page_of(conds))
            else:
                rows = conn.execute(page_of(conds)).all()
        elif by_day is not None:
            days = _day_count(conn, account_id)
            per_day: list[tuple[datetime, int]] | None = None
            if by_day == "path" and days <= MAX_DAYS:
                per_day, long = _path_days(conn, account_id, conds)
                total = sum(n for _, n in per_day) + long
                if long:  # long URLs in between: the page as before
                    per_day = None
            else:
                total = int(conn.execute(
                    _day_total(account_id, conds) if by_day == "ip" and days <= MAX_DAYS
                    else _total(store, account_id, q, conds)).scalar_one())
            if offset >= total:
                rows = []
            elif per_day is not None and q.sort_by == "timestamp":
                rows = _with_url_settings(conn, _path_page(q, conds, per_day, offset))
            elif by_day != "path" and days * (offset + q.page_size) <= DAY_MAX:
                rows = _merged(conn, q, _day_page(account_id, q, conds, offset))
            else:
                rows = conn.execute(page_of(conds)).all()
        elif values is None:
            total = int(conn.execute(_total(store, account_id, q, conds)).scalar_one())
            # nothing matches, or the page is past the end: no page query (one
            # that matches nothing would walk the account's every entry)
            rows = conn.execute(page_of(conds)).all() if offset < total else []
        else:
            spread = _spread(conn, account_id, q)
            if q.sort_by in _VALUE_SORTS:
                # a sort by a value column: the total is the per-value counts'
                # sum, the page is read value by value
                counts = _value_counts(conn, q, values)
                total = sum(n for _, n in counts)
                rows = (_value_pages(conn, q, conds, counts, offset, spread)
                        if offset < total else [])
            else:
                total = int(conn.execute(_value_total(values)).scalar_one())
                if offset >= total:
                    rows = []
                elif _walk(offset + q.page_size, total, spread):
                    rows = _walked(conn, page_of(conds))
                else:
                    rows = conn.execute(page_of(conds)).all()
    return AccessLogPage(
        data=tuple(row_access_log(r) for r in rows),
        page=q.page,
        page_size=q.page_size,
        total_records=total,
        total_pages=math.ceil(total / q.page_size) if total else 0,
    )


class AccessLogRepository(AccessLogRecords):
    """``store.access_logs``: the records' writes, reads and retention, plus the list query."""

    def list(self, account_id: str, query: AccessLogQuery) -> AccessLogPage:
        """Filtered, sorted, paginated access log of the account (:func:`list_page`)."""
        return list_page(self._store, account_id, query)
