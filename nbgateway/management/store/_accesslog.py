"""Store part: the access-log repository (``store.access_logs``).

Owns the ``access_log_entries`` table: single and batch appends (one
transaction per batch, one multi-row insert that skips ids already stored
(ON CONFLICT DO NOTHING; on PostgreSQL's batch path an anti-join), so a
retried batch never duplicates, and the count of rows it
stored is exact; on SQLite that count per account also raises the account's
``access_log_counts`` row, revision 0022), ``user_groups`` capture at write
time (one lookup per batch, whatever its accounts), and retention (age and
per-account row count) pruned in small transactions.  Batches come as value
tuples (:data:`VALUE_FIELDS`, :func:`prepare_rows`) or column-wise as the gRPC
batch RPC decodes them (:func:`prepare_columns`, timestamps as epoch
microseconds), are prepared column by column and written with an
``executemany`` of tuples on SQLite (flags as 0/1 and a column empty
throughout the batch as a literal: sqlite3 binds None and bool slowly;
:func:`_sqlite_insert`) and a
binary ``COPY`` into a staging table plus one ``INSERT ... SELECT`` on
PostgreSQL (:func:`executemany_rows`).  ``_accesslog_query`` adds the list
query on top (``AccessLogRepository``).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import operator
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from nbgateway.management.errors import NotFound, ValidationError
from nbgateway.management.model import (
    AccessLogEntry,
    new_id,
    utcnow,
)
from nbgateway.management.store._base import Tx, dumps, loads
from nbgateway.management.store.schema import access_log_counts as alc
from nbgateway.management.store.schema import access_log_entries as ale
from nbgateway.management.store.schema import accounts, groups, peers, users

if TYPE_CHECKING:
    from nbgateway.management.store import Store



def _unmap(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")


# entry field -> its VARCHAR column (the limit is taken from the schema)
_BOUNDED_FIELDS = {
    "id": ale.c.id,
    "account_id": ale.c.account_id,
    "service_id": ale.c.service_id,
    "source_ip": ale.c.location_connection_ip,
    "country_code": ale.c.location_country_code,
    "subdivision_code": ale.c.subdivision_code,
    "method": ale.c.method,
    "user_id": ale.c.user_id,
    "auth_method_used": ale.c.auth_method_used,
    "protocol": ale.c.protocol,
}


def _sanitise(entry: AccessLogEntry) -> AccessLogEntry:
    """Access logs come from proxies: keep the entry rather than drop it. NULs
    (unstorable in PostgreSQL text) become U+FFFD and over-long values of
    bounded columns are truncated."""
    changes = {
        f.name: _clean(getattr(entry, f.name))
        for f in dataclasses.fields(entry)
        if isinstance(getattr(entry, f.name), str) and "\x00" in getattr(entry, f.name)
    }
    for name, column in _BOUNDED_FIELDS.items():
        value = changes.get(name, getattr(entry, name))
        limit = column.type.max_length
        if len(value) > limit:
            changes[name] = value[:limit]
    if any("\x00" in k or "\x00" in v for k, v in entry.metadata.items()):
        changes["metadata"] = {_clean(k): _clean(v) for k, v in entry.metadata.items()}
    if entry.user_groups and any("\x00" in g for g in entry.user_groups):
        changes["user_groups"] = tuple(_clean(g) for g in entry.user_groups)
    return dataclasses.replace(entry, **changes) if changes else entry


def row_access_log(r: sa.Row) -> AccessLogEntry:
    ug = loads(r.user_groups)
    return AccessLogEntry(
        id=r.id,
        account_id=r.account_id,
        service_id=r.service_id,
        timestamp=r.timestamp,
        source_ip=r.location_connection_ip,
        country_code=r.location_country_code,
        city_name=r.location_city_name,
        geo_name_id=r.location_geo_name_id,
        subdivision_code=r.subdivision_code,
        method=r.method,
        host=r.host,
        path=r.path,
        duration=r.duration,
        status_code=r.status_code,
        reason=r.reason,
        user_id=r.user_id,
        auth_method_used=r.auth_method_used,
        bytes_upload=r.bytes_upload,
        bytes_download=r.bytes_download,
        protocol=r.protocol,
        metadata=loads(r.metadata) or {},
        agent_network=bool(r.agent_network),
        user_groups=tuple(ug) if ug is not None else None,
        upstream_target=r.upstream_target or "",
    )



def _prepare(entry: AccessLogEntry) -> AccessLogEntry:
    e = _sanitise(entry)
    return dataclasses.replace(
        e,
        id=e.id or new_id(),
        timestamp=e.timestamp or utcnow(),
        source_ip=_unmap(e.source_ip) if e.source_ip else "",
    )


@functools.lru_cache(maxsize=4096)
def _unmap_cached(ip: str) -> str:
    return _unmap(ip) if ip else ""


# -- batch ingestion ------------------------------------------------------------------------

#: An entry as the batch path takes it (:meth:`AccessLogRecords.append_values`):
#: one tuple per entry holding these :class:`AccessLogEntry` fields in this
#: order.  ``timestamp`` is an aware datetime (None: now), ``metadata`` a
#: mapping or None, ``user_groups`` a tuple or None (None: captured at write
#: time); text fields are sanitised by the store (NULs replaced, bounded
#: columns truncated).  A caller that decodes entries itself (the gRPC batch
#: RPC) builds these tuples directly instead of an :class:`AccessLogEntry`
#: per entry; :data:`entry_values` makes one of an entry.
VALUE_FIELDS = (
    "id", "account_id", "service_id", "timestamp", "source_ip", "country_code",
    "city_name", "geo_name_id", "subdivision_code", "method", "host", "path",
    "duration", "status_code", "reason", "user_id", "auth_method_used",
    "bytes_upload", "bytes_download", "protocol", "metadata", "agent_network",
    "upstream_target", "user_groups",
)
entry_values = operator.attrgetter(*VALUE_FIELDS)

_FIELD_COLUMNS = {
    "source_ip": "location_connection_ip",
    "country_code": "location_country_code",
    "city_name": "location_city_name",
    "geo_name_id": "location_geo_name_id",
}
#: the table columns of VALUE_FIELDS, in the same order (every column once)
_COLUMNS = tuple(ale.c[_FIELD_COLUMNS.get(f, f)] for f in VALUE_FIELDS)
assert {c.name for c in _COLUMNS} == {c.name for c in ale.columns}

_ID, _ACCOUNT, _TIMESTAMP, _SOURCE_IP = 0, 1, 3, 4
_USER, _METADATA, _AGENT, _UPSTREAM, _GROUPS = 15, 20, 21, 22, 23
_LIMITS = {
    column.name: column.type.max_length
    for column in ale.columns
    if isinstance(getattr(column.type, "max_length", None), int)
}
#: positions of the text fields, and of the bounded ones with their limit
_TEXT = tuple(
    i for i, f in enumerate(VALUE_FIELDS)
    if isinstance(AccessLogEntry.__dataclass_fields__[f].default, str)
)
_BOUNDED = tuple((i, _LIMITS[c.name]) for i, c in enumerate(_COLUMNS) if c.name in _LIMITS)


def _clean_metadata(meta: Any) -> str:
    items = dict(meta)
    if any("\x00" in k or "\x00" in v for k, v in items.items()):
        items = {_clean(k): _clean(v) for k, v in items.items()}
    return dumps(items)  # type: ignore[return-value]


def _naive_utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValidationError("access log timestamp must be timezone-aware")
    return ts.astimezone(UTC).replace(tzinfo=None)


def prepare_rows(
    values: Sequence[tuple[Any, ...]],
    dialect: str,
    capture: Any = None,
) -> list[tuple[Any, ...]]:
    """The driver rows of value tuples (:data:`VALUE_FIELDS`), for
    :func:`executemany_rows`: the batch transposed, then
    :func:`prepare_columns` (timestamps as aware datetimes or None)."""
    if not values:
        return []
    cols: list[Sequence[Any]] = list(zip(*values, strict=True))
    if len(cols) != len(VALUE_FIELDS):
        raise ValueError(f"access log values have {len(cols)} fields, not {len(VALUE_FIELDS)}")
    return _prepare_columns(cols, dialect, capture, epoch_us=False)


def prepare_columns(
    columns: Sequence[Sequence[Any]],
    dialect: str,
    capture: Any = None,
) -> list[tuple[Any, ...]]:
    """The driver rows of a batch given column-wise: one sequence per
    :data:`VALUE_FIELDS` field, in that order, all of one length, holding
    what the value tuples hold except the timestamp column: UTC epoch
    microseconds (ints; what a gateway's ``Timestamp`` gives without a
    ``datetime`` per entry).  See :func:`_prepare_columns`."""
    cols = _checked_columns(columns)
    if not cols[_ID]:
        return []
    return _prepare_columns(cols, dialect, capture, epoch_us=True)


def _checked_columns(columns: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """``columns`` as a list, one per :data:`VALUE_FIELDS` field and all of
    one length, or ValueError."""
    cols = list(columns)
    if len(cols) != len(VALUE_FIELDS):
        raise ValueError(f"access log columns are {len(cols)}, not {len(VALUE_FIELDS)}")
    if len({len(c) for c in cols}) != 1:
        raise ValueError("access log columns differ in length")
    return cols


#: SQLAlchemy's SQLite DATETIME text of a whole second ("YYYY-MM-DD HH:MM:SS")
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)


def _epoch_stamps(ts: Sequence[int], dialect: str) -> list[Any]:
    """Epoch microseconds as the timestamp column's driver values: naive UTC
    datetimes (PostgreSQL) or SQLAlchemy's SQLite text, each whole second
    formatted once per batch (a batch's entries share few seconds)."""
    if dialect == "postgresql":
        # a timedelta times an int: timedelta(microseconds=<16 digits>)
        # normalises its argument through Python number objects (~2.5x the cost)
        return list(map(_NAIVE_EPOCH.__add__, map(_ONE_US.__mul__, ts)))
    parts = list(map(divmod, ts, itertools.repeat(1_000_000)))
    whole = {s: (_NAIVE_EPOCH + timedelta(seconds=s)).isoformat(" ") for s in {s for s, _ in parts}}
    return [f"{whole[s]}.{us:06d}" for s, us in parts]


#: PostgreSQL's timestamp epoch (2000-01-01) in Unix epoch microseconds, negated
_PG_SHIFT_US = -946_684_800_000_000
#: the epoch microseconds a ``datetime`` holds (:func:`_epoch_stamps`' range)
_MIN_US = (datetime.min - _NAIVE_EPOCH) // _ONE_US
_MAX_US = (datetime.max - _NAIVE_EPOCH) // _ONE_US


def _pg_copy_stamps(ts: Sequence[int]) -> list[int]:
    """Epoch microseconds as the binary ``COPY`` value of a ``timestamp``
    column: microseconds since 2000-01-01 as an int8 (the same eight bytes
    psycopg writes for the naive datetime :func:`_epoch_stamps` makes, with
    no ``datetime`` per entry).  Outside a ``datetime``'s range: the same
    OverflowError as :func:`_epoch_stamps` (the store's 422)."""
    if ts and (min(ts) < _MIN_US or max(ts) > _MAX_US):
        _epoch_stamps([min(ts), max(ts)], "postgresql")  # raises as it did
    return list(map(_PG_SHIFT_US.__add__, ts))


def _prepare_columns(
    cols: list[Sequence[Any]], dialect: str, capture: Any, *, epoch_us: bool
) -> list[tuple[Any, ...]]:
    """The driver rows of a transposed batch (:func:`prepare_rows`,
    :func:`prepare_columns`).

    Sanitised as :func:`_sanitise` does (NULs become U+FFFD, bounded columns
    are truncated), ids and timestamps filled in, source addresses unmapped,
    metadata and user groups encoded as JSON; ``capture(account_id, user_ids)``
    gives ``{user id: group names or None}`` for the entries that have none
    (called once per account of the batch; without it they stay NULL).
    Timestamps become naive UTC (PostgreSQL) or SQLAlchemy's SQLite text.
    A duplicate id inside the batch: the first entry wins.

    The work is column-wise: every check is a C-level pass over one column
    (``join``, ``max(map(len, ...))``), the rare fix-ups rebuild only their
    column, and the rows are transposed back at the end (per-row Python
    calls were most of the ingest cost)."""
    return list(zip(*_prepared_columns(cols, dialect, capture, epoch_us=epoch_us), strict=True))


def _batch_rows(
    cols: list[Sequence[Any]], dialect: str, capture: Any, *, epoch_us: bool
) -> tuple[list[tuple[Any, ...]], tuple[int, ...] | None]:
    """The batch path's rows: :func:`_prepare_columns`'s, without the
    :data:`_LITERALS` columns that hold their one empty value in every row
    (a gateway sends no geo data; most batches have no metadata), and those
    columns' positions, for :func:`executemany_rows`'s ``literal``: the
    statement carries them as SQL, so no row holds, binds or copies them
    (found per column in C: ``count``; PostgreSQL batches small enough for
    one ``INSERT ... VALUES``, and its batches of datetimes, keep every
    column: ``literal`` None).  On
    PostgreSQL the rows are for :func:`_pg_batch_sql`'s ``COPY``: epoch
    microseconds become the timestamp's int8 (:func:`_pg_copy_stamps`)."""
    if dialect == "postgresql" and (len(cols[_ID]) <= _PG_VALUES_ROWS or not epoch_us):
        return _prepare_columns(cols, dialect, capture, epoch_us=epoch_us), None
    cols = _prepared_columns(cols, dialect, capture, epoch_us=epoch_us, copy_us=True)
    n = len(cols[_ID])
    literal = tuple(k for k, (value, _) in _LITERALS.items() if cols[k].count(value) == n)
    if literal:
        cols = [col for k, col in enumerate(cols) if k not in literal]
    return list(zip(*cols, strict=True)), literal


def _prepared_columns(
    cols: list[Sequence[Any]], dialect: str, capture: Any, *, epoch_us: bool,
    copy_us: bool = False,
) -> list[Sequence[Any]]:
    """The column-wise work of :func:`_prepare_columns`: the fixed columns
    (``copy_us``: PostgreSQL epoch microseconds as :func:`_pg_copy_stamps`)."""
    n = len(cols[_ID])
    if not all(cols[_ID]):
        cols[_ID] = [i or new_id() for i in cols[_ID]]
    if ":" in "".join(cols[_SOURCE_IP]):  # IPv4 text is canonical already
        cols[_SOURCE_IP] = list(map(_unmap_cached, cols[_SOURCE_IP]))
    for i in _TEXT:
        if "\x00" in "".join(cols[i]):
            cols[i] = [_clean(v) for v in cols[i]]
    for i, limit in _BOUNDED:
        if max(map(len, cols[i])) > limit:
            cols[i] = [v[:limit] for v in cols[i]]
    ids = cols[_ID]
    if len(set(ids)) < n:  # a duplicate inside the batch: the first one wins
        first: dict[str, int] = {}
        for pos, i in enumerate(ids):
            first.setdefault(i, pos)
        keep = sorted(first.values())
        cols = [[col[pos] for pos in keep] for col in cols]
        n = len(keep)
    ts = cols[_TIMESTAMP]
    if epoch_us and copy_us and dialect == "postgresql":
        ts = _pg_copy_stamps(ts)
    elif epoch_us:
        ts = _epoch_stamps(ts, dialect)
    else:
        if None in ts:
            now = utcnow()
            ts = [t or now for t in ts]
        ts = [t.replace(tzinfo=None) if t.tzinfo is UTC else _naive_utc(t) for t in ts]
        if dialect != "postgresql":  # SQLAlchemy's SQLite DATETIME text
            ts = [t.isoformat(" ", "microseconds") for t in ts]
    cols[_TIMESTAMP] = ts
    meta = cols[_METADATA]
    cols[_METADATA] = [_clean_metadata(m) if m else None for m in meta] if any(meta) else [
        None
    ] * n
    if dialect == "postgresql":
        cols[_AGENT] = list(map(bool, cols[_AGENT]))
    else:  # SQLite's own 0/1: a bool parameter takes sqlite3's slow adaptation path
        cols[_AGENT] = [1 if a else 0 for a in cols[_AGENT]]
    if not all(cols[_UPSTREAM]):
        cols[_UPSTREAM] = [u or None for u in cols[_UPSTREAM]]
    cols[_GROUPS] = _group_column(cols[_ACCOUNT], cols[_USER], cols[_GROUPS], capture)
    return cols


def _group_column(
    accounts_: Sequence[str], users_: Sequence[str], given: Sequence[Any], capture: Any
) -> list[str | None]:
    """The ``user_groups`` column: given groups encoded, the others captured
    (a :class:`BatchCapture`: one lookup for all accounts; any other
    ``capture(account_id, user_ids)``: one call per account; users sorted,
    each once; entries without a user: NULL)."""
    if given.count(None) == len(given):
        if isinstance(capture, BatchCapture) and capture.pairs is not None:
            # the batch's distinct (account, user) pairs, found in C; the
            # lookup gives each pair's column text (None: not captured)
            pairs = set(zip(accounts_, users_, strict=True))
            if any(not u for _, u in pairs):
                pairs = {p for p in pairs if p[1]}
            return list(map(capture.pairs(pairs).get, zip(accounts_, users_, strict=True)))
        one = set(accounts_)
        if len(one) == 1:  # the usual batch: one account
            (account_id,) = one
            by_user = _captured(capture, account_id, {u for u in set(users_) if u})
            return list(map(by_user.get, users_))
        keys = {(a, u) for a, u in zip(accounts_, users_, strict=True) if u}
    else:
        keys = {(a, u) for a, u, g in zip(accounts_, users_, given, strict=True)
                if g is None and u}
    per_account: dict[str, set[str]] = {}
    for a, u in keys:
        per_account.setdefault(a, set()).add(u)
    # every account's users in one lookup (a BatchCapture), else one call per account
    wanted = {a: sorted(per_account[a]) for a in sorted(per_account)}
    if capture is None:
        found: dict[str, Any] = {}
    elif isinstance(capture, BatchCapture):
        found = capture.fetch(wanted)
    else:
        found = {a: capture(a, users_of) for a, users_of in wanted.items()}
    captured = {
        (a, u): _groups_json(tuple(g)) if (g := found.get(a, {}).get(u)) is not None else None
        for a, users_of in per_account.items() for u in users_of
    }
    if given.count(None) == len(given):
        return list(map(captured.get, zip(accounts_, users_, strict=True)))
    return [
        _groups_json(tuple(g)) if g is not None else captured.get((a, u))
        for a, u, g in zip(accounts_, users_, given, strict=True)
    ]


#: the longest ``auto_groups`` text :func:`_group_ids` keeps decoded (the
#: column has no limit but the 1 MiB request body: a count-bounded cache of
#: long texts would keep GiBs after the batches are stored)
_GROUP_IDS_CACHED_TEXT = 2048


@functools.lru_cache(maxsize=4096)
def _cached_group_ids(auto_groups: str | None) -> tuple[str, ...]:
    return tuple(loads(auto_groups) or ())


def _group_ids(auto_groups: str | None) -> tuple[str, ...]:
    """A user's ``auto_groups`` column as a tuple of group ids, decoded once
    per distinct text (a batch's hundreds of users share few) when it is at
    most :data:`_GROUP_IDS_CACHED_TEXT` characters (the cache then holds at
    most ~4,096 x 2 kB texts and their ~50 ids), else decoded each time."""
    if auto_groups is not None and len(auto_groups) > _GROUP_IDS_CACHED_TEXT:
        return tuple(loads(auto_groups) or ())
    return _cached_group_ids(auto_groups)


class BatchCapture:
    """The ``capture`` of :func:`_prepare_columns` that looks up every
    account's users together: ``fetch({account id: user ids})`` gives
    ``{account id: {user id: group names}}`` (users that are neither a user
    nor a peer of their account left out).  Called as ``capture(account_id,
    user_ids)`` it looks up one account, like any capture; a batch of several
    accounts is one ``fetch`` (:func:`_group_column`)."""

    def __init__(self, fetch: Any, pairs: Any = None) -> None:
        self.fetch = fetch
        #: optional ``pairs({(account id, user id), ...})``: ``{pair: the
        #: user_groups column text}`` (pairs not captured left out), the
        #: batch path's one lookup (:meth:`AccessLogRecords._capture_pairs`)
        self.pairs = pairs

    def __call__(self, account_id: str, user_ids: Sequence[str]) -> dict[str, Any]:
        return self.fetch({account_id: list(user_ids)}).get(account_id, {})


def _captured(capture: Any, account_id: str, user_ids: set[str]) -> dict[str, str | None]:
    """``{user id: its user_groups column}`` of one account's users (None:
    not captured)."""
    if capture is None or not user_ids:
        return {}
    found = capture(account_id, sorted(user_ids))
    return {u: _groups_json(tuple(g)) if (g := found.get(u)) is not None else None
            for u in user_ids}


@functools.lru_cache(maxsize=1024)
def _groups_json(groups: tuple[str, ...]) -> str:
    """The ``user_groups`` column of a group-name tuple (the rows of one user
    share it: encoded once, not per row)."""
    return dumps([_clean(g) for g in groups])  # type: ignore[return-value]


def insert_ignoring_duplicates(dialect: str) -> Any:
    """``INSERT INTO access_log_entries ... ON CONFLICT (id) DO NOTHING`` for the
    store's dialect (SQLite or PostgreSQL), as a SQLAlchemy statement."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(ale).on_conflict_do_nothing(index_elements=[ale.c.id])


_STAGE = "nbgw_access_log_stage"
#: PostgreSQL type names of the columns, for the binary COPY
_PG_COPY_TYPES = {"BIGINT": "int8", "INTEGER": "int4", "BOOLEAN": "bool",
                  "TIMESTAMP WITHOUT TIME ZONE": "timestamp", "TEXT": "text"}


@functools.lru_cache(maxsize=4)
def _sql(dialect: Any) -> dict[str, Any]:
    """The statements of :func:`executemany_rows` for a dialect, built once."""
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c.name) for c in _COLUMNS)
    table = quote(ale.name)
    if dialect.name != "postgresql":
        marks = ", ".join("?" for _ in _COLUMNS)
        return {"insert": f"INSERT INTO {table} ({names}) VALUES ({marks}) "
                          f"ON CONFLICT ({quote('id')}) DO NOTHING",
                # revision 0022: the store keeps the counter on SQLite
                "count": f"INSERT INTO {quote(alc.name)} (account_id, entries) VALUES (?, ?) "
                         "ON CONFLICT (account_id) DO UPDATE SET entries = entries + "
                         "excluded.entries"}
    pg_types = [c.type.compile(dialect=dialect) for c in _COLUMNS]
    return {
        # the staging table lives as long as the session, empty outside a
        # batch's transaction (ON COMMIT DELETE ROWS; the DELETE covers a
        # second batch in one transaction), so it is created once per
        # connection and never shows up in the catalog churn
        "stage": (
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
            + ", ".join(f"{quote(c.name)} {t}" for c, t in zip(_COLUMNS, pg_types, strict=True))
            + f") ON COMMIT DELETE ROWS; DELETE FROM {_STAGE}"
        ),
        "copy": f"COPY {_STAGE} ({names}) FROM STDIN (FORMAT BINARY)",
        "copy_types": [_PG_COPY_TYPES.get(t, "text") for t in pg_types],
        # ids already stored are left out by an anti-join on the primary key
        # (planned afresh per batch: :func:`_pg_insert`), and the rows go in
        # sorted by account, user and time (:data:`_PG_INSERT_ORDER`)
        "insert": (
            f"WITH ins AS (INSERT INTO {table} ({names}) SELECT {names} FROM {_STAGE} s "
            f"WHERE NOT EXISTS (SELECT FROM {table} e WHERE e.{quote('id')} = s.{quote('id')}) "
            f"ORDER BY {', '.join(quote(c) for c in _PG_INSERT_ORDER)} "
            "RETURNING 1) SELECT count(*) FROM ins"
        ),
    }


@functools.lru_cache(maxsize=64)
def _pg_batch_sql(dialect: Any, literal: tuple[int, ...]) -> dict[str, Any]:
    """:func:`_sql`'s PostgreSQL statements for :func:`_batch_rows`' rows:
    without the :data:`_LITERALS` columns *literal* (the ``COPY`` names the
    other columns, the staging table's others stay NULL; the ``INSERT ...
    SELECT`` writes the literals' SQL in their place), the timestamp sent as
    the int8 of its binary form (:func:`_pg_copy_stamps`: the server reads
    the same bytes)."""
    quote = dialect.identifier_preparer.quote
    full = _sql(dialect)
    kept = [k for k in range(len(_COLUMNS)) if k not in literal]
    names = ", ".join(quote(c.name) for c in _COLUMNS)
    picked = ", ".join(_LITERALS[k][1] if k in literal else quote(c.name)
                       for k, c in enumerate(_COLUMNS))
    table = quote(ale.name)
    return {
        "stage": full["stage"],
        "copy": (f"COPY {_STAGE} ({', '.join(quote(_COLUMNS[k].name) for k in kept)}) "
                 "FROM STDIN (FORMAT BINARY)"),
        "copy_types": ["int8" if k == _TIMESTAMP else full["copy_types"][k] for k in kept],
        "insert": (
            f"WITH ins AS (INSERT INTO {table} ({names}) SELECT {picked} FROM {_STAGE} s "
            f"WHERE NOT EXISTS (SELECT FROM {table} e WHERE e.{quote('id')} = s.{quote('id')}) "
            f"ORDER BY {', '.join(quote(c) for c in _PG_INSERT_ORDER)} "
            "RETURNING 1) SELECT count(*) FROM ins"
        ),
    }


#: PostgreSQL: the order a batch's rows are inserted in.  Every index but the
#: id's leads with the account or with the day then the account, and the
#: user index continues with the user; rows of one account (and user) in a
#: row touch the same index pages one after the other instead of each of a
#: 10-account batch's rows landing on another account's pages (about 5 % of
#: the server's CPU per row with 10 accounts per batch, bench/accesslog_ingest.py)
_PG_INSERT_ORDER = ("account_id", "user_id", "timestamp")


#: PostgreSQL: batches up to this many rows are one multi-row INSERT ... VALUES
#: (the staging table's extra round trips cost more than they save there)
_PG_VALUES_ROWS = 16


@functools.lru_cache(maxsize=2 * _PG_VALUES_ROWS)
def _pg_values_insert(dialect: Any, n: int) -> str:
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c.name) for c in _COLUMNS)
    row = "(" + ", ".join("%s" for _ in _COLUMNS) + ")"
    return (
        f"INSERT INTO {quote(ale.name)} ({names}) VALUES {', '.join([row] * n)} "
        f"ON CONFLICT ({quote('id')}) DO NOTHING RETURNING 1"
    )


def _copy_rows(conn: Connection, sql: dict[str, Any], rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows into the session's staging table, one binary
    ``COPY`` (psycopg formats the rows in C)."""
    import psycopg

    raw = conn.connection.driver_connection
    statement = sql["stage"]
    try:
        with raw.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(statement)
            statement = sql["copy"]
            with cur.copy(statement) as copy:
                copy.set_types(sql["copy_types"])
                write = copy.write_row
                for row in rows:
                    write(row)
    except psycopg.Error as exc:  # as SQLAlchemy would raise it (the store's retry/422 logic)
        raise sa.exc.DBAPIError.instance(
            statement, None, exc, psycopg.Error, dialect=conn.dialect
        ) from exc


def executemany_rows(
    conn: Connection, rows: list[tuple[Any, ...]], accounts: set[str] | None = None,
    literal: tuple[int, ...] | None = None,
) -> int:
    """Insert driver rows (:func:`prepare_rows`) in the connection's
    transaction, ignoring ids already stored; returns how many rows it
    inserted (ids already stored are not counted), on every backend.

    SQLite: one ``executemany`` of ``INSERT ... ON CONFLICT (id) DO NOTHING``
    with tuples per account of the batch (the count is the cursor's
    rowcount: rows the statements inserted), then the accounts' entry
    counters (:func:`_sqlite_insert`).  PostgreSQL: one binary
    ``COPY`` into a session-local staging table, then one ``INSERT ... SELECT
    ... WHERE NOT EXISTS (<the id stored>) ORDER BY account, user, time`` from
    it, counted with ``RETURNING`` (per-value Python adaptation of column
    arrays was most of the cost; :func:`_pg_insert`); up to
    ``_PG_VALUES_ROWS`` rows, one ``INSERT ... VALUES ... ON CONFLICT (id) DO
    NOTHING RETURNING``.

    ``literal``: the rows are :func:`_batch_rows`' (PostgreSQL: always the
    ``COPY``, timestamps as int8), without these :data:`_LITERALS` columns,
    whose one empty value every row holds; the statements write it as SQL.
    None: the rows hold every column (SQLite then finds such columns
    itself)."""
    if not rows:
        return 0
    sql = _sql(conn.dialect)
    if conn.dialect.name != "postgresql":
        return _sqlite_insert(conn, sql, rows, accounts, literal)
    if literal is not None:  # _batch_rows' rows: the COPY of _pg_batch_sql
        sql = _pg_batch_sql(conn.dialect, literal)
    elif len(rows) <= _PG_VALUES_ROWS:  # a single append, a small batch: one statement
        params = [value for row in rows for value in row]
        return len(conn.exec_driver_sql(_pg_values_insert(conn.dialect, len(rows)),
                                        tuple(params)).fetchall())
    _copy_rows(conn, sql, rows)
    return _pg_insert(conn, sql["insert"])


def _pg_insert(conn: Connection, statement: str) -> int:
    """PostgreSQL: the staged rows into the table, counted.

    A plain ``INSERT`` of the rows whose id is not stored yet (``NOT
    EXISTS``), not ``ON CONFLICT (id) DO NOTHING``: a speculative insertion
    costs a lock-manager token, an index probe and a second WAL record per
    row (about 5 % of the server's CPU per row).  The same rows are stored
    and counted: ids inside a batch are unique (:func:`_prepare_columns`),
    batches take the store's ``accesslog`` lock one at a time, and an id a
    concurrent single append commits between the anti-join and the insert
    fails the insert with a unique violation, which the store's write loop
    retries (the retry sees that id stored).

    Planned per batch, never as psycopg's prepared statement: a generic plan
    made while the table was small (a sequential scan for the anti-join)
    would be kept while it grew (as the stored-id lookup was, docs/management.md)."""
    raw = conn.connection.driver_connection
    threshold = raw.prepare_threshold  # type: ignore[union-attr]
    raw.prepare_threshold = None  # type: ignore[union-attr]
    try:
        return int(conn.exec_driver_sql(statement).scalar_one())
    finally:
        raw.prepare_threshold = threshold  # type: ignore[union-attr]


#: SQLite: the pages a connection's cache holds before a transaction spills
#: dirty ones into the WAL (its cache_size by default, ~2 MiB).  A batch
#: with random ids dirties about one page of the id index per entry: past
#: ~500 pages they were written to the WAL mid-transaction, read back and
#: written again at commit (about 14 % more page writes at 60,000 stored
#: entries).  16 MiB at 4 KiB pages; beyond it a transaction still spills.
_SPILL_PAGES = 4096
_SPILL_KEY = "nbgw_accesslog_cache_spill"

#: the columns a batch often holds one value in throughout (a gateway sends
#: no geo data; no failure reason, metadata, upstream target or user; no
#: agent-network entry; HTTP entries only), with that value as SQL (both
#: dialects): :func:`_sqlite_statement`, :func:`_batch_rows`.  The full-row
#: path (:func:`_all_equal`) takes only the empty (false) ones.
_LITERALS = {
    VALUE_FIELDS.index(field): (value, sql)
    for field, value, sql in (
        ("country_code", "", "''"), ("city_name", "", "''"), ("geo_name_id", 0, "0"),
        ("subdivision_code", "", "''"), ("reason", "", "''"), ("metadata", None, "NULL"),
        ("upstream_target", None, "NULL"), ("user_groups", None, "NULL"),
        ("agent_network", 0, "FALSE"), ("protocol", "http", "'http'"),
    )
}


def _all_equal(rows: list[tuple[Any, ...]], k: int, value: Any) -> bool:
    """Whether column *k* holds *value* (an empty one) in every row (``any``
    stops at the first non-empty value)."""
    column = operator.itemgetter(k)
    return not any(map(column, rows)) and list(map(column, rows)).count(value) == len(rows)


@functools.lru_cache(maxsize=64)
def _sqlite_statement(dialect: Any, literal: tuple[int, ...]) -> tuple[str, Any]:
    """SQLite's insert with the :data:`_LITERALS` of the columns *literal* in
    the statement, and the ``itemgetter`` of the other columns' values of a row."""
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c.name) for c in _COLUMNS)
    marks = ", ".join(_LITERALS[i][1] if i in literal else "?" for i in range(len(_COLUMNS)))
    keep = operator.itemgetter(*(i for i in range(len(_COLUMNS)) if i not in literal))
    return (f"INSERT INTO {quote(ale.name)} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({quote('id')}) DO NOTHING", keep)


