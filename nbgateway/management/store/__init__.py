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
``store.accounts``, ``store.users`` (users and personal access tokens),
``store.groups``, ``store.peers`` (``_accounts``), ``store.services`` and
``store.domains`` (``_services``), ``store.proxies`` (proxy rows, clusters,
inbound listeners, proxy tokens; ``_proxies``) and ``store.access_logs``
(``_accesslog``). The store itself (``_base``) owns only the engine,
transactions, retries and change listeners the repositories run on.

The flat names of the earlier single-class store remain as instance attributes
bound to the repository methods (``store.create_peer`` calls
``store.peers.create``; see :meth:`Store._bind_flat_names`) for the callers
outside the management package not yet moved; new code uses the repositories.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from nbgateway.management.store._accesslog import AccessLogRepository
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
        self._bind_flat_names()

    def _bind_flat_names(self) -> None:
        """The earlier flat API, bound to the repository methods (see module docstring)."""
        self.create_account = self.accounts.create
        self.create_account_with_admin = self.accounts.create_with_admin
        self.delete_account = self.accounts.delete
        self.get_account = self.accounts.get
        self.list_accounts = self.accounts.list
        self.ensure_default_account = self.accounts.ensure_default
        self.create_user = self.users.create
        self.get_user = self.users.get
        self.find_user = self.users.find
        self.list_users = self.users.list
        self.update_user = self.users.update
        self.delete_user = self.users.delete
        self.create_personal_access_token = self.users.create_token
        self.list_personal_access_tokens = self.users.list_tokens
        self.delete_personal_access_token = self.users.delete_token
        self.authenticate_personal_access_token = self.users.authenticate_token
        self.create_group = self.groups.create
        self.get_group = self.groups.get
        self.list_groups = self.groups.list
        self.update_group = self.groups.update
        self.delete_group = self.groups.delete
        self.add_peers_to_group = self.groups.add_peers
        self.remove_peers_from_group = self.groups.remove_peers
        self.resolve_groups = self.groups.resolve
        self.create_peer = self.peers.create
        self.get_peer = self.peers.get
        self.get_peer_by_key = self.peers.get_by_key
        self.get_peer_by_ip = self.peers.get_by_ip
        self.list_peers = self.peers.list
        self.list_proxy_peers = self.peers.list_proxy_peers
        self.update_peer = self.peers.update
        self.set_peer_connected = self.peers.set_connected
        self.delete_peer = self.peers.delete
        self.get_peer_groups = self.peers.groups_of
        self.get_peer_group_refs = self.peers.group_refs_of
        self.get_peer_owner = self.peers.owner_of
        self.get_service = self.services.get
        self.list_services = self.services.list
        self.list_all_services = self.services.list_all
        self.get_service_by_domain = self.services.get_by_domain
        self.list_services_for_cluster = self.services.list_for_cluster
        self.resolve_target_hosts = self.services.resolve_target_hosts
        self.resolve_services_target_hosts = self.services.resolve_services_target_hosts
        self.derive_cluster = self.services.derive_cluster
        self.create_service = self.services.create
        self.update_service = self.services.update
        self.set_service_status = self.services.set_status
        self.delete_service = self.services.delete
        self.create_domain = self.domains.create
        self.list_domains = self.domains.list
        self.set_domain_validated = self.domains.set_validated
        self.delete_domain = self.domains.delete
        self.register_proxy = self.proxies.register
        self.heartbeat_proxy = self.proxies.heartbeat
        self.disconnect_proxy = self.proxies.disconnect
        self.get_proxy = self.proxies.get
        self.list_proxies = self.proxies.list
        self.cluster_address_in_use = self.proxies.cluster_address_in_use
        self.list_clusters = self.proxies.list_clusters
        self.delete_cluster = self.proxies.delete_cluster
        self.set_inbound_listener = self.proxies.set_inbound_listener
        self.list_inbound_listeners = self.proxies.list_inbound_listeners
        self.delete_stale_proxies = self.proxies.delete_stale
        self.create_proxy_token = self.proxies.create_token
        self.list_proxy_tokens = self.proxies.list_tokens
        self.get_proxy_token = self.proxies.get_token
        self.revoke_proxy_token = self.proxies.revoke_token
        self.verify_proxy_token = self.proxies.verify_token
        # used by the access-log repository
        self._require_account = self.accounts.require
        self._peer_groups = self.peers._peer_groups

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
