"""Prepared statements for the store's hot paths (peer storms).

A SQLAlchemy Core statement costs, on every execution, its construction, the
coercion of its clauses and a cache-key walk before the compiled form is
found: about 0.2-0.4 ms of CPU per statement, most of a peer creation.  A
:class:`Prepared` statement is built once (module level, with named
``sa.bindparam`` placeholders only), compiled once per dialect, and executed
with ``Connection.exec_driver_sql``: the values go through the same column
type bind processors (``BoundedString`` length checks, ``UTCDateTime``
normalisation) and the driver's errors are wrapped by SQLAlchemy as usual, so
the store's retry and error mapping see exactly what they see for Core
statements.  Results are raw driver rows (no result processors): prepared
statements return only text and integer columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import StatementError

__all__ = ["Prepared"]


class _Compiled:
    __slots__ = ("names", "positional", "processors", "sql")

    def __init__(self, stmt: sa.Executable, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.positional = compiled.positiontup is not None
        self.names: tuple[str, ...] = tuple(
            compiled.positiontup if self.positional else compiled.binds)
        # every parameter must be a named bindparam the caller supplies
        for name in self.names:
            bind = compiled.binds[name]
            if bind.value is not None or bind.callable is not None:
                raise ValueError(f"prepared statement with a literal parameter {name!r}")
        self.processors: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)

    def params(self, values: Mapping[str, Any]) -> Any:
        procs = self.processors
        out = {}
        for name in set(self.names):
            value = values[name]
            proc = procs.get(name)
            out[name] = value if proc is None else proc(value)
        if self.positional:
            return tuple(out[n] for n in self.names)
        return out


class Prepared:
    """One statement, compiled once per dialect (see the module docstring)."""

    def __init__(self, stmt: sa.Executable) -> None:
        self.stmt = stmt
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        c = self._compiled.get(dialect.name)
        if c is None:
            c = self._compiled[dialect.name] = _Compiled(self.stmt, dialect)
        return c

    def run(self, conn: Connection, **values: Any) -> CursorResult[Any]:
        c = self.compiled(conn)
        try:
            params = c.params(values)
        except (ValueError, TypeError) as exc:
            # as SQLAlchemy reports a bind processor's error for a Core statement
            raise StatementError(str(exc), c.sql, None, exc) from exc
        return conn.exec_driver_sql(c.sql, params)