def _sqlite_insert(
    conn: Connection, sql: dict[str, Any], rows: list[tuple[Any, ...]],
    accounts: set[str] | None = None, literal: tuple[int, ...] | None = None,
) -> int:
    """SQLite: the rows, one ``executemany`` per account of the batch (its
    row count is what the account gained: ids already stored insert
    nothing), then the accounts' counters in ``access_log_counts`` raised by
    that, in account order, in the same transaction.  Revision 0022 dropped
    the row trigger that did it per entry (two statements per row, about 40 %
    of SQLite's CPU per stored entry).  An account that does not exist fails
    the counter's foreign key, as the trigger's insert did."""
    info = conn.connection.info  # the pooled DBAPI connection's own
    if not info.get(_SPILL_KEY):
        # the threshold, then spilling back on: SQLite also reads the number
        # as a boolean, from its low byte (4096 would switch spilling off)
        conn.exec_driver_sql(f"PRAGMA cache_spill = {_SPILL_PAGES}")
        conn.exec_driver_sql("PRAGMA cache_spill = ON")
        info[_SPILL_KEY] = True
    accounts_ = set(accounts) if accounts is not None else {row[_ACCOUNT] for row in rows}
    if len(accounts_) == 1:
        groups_ = {accounts_.pop(): rows}
    else:
        groups_ = {}
        for row in rows:
            groups_.setdefault(row[_ACCOUNT], []).append(row)
    # a column with one empty value in every row is a literal, not a
    # parameter: sqlite3 binds None (like bool) through its adaptation
    # lookup, two failed attribute lookups with formatted AttributeErrors
    # each, about 0.6 us per value (three such columns were ~15 % of the
    # ingest CPU), and copies every text value (a malloc each)
    keep = None
    if literal is None:  # rows of every column: the literal ones left out here
        literal = tuple(k for k, (value, _) in _LITERALS.items() if _all_equal(rows, k, value))
        statement, keep = (_sqlite_statement(conn.dialect, literal) if literal
                           else (sql["insert"], None))
    else:  # the rows left them out already (_batch_rows)
        statement = _sqlite_statement(conn.dialect, literal)[0] if literal else sql["insert"]
    gained = []
    for account_id in sorted(groups_):
        batch = groups_[account_id]
        if keep is not None:
            batch = list(map(keep, batch))
        n = int(conn.exec_driver_sql(statement, batch).rowcount)
        if n:
            gained.append((account_id, n))
    if gained:
        conn.exec_driver_sql(sql["count"], gained)
    return sum(n for _, n in gained)


