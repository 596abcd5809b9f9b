"""Store part: the account repository (``store.accounts``).

:class:`AccountRepository`: accounts (creation with their ``All`` group and,
for :meth:`~AccountRepository.create_with_admin`, a first admin and token),
the bootstrap of the default account, the deletion of everything an account
owns, and the peer channel's reads (:meth:`~AccountRepository.read_view`,
:meth:`~AccountRepository.read_rows`: everything an account's network maps
are built from, in one read transaction).

The other repositories of the account aggregate live beside it and are
re-exported here: :class:`UserRepository` (:mod:`._users`: users and
personal access tokens), :class:`GroupRepository` (:mod:`._groups`) and
:class:`PeerRepository` (:mod:`._peers`, addresses from :mod:`._addresses`);
what they share is in :mod:`._common`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import ipam
from nbgateway.management.errors import BadRequest, Conflict, NotFound, ValidationError
from nbgateway.management.model import (
    Account,
    Bootstrap,
    ChangeKind,
    CustomDomain,
    Group,
    Peer,
    Service,
    User,
    new_id,
    utcnow,
)
from nbgateway.management.store._base import Repository, Tx
from nbgateway.management.store._common import (
    ALL_GROUP,
    MAX_NAME,
    check_name,
    check_text,
    row_account,
)
from nbgateway.management.store._groups import GroupRepository
from nbgateway.management.store._peers import PeerRepository
from nbgateway.management.store._users import UserRepository, row_user
from nbgateway.management.store.schema import (
    access_log_entries,
    accounts,
    domains,
    group_peers,
    groups,
    peers,
    personal_access_tokens,
    proxies,
    proxy_access_tokens,
    proxy_inbound_listeners,
    services,
    targets,
    users,
)

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "AccountRepository",
    "AccountRows",
    "GroupRepository",
    "PeerRepository",
    "UserRepository",
]

DEFAULT_ACCOUNT_ID = "default"


@dataclasses.dataclass(frozen=True)
class AccountRows:
    """One read of an account: what its network maps and access digest come from."""

    account: Account
    peers: tuple[Peer, ...]
    groups: tuple[Group, ...]
    services: tuple[Service, ...]
    domains: tuple[CustomDomain, ...]
    users: tuple[User, ...]


class AccountRepository(Repository):
    """Accounts: creation (with the first admin), bootstrap of the default
    account, deletion of everything an account owns.

    Reached as ``store.accounts``."""

    # --- helpers usable inside transactions -------------------------------------

    def require(self, conn: Connection, account_id: str) -> Account:
        row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise NotFound("account not found")
        return row_account(row)

    def _insert_account(self, tx: Tx, account: Account) -> Account:
        check_text("account name", account.name)
        if len(account.name.encode()) > MAX_NAME:
            raise ValidationError(f"account name exceeds maximum length of {MAX_NAME} characters")
        ipam.parse_network(account.network_v4, 4)
        account = dataclasses.replace(
            account,
            id=account.id or new_id(),
            network_v6=account.network_v6 or ipam.generate_ula_network(),
            created_at=account.created_at or utcnow(),
        )
        ipam.parse_network(account.network_v6, 6)
        if tx.conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account.id)).first():
            raise Conflict("account already exists")
        tx.conn.execute(
            sa.insert(accounts).values(
                id=account.id,
                domain=account.domain,
                network_v4=account.network_v4,
                network_v6=account.network_v6,
                created_at=account.created_at,
                name=account.name or None,
            )
        )
        tx.conn.execute(
            sa.insert(groups).values(
                id=new_id(), account_id=account.id, name=ALL_GROUP, issued="api"
            )
        )
        tx.changed(ChangeKind.ACCOUNT, account.id, account.id)
        return account

    def _insert_admin(self, tx: Tx, account: Account, admin: User) -> Bootstrap:
        """The new account's first admin and that admin's first personal access
        token (the plain token is in the answer, and only there)."""
        users = self._store.users
        admin = users._insert_user(tx, admin)
        _, plain = users._insert_pat(tx, account.id, admin.id, "first admin token", None, "")
        return Bootstrap(account=account, admin_user=admin, admin_token=plain)

    # --- accounts ---------------------------------------------------------------

    def create(self, account: Account) -> Account:
        """Create an account (id generated when empty; v6 ULA /64 generated when
        ``network_v6`` is empty) together with its ``All`` group."""
        return self._store._write(
            account.id or "new-account", lambda tx: self._insert_account(tx, account)
        )

    def create_with_admin(
        self, name: str, *, admin_email: str = "", domain: str = "netbird.selfhosted"
    ) -> Bootstrap:
        """Create an account (own ``All`` group, default overlay networks, so its
        tunnel addresses may overlap other accounts'), its first admin (role
        ``owner``, never an instance admin) and that admin's first personal access
        token, in one transaction. The plain token is returned only here."""
        check_name("account", name)

        def run(tx: Tx) -> Bootstrap:
            account = self._insert_account(tx, Account(name=name.strip(), domain=domain))
            admin = User(account_id=account.id, email=admin_email, name="admin", role="owner")
            return self._insert_admin(tx, account, admin)

        return self._store._write("new-account", run)

    def delete(self, account_id: str) -> None:
        """Delete an account with everything in it. The bootstrap account cannot be
        deleted (BadRequest); NotFound ``account not found``."""
        if account_id == DEFAULT_ACCOUNT_ID:
            raise BadRequest("the bootstrap account cannot be deleted")

        def run(tx: Tx) -> None:
            conn = tx.conn
            self.require(conn, account_id)
            # rows without a foreign key to accounts go explicitly; the rest cascade,
            # but SQLite enforces cascades only with foreign keys on, so be explicit
            service_ids = list(
                conn.execute(
                    sa.select(services.c.id).where(services.c.account_id == account_id)
                ).scalars()
            )
            if service_ids:
                conn.execute(sa.delete(targets).where(targets.c.service_id.in_(service_ids)))
            token_ids = list(
                conn.execute(
                    sa.select(proxy_access_tokens.c.id).where(
                        proxy_access_tokens.c.account_id == account_id
                    )
                ).scalars()
            )
            for table in (
                personal_access_tokens,
                group_peers,
                services,
                peers,
                groups,
                users,
                access_log_entries,
                proxy_access_tokens,
                proxy_inbound_listeners,
                proxies,
                domains,
            ):
                conn.execute(sa.delete(table).where(table.c.account_id == account_id))
            conn.execute(sa.delete(accounts).where(accounts.c.id == account_id))
            for sid in service_ids:
                tx.changed(ChangeKind.SERVICE_DELETED, account_id, sid)
            if token_ids:  # connected gateways holding one of them are cut off
                tx.changed(ChangeKind.PROXY_TOKEN, account_id, *token_ids)
            tx.changed(ChangeKind.ACCOUNT, account_id, account_id)

        self._store._write(account_id, run)

    def get(self, account_id: str) -> Account:
        """NotFound ``account not found``."""
        with self._store._read() as conn:
            return self.require(conn, account_id)

    def read_view(self, account_id: str) -> AccountRows:
        """The account with its peers, groups, services, custom domains and users,
        each ordered as its repository's ``list`` orders it, read in one
        transaction (one snapshot, one BEGIN) instead of one per table.
        NotFound ``account not found``."""
        store = self._store
        with store._read() as conn:
            account = self.require(conn, account_id)
            return AccountRows(
                account=account,
                peers=tuple(store.peers._load_peers(conn, peers.c.account_id == account_id)),
                groups=tuple(store.groups._load_groups(conn, groups.c.account_id == account_id)),
                services=tuple(
                    store.services._load_services(conn, services.c.account_id == account_id)),
                domains=tuple(
                    store.domains._row_domain(r) for r in conn.execute(
                        sa.select(domains).where(domains.c.account_id == account_id)
                        .order_by(domains.c.domain))),
                users=tuple(row_user(r) for r in conn.execute(
                    sa.select(users).where(users.c.account_id == account_id)
                    .order_by(users.c.id))),
            )

    def read_rows(
        self, account_id: str, peer_ids: Sequence[str], service_ids: Sequence[str]
    ) -> tuple[list[Peer], list[Service]]:
        """The named peers and services of the account (those still there), by id,
        in one read transaction."""
        store = self._store
        with store._read() as conn:
            found_peers = store.peers._load_peers(conn, sa.and_(
                peers.c.account_id == account_id, peers.c.id.in_(list(peer_ids)))
            ) if peer_ids else []
            found_services = store.services._load_services(conn, sa.and_(
                services.c.account_id == account_id, services.c.id.in_(list(service_ids)))
            ) if service_ids else []
        return found_peers, found_services

    def list(self) -> list[Account]:
        """All accounts, oldest first (the default account of a fresh install is first)."""
        with self._store._read() as conn:
            rows = conn.execute(
                sa.select(accounts).order_by(accounts.c.created_at, accounts.c.id)
            ).all()
        return [row_account(r) for r in rows]

    def ensure_default(
        self, *, domain: str = "netbird.selfhosted", admin_email: str = "admin@localhost"
    ) -> Bootstrap:
        """Create, once, the default account with its ``All`` group, an admin user
        and a first admin personal access token.

        Returns the plain token only from the call that created it (``None`` later).
        """

        def run(tx: Tx) -> Bootstrap:
            row = tx.conn.execute(
                sa.select(accounts).where(accounts.c.id == DEFAULT_ACCOUNT_ID)
            ).first()
            if row is not None:
                account = row_account(row)
                admin = tx.conn.execute(
                    sa.select(users)
                    .where(users.c.account_id == account.id, users.c.role.in_(("owner", "admin")))
                    .order_by(users.c.created_at, users.c.id)
                ).first()
                if admin is None:
                    raise NotFound("default account has no admin user")
                return Bootstrap(account=account, admin_user=row_user(admin), admin_token=None)
            account = self._insert_account(tx, Account(id=DEFAULT_ACCOUNT_ID, domain=domain))
            admin = User(
                id="admin",
                account_id=account.id,
                email=admin_email,
                name="admin",
                role="owner",
                created_at=utcnow(),
                instance_admin=True,
            )
            return self._insert_admin(tx, account, admin)

        return self._store._write(DEFAULT_ACCOUNT_ID, run)
