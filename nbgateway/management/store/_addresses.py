"""Store part: overlay address allocation for new peers.

:class:`AddressAllocator` (one per store, held by ``store.peers``) claims a
peer's tunnel address inside a write transaction: a requested address is
checked (right version, inside the account network, free); otherwise the
next free one is found.

It keeps where this process's last allocation ended, per (account, version,
network): the next allocation checks a small window from there instead of
reading and parsing every address in use (peer storms). Every address below
a hint was in use when the hint was set; a delete in this process drops the
account's hints so the freed address is handed out again first. Uniqueness
never depends on a hint: the write is serialised per account and the unique
index backs it up; a stale hint (delete through another replica) only means
the freed address is not the next one handed out here. At most
:data:`HINTS_MAX` hints are kept (all dropped when full); a lock keeps
the hints whole while writes of different accounts run at once.
"""

from __future__ import annotations

import ipaddress
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import ipam
from nbgateway.management.errors import Conflict, ValidationError
from nbgateway.management.store import _peerstatements as ps
from nbgateway.management.store.schema import peers

HINTS_MAX = 100_000


class AddressAllocator:
    """Tunnel addresses for new peers, with this process's allocation hints."""

    def __init__(self) -> None:
        self._hints: dict[tuple[str, int, str], int] = {}
        # writes of different accounts run at once (PostgreSQL): forget() walks
        # the hints while another account's claim may add one or clear them all
        self._lock = threading.Lock()

    def forget(self, account_id: str) -> None:
        """Drop the account's hints (a peer of it was deleted: its address is free)."""
        with self._lock:
            hints = self._hints
            for key in [k for k in hints if k[0] == account_id]:
                del hints[key]

    def _remember(self, key: tuple[str, int, str], found: str) -> None:
        """The next allocation for ``key`` starts after ``found``."""
        with self._lock:
            if len(self._hints) >= HINTS_MAX:
                self._hints.clear()
            self._hints[key] = ipam.to_int(found) + 1

    def claim(
        self, conn: Connection, account_id: str, requested: str, network: str, version: int
    ) -> str:
        """The address for a new peer of the account, inside its write
        transaction: ``requested`` when it is a free IPv``version`` address of
        ``network`` (ValidationError / Conflict otherwise), else a free one
        (AddressExhausted when there is none)."""
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
        key = (account_id, version, network)
        start = self._hints.get(key)
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
        self._remember(key, found)
        return found
