"""Engine set-up, transactions, retries and change listeners of the store.

Concurrency model:

* SQLite: WAL journal, ``busy_timeout``, foreign keys on; writers are
  serialised in-process by a lock shared per database file and start with
  ``BEGIN IMMEDIATE`` so another process cannot interleave a write either.
* PostgreSQL (psycopg 3): every write transaction first takes a transaction
  scoped advisory lock for the account it touches, so read-modify-write
  sequences of one account are serialised; serialization failures, deadlocks
  and unique violations from races are retried with a fresh transaction (the
  rerun then reports the proper typed error).

Per-account quotas (:attr:`StoreBase.quotas`, counted by ``_quotas``) rely on
this: a create counts the account's rows after taking the account's lock, in
the transaction that inserts, so two creates never both take the last slot.

Listeners run after commit, in the writing thread, with
``(kind, account_id, ids)``; a failing listener is logged and skipped.

Replicas (several processes on one PostgreSQL database): every write
transaction also sends its changes with ``pg_notify`` (delivered at commit);
:meth:`StoreBase.start_change_feed` listens for the other processes' changes
and runs this process's listeners for them (:mod:`._changefeed`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    StatementError,
)
from twisted.logger import Logger

from nbgateway.management import migrations
from nbgateway.management.errors import Conflict, StoreUnavailable, ValidationError
from nbgateway.management.model import ChangeKind
from nbgateway.management.quotas import Quotas
from nbgateway.management.store._prepared import Prepared

if TYPE_CHECKING:
    from nbgateway.management.store import Store

log = Logger()

T = TypeVar("T")
ChangeListener = Callable[[ChangeKind, str, tuple[str, ...]], None]

MAX_ATTEMPTS = 8
_SQLITE_LOCKS: dict[str, threading.RLock] = {}
_SQLITE_LOCKS_GUARD = threading.Lock()
_RETRY_SQLSTATES = {"40001", "40P01", "55P03"}
#: SQLite: WAL pages between automatic checkpoints (SQLite's default is 1,000)
_WAL_CHECKPOINT_PAGES = 10_000


def normalise_dsn(dsn: str | None, datadir: str | None) -> str:
    """Map user DSNs to SQLAlchemy URLs (``postgresql://`` -> psycopg 3 driver)."""
    if not dsn:
        if not datadir:
            raise ValueError("either a DSN or a data directory is required")
        os.makedirs(datadir, exist_ok=True)
        return "sqlite:///" + os.path.join(os.path.abspath(datadir), "store.db")
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def dumps(value: Any) -> str | None:
    """JSON text for a TEXT column; None (and only None) becomes SQL NULL."""
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None) -> Any:
    """Inverse of :func:`dumps`; NULL, empty text and JSON ``null`` give None."""
    if text is None or text == "":
        return None
    return json.loads(text)


def _sqlite_lock(url: sa.URL) -> threading.RLock:
    key = os.path.abspath(url.database or ":memory:")
    with _SQLITE_LOCKS_GUARD:
        return _SQLITE_LOCKS.setdefault(key, threading.RLock())


#: every PostgreSQL write transaction runs these (prepared: see _prepared.py)
_XACT_LOCK = Prepared(
    sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger())))
)
_NOTIFY = Prepared(
    sa.select(sa.func.pg_notify(sa.bindparam("channel", type_=sa.Text()),
                                sa.bindparam("payload", type_=sa.Text())))
)


def _lock_key(scope: str) -> int:
    return int.from_bytes(hashlib.sha256(scope.encode()).digest()[:8], "big", signed=True)


def _invalid_input(exc: Exception) -> ValidationError:
    """A value the database cannot hold (NUL in PostgreSQL text, integer overflow)."""
    orig = getattr(exc, "orig", exc)
    first_line = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return ValidationError(f"invalid input: {first_line}")


