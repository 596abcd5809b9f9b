"""Public API of the management store (signatures; implementation in progress).

The store is SYNCHRONOUS: every public method is a plain blocking call that runs
one database transaction; Twisted callers run it in a dedicated thread pool.
Errors are the typed exceptions of :mod:`nbgateway.management.errors`.
Objects going in and out are the frozen dataclasses of
:mod:`nbgateway.management.model`; nothing returned aliases store state.

After a write commits, every registered listener is called synchronously (in
the writing thread) as ``listener(kind, account_id, ids)`` with a
:class:`~nbgateway.management.model.ChangeKind`, the account id (``""`` for
installation-wide changes) and a tuple of affected ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from nbgateway.management.model import (
    AccessLogEntry,
    AccessLogPage,
    AccessLogQuery,
    Account,
    Bootstrap,
    ChangeKind,
    Cluster,
    CustomDomain,
    Group,
    Peer,
    PersonalAccessToken,
    ProxyAccessToken,
    ProxyInboundListener,
    ProxyRecord,
    Service,
    User,
)

ChangeListener = Callable[[ChangeKind, str, tuple[str, ...]], None]


class Store:
    """Management database (SQLite file or PostgreSQL) behind a synchronous API."""

    # --- lifecycle -------------------------------------------------------------

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

        ``dsn``: ``postgresql://...`` (psycopg 3 is used), ``sqlite:///path`` or
        None for ``sqlite:///<datadir>/store.db``. ``known_clusters`` are cluster
        addresses usable for domain -> cluster derivation even when no proxy of
        that cluster is connected (an embedded gateway passes its own address).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Dispose of the connection pool."""
        raise NotImplementedError

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind, account_id, ids)`` after every committed change."""
        raise NotImplementedError

    def remove_listener(self, listener: ChangeListener) -> None:
        raise NotImplementedError

    # --- accounts and bootstrap ------------------------------------------------

    def ensure_default_account(
        self, *, domain: str = "netbird.selfhosted", admin_email: str = "admin@localhost"
    ) -> Bootstrap:
        """Create, once, the default account with its ``All`` group, an admin user
        and a first admin personal access token.

        Returns the plain token only from the call that created it (``None`` later).
        """
        raise NotImplementedError

    def create_account(self, account: Account) -> Account:
        """Create an account (id generated when empty; v6 ULA /64 generated when
        ``network_v6`` is empty) together with its ``All`` group."""
        raise NotImplementedError

    def get_account(self, account_id: str) -> Account:
        """NotFound ``account not found``."""
        raise NotImplementedError

    def list_accounts(self) -> list[Account]:
        raise NotImplementedError

    # --- users -----------------------------------------------------------------

    def create_user(self, user: User) -> User:
        """Create a user. ValidationError for unknown ``auto_groups`` ids or a bad role."""
        raise NotImplementedError

    def get_user(self, account_id: str, user_id: str) -> User:
        """NotFound ``user not found`` (also for a user of another account)."""
        raise NotImplementedError

    def find_user(self, user_id: str) -> User | None:
        """Look a user up by id in any account (ValidateSession's ``sub`` lookup)."""
        raise NotImplementedError

    def list_users(self, account_id: str) -> list[User]:
        raise NotImplementedError

    def update_user(self, user: User) -> User:
        """Full replace of the mutable fields (email, name, role, is_service_user,
        auto_groups, blocked, pending_approval)."""
        raise NotImplementedError

    def delete_user(self, account_id: str, user_id: str) -> None:
        """Delete a user, its personal access tokens, and unset ``user_id`` on its peers."""
        raise NotImplementedError

    # --- groups ----------------------------------------------------------------

    def create_group(self, group: Group) -> Group:
        """Create a group. ValidationError for an empty name or unknown peer ids;
        Conflict ``group with name %q already exists``."""
        raise NotImplementedError

    def get_group(self, account_id: str, group_id: str) -> Group:
        """NotFound ``group not found``."""
        raise NotImplementedError

    def list_groups(self, account_id: str) -> list[Group]:
        raise NotImplementedError

    def update_group(self, group: Group) -> Group:
        """Full replace (name, issued, member peers)."""
        raise NotImplementedError

    def delete_group(self, account_id: str, group_id: str) -> None:
        """Delete a group. GroupInUse ``group has been linked to reverse proxy
        service: <domain>`` when a private service lists it in access_groups or an
        enabled bearer config lists it in distribution_groups; also refused for
        the ``All`` group and for groups used as a user's auto group."""
        raise NotImplementedError

    def add_peers_to_group(self, account_id: str, group_id: str, peer_ids: Sequence[str]) -> Group:
        """Atomically add members (idempotent)."""
        raise NotImplementedError

    def remove_peers_from_group(
        self, account_id: str, group_id: str, peer_ids: Sequence[str]
    ) -> Group:
        """Atomically remove members (missing members ignored)."""
        raise NotImplementedError

    def resolve_groups(self, account_id: str, group_ids: Sequence[str]) -> list[Group]:
        """Groups for ``group_ids`` in the given order, ids that do not resolve
        skipped (pairs ids with names for tokens and ValidateSession)."""
        raise NotImplementedError

    # --- peers -----------------------------------------------------------------

    def create_peer(self, peer: Peer) -> Peer:
        """Create a peer, allocating ``ip`` (and ``ipv6``) from the account network
        when empty. ``groups`` become memberships; the peer is added to ``All``
        unless it is a proxy peer, and gets its owner's ``auto_groups``.
        Conflict ``peer with this key already exists`` for a duplicate key;
        AddressExhausted when the network is full."""
        raise NotImplementedError

    def get_peer(self, account_id: str, peer_id: str) -> Peer:
        """NotFound ``peer not found``."""
        raise NotImplementedError

    def get_peer_by_key(self, key: str) -> Peer | None:
        """Peer with this WireGuard public key in any account."""
        raise NotImplementedError

    def get_peer_by_ip(self, account_id: str, ip: str) -> Peer | None:
        """Peer of ``account_id`` whose tunnel address is ``ip`` (IPv4, v4-mapped
        IPv6 or IPv6); None on a miss or an unparsable address."""
        raise NotImplementedError

    def list_peers(self, account_id: str, *, proxy: bool | None = None) -> list[Peer]:
        """All peers, or only proxy (``True``) / non-proxy (``False``) peers."""
        raise NotImplementedError

    def list_proxy_peers(self, account_id: str, cluster: str | None = None) -> list[Peer]:
        """Embedded proxy peers of the account, optionally of one cluster."""
        raise NotImplementedError

    def update_peer(self, peer: Peer) -> Peer:
        """Replace name, dns_label, user_id, endpoint, groups, connected, ephemeral.
        Key and tunnel addresses are immutable."""
        raise NotImplementedError

    def set_peer_connected(
        self, account_id: str, peer_id: str, connected: bool, *, now: datetime | None = None
    ) -> Peer:
        raise NotImplementedError

    def delete_peer(self, account_id: str, peer_id: str) -> None:
        """Delete a peer and its group memberships (frees its addresses)."""
        raise NotImplementedError

    def get_peer_groups(self, account_id: str, peer_id: str) -> list[Group]:
        """Groups containing the peer, ordered by group id."""
        raise NotImplementedError

    def get_peer_owner(self, account_id: str, peer_id: str) -> User | None:
        """The owning user of a peer, or None for machine peers / dangling owners."""
        raise NotImplementedError

    # --- services --------------------------------------------------------------

    def create_service(self, service: Service) -> Service:
        """Validate (spec 1.14) and create a service.

        Generates id, Ed25519 session key pair, ``meta.created_at`` and status
        ``pending``; derives ``proxy_cluster`` from the domain (PreconditionFailed
        ``could not derive cluster from domain <d>: ...``); hashes secrets;
        rejects unknown access/distribution groups and unknown peer targets
        (ValidationError); Conflict ``domain already taken``.
        """
        raise NotImplementedError

    def update_service(self, service: Service) -> Service:
        """Full replace (PUT) of ``service.id``: keeps id, account, session keys and
        meta; an empty secret keeps the stored hash. NotFound, PermissionDenied
        ``service is terminated and cannot be updated``, ValidationError ``cannot
        change mode from %q to %q``, plus the create checks."""
        raise NotImplementedError

    def get_service(self, account_id: str, service_id: str) -> Service:
        """NotFound ``service not found``."""
        raise NotImplementedError

    def list_services(self, account_id: str) -> list[Service]:
        raise NotImplementedError

    def list_all_services(self) -> list[Service]:
        """Every service of every account (snapshot source for shared proxies)."""
        raise NotImplementedError

    def get_service_by_domain(self, domain: str) -> Service | None:
        """Exact, installation-wide domain lookup (disabled services included)."""
        raise NotImplementedError

    def list_services_for_cluster(
        self, cluster_address: str, *, account_id: str | None = None
    ) -> list[Service]:
        """Services whose ``proxy_cluster`` is the address (optionally one account)."""
        raise NotImplementedError

    def set_service_status(
        self,
        account_id: str,
        service_id: str,
        status: str,
        *,
        certificate_issued: bool = False,
        now: datetime | None = None,
    ) -> Service:
        """Set ``meta.status`` (and ``certificate_issued_at`` when issued). NotFound
        ``service <id> not found``."""
        raise NotImplementedError

    def delete_service(self, account_id: str, service_id: str) -> Service:
        """Delete a service and its targets; returns what was deleted."""
        raise NotImplementedError

    # --- proxies, clusters, domains ----------------------------------------------

    def register_proxy(self, record: ProxyRecord, *, now: datetime | None = None) -> ProxyRecord:
        """Upsert a proxy row as connected (capabilities replaced)."""
        raise NotImplementedError

    def heartbeat_proxy(
        self, proxy_id: str, session_id: str, *, now: datetime | None = None
    ) -> bool:
        """Refresh ``last_seen`` if ``session_id`` is current; False otherwise."""
        raise NotImplementedError

    def disconnect_proxy(
        self, proxy_id: str, session_id: str, *, now: datetime | None = None
    ) -> bool:
        """Mark disconnected only if ``session_id`` is still the current session."""
        raise NotImplementedError

    def get_proxy(self, proxy_id: str) -> ProxyRecord:
        """NotFound ``proxy not found``."""
        raise NotImplementedError

    def list_proxies(self, account_id: str | None = None) -> list[ProxyRecord]:
        """Rows visible to the account (shared + its own); all rows for None."""
        raise NotImplementedError

    def cluster_address_in_use(self, address: str, account_id: str) -> bool:
        """True if a shared proxy or another account's proxy uses ``address``."""
        raise NotImplementedError

    def delete_stale_proxies(self, older_than: datetime) -> int:
        """Delete proxy rows with ``last_seen`` before ``older_than``; count."""
        raise NotImplementedError

    def list_clusters(self, account_id: str, *, now: datetime | None = None) -> list[Cluster]:
        """Cluster view (spec 1.10): visible rows grouped by address, capability
        aggregates over active rows (connected and seen within 2 minutes)."""
        raise NotImplementedError

    def delete_cluster(self, account_id: str, address: str) -> int:
        """Delete the account's BYOP proxy rows for ``address``. NotFound
        ``cluster not found`` if none."""
        raise NotImplementedError

    def set_inbound_listener(self, listener: ProxyInboundListener) -> None:
        """Upsert where a proxy listens inside an account's tunnel."""
        raise NotImplementedError

    def list_inbound_listeners(self, account_id: str) -> list[ProxyInboundListener]:
        raise NotImplementedError

    def create_domain(self, domain: CustomDomain) -> CustomDomain:
        """Register a custom domain. Conflict ``domain already exists``."""
        raise NotImplementedError

    def list_domains(self, account_id: str) -> list[CustomDomain]:
        raise NotImplementedError

    def set_domain_validated(
        self, account_id: str, domain_id: str, validated: bool
    ) -> CustomDomain:
        raise NotImplementedError

    def delete_domain(self, account_id: str, domain_id: str) -> None:
        """NotFound ``domain not found``."""
        raise NotImplementedError

    def derive_cluster(self, account_id: str, domain: str, *, now: datetime | None = None) -> str:
        """Cluster serving ``domain``: an active/known cluster address equal to or a
        parent of it, else the longest registered custom domain's target.
        PreconditionFailed ``could not derive cluster from domain <d>: ...``."""
        raise NotImplementedError

    # --- proxy access tokens -------------------------------------------------------

    def create_proxy_token(
        self,
        name: str,
        *,
        account_id: str | None,
        expires_at: datetime | None = None,
        created_by: str = "",
    ) -> tuple[ProxyAccessToken, str]:
        """Create a token (``nbx_`` + 30 base62 + 6-char CRC32, 40 chars); returns
        the row and the plain token (not stored)."""
        raise NotImplementedError

    def list_proxy_tokens(self, account_id: str | None) -> list[ProxyAccessToken]:
        """Tokens of the account (None: management-wide tokens)."""
        raise NotImplementedError

    def revoke_proxy_token(self, account_id: str | None, token_id: str) -> ProxyAccessToken:
        """Set ``revoked``. NotFound ``token not found`` for foreign/global tokens."""
        raise NotImplementedError

    def verify_proxy_token(self, plain: str, *, now: datetime | None = None) -> ProxyAccessToken:
        """Check a presented token. Unauthenticated ``invalid token format`` /
        ``invalid token`` / ``token expired or revoked``. Refreshes ``last_used``
        at most once a minute."""
        raise NotImplementedError

    def get_proxy_token(self, token_id: str) -> ProxyAccessToken:
        """NotFound ``token not found`` (used by the heartbeat revocation check)."""
        raise NotImplementedError

    # --- personal access tokens (REST API) --------------------------------------

    def create_personal_access_token(
        self,
        account_id: str,
        user_id: str,
        name: str,
        *,
        expires_at: datetime | None = None,
        created_by: str = "",
    ) -> tuple[PersonalAccessToken, str]:
        """Create a PAT (``nbp_`` + 30 base62 + 6-char CRC32); returns row and plain."""
        raise NotImplementedError

    def list_personal_access_tokens(
        self, account_id: str, user_id: str
    ) -> list[PersonalAccessToken]:
        raise NotImplementedError

    def delete_personal_access_token(self, account_id: str, user_id: str, token_id: str) -> None:
        """NotFound ``token not found``."""
        raise NotImplementedError

    def authenticate_personal_access_token(
        self, plain: str, *, now: datetime | None = None
    ) -> tuple[User, PersonalAccessToken]:
        """Resolve ``Authorization: Token <plain>``. Unauthenticated for a bad,
        unknown, revoked or expired token, or a blocked/pending user."""
        raise NotImplementedError

    # --- access logs -------------------------------------------------------------

    def append_access_log(self, entry: AccessLogEntry) -> AccessLogEntry:
        """Insert an entry (id generated when empty). When ``user_groups`` is None
        it is filled at write time with the group names of the user's
        auto_groups, or of the peer's groups when ``user_id`` is a peer id."""
        raise NotImplementedError

    def list_access_logs(self, account_id: str, query: AccessLogQuery) -> AccessLogPage:
        """Filtered, sorted, paginated access log of the account. ValidationError
        for a bad page, page_size (1..100), sort_by or sort_order."""
        raise NotImplementedError
