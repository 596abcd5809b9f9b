"""Store part: the access-log repository (``store.access_logs``).

Owns the ``access_log_entries`` table: single and batch appends (one
transaction per batch, one ``executemany`` insert with ON CONFLICT DO NOTHING
on the entry id, so a retried batch never duplicates), ``user_groups`` capture
at write time, and retention (age and per-account row count) pruned in small
transactions.  ``_accesslog_query`` adds the list query on top
(``AccessLogRepository``).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import NotFound, ValidationError
from nbgateway.management.model import (
    AccessLogEntry,
    new_id,
    utcnow,
)
from nbgateway.management.store._base import Tx, dumps, loads
from nbgateway.management.store.schema import BoundedString, accounts, groups, peers, users
from nbgateway.management.store.schema import access_log_counts as alc
from nbgateway.management.store.schema import access_log_entries as ale

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
    return _unmap(ip)


_STR_COLUMNS = (
    ("service_id", "service_id"),
    ("location_country_code", "country_code"),
    ("location_city_name", "city_name"),
    ("subdivision_code", "subdivision_code"),
    ("method", "method"),
    ("host", "host"),
    ("path", "path"),
    ("reason", "reason"),
    ("user_id", "user_id"),
    ("auth_method_used", "auth_method_used"),
    ("protocol", "protocol"),
)
_LIMITS = {
    column.name: column.type.max_length
    for column in ale.columns
    if isinstance(getattr(column.type, "max_length", None), int)
}
_STR_NAMES = tuple(column for column, _ in _STR_COLUMNS)
_STR_LIMITS = tuple((c, _LIMITS[c]) for c in _STR_NAMES if c in _LIMITS)


def _fit(name: str, value: str) -> str:
    if "\x00" in value:
        value = _clean(value)
    limit = _LIMITS.get(name)
    return value[:limit] if limit is not None and len(value) > limit else value


def _row(e: AccessLogEntry, user_groups: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The table row of an entry, sanitised as :func:`_sanitise` does (NULs
    replaced, bounded columns truncated), id and timestamp filled in, the source
    address unmapped; built directly, without intermediate entry copies (the
    batch path runs this per row)."""
    groups = e.user_groups if e.user_groups is not None else user_groups
    row: dict[str, Any] = {
        "id": _fit("id", e.id) if e.id else new_id(),
        "account_id": _fit("account_id", e.account_id),
        "timestamp": e.timestamp or utcnow(),
        "location_connection_ip": _fit(
            "location_connection_ip", _unmap_cached(e.source_ip) if e.source_ip else ""
        ),
        "location_geo_name_id": e.geo_name_id,
        "duration": e.duration,
        "status_code": e.status_code,
        "bytes_upload": e.bytes_upload,
        "bytes_download": e.bytes_download,
        "metadata": None,
        "agent_network": e.agent_network,
        "user_groups": None,
        "upstream_target": _fit("upstream_target", e.upstream_target)
        if e.upstream_target else None,
    }
    values = [getattr(e, attr) for _, attr in _STR_COLUMNS]
    if "\x00" in "".join(values):  # rare: one scan of all text fields
        values = [_clean(v) for v in values]
    row.update(zip(_STR_NAMES, values, strict=True))
    for column, limit in _STR_LIMITS:
        if len(row[column]) > limit:
            row[column] = row[column][:limit]
    if e.metadata:
        meta = dict(e.metadata)
        if any("\x00" in k or "\x00" in v for k, v in meta.items()):
            meta = {_clean(k): _clean(v) for k, v in meta.items()}
        row["metadata"] = dumps(meta)
    if groups is not None:
        row["user_groups"] = _groups_json(groups)
    return row


@functools.lru_cache(maxsize=1024)
def _groups_json(groups: tuple[str, ...]) -> str:
    """The ``user_groups`` column of a group-name tuple (the rows of one user
    share it: encoded once, not per row)."""
    return dumps([_clean(g) for g in groups])