def _stored(conn: Connection, account_id: str) -> int:
    """How many entries the account has: its row in ``access_log_counts``,
    kept in the writing transaction (by triggers since migration 0015; on
    SQLite the inserts by :func:`_sqlite_insert` since 0022), instead of a
    ``count(*)`` over the account's rows (~300 ms at a million on PostgreSQL)."""
    return conn.execute(
        sa.select(alc.c.entries).where(alc.c.account_id == account_id)
    ).scalar_one_or_none() or 0


def _among(conn: Connection, column: Any, ids: Any) -> Any:
    """``column IN ids``; on PostgreSQL ``column = ANY(<one text[] parameter>)``:
    a batch's hundreds of user ids as one parameter, so the statement's text
    is the same for every batch (psycopg converts the text of a statement of
    hundreds of placeholders anew each time, not cached: ~13 ms for a
    10-account batch's users)."""
    ids = sorted(ids)
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, ids, type_=ARRAY(sa.Text())))
    return column.in_(ids)


@functools.lru_cache(maxsize=4)
def _capture_sql(dialect: Any) -> dict[str, str]:
    """The batch path's lookups (:meth:`AccessLogRecords._lookup_pairs`,
    :func:`_known_accounts`) as driver SQL, built once per dialect: every
    id list one parameter (:func:`_ids_param`), on PostgreSQL ``= ANY`` of a
    ``text[]`` literal (the statement text the same for every batch), on
    SQLite ``IN`` the values of a JSON array (``json_each``; one ``?`` per id
    made every batch another statement for sqlite3 to prepare)."""
    quote = dialect.identifier_preparer.quote
    if dialect.name == "postgresql":
        among = "= ANY(CAST(%s AS TEXT[]))"
    else:
        among = "IN (SELECT value FROM json_each(?))"

    def select(table: sa.Table, *columns: str) -> str:
        names = ", ".join(quote(c) for c in columns)
        return f"SELECT {names} FROM {quote(table.name)} WHERE {quote('id')} {among}"

    return {
        "accounts": select(accounts, "id"),
        "users": select(users, "account_id", "id", "auto_groups"),
        "peers": select(peers, "account_id", "id"),
        "groups": select(groups, "account_id", "id", "name"),
    }


