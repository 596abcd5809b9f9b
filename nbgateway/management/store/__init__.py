"""The management store: a synchronous API over SQLite or PostgreSQL.

Every public method of :class:`Store` is a plain blocking call that runs one
database transaction (Twisted callers run it in a dedicated thread pool).
Errors are the typed exceptions of :mod:`nbgateway.management.errors`; objects
going in and out are the frozen dataclasses of :mod:`nbgateway.management.model`,
so nothing returned aliases store state. A rejected write stores nothing.

After a write commits, every registered listener is called synchronously (in
the writing thread) as ``listener(kind, account_id, ids)`` with a
:class:`~nbgateway.management.model.ChangeKind`, the account id (``""`` for
installation-wide changes such as shared proxies) and a tuple of affected ids.

The parts live in sibling modules: ``_accounts`` (accounts, bootstrap, users,
groups, peers, personal access tokens), ``_services`` (services, domains,
cluster derivation), ``_proxies`` (proxy rows, cluster view, proxy tokens),
``_accesslog`` and ``_base`` (engine, transactions, retries, listeners).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from nbgateway.management.store._accesslog import AccessLogRepository
from nbgateway.management.store._base import ChangeListener, normalise_dsn
from nbgateway.management.store._proxies import ProxiesMixin, aggregate_clusters
from nbgateway.management.store._services import ServicesMixin

__all__ = ["ChangeListener", "Store", "aggregate_clusters", "normalise_dsn"]


class Store(ServicesMixin, ProxiesMixin):
    """Management database (SQLite file or PostgreSQL) behind a synchronous API."""

    @functools.cached_property
    def access_logs(self) -> AccessLogRepository:
        """The access-log entries (append, batch append, query, retention)."""
        return AccessLogRepository(self)

    @classmethod
    def open(
        cls,
        dsn: str | None = None,
        *,
        datadir: str | None = None,
        known_clusters: Sequence[str] = (),
        migrate: bool = True,
    ) -> Store:
        """Open (and by default migrate to head) a store.

        ``dsn``: ``postgresql://...`` (the psycopg 3 driver is used),
        ``sqlite:///path``, or None for ``sqlite:///<datadir>/store.db``.
        ``known_clusters`` are cluster addresses usable for domain -> cluster
        derivation even while no proxy of that cluster is connected (an
        embedded gateway passes its own cluster address).
        """
        engine = cls.build_engine(normalise_dsn(dsn, datadir))
        store = cls(engine, known_clusters=tuple(known_clusters))
        if migrate:
            try:
                store.migrate()
            except BaseException:
                engine.dispose()
                raise
        return store