def insert_ignoring_duplicates(dialect: str) -> Any:
    """``INSERT INTO access_log_entries ... ON CONFLICT (id) DO NOTHING`` for the
    store's dialect (SQLite or PostgreSQL); executed with a list of rows it is
    one ``executemany``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(ale).on_conflict_do_nothing(index_elements=[ale.c.id])


@functools.lru_cache(maxsize=4)
def _compiled_insert(dialect: Any) -> tuple[str, tuple[str, ...], bool, dict[str, Any]]:
    """The ON CONFLICT insert compiled once per dialect: SQL text, bind names in
    order, positional or named, and the bind processors rows still need (the
    bounded-string checks are left out: :func:`_row` already fitted those)."""
    compiled = insert_ignoring_duplicates(dialect.name).compile(
        dialect=dialect, column_keys=[c.name for c in ale.columns]
    )
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    processors: dict[str, Any] = {}  # UTCDateTime's included (aware -> naive UTC text)
    for column in ale.columns:
        if isinstance(column.type, BoundedString):
            continue
        proc = column.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            processors[column.name] = proc
    return str(compiled), names, bool(compiled.positional), processors


@functools.lru_cache(maxsize=4)
def _unnest_insert(dialect: Any) -> str:
    """PostgreSQL: ``INSERT ... SELECT * FROM unnest(col arrays) ON CONFLICT (id)
    DO NOTHING``, one statement with one array parameter per column."""
    quote = dialect.identifier_preparer.quote
    cols = list(ale.columns)
    arrays = ", ".join(f"%(c{i})s::{c.type.compile(dialect=dialect)}[]" for i, c in enumerate(cols))
    return (
        f"INSERT INTO {quote(ale.name)} ({', '.join(quote(c.name) for c in cols)}) "
        f"SELECT * FROM unnest({arrays}) ON CONFLICT ({quote('id')}) DO NOTHING "
        f"RETURNING {quote('id')}"
    )


def executemany_rows(conn: Connection, rows: list[dict[str, Any]]) -> int | None:
    """Insert prepared rows (:func:`_row`) in one go, ignoring stored ids.

    SQLite: one ``executemany`` of the compiled ON CONFLICT DO NOTHING insert,
    the parameter list handed to the driver with only the needed bind
    processors applied (per-row SQLAlchemy parameter processing was most of the
    ingest cost); returns None.  PostgreSQL: the same rows as one statement
    over column arrays (``unnest``), instead of one pipelined statement per
    row; returns how many it inserted (``RETURNING``: ids already stored are
    not counted)."""
    if conn.dialect.name == "postgresql":
        for row in rows:  # what UTCDateTime does: naive UTC
            row["timestamp"] = row["timestamp"].astimezone(UTC).replace(tzinfo=None)
        params = {f"c{i}": [row[c.name] for row in rows] for i, c in enumerate(ale.columns)}
        return len(conn.exec_driver_sql(_unnest_insert(conn.dialect), params).fetchall())
    sql, names, positional, processors = _compiled_insert(conn.dialect)
    procs = tuple(processors.items())
    for row in rows:
        for name, proc in procs:
            row[name] = proc(row[name])
    if positional:
        getter = operator.itemgetter(*names)
        params_list: list[Any] = [getter(row) for row in rows]
    else:
        params_list = rows
    conn.exec_driver_sql(sql, params_list)
    return None


def _stored(conn: Connection, account_id: str) -> int:
    """How many entries the account has: its row in ``access_log_counts``,
    kept by triggers in the writing transaction (migration 0015), instead of a
    ``count(*)`` over the account's rows (~300 ms at a million on PostgreSQL)."""
    return conn.execute(
        sa.select(alc.c.entries).where(alc.c.account_id == account_id)
    ).scalar_one_or_none() or 0


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
            existing = conn.execute(sa.select(ale).where(ale.c.id == e.id)).first()
            if existing is not None:
                return row_access_log(existing)
            conn.execute(insert_ignoring_duplicates(self._store.dialect), [_row(e)])
            return e

        # access logs are append-only and never read-modify-write: no account lock needed,
        # but the account scope keeps the SQLite/Postgres paths uniform.
        return self._store._write("accesslog:" + entry.account_id, run)

    def append_many(self, entries: Sequence[AccessLogEntry]) -> int:
        """Insert a batch in one transaction with one ``executemany``.

        Entries whose id is already stored are ignored (the id is the
        idempotency key); entries of accounts that do not exist (any more) are
        skipped.  ``user_groups`` is captured as in :meth:`append`, looked up
        once per (account, user) in the batch.  Returns how many rows were
        new."""
        if not entries:
            return 0

        def run(tx: Tx) -> int:
            conn = tx.conn
            wanted = {e.account_id for e in entries}
            known = set(
                conn.execute(sa.select(accounts.c.id).where(accounts.c.id.in_(wanted))).scalars()
            )
            groups_of: dict[tuple[str, str], tuple[str, ...] | None] = {}
            rows: dict[str, dict[str, Any]] = {}
            for e in entries:
                if e.account_id not in known:
                    continue
                groups_now = None
                if e.user_groups is None and e.user_id:
                    key = (e.account_id, e.user_id)
                    if key not in groups_of:
                        groups_of[key] = self._capture_user_groups(conn, *key)
                    groups_now = groups_of[key]
                row = _row(e, groups_now)
                rows.setdefault(row["id"], row)  # a duplicate inside the batch: first wins
            if not rows:
                return 0
            if conn.dialect.name == "postgresql":
                # one statement: the rows it inserted come back (RETURNING), so
                # the count is exact without asking which ids are stored first
                return executemany_rows(conn, list(rows.values())) or 0
            # SQLite: ids already stored (a retried batch) are left out up front,
            # which gives the exact count; ON CONFLICT covers a concurrent writer
            ids = list(rows)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for stored in conn.execute(sa.select(ale.c.id).where(ale.c.id.in_(chunk))):
                    rows.pop(stored.id, None)
            if not rows:
                return 0
            executemany_rows(conn, list(rows.values()))
            return len(rows)

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