def _ids_param(dialect: str, ids: set[str]) -> str:
    """A set of ids as the one parameter of :func:`_capture_sql`'s
    statements: a PostgreSQL ``text[]`` literal (every element quoted,
    ``"`` and ``\\`` escaped; what psycopg's list dumper sends, without its
    per-element Python work) or a JSON array (SQLite)."""
    if dialect != "postgresql":
        return dumps(list(ids))  # type: ignore[return-value]
    if not ids:
        return "{}"
    text = '","'.join(ids)
    if "\\" in text or '"' in text:
        text = '","'.join(i.replace("\\", "\\\\").replace('"', '\\"') for i in ids)
    return '{"' + text + '"}'


def _known_accounts(conn: Connection, wanted: set[str]) -> set[str]:
    """The accounts of *wanted* that exist.  An id longer than the column
    fails as the ``accounts.id`` bind would (a 422)."""
    limit = accounts.c.id.type.max_length
    if max(map(len, wanted)) > limit:
        sql = _capture_sql(conn.dialect)["accounts"]
        exc = ValueError(f"value exceeds maximum length of {limit} characters")
        raise sa.exc.StatementError(str(exc), sql, None, exc)
    statement = _capture_sql(conn.dialect)["accounts"]
    return {r[0] for r in conn.exec_driver_sql(statement, (_ids_param(conn.dialect.name, wanted),))}


