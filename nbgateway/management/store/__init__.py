"""The management store: a synchronous API over SQLite or PostgreSQL.

Every public method of a repository is a plain blocking call that runs one
database transaction (Twisted callers run it in a dedicated thread pool).
Errors are the typed exceptions of :mod:`nbgateway.management.errors`; objects
going in and out are the frozen dataclasses of :mod:`nbgateway.management.model`,
so nothing returned aliases store state. A rejected write stores nothing.

After a write commits, every registered listener is called synchronously (in
the writing thread) as ``listener(kind, account_id, ids)`` with a
:class:`~nbgateway.management.model.ChangeKind`, the account id (``""`` for
installation-wide changes such as shared proxies) and a tuple of affected ids.

The store is composed of one repository per aggregate, reached as attributes:
``store.accounts`` (``_accounts``), ``store.users`` (users and personal access
tokens; ``_users``), ``store.groups`` (``_groups``), ``store.peers``
(``_peers``, addresses from ``_addresses``; the four share ``_common``),
``store.services`` (``_services``; how a service is stored: ``_servicerows``),
``store.domains`` (``_domains``, with cluster derivation), ``store.proxies``
(proxy rows, clusters, inbound listeners, proxy tokens; ``_proxies``),
``store.access_logs`` (``_accesslog``) and ``store.certificates``
(``_certificates``). The store itself (``_base``) owns only the engine,
transactions, retries and change listeners the repositories run on.

There are no flat names on the store itself: every caller names the
repository (``store.peers.create``, ``store.proxies.verify_token``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from nbgateway.management.store._accesslog_query import AccessLogRepository
from nbgateway.management.store._accounts import (
    AccountRepository,
    GroupRepository,
    PeerRepository,
    UserRepository,
)
from nbgateway.management.store._base import ChangeListener, StoreBase, normalise_dsn
from nbgateway.management.store._certificates import CertificateRepository
from nbgateway.management.store._proxies import ProxyRepository, aggregate_clusters
from nbgateway.management.store._services import DomainRepository, ServiceRepository

__all__ = ["ChangeListener", "Store", "aggregate_clusters", "normalise_dsn"]


class Store(StoreBase):
    """Management database (SQLite file or PostgreSQL) behind a synchronous API."""

    def __init__(self, engine: Engine, *, known_clusters: tuple[str, ...] = ()) -> None:
        super().__init__(engine, known_clusters=known_clusters)
        self.accounts = AccountRepository(self)
        self.users = UserRepository(self)
        self.groups = GroupRepository(self)
        self.peers = PeerRepository(self)
        self.services = ServiceRepository(self)
        self.domains = DomainRepository(self)
        self.proxies = ProxyRepository(self)

    @functools.cached_property
    def access_logs(self) -> AccessLogRepository:
        """The access-log entries (append, batch append, query, retention)."""
        return AccessLogRepository(self)

    @functools.cached_property
    def certificates(self) -> CertificateRepository:
        """Certificate status per service and the gateways' private CAs."""
        return CertificateRepository(self)

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
