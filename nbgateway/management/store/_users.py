"""Store part: the user repository (``store.users``): users and their personal access tokens.

Users of an account (role, auto groups, blocked / pending approval), their
personal access tokens (created with the plain token shown once, listed as
hashes, deleted) and the resolution of ``Authorization: Token <plain>``,
with its short-lived cache of resolved tokens. A change to a user ends the
account's proxy sessions where it has to (blocked, out of a group) and
re-resolves mTLS certificate users, both through ``store.services``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unauthenticated,
    ValidationError,
)
from nbgateway.management.model import (
    USER_ROLES,
    ChangeKind,
    PersonalAccessToken,
    User,
    new_id,
    utcnow,
)
from nbgateway.management.store import _quotas, _secrets
from nbgateway.management.store._base import Repository, Tx, dumps, loads
from nbgateway.management.store._common import check_name, check_text
from nbgateway.management.store.schema import (
    group_peers,
    peers,
    personal_access_tokens,
    services,
    targets,
    users,
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



class UserRepository(Repository):
    """Users of an account and their personal access tokens.

    Reached as ``store.users``."""

    # --- users ------------------------------------------------------------------

    def _insert_user(self, tx: Tx, user: User) -> User:
        conn = tx.conn
        self._store.accounts.require(conn, user.account_id)
        self._check_role_and_groups(conn, user)
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

    def _check_role_and_groups(self, conn: Connection, user: User) -> None:
        """ValidationError for an unknown role or an ``auto_groups`` id not in the account."""
        if user.role not in USER_ROLES:
            raise ValidationError(f"invalid user role {user.role!r}")
        self._store.groups._check_group_ids(conn, user.account_id, user.auto_groups, "auto group")

    @staticmethod
    def _user_values(user: User) -> dict:
        for what, value in (("user id", user.id), ("email", user.email), ("user name", user.name)):
            check_text(what, value)
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

        def run(tx: Tx) -> User:
            _quotas.enforce(tx.conn, self._store.quotas, "users", user.account_id)
            return self._insert_user(tx, user)

        return self._store._write(user.account_id, run)

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
            self._check_role_and_groups(conn, user)
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
        """Delete a user, its personal access tokens and its peers (as upstream:
        a peer left without its owner would keep the access its groups give,
        as a peer of nobody, where a blocked owner is refused).  BadRequest
        ``peer has been linked to reverse proxy service: <domain>`` when one
        of its peers is a service's target (as ``peers.delete``)."""

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
            member_of: list[str] = []
            if owned:
                linked = conn.execute(
                    sa.select(services.c.domain)
                    .join(targets, targets.c.service_id == services.c.id)
                    .where(services.c.account_id == account_id,
                           targets.c.target_type == "peer", targets.c.target_id.in_(owned))
                    .order_by(services.c.domain)
                ).first()
                if linked is not None:
                    raise BadRequest(f"peer has been linked to reverse proxy service: {linked[0]}")
                member_of = sorted(set(conn.execute(
                    sa.select(group_peers.c.group_id).where(group_peers.c.peer_id.in_(owned))
                ).scalars()))
                conn.execute(sa.delete(group_peers).where(group_peers.c.peer_id.in_(owned)))
                conn.execute(sa.delete(peers).where(peers.c.account_id == account_id,
                                                    peers.c.id.in_(owned)))
                self._store.peers._addresses.forget(account_id)
            tx.changed(ChangeKind.USER, account_id, user_id)
            self._store.services.revoke_sessions_in(tx, account_id)  # its cookies too
            if owned:
                tx.changed(ChangeKind.PEER, account_id, *owned)
            if member_of:
                tx.changed(ChangeKind.GROUP, account_id, *member_of)

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
        check_name("token", name)
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

        def run(tx: Tx) -> tuple[PersonalAccessToken, str]:
            _quotas.enforce(tx.conn, self._store.quotas, "user-tokens", account_id)
            return self._insert_pat(tx, account_id, user_id, name, expires_at, created_by)

        return self._store._write(account_id, run)

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
