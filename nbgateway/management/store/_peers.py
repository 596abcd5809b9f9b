"""Store part: the peer repository (``store.peers``).

Peers of an account: creation (the peer storm's path, on prepared
statements), overlay addresses (allocated by :mod:`._addresses`), keys,
group memberships (existing ones keep their position), connection state,
and the reads the peer channel and the REST API make of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import ipam
from nbgateway.management.errors import BadRequest, Conflict, NotFound, ValidationError
from nbgateway.management.model import Account, ChangeKind, Group, Peer, User, new_id, utcnow
from nbgateway.management.store import _peerstatements as ps
from nbgateway.management.store import _quotas
from nbgateway.management.store._addresses import AddressAllocator
from nbgateway.management.store._base import Repository, Tx
from nbgateway.management.store._common import (
    ALL_GROUP,
    check_ids,
    check_name,
    check_text,
    memberships,
    row_account,
)
from nbgateway.management.store._users import row_user
from nbgateway.management.store.schema import (
    accounts,
    group_peers,
    groups,
    peers,
    services,
    targets,
    users,
)

if TYPE_CHECKING:
    from nbgateway.management.store import Store


#: the columns a Peer is loaded from, in the order _load_peers unpacks them
_PEER_LOAD = tuple(peers.c[name] for name in (
    "id", "account_id", "name", "key", "ip", "ipv6", "dns_label", "user_id", "endpoint",
    "proxy_meta_embedded", "proxy_meta_cluster", "peer_status_connected", "ephemeral",
    "wg_private_key", "last_seen", "created_at"))


class PeerRepository(Repository):
    """Peers of an account: overlay address allocation, keys, group membership, connection state.

    Reached as ``store.peers``."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._addresses = AddressAllocator()

    @staticmethod
    def _peer_groups(conn: Connection, peer_ids: Sequence[str]) -> dict[str, list[str]]:
        """``{peer id: ids of the groups it is in}``, by group id."""
        return memberships(conn, group_peers.c.peer_id, group_peers.c.group_id, peer_ids,
                           group_peers.c.group_id)

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

    @staticmethod
    def _check_peer_ids(conn: Connection, account_id: str, ids: Sequence[str]) -> None:
        """ValidationError ``peer '<id>' not found in account``."""
        check_ids(conn, peers, account_id, ids, "peer")

    def _check_memberships_growth(
        self, conn: Connection, account_id: str, peer_id: str, group_ids: Sequence[str]
    ) -> None:
        """The group-members quota for a peer's groups replaced by ``group_ids``
        (the All group not counted)."""
        quotas = self._store.quotas
        if not quotas.limit("group-members") or not group_ids:
            return
        all_ids = set(conn.execute(sa.select(groups.c.id).where(
            groups.c.account_id == account_id, groups.c.name == ALL_GROUP)).scalars())
        current = set(conn.execute(
            sa.select(group_peers.c.group_id).where(group_peers.c.peer_id == peer_id)
        ).scalars()) - all_ids
        wanted = set(group_ids) - all_ids
        _quotas.enforce(conn, quotas, "group-members", account_id, len(wanted) - len(current))

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
            quotas = self._store.quotas
            peer_limit = quotas.limit("peers")
            if peer_limit or quotas.limit("group-members"):
                found = ps.ACCOUNT_NETWORKS_COUNTED.run(conn, account_id=peer.account_id).first()
            else:
                found = ps.ACCOUNT_NETWORKS.run(conn, account_id=peer.account_id).first()
            if found is None:
                raise NotFound("account not found")
            network_v4, network_v6, all_id = found[:3]
            # read under the account's lock: at the peer quota, and the
            # memberships besides All.  A peer that joins All is counted by
            # All's member count (O(1)); a proxy peer (not in All), or an
            # account without All, by whether its limit-th peer exists
            at_peer_limit = False
            if peer_limit:
                if not peer.proxy and all_id and found[3] is not None:
                    at_peer_limit = int(found[3]) >= peer_limit
                else:
                    at_peer_limit = ps.NTH_PEER.run(
                        conn, account_id=peer.account_id, nth=peer_limit - 1).first() is not None
            have_members = int(found[4]) if len(found) > 4 else 0
            check_name("peer", peer.name)
            if not peer.key:
                raise ValidationError("peer key is required")
            for what, value in (
                ("peer key", peer.key),
                ("dns_label", peer.dns_label),
                ("endpoint", peer.endpoint),
                ("proxy_cluster", peer.proxy_cluster),
                ("peer id", peer.id),
            ):
                check_text(what, value)
            if ps.KEY_TAKEN.run(conn, key=peer.key).first():
                raise Conflict("peer with this key already exists")
            if at_peer_limit:
                quotas.check("peers", peer_limit)  # raises QuotaExceeded
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
            ip = self._addresses.claim(conn, peer.account_id, peer.ip, network_v4, 4)
            ipv6 = None
            if peer.ipv6 is not None:
                ipv6 = self._addresses.claim(conn, peer.account_id, peer.ipv6, network_v6, 6)
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
            # memberships besides All (the All group is not counted: one per peer)
            quotas.check("group-members", have_members, len({g for g in wanted if g != all_id}))
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
            check_name("peer", peer.name)
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
            self._check_memberships_growth(conn, peer.account_id, peer.id, peer.groups)
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
            before = set(conn.execute(
                sa.select(group_peers.c.group_id).where(group_peers.c.peer_id == peer.id)
            ).scalars())
            changed_groups = self._set_peer_memberships(conn, peer.account_id, peer.id, peer.groups)
            if before - set(peer.groups):
                # out of a group: the cookies minted with its groups end (as
                # groups.update does for the same change)
                self._store.services.revoke_sessions_in(tx, peer.account_id)
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
            self._addresses.forget(account_id)
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
                # the cookies minted with its groups end with it
                self._store.services.revoke_sessions_in(tx, account_id)

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
