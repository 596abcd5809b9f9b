"""Store part: the domain repository (``store.domains``) and cluster derivation.

:class:`DomainRepository`: an account's custom domains (name normalised:
lower case, no trailing dot) with their target cluster and validation state.
:func:`cluster_for_domain`: which cluster serves a service's domain, from
the active or known cluster addresses and the account's custom domains (a
service's ``proxy_cluster`` is derived, never chosen).
:func:`foreign_own_cluster`: a custom domain may target a shared cluster, a
known one or the account's own (BYOP), never another account's own cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management.errors import Conflict, NotFound, PreconditionFailed, ValidationError
from nbgateway.management.model import ChangeKind, CustomDomain, new_id
from nbgateway.management.store import _quotas
from nbgateway.management.store._base import _XACT_LOCK, Repository, Tx, _lock_key
from nbgateway.management.store._proxies import ACTIVE_WINDOW
from nbgateway.management.store.schema import domains, proxies, services
from nbgateway.management.validation import go_quote, normalise_domain

#: the answer when a name is (under) another account's: one text for every case
DOMAIN_IN_USE = "domain overlaps a domain in use by another account"


#: one PostgreSQL advisory lock for every claim of a name (custom domains and
#: service domains, whatever the account): a write transaction is otherwise
#: serialised only with its own account's, and two accounts' overlapping
#: claims (``x.test`` and ``app.x.test``) would both pass their checks.
#: Taken after the account's lock (never before it): no lock-order cycle.
_NAMES_LOCK = _lock_key("names")


def lock_names(conn: Connection) -> None:
    """Wait for other accounts' name claims in flight (PostgreSQL; SQLite
    has one writer at a time), so a claim's checks see them committed."""
    if conn.dialect.name == "postgresql":
        _XACT_LOCK.run(conn, key=_NAMES_LOCK)


def self_and_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, b.c, c]``: the names a domain lies under (and itself)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def foreign_domain_over(conn: Connection, account_id: str, name: str) -> str | None:
    """Another account's custom domain equal to ``name`` or a parent of it, if any:
    a hostname under a registered custom domain belongs to that domain's account."""
    return conn.execute(
        sa.select(domains.c.domain).where(
            domains.c.domain.in_(self_and_parents(name)), domains.c.account_id != account_id
        ).limit(1)
    ).scalar()


def _at_or_under(column: sa.Column, name: str) -> sa.ColumnElement[bool]:
    return sa.or_(column == name, column.endswith("." + name, autoescape=True))


def check_domain_claim(
    conn: Connection, known_clusters: Sequence[str], account_id: str, name: str
) -> None:
    """Conflict unless ``account_id`` may register the custom domain ``name``: no
    other account's custom domain is equal to, a parent of or under it, no other
    account's service lies at or under it, and it neither covers nor lies under
    the address of a shared cluster (a management-wide gateway's or a known
    cluster: its names are everyone's, first come first served, one service at
    a time). Another account's own (BYOP) gateway address claims nothing: it
    announces any name it likes, and it would otherwise block every custom
    domain under ``com``; that account registers a custom domain to hold names."""
    if conn.execute(sa.select(domains.c.id).where(domains.c.domain == name)).first():
        raise Conflict("domain already exists")
    if foreign_domain_over(conn, account_id, name) is not None:
        raise Conflict(DOMAIN_IN_USE)
    for table in (domains, services):  # another account's name at or under it
        if conn.execute(
            sa.select(table.c.id).where(
                table.c.account_id != account_id, _at_or_under(table.c.domain, name)
            ).limit(1)
        ).first():
            raise Conflict(DOMAIN_IN_USE)
    above = self_and_parents(name)
    if any(c in above or c.endswith("." + name) for c in known_clusters) or conn.execute(
        sa.select(proxies.c.id).where(
            proxies.c.account_id.is_(None),
            sa.or_(_at_or_under(proxies.c.cluster_address, name),
                   proxies.c.cluster_address.in_(above)),
        ).limit(1)
    ).first():
        raise Conflict("domain overlaps the address of a cluster shared with other accounts")


def foreign_own_cluster(
    conn: Connection, known_clusters: Sequence[str], account_id: str, address: str
) -> bool:
    """Is ``address`` another account's own (BYOP) cluster: announced only by
    gateways with another account's token, by no shared gateway, no gateway
    of ``account_id`` and no ``known_clusters`` entry?  Such a cluster serves
    only its account, so no other account may target it."""
    if address in known_clusters:
        return False
    owners = set(conn.execute(
        sa.select(proxies.c.account_id).where(proxies.c.cluster_address == address).distinct()
    ).scalars())
    return bool(owners) and None not in owners and account_id not in owners


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
        if foreign_own_cluster(conn, known_clusters, account_id, target):
            # a custom domain registered before such targets were refused
            raise PreconditionFailed(
                f"could not derive cluster from domain {domain}: the custom domain {match} "
                f"targets {target}, another account's own cluster")
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
        """Register a custom domain: a DNS hostname of two labels or more.
        Conflict ``domain already exists``, or when it overlaps another
        account's domains, services or clusters (:func:`check_domain_claim`);
        ValidationError when ``target_cluster`` is another account's own
        (BYOP) cluster (:func:`foreign_own_cluster`)."""

        def run(tx: Tx) -> CustomDomain:
            conn = tx.conn
            self._store.accounts.require(conn, domain.account_id)
            name = normalise_domain(domain.domain.strip())
            if "." not in name:
                raise ValidationError(f"invalid domain {go_quote(domain.domain)}: "
                                      "a custom domain has two labels or more")
            if not domain.target_cluster:
                raise ValidationError("target_cluster is required")
            lock_names(conn)
            check_domain_claim(conn, self._store.known_clusters, domain.account_id, name)
            if foreign_own_cluster(conn, self._store.known_clusters, domain.account_id,
                                   domain.target_cluster):
                raise ValidationError(
                    f"target_cluster {go_quote(domain.target_cluster)} is another account's "
                    "own cluster: it serves only that account")
            _quotas.enforce(conn, self._store.quotas, "domains", domain.account_id)
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
