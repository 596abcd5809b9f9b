"""Store part: the account, user, group and peer repositories.

:class:`AccountRepository` (``store.accounts``: accounts, bootstrap, deletion),
:class:`UserRepository` (``store.users``: users and personal access tokens),
:class:`GroupRepository` (``store.groups``) and :class:`PeerRepository`
(``store.peers``: overlay addresses, keys, memberships, connection state).
:meth:`AccountRepository.read_view` / :meth:`AccountRepository.read_rows` are
the peer channel's reads: everything an account's network maps are built from
in one read transaction.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import ipam
from nbgateway.management.errors import (
    BadRequest,
    Conflict,
    GroupInUse,
    NotFound,
    Unauthenticated,
    ValidationError,
)
from nbgateway.management.model import (
    USER_ROLES,
    Account,
    Bootstrap,
    ChangeKind,
    CustomDomain,
    Group,
    Peer,
    PersonalAccessToken,
    Service,
    User,
    new_id,
    utcnow,
)
from nbgateway.management.store import _peerstatements as ps
from nbgateway.management.store import _secrets
from nbgateway.management.store._base import Repository, Tx, dumps, loads
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

ALL_GROUP = "All"
DEFAULT_ACCOUNT_ID = "default"
MAX_NAME = 255


def _check_text(what: str, value: str | None) -> None:
    """NUL cannot be stored in PostgreSQL text: refuse it the same way on every backend."""
    if value is not None and "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise ValidationError(f"{what} name is required")
    _check_text(f"{what} name", name)
    if len(name.encode()) > MAX_NAME:
        raise ValidationError(f"{what} name exceeds maximum length of {MAX_NAME} characters")


def row_account(r: sa.Row) -> Account:
    return Account(
        id=r.id,
        domain=r.domain,
        network_v4=r.network_v4,
        network_v6=r.network_v6 or "",
        created_at=r.created_at,
        name=r.name or "",
    )


def row_user(r: sa.Row) -> User:
    return User(
        id=r.id,
        account_id=r.account_id,
        email=r.email,
        name=r.name,
        role=r.role,
        is_service_user=bool(r.is_service_user),
        auto_groups=tuple(loads(r.auto_groups) or ()),
        blocked=bool(r.blocked),
        pending_approval=bool(r.pending_approval),
        created_at=r.created_at,
        instance_admin=bool(r.instance_admin),
    )


def row_pat(r: sa.Row) -> PersonalAccessToken:
    return PersonalAccessToken(
        id=r.id,
        account_id=r.account_id,
        user_id=r.user_id,
        name=r.name,
        hashed_token=r.hashed_token,
        expires_at=r.expires_at,
        created_by=r.created_by,
        created_at=r.created_at,
        last_used=r.last_used,
        revoked=bool(r.revoked),
    )


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
        _check_text("account name", account.name)
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
        _check_name("account", name)

        def run(tx: Tx) -> Bootstrap:
            account = self._insert_account(tx, Account(name=name.strip(), domain=domain))
            admin = self._store.users._insert_user(
                tx,
                User(
                    account_id=account.id,
                    email=admin_email,
                    name="admin",
                    role="owner",
                ),
            )
            _, plain = self._store.users._insert_pat(
                tx, account.id, admin.id, "first admin token", None, ""
            )
            return Bootstrap(account=account, admin_user=admin, admin_token=plain)

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
            self._store.users._insert_user(tx, admin)
            _, plain = self._store.users._insert_pat(
                tx, account.id, admin.id, "first admin token", None, ""
            )
            return Bootstrap(account=account, admin_user=admin, admin_token=plain)

        return self._store._write(DEFAULT_ACCOUNT_ID, run)


class UserRepository(Repository):
    """Users of an account and their personal access tokens.

    Reached as ``store.users``."""

    # --- users ------------------------------------------------------------------

    def _insert_user(self, tx: Tx, user: User) -> User:
        conn = tx.conn
        self._store.accounts.require(conn, user.account_id)
        if user.role not in USER_ROLES:
            raise ValidationError(f"invalid user role {user.role!r}")
        self._store.groups._check_group_ids(conn, user.account_id, user.auto_groups, "auto group")
        user = dataclasses.replace(
            user, id=user.id or new_id(), created_at=user.created_at or utcnow()
        )
        if conn.execute(sa.select(users.c.id).where(users.c.id == user.id)).first():
            raise Conflict("user already exists")
        conn.execute(
            sa.insert(users).values(
                **self._user_values(user),
                id=user.id,
                account_id=user.account_id,
                created_at=user.created_at,
                instance_admin=user.instance_admin or None,
            )
        )
        tx.changed(ChangeKind.USER, user.account_id, user.id)
        # mTLS: a new user may be a certificate's user (client_cert_auth)
        self._store.services.client_cert_users_changed_in(tx, user.account_id)
        return user

    @staticmethod
    def _user_values(user: User) -> dict:
        for what, value in (("user id", user.id), ("email", user.email), ("user name", user.name)):
            _check_text(what, value)
        return {
            "email": user.email,
            "name": user.name,
            "role": user.role,
            "is_service_user": user.is_service_user,
            "auto_groups": dumps(list(user.auto_groups)),
            "blocked": user.blocked or user.pending_approval,
            "pending_approval": user.pending_approval,
        }

    def create(self, user: User) -> User:
        """Create a user. ValidationError for unknown ``auto_groups`` ids or a bad role."""
        return self._store._write(user.account_id, lambda tx: self._insert_user(tx, user))

    def get(self, account_id: str, user_id: str) -> User:
        """NotFound ``user not found`` (also for a user of another account)."""
        with self._store._read() as conn:
            row = conn.execute(
                sa.select(users).where(users.c.id == user_id, users.c.account_id == account_id)
            ).first()
        if row is None:
            raise NotFound("user not found")
        return row_user(row)

    def find(self, user_id: str) -> User | None:
        """Look a user up by id in any account (ValidateSession's ``sub`` lookup)."""
        with self._store._read() as conn:
            row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        return row_user(row) if row else None

    def list(self, account_id: str) -> list[User]:
        """All users of the account, by id."""
        with self._store._read() as conn:
            rows = conn.execute(
                sa.select(users).where(users.c.account_id == account_id).order_by(users.c.id)
            ).all()
        return [row_user(r) for r in rows]

    def update(self, user: User) -> User:
        """Full replace of the mutable fields (email, name, role, is_service_user,
        auto_groups, blocked, pending_approval)."""

        def run(tx: Tx) -> User:
            conn = tx.conn
            row = conn.execute(
                sa.select(users).where(users.c.id == user.id, users.c.account_id == user.account_id)
            ).first()
            if row is None:
                raise NotFound("user not found")
            if user.role not in USER_ROLES:
                raise ValidationError(f"invalid user role {user.role!r}")
            self._store.groups._check_group_ids(
                conn, user.account_id, user.auto_groups, "auto group"
            )
            conn.execute(
                sa.update(users).where(users.c.id == user.id).values(**self._user_values(user))
            )
            tx.changed(ChangeKind.USER, user.account_id, user.id)
            # mTLS: the certificate -> user table follows emails, groups, status
            self._store.services.client_cert_users_changed_in(tx, user.account_id)
            if (user.blocked and not row.blocked) or \
                    set(loads(row.auto_groups) or []) - set(user.auto_groups):
                # blocked, or out of a group: existing session cookies stop working
                self._store.services.revoke_sessions_in(tx, user.account_id)
            return row_user(conn.execute(sa.select(users).where(users.c.id == user.id)).one())

        return self._store._write(user.account_id, run)

    def delete(self, account_id: str, user_id: str) -> None:
        """Delete a user, its personal access tokens, and unset ``user_id`` on its peers."""

        def run(tx: Tx) -> None:
            conn = tx.conn
            res = conn.execute(
                sa.delete(users).where(users.c.id == user_id, users.c.account_id == account_id)
            )
            if res.rowcount == 0:
                raise NotFound("user not found")
            conn.execute(
                sa.delete(personal_access_tokens).where(personal_access_tokens.c.user_id == user_id)
            )
            owned = sorted(
                conn.execute(
                    sa.select(peers.c.id).where(
                        peers.c.account_id == account_id, peers.c.user_id == user_id
                    )
                ).scalars()
            )
            conn.execute(
                sa.update(peers)
                .where(peers.c.account_id == account_id, peers.c.user_id == user_id)
                .values(user_id=None)
            )
            tx.changed(ChangeKind.USER, account_id, user_id)
            self._store.services.revoke_sessions_in(tx, account_id)  # its cookies too
            if owned:
                tx.changed(ChangeKind.PEER, account_id, *owned)

        self._store._write(account_id, run)

    # --- personal access tokens --------------------------------------------------

    def _insert_pat(
        self,
        tx: Tx,
        account_id: str,
        user_id: str,
        name: str,
        expires_at: datetime | None,
        created_by: str,
    ) -> tuple[PersonalAccessToken, str]:
        _check_name("token", name)
        if not tx.conn.execute(
            sa.select(users.c.id).where(users.c.id == user_id, users.c.account_id == account_id)
        ).first():
            raise NotFound("user not found")
        plain = _secrets.generate_token(_secrets.PAT_PREFIX)
        pat = PersonalAccessToken(
            id=new_id(),
            account_id=account_id,
            user_id=user_id,
            name=name,
            hashed_token=_secrets.hash_token(plain),
            expires_at=expires_at,
            created_by=created_by or user_id,
            created_at=utcnow(),
        )
        tx.conn.execute(sa.insert(personal_access_tokens).values(**dataclasses.asdict(pat)))
        tx.changed(ChangeKind.PERSONAL_ACCESS_TOKEN, account_id, pat.id)
        return pat, plain

    def create_token(
        self,
        account_id: str,
        user_id: str,
        name: str,
        *,
        expires_at: datetime | None = None,
        created_by: str = "",
    ) -> tuple[PersonalAccessToken, str]:
        """Create a PAT (``nbp_`` + 30 base62 + 6-char CRC32); returns row and plain."""
        return self._store._write(
            account_id,
            lambda tx: self._insert_pat(tx, account_id, user_id, name, expires_at, created_by),
        )

    def list_tokens(
        self, account_id: str, user_id: str
    ) -> list[PersonalAccessToken]:
        """The user's tokens (hashes only), oldest first."""
        t = personal_access_tokens
        with self._store._read() as conn:
            rows = conn.execute(
                sa.select(t)
                .where(t.c.account_id == account_id, t.c.user_id == user_id)
                .order_by(t.c.created_at, t.c.id)
            ).all()
        return [row_pat(r) for r in rows]

    def delete_token(self, account_id: str, user_id: str, token_id: str) -> None:
        """NotFound ``token not found``."""
        t = personal_access_tokens

        def run(tx: Tx) -> None:
            res = tx.conn.execute(
                sa.delete(t).where(
                    t.c.id == token_id, t.c.account_id == account_id, t.c.user_id == user_id
                )
            )
            if res.rowcount == 0:
                raise NotFound("token not found")
            tx.changed(ChangeKind.PERSONAL_ACCESS_TOKEN, account_id, token_id)

        self._store._write(account_id, run)

    # Resolved tokens, kept briefly (peer storms authenticate every request):
    # hashed token -> (user, token, monotonic expiry).  Emptied after every
    # committed user, token or account change this process learns of (its own
    # writes; other replicas' through the PostgreSQL change feed); an entry
    # lives at most AUTH_CACHE_SECONDS, which bounds what a write no listener
    # reports (another process on the same SQLite file) can be late by.  A
    # generation number keeps a lookup that raced a change out of the cache.
    AUTH_CACHE_SECONDS = 2.0
    AUTH_CACHE_MAX = 10_000

    def _auth_cache(self) -> dict[str, tuple[User, PersonalAccessToken, float]]:
        cache: dict[str, tuple[User, PersonalAccessToken, float]] | None = getattr(
            self, "_auth_entries", None)
        if cache is None:
            self._auth_lock = threading.Lock()
            self._auth_generation = 0
            cache = self._auth_entries = {}
            self._store.add_listener(self._auth_changed)
        return cache

    def _auth_changed(self, kind: ChangeKind, _account_id: str, _ids: tuple[str, ...]) -> None:
        if kind in (ChangeKind.USER, ChangeKind.PERSONAL_ACCESS_TOKEN, ChangeKind.ACCOUNT):
            with self._auth_lock:
                self._auth_generation += 1
                self._auth_entries.clear()

    def _auth_keep(self, hashed: str, generation: int, user: User, pat: PersonalAccessToken,
                   expires: float) -> None:
        """Cache a lookup unless a change was announced since it started."""
        with self._auth_lock:
            if generation != self._auth_generation:
                return
            if len(self._auth_entries) >= self.AUTH_CACHE_MAX:
                self._auth_entries.clear()
            self._auth_entries[hashed] = (user, pat, expires)

    def authenticate_token(
        self, plain: str, *, now: datetime | None = None
    ) -> tuple[User, PersonalAccessToken]:
        """Resolve ``Authorization: Token <plain>``. Unauthenticated for a bad,
        unknown, revoked or expired token, or a blocked/pending user."""
        if not _secrets.token_format_ok(plain, _secrets.PAT_PREFIX):
            raise Unauthenticated("invalid token format")
        now = now or utcnow()
        hashed = _secrets.hash_token(plain)
        cache = self._auth_cache()
        hit = cache.get(hashed)
        generation = self._auth_generation
        if hit is not None and hit[2] > time.monotonic() and hit[1].is_valid(now):
            user, pat, expires = hit
        else:
            user, pat = self._authenticate_uncached(hashed, now)
            expires = time.monotonic() + self.AUTH_CACHE_SECONDS
            hit = None
        if pat.last_used is None or (now - pat.last_used).total_seconds() >= 60:
            self._touch(personal_access_tokens, pat.id, pat.account_id, now)
            pat = dataclasses.replace(pat, last_used=now)
            hit = None
        if hit is None:
            self._auth_keep(hashed, generation, user, pat, expires)
        return user, pat

    def _authenticate_uncached(
        self, hashed: str, now: datetime
    ) -> tuple[User, PersonalAccessToken]:
        t = personal_access_tokens
        with self._store._read() as conn:
            row = conn.execute(sa.select(t).where(t.c.hashed_token == hashed)).first()
            if row is None:
                raise Unauthenticated("invalid token")
            pat = row_pat(row)
            if not pat.is_valid(now):
                raise Unauthenticated("token expired or revoked")
            urow = conn.execute(
                sa.select(users).where(
                    users.c.id == pat.user_id, users.c.account_id == pat.account_id
                )
            ).first()
        if urow is None:
            raise Unauthenticated("invalid token")
        user = row_user(urow)
        if user.blocked or user.pending_approval:
            raise Unauthenticated("user is blocked")
        return user, pat

    def _touch(self, table: sa.Table, token_id: str, scope: str | None, now: datetime) -> None:
        def run(tx: Tx) -> None:
            tx.conn.execute(sa.update(table).where(table.c.id == token_id).values(last_used=now))

        self._store._write(scope or "", run)


class GroupRepository(Repository):
    """Groups of an account and their peer memberships.

    Reached as ``store.groups``."""

    def _group_members(self, conn: Connection, group_ids: Sequence[str]) -> dict[str, list[str]]:
        members: dict[str, list[str]] = {gid: [] for gid in group_ids}
        if not group_ids:
            return members
        q = (
            sa.select(group_peers.c.group_id, group_peers.c.peer_id)
            .where(group_peers.c.group_id.in_(list(group_ids)))
            .order_by(group_peers.c.group_id, group_peers.c.position, group_peers.c.peer_id)
        )
        for gid, pid in conn.execute(q):
            members[gid].append(pid)
        return members

    def _load_groups(self, conn: Connection, where: sa.ColumnElement[bool]) -> list[Group]:
        rows = conn.execute(sa.select(groups).where(where).order_by(groups.c.id)).all()
        members = self._group_members(conn, [r.id for r in rows])
        return [
            Group(
                id=r.id,
                account_id=r.account_id,
                name=r.name,
                issued=r.issued,
                peers=tuple(members[r.id]),
            )
            for r in rows
        ]

    def _check_group_ids(
        self, conn: Connection, account_id: str, ids: Sequence[str], what: str
    ) -> None:
        wanted = list(ids)
        if not wanted:
            return
        found = set(
            conn.execute(
                sa.select(groups.c.id).where(
                    groups.c.account_id == account_id, groups.c.id.in_(set(wanted))
                )
            ).scalars()
        )
        for gid in wanted:
            if gid not in found:
                raise ValidationError(f"{what} {gid!r} not found in account")

    # --- groups -----------------------------------------------------------------

    def create(self, group: Group) -> Group:
        """Create a group. ValidationError for an empty name or unknown peer ids;
        Conflict ``group with name %q already exists``."""

        def run(tx: Tx) -> Group:
            conn = tx.conn
            self._store.accounts.require(conn, group.account_id)
            _check_name("group", group.name)
            self._store.peers._check_peer_ids(conn, group.account_id, group.peers)
            self._check_group_name_free(conn, group.account_id, group.name, None)
            gid = group.id or new_id()
            if conn.execute(sa.select(groups.c.id).where(groups.c.id == gid)).first():
                raise Conflict("group already exists")
            conn.execute(
                sa.insert(groups).values(
                    id=gid, account_id=group.account_id, name=group.name, issued=group.issued
                )
            )
            self._replace_members(conn, group.account_id, gid, group.peers)
            tx.changed(ChangeKind.GROUP, group.account_id, gid)
            return self._load_groups(conn, groups.c.id == gid)[0]

        return self._store._write(group.account_id, run)

    def _check_group_name_free(
        self, conn: Connection, account_id: str, name: str, own_id: str | None
    ) -> None:
        q = sa.select(groups.c.id).where(groups.c.account_id == account_id, groups.c.name == name)
        for gid in conn.execute(q).scalars():
            if gid != own_id:
                raise Conflict(f"group with name {name!r} already exists")

    def _replace_members(
        self, conn: Connection, account_id: str, group_id: str, peer_ids: Sequence[str]
    ) -> None:
        conn.execute(sa.delete(group_peers).where(group_peers.c.group_id == group_id))
        for pos, pid in enumerate(dict.fromkeys(peer_ids)):
            conn.execute(
                sa.insert(group_peers).values(
                    group_id=group_id, peer_id=pid, account_id=account_id, position=pos
                )
            )

    def _require_group(self, conn: Connection, account_id: str, group_id: str) -> sa.Row:
        row = conn.execute(
            sa.select(groups).where(groups.c.id == group_id, groups.c.account_id == account_id)
        ).first()
        if row is None:
            raise NotFound("group not found")
        return row

    def get(self, account_id: str, group_id: str) -> Group:
        """NotFound ``group not found``."""
        with self._store._read() as conn:
            self._require_group(conn, account_id, group_id)
            return self._load_groups(conn, groups.c.id == group_id)[0]

    def summaries(
        self, account_id: str, ids: Sequence[str] | None = None
    ) -> dict[str, tuple[str, int]]:
        """``{group id: (name, member count)}`` of the account's groups (or of
        ``ids``), counted in the database without loading the members."""
        cond = groups.c.account_id == account_id
        if ids is not None:
            if not ids:
                return {}
            if len(ids) <= 4:  # a peer's few groups (every REST peer answer): prepared
                out: dict[str, tuple[str, int]] = {}
                with self._store._read() as conn:
                    for gid in dict.fromkeys(ids):
                        row = ps.GROUP_SUMMARY.run(conn, account_id=account_id,
                                                   group_id=gid).first()
                        if row is not None:
                            out[gid] = (row[0], int(row[1]))
                return out
            cond = sa.and_(cond, groups.c.id.in_(set(ids)))
        q = (
            sa.select(groups.c.id, groups.c.name, sa.func.count(group_peers.c.peer_id))
            .select_from(groups.outerjoin(group_peers, group_peers.c.group_id == groups.c.id))
            .where(cond)
            .group_by(groups.c.id, groups.c.name)
        )
        with self._store._read() as conn:
            return {gid: (name, int(n)) for gid, name, n in conn.execute(q)}

    def list(self, account_id: str) -> list[Group]:
        """All groups of the account with their member peer ids, by group id."""
        with self._store._read() as conn:
            return self._load_groups(conn, groups.c.account_id == account_id)

    def update(self, group: Group) -> Group:
        """Full replace (name, issued, member peers)."""

        def run(tx: Tx) -> Group:
            conn = tx.conn
            row = self._require_group(conn, group.account_id, group.id)
            _check_name("group", group.name)
            if row.name == ALL_GROUP and group.name != ALL_GROUP:
                raise BadRequest("updating group ALL is not allowed")
            self._check_group_name_free(conn, group.account_id, group.name, group.id)
            self._store.peers._check_peer_ids(conn, group.account_id, group.peers)
            before = set(self._group_members(conn, [group.id]).get(group.id, []))
            if before - set(group.peers):  # members removed: their sessions end
                self._store.services.revoke_sessions_in(tx, group.account_id)
            conn.execute(
                sa.update(groups)
                .where(groups.c.id == group.id)
                .values(name=group.name, issued=group.issued)
            )
            self._replace_members(conn, group.account_id, group.id, group.peers)
            tx.changed(ChangeKind.GROUP, group.account_id, group.id)
            return self._load_groups(conn, groups.c.id == group.id)[0]

        return self._store._write(group.account_id, run)

    def delete(self, account_id: str, group_id: str) -> None:
        """Delete a group. GroupInUse ``group has been linked to reverse proxy
        service: <domain>`` when a private service lists it in access_groups or an
        enabled bearer config lists it in distribution_groups; BadRequest for the
        ``All`` group. The id is removed from users' ``auto_groups``."""

        def run(tx: Tx) -> None:
            conn = tx.conn
            row = self._require_group(conn, account_id, group_id)
            if row.name == ALL_GROUP:
                raise BadRequest("deleting group ALL is not allowed")
            self._check_group_unused(conn, account_id, group_id)
            conn.execute(sa.delete(groups).where(groups.c.id == group_id))
            for u in conn.execute(sa.select(users).where(users.c.account_id == account_id)).all():
                auto = loads(u.auto_groups) or []
                if group_id in auto:
                    conn.execute(
                        sa.update(users)
                        .where(users.c.id == u.id)
                        .values(auto_groups=dumps([g for g in auto if g != group_id]))
                    )
                    tx.changed(ChangeKind.USER, account_id, u.id)
            tx.changed(ChangeKind.GROUP, account_id, group_id)
            self._store.services.revoke_sessions_in(tx, account_id)

        self._store._write(account_id, run)

    def _check_group_unused(self, conn: Connection, account_id: str, group_id: str) -> None:
        q = sa.select(
            services.c.domain, services.c.private, services.c.access_groups, services.c.auth
        ).where(services.c.account_id == account_id)
        for domain, private, access_groups, auth in conn.execute(q.order_by(services.c.domain)):
            if private and group_id in (loads(access_groups) or ()):
                raise GroupInUse(f"group has been linked to reverse proxy service: {domain}")
            bearer = (loads(auth) or {}).get("bearer_auth") or {}
            if bearer.get("enabled") and group_id in (bearer.get("distribution_groups") or ()):
                raise GroupInUse(f"group has been linked to reverse proxy service: {domain}")

    def _edit_members(
        self, account_id: str, group_id: str, peer_ids: Sequence[str], add: bool
    ) -> Group:
        def run(tx: Tx) -> Group:
            conn = tx.conn
            self._require_group(conn, account_id, group_id)
            current = self._group_members(conn, [group_id])[group_id]
            if add:
                self._store.peers._check_peer_ids(conn, account_id, peer_ids)
                new = current + [p for p in dict.fromkeys(peer_ids) if p not in current]
            else:
                drop = set(peer_ids)
                new = [p for p in current if p not in drop]
            if new != current:
                self._replace_members(conn, account_id, group_id, new)
                tx.changed(ChangeKind.GROUP, account_id, group_id)
            return self._load_groups(conn, groups.c.id == group_id)[0]

        return self._store._write(account_id, run)

    def add_peers(self, account_id: str, group_id: str, peer_ids: Sequence[str]) -> Group:
        """Atomically add members (idempotent)."""
        return self._edit_members(account_id, group_id, peer_ids, add=True)

    def remove_peers(
        self, account_id: str, group_id: str, peer_ids: Sequence[str]
    ) -> Group:
        """Atomically remove members (missing members ignored)."""
        return self._edit_members(account_id, group_id, peer_ids, add=False)

    def resolve(self, account_id: str, group_ids: Sequence[str]) -> list[Group]:
        """Groups for ``group_ids`` in the given order, ids that do not resolve
        skipped (pairs ids with names for tokens and ValidateSession)."""
        with self._store._read() as conn:
            found = {
                g.id: g
                for g in self._load_groups(
                    conn,
                    sa.and_(groups.c.account_id == account_id, groups.c.id.in_(set(group_ids))),
                )
            }
        return [found[g] for g in group_ids if g in found]


#: the columns a Peer is loaded from, in the order _load_peers unpacks them
_PEER_LOAD = tuple(peers.c[name] for name in (
    "id", "account_id", "name", "key", "ip", "ipv6", "dns_label", "user_id", "endpoint",
    "proxy_meta_embedded", "proxy_meta_cluster", "peer_status_connected", "ephemeral",
    "wg_private_key", "last_seen", "created_at"))


class PeerRepository(Repository):
    """Peers of an account: overlay address allocation, keys, group membership, connection state.

    Reached as ``store.peers``."""

    def _peer_groups(self, conn: Connection, peer_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {pid: [] for pid in peer_ids}
        if not peer_ids:
            return out
        q = (
            sa.select(group_peers.c.peer_id, group_peers.c.group_id)
            .where(group_peers.c.peer_id.in_(list(peer_ids)))
            .order_by(group_peers.c.peer_id, group_peers.c.group_id)
        )
        for pid, gid in conn.execute(q):
            out[pid].append(gid)
        return out

    def _load_peers(
        self, conn: Connection, where: sa.ColumnElement[bool], limit: int | None = None
    ) -> list[Peer]:
        q = sa.select(*_PEER_LOAD).where(where).order_by(peers.c.id)
        if limit is not None:
            q = q.limit(limit)
        rows = conn.execute(q).all()
        pg = self._peer_groups(conn, [r[0] for r in rows])
        # positional unpacking (the columns of _PEER_LOAD, in order): a page is
        # 100 rows of 16 columns, and a named access costs a mapping lookup each
        out = []
        for (pid, account_id, name, key, ip, ipv6, dns_label, user_id, endpoint, embedded,
             cluster, connected, ephemeral, wg_private_key, last_seen, created_at) in rows:
            out.append(Peer(
                id=pid,
                account_id=account_id,
                name=name,
                key=key,
                ip=ip,
                ipv6=ipv6,
                dns_label=dns_label,
                user_id=user_id,
                endpoint=endpoint,
                groups=tuple(pg[pid]),
                proxy=bool(embedded),
                proxy_cluster=cluster,
                connected=bool(connected),
                ephemeral=bool(ephemeral),
                wg_private_key=wg_private_key,
                last_seen=last_seen,
                created_at=created_at,
            ))
        return out

    def _check_peer_ids(self, conn: Connection, account_id: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        found = set(
            conn.execute(
                sa.select(peers.c.id).where(
                    peers.c.account_id == account_id, peers.c.id.in_(set(ids))
                )
            ).scalars()
        )
        for pid in ids:
            if pid not in found:
                raise ValidationError(f"peer {pid!r} not found in account")

    def _set_peer_memberships(
        self,
        conn: Connection,
        account_id: str,
        peer_id: str,
        group_ids: Sequence[str],
        *,
        new: bool = False,
    ) -> set[str]:
        """Make the peer a member of exactly ``group_ids``; existing memberships keep
        their position, new ones are appended. Returns the groups that changed.
        ``new``: the peer was inserted in this transaction (no memberships yet)."""
        current: set[str] = set()
        if not new:
            current = set(
                conn.execute(
                    sa.select(group_peers.c.group_id).where(group_peers.c.peer_id == peer_id)
                ).scalars()
            )
        wanted = list(dict.fromkeys(group_ids))
        removed = current - set(wanted)
        if removed:
            conn.execute(
                sa.delete(group_peers).where(
                    group_peers.c.peer_id == peer_id, group_peers.c.group_id.in_(removed)
                )
            )
        added = [g for g in wanted if g not in current]
        for gid in added:
            pos = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(group_peers.c.position), -1) + 1).where(
                    group_peers.c.group_id == gid
                )
            ).scalar_one()
            conn.execute(
                sa.insert(group_peers).values(
                    group_id=gid, peer_id=peer_id, account_id=account_id, position=pos
                )
            )
        return removed | set(added)

    # --- peers ------------------------------------------------------------------

    def create(self, peer: Peer) -> Peer:
        """Create a peer, allocating ``ip`` (and ``ipv6``) from the account network
        when empty. ``groups`` become memberships; the peer is added to ``All``
        unless it is a proxy peer, and gets its owner's ``auto_groups``.
        Conflict ``peer with this key already exists`` for a duplicate key;
        AddressExhausted when the network is full."""
        return self._create(peer, False)[0]

    def create_with_groups(self, peer: Peer) -> tuple[Peer, dict[str, tuple[str, int]]]:
        """:meth:`create`, also returning ``{group id: (name, member count)}`` of
        the new peer's groups as of the same transaction (the REST answer)."""
        return self._create(peer, True)

    def _create(
        self, peer: Peer, summaries: bool
    ) -> tuple[Peer, dict[str, tuple[str, int]]]:
        def run(tx: Tx) -> tuple[Peer, dict[str, tuple[str, int]]]:
            conn = tx.conn
            # prepared statements throughout (ps): a peer storm is mostly this
            found = ps.ACCOUNT_NETWORKS.run(conn, account_id=peer.account_id).first()
            if found is None:
                raise NotFound("account not found")
            network_v4, network_v6, all_id = found
            _check_name("peer", peer.name)
            if not peer.key:
                raise ValidationError("peer key is required")
            for what, value in (
                ("peer key", peer.key),
                ("dns_label", peer.dns_label),
                ("endpoint", peer.endpoint),
                ("proxy_cluster", peer.proxy_cluster),
                ("peer id", peer.id),
            ):
                _check_text(what, value)
            if ps.KEY_TAKEN.run(conn, key=peer.key).first():
                raise Conflict("peer with this key already exists")
            owner_groups: tuple[str, ...] = ()
            if peer.user_id is not None:
                owner = conn.execute(
                    sa.select(users).where(
                        users.c.id == peer.user_id, users.c.account_id == peer.account_id
                    )
                ).first()
                if owner is None:
                    raise ValidationError(f"user {peer.user_id!r} not found in account")
                owner_groups = row_user(owner).auto_groups
            for gid in dict.fromkeys(peer.groups):
                if not ps.GROUP_OF_ACCOUNT.run(conn, account_id=peer.account_id,
                                               group_id=gid).first():
                    raise ValidationError(f"group {gid!r} not found in account")
            ip = self._claim_ip(conn, peer.account_id, peer.ip, network_v4, 4)
            ipv6 = None
            if peer.ipv6 is not None:
                ipv6 = self._claim_ip(conn, peer.account_id, peer.ipv6, network_v6, 6)
            pid = peer.id or new_id()
            if peer.id and conn.execute(sa.select(peers.c.id).where(peers.c.id == pid)).first():
                raise Conflict("peer already exists")
            now = utcnow()
            ps.INSERT_PEER.run(
                conn,
                id=pid,
                account_id=peer.account_id,
                name=peer.name,
                key=peer.key,
                ip=ip,
                ipv6=ipv6,
                dns_label=peer.dns_label,
                user_id=peer.user_id,
                endpoint=peer.endpoint,
                proxy_meta_embedded=peer.proxy,
                proxy_meta_cluster=peer.proxy_cluster,
                peer_status_connected=peer.connected,
                ephemeral=peer.ephemeral,
                wg_private_key=peer.wg_private_key,
                last_seen=peer.last_seen,
                created_at=peer.created_at or now,
            )
            wanted = list(peer.groups) + list(owner_groups)
            if not peer.proxy and all_id:
                wanted.append(all_id)
            added = list(dict.fromkeys(wanted))
            for gid in added:
                ps.ADD_MEMBER.run(conn, group_id=gid, peer_id=pid, account_id=peer.account_id)
            tx.changed(ChangeKind.PEER, peer.account_id, pid)
            if added:
                tx.changed(ChangeKind.GROUP, peer.account_id, *sorted(added))
            found_groups: dict[str, tuple[str, int]] = {}
            if summaries:
                for gid in sorted(added):
                    row = ps.GROUP_SUMMARY.run(conn, account_id=peer.account_id,
                                               group_id=gid).first()
                    if row is not None:
                        found_groups[gid] = (row[0], int(row[1]))
            # the row as written (no read-back: one statement less per peer in a storm)
            return dataclasses.replace(
                peer,
                id=pid,
                ip=ip,
                ipv6=ipv6,
                groups=tuple(sorted(added)),
                created_at=peer.created_at or now,
            ), found_groups

        return self._store._write(peer.account_id, run)

    # Where this process's last allocation ended, per (account, version, network):
    # the next allocation checks a small window from there instead of reading and
    # parsing every address in use (peer storms). Every address below a hint was
    # in use when the hint was set; a delete in this process drops the account's
    # hints so the freed address is handed out again first. Uniqueness never
    # depends on a hint: the write is serialised per account and the unique index
    # backs it up; a stale hint (delete through another replica) only means the
    # freed address is not the next one handed out here.
    _HINTS_MAX = 100_000

    def _hints(self) -> dict[tuple[str, int, str], int]:
        hints: dict[tuple[str, int, str], int] | None = getattr(self, "_ip_hints", None)
        if hints is None:
            hints = self._ip_hints = {}
        return hints

    def _forget_hints(self, account_id: str) -> None:
        hints = self._hints()
        for key in [k for k in hints if k[0] == account_id]:
            hints.pop(key, None)

    def _claim_ip(
        self, conn: Connection, account_id: str, requested: str, network: str, version: int
    ) -> str:
        column = peers.c.ip if version == 4 else peers.c.ipv6
        if requested:
            canon = ipam.canonical_tunnel_ip(requested)
            net = ipam.parse_network(network, version)
            if canon is None or canon[0] != version:
                raise ValidationError(f"invalid IPv{version} address {requested!r}")
            if ipaddress.ip_address(canon[1]) not in net:
                raise ValidationError(
                    f"address {requested} is outside the account network {network}"
                )
            if conn.execute(
                sa.select(peers.c.id).where(peers.c.account_id == account_id, column == canon[1])
            ).first():
                raise Conflict(f"address {canon[1]} is already in use")
            return canon[1]
        hints = self._hints()
        key = (account_id, version, network)
        start = hints.get(key)
        found: str | None = None
        if start is not None:
            # the usual case: the hinted address itself is free (one indexed probe)
            first = ipam.window(network, version, start, 1)
            probe = ps.IPV4_TAKEN if version == 4 else ps.IPV6_TAKEN
            if first and not probe.run(conn, account_id=account_id, ip=first[0]).first():
                found = first[0]
        if start is not None and found is None:
            for _ in range(16):
                candidates = ipam.window(network, version, start)
                if not candidates:
                    break
                taken = conn.execute(
                    sa.select(column).where(
                        peers.c.account_id == account_id, column.in_(candidates)
                    )
                ).scalars()
                found = ipam.first_free(candidates, [t for t in taken if t])
                if found is not None:
                    break
                start = ipam.to_int(candidates[-1]) + 1
        if found is None:
            used = [
                u
                for u in conn.execute(
                    sa.select(column).where(peers.c.account_id == account_id)
                ).scalars()
                if u
            ]
            alloc = ipam.allocate_ipv4 if version == 4 else ipam.allocate_ipv6
            found = alloc(network, used)
        if len(hints) >= self._HINTS_MAX:
            hints.clear()
        hints[key] = ipam.to_int(found) + 1
        return found

    def get(self, account_id: str, peer_id: str) -> Peer:
        """NotFound ``peer not found``."""
        with self._store._read() as conn:
            found = self._load_peers(
                conn, sa.and_(peers.c.id == peer_id, peers.c.account_id == account_id)
            )
        if not found:
            raise NotFound("peer not found")
        return found[0]

    def get_by_key(self, key: str) -> Peer | None:
        """Peer with this WireGuard public key in any account."""
        with self._store._read() as conn:
            found = self._load_peers(conn, peers.c.key == key)
        return found[0] if found else None

    def get_by_key_with_account(self, key: str) -> tuple[Peer, Account] | None:
        """The peer with this key and its account, in one read transaction (a
        peer Login needs nothing else); None when either is missing."""
        with self._store._read() as conn:
            found = self._load_peers(conn, peers.c.key == key)
            if not found:
                return None
            row = conn.execute(
                sa.select(accounts).where(accounts.c.id == found[0].account_id)).first()
        return (found[0], row_account(row)) if row is not None else None

    def get_by_ip(self, account_id: str, ip: str) -> Peer | None:
        """Peer of ``account_id`` whose tunnel address is ``ip`` (IPv4, v4-mapped
        IPv6 or IPv6); None on a miss or an unparsable address."""
        canon = ipam.canonical_tunnel_ip(ip)
        if canon is None:
            return None
        column = peers.c.ip if canon[0] == 4 else peers.c.ipv6
        with self._store._read() as conn:
            found = self._load_peers(
                conn, sa.and_(peers.c.account_id == account_id, column == canon[1])
            )
        return found[0] if found else None

    def list(
        self,
        account_id: str,
        *,
        proxy: bool | None = None,
        user_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Peer]:
        """All peers by id, or only proxy (``True``) / non-proxy (``False``) peers,
        or only those of ``user_id``; ``after``/``limit``: the page of at most
        ``limit`` peers whose id sorts after ``after`` (keyset pagination)."""
        cond = peers.c.account_id == account_id
        if proxy is not None:
            cond = sa.and_(cond, peers.c.proxy_meta_embedded == proxy)
        if user_id is not None:
            cond = sa.and_(cond, peers.c.user_id == user_id)
        if after is not None:
            cond = sa.and_(cond, peers.c.id > after)
        with self._store._read() as conn:
            return self._load_peers(conn, cond, limit)

    def list_proxy_peers(self, account_id: str, cluster: str | None = None) -> list[Peer]:
        """Embedded proxy peers of the account, optionally of one cluster."""
        cond = sa.and_(peers.c.account_id == account_id, peers.c.proxy_meta_embedded.is_(True))
        if cluster is not None:
            cond = sa.and_(cond, peers.c.proxy_meta_cluster == cluster)
        with self._store._read() as conn:
            return self._load_peers(conn, cond)

    def update(self, peer: Peer) -> Peer:
        """Replace name, dns_label, user_id, endpoint, groups, connected, ephemeral.
        Key and tunnel addresses are immutable."""

        def run(tx: Tx) -> Peer:
            conn = tx.conn
            row = conn.execute(
                sa.select(peers).where(peers.c.id == peer.id, peers.c.account_id == peer.account_id)
            ).first()
            if row is None:
                raise NotFound("peer not found")
            _check_name("peer", peer.name)
            if (
                peer.user_id is not None
                and not conn.execute(
                    sa.select(users.c.id).where(
                        users.c.id == peer.user_id, users.c.account_id == peer.account_id
                    )
                ).first()
            ):
                raise ValidationError(f"user {peer.user_id!r} not found in account")
            self._store.groups._check_group_ids(conn, peer.account_id, peer.groups, "group")
            conn.execute(
                sa.update(peers)
                .where(peers.c.id == peer.id)
                .values(
                    name=peer.name,
                    dns_label=peer.dns_label,
                    user_id=peer.user_id,
                    endpoint=peer.endpoint,
                    peer_status_connected=peer.connected,
                    ephemeral=peer.ephemeral,
                )
            )
            changed_groups = self._set_peer_memberships(conn, peer.account_id, peer.id, peer.groups)
            tx.changed(ChangeKind.PEER, peer.account_id, peer.id)
            if changed_groups:
                tx.changed(ChangeKind.GROUP, peer.account_id, *sorted(changed_groups))
            return self._load_peers(conn, peers.c.id == peer.id)[0]

        return self._store._write(peer.account_id, run)

    def set_connected(
        self, account_id: str, peer_id: str, connected: bool, *, now: datetime | None = None,
        reload: bool = True,
    ) -> Peer | None:
        """Record a peer's connection state and ``last_seen``; the updated peer, or
        None with ``reload=False`` (the peer channel: a shorter write transaction).
        NotFound ``peer not found``."""

        def run(tx: Tx) -> Peer | None:
            res = tx.conn.execute(
                sa.update(peers)
                .where(peers.c.id == peer_id, peers.c.account_id == account_id)
                .values(peer_status_connected=connected, last_seen=now or utcnow())
            )
            if res.rowcount == 0:
                raise NotFound("peer not found")
            tx.changed(ChangeKind.PEER, account_id, peer_id)
            return self._load_peers(tx.conn, peers.c.id == peer_id)[0] if reload else None

        return self._store._write(account_id, run)

    def delete(self, account_id: str, peer_id: str) -> None:
        """Delete a peer and its group memberships (frees its addresses)."""

        def run(tx: Tx) -> None:
            conn = tx.conn
            self._forget_hints(account_id)
            if not conn.execute(
                sa.select(peers.c.id).where(peers.c.id == peer_id, peers.c.account_id == account_id)
            ).first():
                raise NotFound("peer not found")
            linked = conn.execute(
                sa.select(services.c.domain)
                .join(targets, targets.c.service_id == services.c.id)
                .where(
                    services.c.account_id == account_id,
                    targets.c.target_type == "peer",
                    targets.c.target_id == peer_id,
                )
                .order_by(services.c.domain)
            ).first()
            if linked is not None:
                raise BadRequest(f"peer has been linked to reverse proxy service: {linked[0]}")
            member_of = sorted(
                conn.execute(
                    sa.select(group_peers.c.group_id).where(group_peers.c.peer_id == peer_id)
                ).scalars()
            )
            conn.execute(sa.delete(group_peers).where(group_peers.c.peer_id == peer_id))
            conn.execute(sa.delete(peers).where(peers.c.id == peer_id))
            tx.changed(ChangeKind.PEER, account_id, peer_id)
            if member_of:
                tx.changed(ChangeKind.GROUP, account_id, *member_of)

        self._store._write(account_id, run)

    def groups_of(self, account_id: str, peer_id: str) -> list[Group]:
        """Groups containing the peer, ordered by group id."""
        with self._store._read() as conn:
            gids = self._peer_groups(conn, [peer_id])[peer_id]
            return self._store.groups._load_groups(
                conn, sa.and_(groups.c.account_id == account_id, groups.c.id.in_(gids))
            )

    def group_refs_of(self, account_id: str, peer_id: str) -> list[tuple[str, str]]:
        """``[(group id, group name)]`` of the groups containing a peer, by group id.

        Lighter than :meth:`get_peer_groups` (no member lists are loaded).
        """
        q = (
            sa.select(groups.c.id, groups.c.name)
            .join(group_peers, group_peers.c.group_id == groups.c.id)
            .where(group_peers.c.peer_id == peer_id, groups.c.account_id == account_id)
            .order_by(groups.c.id)
        )
        with self._store._read() as conn:
            return [(gid, name) for gid, name in conn.execute(q)]

    def owner_of(self, account_id: str, peer_id: str) -> User | None:
        """The owning user of a peer, or None for machine peers / dangling owners."""
        with self._store._read() as conn:
            row = conn.execute(
                sa.select(users)
                .join(peers, peers.c.user_id == users.c.id)
                .where(
                    peers.c.id == peer_id,
                    peers.c.account_id == account_id,
                    users.c.account_id == account_id,
                )
            ).first()
        return row_user(row) if row else None
