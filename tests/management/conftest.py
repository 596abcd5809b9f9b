"""Fixtures for the management tests: a ``store`` on SQLite and on PostgreSQL.

PostgreSQL: ``NBGW_TEST_PG_DSN`` names a server/database where the test role
may create schemas; without it the session starts a throwaway cluster when the
server binaries are installed (:mod:`tests.pgcluster`). Every test gets its own
fresh schema (dropped afterwards), so tests never see each other's rows. With
neither, the postgres parameters skip with a reason, except with
``NBGW_REQUIRE_POSTGRES=1`` (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from nbgateway.management.model import Account
from nbgateway.management.store import Store
from tests import pgcluster

REQUIRE_PG = os.environ.get("NBGW_REQUIRE_POSTGRES") == "1"
CLUSTER = "eu.proxy.netbird.io"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _require_pg_dsn() -> str:
    dsn = pgcluster.dsn()
    if not dsn:
        reason = pgcluster.unavailable_reason() or "PostgreSQL not available"
        if REQUIRE_PG:
            pytest.fail(f"NBGW_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return dsn


def _with_search_path(dsn: str, schema: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-csearch_path={schema} -csynchronous_commit=off')}"


@pytest.fixture
def pg_schema_dsn() -> Iterator[str]:
    """A DSN whose ``search_path`` is a fresh, private schema."""
    import psycopg

    dsn = _require_pg_dsn()
    schema = "nbgw_t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _with_search_path(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def db_dsn(request: pytest.FixtureRequest, tmp_path) -> str:
    """DSN of an empty database (SQLite file or private Postgres schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_schema_dsn")


@pytest.fixture
def store_factory(db_dsn: str) -> Iterator[Callable[..., Store]]:
    """Open (extra) stores on the test database; all are closed afterwards."""
    opened: list[Store] = []

    def factory(**kwargs) -> Store:
        kwargs.setdefault("known_clusters", [CLUSTER])
        s = Store.open(db_dsn, **kwargs)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory: Callable[..., Store]) -> Store:
    """A migrated store whose known cluster is ``eu.proxy.netbird.io``."""
    return store_factory()


@pytest.fixture
def account(store: Store) -> Account:
    return store.accounts.create(Account(id="acct-1", domain="netbird.test"))
