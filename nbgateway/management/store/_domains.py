"""Store part: the domain repository (``store.domains``) and cluster derivation.

:class:`DomainRepository`: an account's custom domains (name normalised:
lower case, no trailing dot) with their target cluster and validation state.
:func:`cluster_for_domain`: which cluster serves a service's domain, from
the active or known cluster addresses and the account's custom domains (a
service's ``proxy_cluster`` is derived, never chosen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import Conflict, NotFound, PreconditionFailed, ValidationError
from nbgateway.management.model import ChangeKind, CustomDomain, new_id
from nbgateway.management.store._base import Repository, Tx
from nbgateway.management.store._proxies import ACTIVE_WINDOW
from nbgateway.management.store.schema import domains, proxies
from nbgateway.management.validation import go_quote


def active_clusters(
    conn: Connection, known_clusters: Sequence[str], account_id: str, now: datetime
) -> dict[str, bool]:
    """``{cluster address: requires a subdomain label}`` of the clusters an
    account's service may use: the known ones and those with a proxy (shared or
    the account's own) connected within :data:`ACTIVE_WINDOW`."""
    q = sa.select(proxies.c.cluster_address, proxies.c.require_subdomain).where(
        sa.or_(proxies.c.account_id.is_(None), proxies.c.account_id == account_id),
        proxies.c.status == "connected",
        proxies.c.last_seen > now - ACTIVE_WINDOW,
    )
    out: dict[str, bool] = {addr: False for addr in known_clusters}
    for addr, req in conn.execute(q):
        out[addr] = out.get(addr, False) or bool(req)
    return out


def cluster_for_domain(
    conn: Connection, known_clusters: Sequence[str], account_id: str, domain: str,
    now: datetime,
) -> str:
    """The cluster serving ``domain``: the longest active/known cluster address
    equal to or a parent of it (ValidationError when it is the address itself and
    that cluster requires a subdomain label), else the target of the longest
    registered custom domain of the account equal to or a parent of it.
    PreconditionFailed ``could not derive cluster from domain <d>: ...``."""
    clusters = active_clusters(conn, known_clusters, account_id, now)
    best = ""
    for addr in clusters:
        if (domain == addr or domain.endswith("." + addr)) and len(addr) > len(best):
            best = addr
    if best:
        if domain == best and clusters[best]:
            raise ValidationError(f"domain {domain} requires a subdomain label")
        return best
    rows = conn.execute(
        sa.select(domains.c.domain, domains.c.target_cluster).where(
            domains.c.account_id == account_id
        )
    ).all()
    match = ""
    target = ""
    for d, tc in rows:
        if (domain == d or domain.endswith("." + d)) and len(d) > len(match):
            match, target = d, tc
    if match:
        return target
    raise PreconditionFailed(
        f"could not derive cluster from domain {domain}: "
        "no active cluster or registered custom domain matches"
    )


class DomainRepository(Repository):
    """Custom domains of an account and their validation state.

    Reached as ``store.domains``."""

    # --- custom domains -------------------------------------------------------------------

    @staticmethod
    def _row_domain(r: sa.Row) -> CustomDomain:
        return CustomDomain(
            id=r.id,
            account_id=r.account_id,
            domain=r.domain,
            target_cluster=r.target_cluster,
            validated=bool(r.validated),
        )

    def create(self, domain: CustomDomain) -> CustomDomain:
        """Register a custom domain. Conflict ``domain already exists``."""

        def run(tx: Tx) -> CustomDomain:
            conn = tx.conn
            self._store.accounts.require(conn, domain.account_id)
            name = domain.domain.strip().rstrip(".").lower()
            if not name or len(name) > 253 or any(c.isspace() or c == "/" for c in name):
                raise ValidationError(f"invalid domain {go_quote(domain.domain)}")
            if not domain.target_cluster:
                raise ValidationError("target_cluster is required")
            if conn.execute(sa.select(domains.c.id).where(domains.c.domain == name)).first():
                raise Conflict("domain already exists")
            new = dataclasses.replace(domain, id=domain.id or new_id(), domain=name)
            conn.execute(sa.insert(domains).values(**dataclasses.asdict(new)))
            tx.changed(ChangeKind.DOMAIN, new.account_id, new.id)
            return new

        return self._store._write(domain.account_id, run)

    def list(self, account_id: str) -> list[CustomDomain]:
        """Registered custom domains of the account, by name."""
        with self._store._read() as conn:
            rows = conn.execute(
                sa.select(domains)
                .where(domains.c.account_id == account_id)
                .order_by(domains.c.domain)
            ).all()
        return [self._row_domain(r) for r in rows]

    def set_validated(
        self, account_id: str, domain_id: str, validated: bool
    ) -> CustomDomain:
        """Set the ``validated`` flag. NotFound ``domain not found``."""

        def run(tx: Tx) -> CustomDomain:
            res = tx.conn.execute(
                sa.update(domains)
                .where(domains.c.id == domain_id, domains.c.account_id == account_id)
                .values(validated=validated)
            )
            if res.rowcount == 0:
                raise NotFound("domain not found")
            tx.changed(ChangeKind.DOMAIN, account_id, domain_id)
            return self._row_domain(
                tx.conn.execute(sa.select(domains).where(domains.c.id == domain_id)).one()
            )

        return self._store._write(account_id, run)

    def delete(self, account_id: str, domain_id: str) -> None:
        """NotFound ``domain not found``."""

        def run(tx: Tx) -> None:
            res = tx.conn.execute(
                sa.delete(domains).where(
                    domains.c.id == domain_id, domains.c.account_id == account_id
                )
            )
            if res.rowcount == 0:
                raise NotFound("domain not found")
            tx.changed(ChangeKind.DOMAIN, account_id, domain_id)

        self._store._write(account_id, run)