class Tx:
    """A write transaction in progress: the connection and the changes to announce."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.changes: list[tuple[ChangeKind, str, tuple[str, ...]]] = []

    def changed(self, kind: ChangeKind, account_id: str, *ids: str) -> None:
        self.changes.append((kind, account_id, tuple(ids)))


class Repository:
    """One aggregate's tables, run on the store's engine, transactions and listeners.

    A repository keeps no database state of its own: ``self._store`` (the
    :class:`~nbgateway.management.store.Store`) owns the engine, the write
    lock and the listeners; a repository reaches another aggregate through it
    (``self._store.groups``) when one transaction spans both."""

    def __init__(self, store: Store) -> None:
        self._store = store


class StoreBase:
    """Engine, transactions, retries and change listeners of the store."""

    def __init__(self, engine: Engine, *, known_clusters: tuple[str, ...] = ()) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name
        self.known_clusters = tuple(known_clusters)
        #: per-account quotas the create paths enforce (``store/_quotas.py``);
        #: the defaults unless the management service sets the configured ones
        self.quotas = Quotas()
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()
        self._write_lock = _sqlite_lock(engine.url) if self.dialect == "sqlite" else None
        #: this process's name in change notifications (its own are not re-applied)
        self.origin = uuid.uuid4().hex
        self.change_feed: Any = None

    # --- construction ---------------------------------------------------------

    @staticmethod
    def build_engine(url: str) -> Engine:
        """SQLAlchemy engine for a normalised URL, with the backend's pragmas/pooling."""
        sa_url = sa.make_url(url)
        if sa_url.get_backend_name() == "sqlite":
            engine = sa.create_engine(
                sa_url,
                connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=8,
                max_overflow=16,
                # the most recently returned connection first: its page cache
                # is the warm one (another connection's commit invalidates a
                # SQLite connection's cache; FIFO handed every access-log
                # batch the coldest connection: twice the page reads)
                pool_use_lifo=True,
            )

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
                dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA synchronous=NORMAL")
                # checkpoint the WAL every 10,000 pages (~40 MB) instead of
                # 1,000: pages rewritten by successive access-log batches (the
                # table's and indexes' last leaves) are copied to the database
                # once per checkpoint, about 10 % less CPU per stored entry
                cur.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn):  # type: ignore[no-untyped-def]
                mode = conn.get_execution_options().get("nbgw_begin", "")
                conn.exec_driver_sql(f"BEGIN {mode}".strip())

            return engine
        if sa_url.get_backend_name() == "postgresql":
            return sa.create_engine(
                sa_url, pool_size=10, max_overflow=30, pool_pre_ping=True, pool_timeout=60
            )
        raise ValueError(f"unsupported store backend {sa_url.get_backend_name()!r}")

    def migrate(self) -> None:
        """Upgrade the schema to head (serialised against other processes)."""
        with self._engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_lock(_lock_key("nbgw-migrate"))))
                conn.commit()
                try:
                    migrations.upgrade(conn)
                    conn.commit()
                finally:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(_lock_key("nbgw-migrate"))))
                    conn.commit()
            else:
                with self._write_lock or threading.RLock():
                    migrations.upgrade(conn)
                    conn.commit()

    def close(self) -> None:
        """Stop the change feed, dispose of the connection pool."""
        self.stop_change_feed()
        self._engine.dispose()

    # --- replicas ---------------------------------------------------------------

    def start_change_feed(self) -> Any:
        """PostgreSQL: listen for changes other processes commit and run this
        process's listeners for them (one connection, one thread). None on SQLite."""
        if self.dialect != "postgresql" or self.change_feed is not None:
            return self.change_feed
        from nbgateway.management.store._changefeed import ChangeFeed

        conninfo = self._engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.change_feed = ChangeFeed(conninfo, self.origin, self._notify, self._resync)
        self.change_feed.start()
        return self.change_feed

    def stop_change_feed(self) -> None:
        feed, self.change_feed = self.change_feed, None
        if feed is not None:
            feed.stop()

    def _resync(self) -> None:
        """After notifications may have been missed: every service of every account
        updated, every account changed (listeners re-read what they serve)."""
        from nbgateway.management.store.schema import accounts, services

        with self._read() as conn:
            account_ids = list(conn.execute(sa.select(accounts.c.id)).scalars())
            rows = conn.execute(sa.select(services.c.account_id, services.c.id)).all()
        by_account: dict[str, list[str]] = {}
        for account_id, sid in rows:
            by_account.setdefault(account_id, []).append(sid)
        changes: list[tuple[ChangeKind, str, tuple[str, ...]]] = [
            (ChangeKind.SERVICE_UPDATED, a, tuple(ids)) for a, ids in by_account.items()
        ]
        changes += [(ChangeKind.ACCOUNT, a, ()) for a in account_ids]
        self._notify(changes)

    # --- listeners --------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind, account_id, ids)`` after every committed change."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        """Unregister a listener (no-op when unknown)."""
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, changes: list[tuple[ChangeKind, str, tuple[str, ...]]]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for kind, account_id, ids in changes:
            for listener in listeners:
                try:
                    listener(kind, account_id, ids)
                except Exception:
                    log.failure(
                        "store change listener failed", kind=str(kind), account_id=account_id
                    )

    # --- transactions -----------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction (consistent snapshot for multi-statement reads).

        SQLite WAL readers see one snapshot per transaction; on PostgreSQL the
        transaction runs at REPEATABLE READ so a service row and its targets are
        never read from two different commits.
        """
        try:
            with self._engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StoreUnavailable(f"store unavailable: {exc.orig}") from exc
        except (DataError, OverflowError) as exc:
            raise _invalid_input(exc) from exc
        except StatementError as exc:
            if isinstance(exc, DBAPIError) or not isinstance(exc.orig, ValueError):
                raise
            raise _invalid_input(exc) from exc

    def _retryable(self, exc: DBAPIError) -> bool:
        if isinstance(exc, IntegrityError):
            return True
        code = getattr(exc.orig, "sqlstate", None)
        if code in _RETRY_SQLSTATES:
            return True
        text = str(exc.orig).lower()
        return "database is locked" in text or "database table is locked" in text

    def _write(self, scope: str, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one write transaction, retried on transient conflicts.

        ``scope`` is the account id (or another lock domain) whose writers are
        serialised. Listeners are notified after a successful commit.
        """
        last: DBAPIError | None = None
        for attempt in range(MAX_ATTEMPTS):
            try:
                result, changes = self._write_once(scope, fn)
            except OverflowError as exc:
                raise _invalid_input(exc) from exc
            except DBAPIError as exc:
                if isinstance(exc, DataError):
                    raise _invalid_input(exc) from exc
                if not self._retryable(exc):
                    if isinstance(exc, OperationalError):
                        raise StoreUnavailable(f"store unavailable: {exc.orig}") from exc
                    raise
                last = exc
                time.sleep(min(0.2, 0.005 * (2**attempt)) * random.random())
                continue
            except StatementError as exc:
                if isinstance(exc.orig, ValueError):
                    raise _invalid_input(exc) from exc
                raise
            self._notify(changes)
            return result
        assert last is not None
        if isinstance(last, IntegrityError):
            raise Conflict("conflicting concurrent write, please retry") from last
        raise StoreUnavailable(f"transaction kept failing: {last.orig}") from last

    def _write_once(
        self, scope: str, fn: Callable[[Tx], T]
    ) -> tuple[T, list[tuple[ChangeKind, str, tuple[str, ...]]]]:
        if self._write_lock is not None:
            with (
                self._write_lock,
                self._engine.connect().execution_options(nbgw_begin="IMMEDIATE") as conn,
            ):
                with conn.begin():
                    tx = Tx(conn)
                    result = fn(tx)
                return result, tx.changes
        with self._engine.connect() as conn, conn.begin():
            _XACT_LOCK.run(conn, key=_lock_key("acct:" + scope))
            tx = Tx(conn)
            result = fn(tx)
            if tx.changes:
                from nbgateway.management.store._changefeed import CHANNEL, payloads

                for payload in payloads(self.origin, tx.changes):
                    _NOTIFY.run(conn, channel=CHANNEL, payload=payload)
        return result, tx.changes