class AccessLogRecords:
    """Access-log entries of every account (reached as ``store.access_logs``).

    Runs on the store's engine and transactions; every method is one blocking
    call (Twisted callers use the store thread pool)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _capture_user_groups(
        self, conn: Connection, account_id: str, user_id: str
    ) -> tuple[str, ...] | None:
        if not user_id:
            return None
        urow = conn.execute(
            sa.select(users.c.auto_groups).where(
                users.c.id == user_id, users.c.account_id == account_id
            )
        ).first()
        if urow is not None:
            ids = loads(urow.auto_groups) or []
        elif conn.execute(
            sa.select(peers.c.id).where(peers.c.id == user_id, peers.c.account_id == account_id)
        ).first():
            ids = self._store.peers._peer_groups(conn, [user_id])[user_id]
        else:
            return None
        names = dict(
            conn.execute(
                sa.select(groups.c.id, groups.c.name).where(
                    groups.c.account_id == account_id, groups.c.id.in_(ids)
                )
            ).all()
        )
        return tuple(names[i] for i in ids if i in names)

    def _capture_many(
        self, conn: Connection, account_id: str, user_ids: Sequence[str]
    ) -> dict[str, tuple[str, ...] | None]:
        """:meth:`_capture_user_groups` of many users of one account in at
        most four queries (users, peers among the rest, their memberships, the
        groups' names) instead of two to four per user: ``{user id: group names}``, users
        that are neither a user nor a peer of the account left out."""
        return self._capture_accounts(conn, {account_id: user_ids}).get(account_id, {})

    def _capture_accounts(
        self, conn: Connection, wanted: dict[str, Sequence[str]]
    ) -> dict[str, dict[str, tuple[str, ...]]]:
        """:meth:`_capture_many` of several accounts' users in the same at most
        four queries (a batch mixing 10 accounts made 20-30 queries, about a
        sixth of the management's CPU per entry and 4 % of the server's):
        ``{account id: {user id: group names}}``.  Ids are global; a user,
        peer or group of another account than the entry's does not count."""
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        found = self._lookup_pairs(conn, {(a, u) for a, users_ in wanted.items() for u in users_})
        for (a, u), names in found.items():
            out.setdefault(a, {})[u] = names
        return out

    def _capture_pairs(
        self, conn: Connection, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The batch path's capture (:class:`BatchCapture`'s ``pairs``):
        ``{(account id, user id): the user_groups column text}`` of the pairs
        that are a user or peer of their account, one text per distinct
        group-name tuple (a batch's users share few)."""
        return {pair: _groups_json(names)
                for pair, names in self._lookup_pairs(conn, pairs).items()}

    def _lookup_pairs(
        self, conn: Connection, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, ...]]:
        """``{(account id, user id): group names}`` of the pairs that are a
        user or a peer of their account, in at most four queries (users,
        peers among the rest, their memberships, the groups' names), each a
        statement text built once per dialect with the ids as one parameter
        (:func:`_ids_param`; a Core statement cost ~0.3 ms of CPU a batch to
        build and compile, psycopg's list dumper ~0.3 us an id)."""
        if not pairs:
            return {}
        sql = _capture_sql(conn.dialect)
        run = conn.exec_driver_sql
        dialect = conn.dialect.name
        rows = run(sql["users"], (_ids_param(dialect, {u for _, u in pairs}),)).fetchall()
        decoded = {auto: _group_ids(auto) for auto in {r[2] for r in rows}}
        ids: dict[tuple[str, str], tuple[str, ...]] = {
            (a, uid): decoded[auto] for a, uid, auto in rows if (a, uid) in pairs
        }
        if len(ids) < len(pairs):
            rest = {u for a, u in pairs if (a, u) not in ids}
            found = [(a, p) for a, p in run(sql["peers"], (_ids_param(dialect, rest),))
                     if (a, p) in pairs]
            if found:
                memberships = self._store.peers._peer_groups(conn, [p for _, p in found])
                ids.update(((a, p), tuple(memberships.get(p, ()))) for a, p in found)
        distinct = set(ids.values())
        wanted_groups = {g for group_ids in distinct for g in group_ids}
        names = {
            (a, gid): name
            for a, gid, name in run(sql["groups"], (_ids_param(dialect, wanted_groups),))
        } if wanted_groups else {}
        named: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}  # users share groups
        out: dict[tuple[str, str], tuple[str, ...]] = {}
        for pair, group_ids in ids.items():
            key = (pair[0], group_ids)
            got = named.get(key)
            if got is None:
                got = named[key] = tuple(
                    names[pair[0], g] for g in group_ids if (pair[0], g) in names)
            out[pair] = got
        return out

    def append(self, entry: AccessLogEntry) -> AccessLogEntry:
        """Insert an entry (id generated when empty). When ``user_groups`` is None
        it is filled at write time with the group names of the user's
        auto_groups, or of the peer's groups when ``user_id`` is a peer id.
        An id already stored is not written again (the stored entry is returned).
        NotFound for an unknown account."""

        def run(tx: Tx) -> AccessLogEntry:
            conn = tx.conn
            self._store.accounts.require(conn, entry.account_id)
            e = _prepare(entry)
            if e.user_groups is None:
                e = dataclasses.replace(
                    e, user_groups=self._capture_user_groups(conn, e.account_id, e.user_id)
                )
            if executemany_rows(conn, prepare_rows([entry_values(e)], conn.dialect.name)):
                return e
            # the id was stored already (the insert counted nothing): that entry
            existing = conn.execute(sa.select(ale).where(ale.c.id == e.id)).first()
            return row_access_log(existing) if existing is not None else e

        # access logs are append-only and never read-modify-write: no account lock needed,
        # but the account scope keeps the SQLite/Postgres paths uniform.
        return self._store._write("accesslog:" + entry.account_id, run)

    def append_many(self, entries: Sequence[AccessLogEntry]) -> int:
        """Insert a batch in one transaction (:meth:`append_values` of the
        entries' :data:`VALUE_FIELDS`).  Returns how many rows were new."""
        return self.append_values([entry_values(e) for e in entries])

    def append_values(self, values: Sequence[tuple[Any, ...]]) -> int:
        """Insert a batch of entries given as :data:`VALUE_FIELDS` tuples, in one
        transaction with one multi-row insert (:func:`executemany_rows`).

        Entries whose id is already stored are ignored (the id is the
        idempotency key; a duplicate inside the batch: the first one wins);
        entries of accounts that do not exist (any more) are skipped.
        ``user_groups`` (when None) is captured as in :meth:`append`, looked up
        once per (account, user) in the batch.  Returns how many rows were
        new: exact, counted by the insert itself (a retried batch gives 0)."""
        if not values:
            return 0
        cols: list[Sequence[Any]] = list(zip(*values, strict=True))
        if len(cols) != len(VALUE_FIELDS):
            raise ValueError(f"access log values have {len(cols)} fields, not {len(VALUE_FIELDS)}")
        return self._append(cols, epoch_us=False)

    def append_columns(self, columns: Sequence[Sequence[Any]]) -> int:
        """:meth:`append_values` of a batch given column-wise (one sequence
        per :data:`VALUE_FIELDS` field, timestamps as UTC epoch microseconds:
        :func:`prepare_columns`), as the gRPC batch RPC decodes it."""
        cols = _checked_columns(columns)
        if not cols[_ID]:
            return 0
        return self._append(cols, epoch_us=True)

    def _append(self, columns: list[Sequence[Any]], *, epoch_us: bool) -> int:
        def run(tx: Tx) -> int:
            conn = tx.conn
            cols = columns
            wanted = set(cols[_ACCOUNT])
            known = _known_accounts(conn, wanted)
            if known != wanted:  # entries of accounts that are gone: skipped
                keep = [i for i, a in enumerate(cols[_ACCOUNT]) if a in known]
                if not keep:
                    return 0
                cols = [[col[i] for i in keep] for col in cols]
            rows, literal = _batch_rows(
                list(cols),
                conn.dialect.name,
                BatchCapture(functools.partial(self._capture_accounts, conn),
                             functools.partial(self._capture_pairs, conn)),
                epoch_us=epoch_us,
            )
            return executemany_rows(conn, rows, accounts=known, literal=literal)

        return self._store._write("accesslog", run)

    def get(self, account_id: str, entry_id: str) -> AccessLogEntry:
        """One access-log entry of the account. NotFound ``access log entry not found``."""
        with self._store._read() as conn:
            row = conn.execute(
                sa.select(ale).where(ale.c.id == entry_id, ale.c.account_id == account_id)
            ).first()
        if row is None:
            raise NotFound("access log entry not found")
        return row_access_log(row)

    def count(self, account_id: str) -> int:
        """Stored entries of the account (its counter, kept by the database)."""
        with self._store._read() as conn:
            return _stored(conn, account_id)

    # -- retention ---------------------------------------------------------------------------

    def account_ids(self) -> list[str]:
        """Every account id (the accounts whose access log retention looks at)."""
        with self._store._read() as conn:
            return list(conn.execute(sa.select(accounts.c.id).order_by(accounts.c.id)).scalars())

    def prune_step(
        self,
        account_id: str,
        *,
        older_than: datetime | None,
        max_rows: int | None,
        limit: int = 1000,
    ) -> int:
        """Delete at most ``limit`` of the account's entries, in one short
        transaction: first entries with a timestamp before ``older_than``, then
        the oldest entries beyond ``max_rows``.  Returns how many were deleted;
        a caller repeats while it gets ``limit`` back."""
        if limit < 1:
            raise ValidationError("limit must be at least 1")

        def oldest(conn: Connection, n: int, *extra: sa.ColumnElement[bool]) -> list[str]:
            return list(
                conn.execute(
                    sa.select(ale.c.id)
                    .where(ale.c.account_id == account_id, *extra)
                    .order_by(ale.c.timestamp.asc(), ale.c.id.asc())
                    .limit(n)
                ).scalars()
            )

        def run(tx: Tx) -> int:
            conn = tx.conn
            ids: list[str] = []
            if older_than is not None:
                ids = oldest(conn, limit, ale.c.timestamp < older_than)
            if len(ids) < limit and max_rows is not None:
                excess = _stored(conn, account_id) - len(ids) - max_rows
                if excess > 0:
                    extra = oldest(conn, len(ids) + min(excess, limit - len(ids)))
                    seen = set(ids)
                    ids.extend(i for i in extra if i not in seen)
                    ids = ids[:limit]
            if ids:
                conn.execute(sa.delete(ale).where(ale.c.id.in_(ids)))
            return len(ids)

        return self._store._write("accesslog-prune:" + account_id, run)
