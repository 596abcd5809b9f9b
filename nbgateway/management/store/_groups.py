"""Store part: the group repository (``store.groups``): groups and their peer memberships.

Groups of an account with their members in order (``group_peers.position``),
member counts read in the database, atomic member edits, and the checks that
keep a group from going while a service still refers to it. The ``All``
group cannot be renamed or deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import BadRequest, Conflict, GroupInUse, NotFound
from nbgateway.management.model import ChangeKind, Group, new_id
from nbgateway.management.store import _peerstatements as ps
from nbgateway.management.store import _quotas
from nbgateway.management.store._base import Repository, Tx, dumps, loads
from nbgateway.management.store._common import ALL_GROUP, check_ids, check_name, memberships
from nbgateway.management.store.schema import group_peers, groups, services, users


class GroupRepository(Repository):
    """Groups of an account and their peer memberships.

    Reached as ``store.groups``."""

    @staticmethod
    def _group_members(conn: Connection, group_ids: Sequence[str]) -> dict[str, list[str]]:
        """``{group id: member peer ids}``, members in their stored order."""
        return memberships(conn, group_peers.c.group_id, group_peers.c.peer_id, group_ids,
                           group_peers.c.position, group_peers.c.peer_id)

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

    @staticmethod
    def _check_group_ids(
        conn: Connection, account_id: str, ids: Sequence[str], what: str
    ) -> None:
        """ValidationError ``<what> '<id>' not found in account``."""
        check_ids(conn, groups, account_id, ids, what)

    # --- groups -----------------------------------------------------------------

    def create(self, group: Group) -> Group:
        """Create a group. ValidationError for an empty name or unknown peer ids;
        Conflict ``group with name %q already exists``."""

        def run(tx: Tx) -> Group:
            conn = tx.conn
            self._store.accounts.require(conn, group.account_id)
            check_name("group", group.name)
            self._store.peers._check_peer_ids(conn, group.account_id, group.peers)
            self._check_group_name_free(conn, group.account_id, group.name, None)
            quotas = self._store.quotas
            _quotas.enforce(conn, quotas, "groups", group.account_id)
            _quotas.enforce(conn, quotas, "group-members", group.account_id,
                            len(dict.fromkeys(group.peers)))
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
        ``ids``): the counts the database keeps (``groups.peers_count``), no
        member is read."""
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
        q = sa.select(groups.c.id, groups.c.name, groups.c.peers_count).where(cond)
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
            check_name("group", group.name)
            if row.name == ALL_GROUP and group.name != ALL_GROUP:
                raise BadRequest("updating group ALL is not allowed")
            self._check_group_name_free(conn, group.account_id, group.name, group.id)
            self._store.peers._check_peer_ids(conn, group.account_id, group.peers)
            before = set(self._group_members(conn, [group.id]).get(group.id, []))
            if row.name != ALL_GROUP:
                _quotas.enforce(conn, self._store.quotas, "group-members", group.account_id,
                                len(set(group.peers)) - len(before))
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
            row = self._require_group(conn, account_id, group_id)
            current = self._group_members(conn, [group_id])[group_id]
            if add:
                self._store.peers._check_peer_ids(conn, account_id, peer_ids)
                new = current + [p for p in dict.fromkeys(peer_ids) if p not in current]
                if row.name != ALL_GROUP:
                    _quotas.enforce(conn, self._store.quotas, "group-members", account_id,
                                    len(new) - len(current))
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
