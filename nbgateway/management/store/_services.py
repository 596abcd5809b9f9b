"""Store part: the service repository (``store.services``).

:class:`ServiceRepository`: services of an account with their targets
(loaded in bulk, peer target hosts resolved to tunnel addresses), their
creation and full replacement, L4 port assignment, identity-assertion keys,
machine-client tokens, mTLS client certificates, proxy session revocation
and the gateways' status reports. How a service is stored is in
:mod:`._servicerows`; the cluster a domain derives is in :mod:`._domains`,
whose :class:`DomainRepository` (``store.domains``) is re-exported here.

Create/update run the pure validation first, then the account-level checks
(upstream's "manager-level" checks), all inside one serialised write transaction, so a
rejected request stores nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import assertionkeys, clientcerts, l4ports, servicetokens
from nbgateway.management.errors import Conflict, NotFound, PermissionDenied, ValidationError
from nbgateway.management.model import (
    ChangeKind,
    Service,
    ServiceMeta,
    ServiceStatus,
    Target,
    new_id,
    utcnow,
)
from nbgateway.management.store import _quotas, _secrets
from nbgateway.management.store._base import Repository, Tx, dumps
from nbgateway.management.store._domains import (
    DomainRepository,
    cluster_for_domain,
    foreign_domain_over,
    lock_names,
)
from nbgateway.management.store._servicerows import (
    hash_new_secrets,
    insert_targets,
    row_service,
    row_target,
    service_values,
)
from nbgateway.management.store._statusreports import (
    StatusReport,
    apply_status_reports,
    clean_status_message,
)
from nbgateway.management.store.schema import peers, services, targets
from nbgateway.management.validation import go_quote, validate_service

__all__ = ["L4_PORT_RANGE", "DomainRepository", "ServiceRepository"]

L4_PORT_RANGE = (10000, 65535)


class ServiceRepository(Repository):
    """Services of an account: targets, auth and restrictions, port assignment, cluster derivation.

    Reached as ``store.services``."""

    # --- loading ------------------------------------------------------------------

    def _load_services(
        self, conn: Connection, where: sa.ColumnElement[bool], limit: int | None = None
    ) -> list[Service]:
        q = sa.select(services).where(where).order_by(services.c.id)
        if limit is not None:
            q = q.limit(limit)
        rows = conn.execute(q).all()
        if not rows:
            return []
        by_service: dict[str, list[Target]] = {r.id: [] for r in rows}
        ids = list(by_service)
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            q = (
                sa.select(targets)
                .where(targets.c.service_id.in_(chunk))
                .order_by(targets.c.service_id, targets.c.position, targets.c.id)
            )
            for t in conn.execute(q):
                by_service[t.service_id].append(row_target(t))
        memo: dict[tuple[str, str | None], Any] = {}
        return [row_service(r, by_service[r.id], memo) for r in rows]

    def _require_service(self, conn: Connection, account_id: str, service_id: str) -> Service:
        found = self._load_services(
            conn, sa.and_(services.c.id == service_id, services.c.account_id == account_id)
        )
        if not found:
            raise NotFound("service not found")
        return found[0]

    def _require_live_service(
        self, conn: Connection, account_id: str, service_id: str
    ) -> Service:
        """:meth:`_require_service`; PermissionDenied ``service is terminated and
        cannot be updated`` for a terminated one (it is read-only)."""
        found = self._require_service(conn, account_id, service_id)
        if found.terminated:
            raise PermissionDenied("service is terminated and cannot be updated")
        return found

    def get(self, account_id: str, service_id: str) -> Service:
        """NotFound ``service not found``."""
        with self._store._read() as conn:
            return self._require_service(conn, account_id, service_id)

    def list(
        self, account_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[Service]:
        """All services of the account with their targets, by id; ``after``/``limit``:
        the page of at most ``limit`` services whose id sorts after ``after``."""
        cond = services.c.account_id == account_id
        if after is not None:
            cond = sa.and_(cond, services.c.id > after)
        with self._store._read() as conn:
            return self._load_services(conn, cond, limit)

    def list_all(self) -> list[Service]:
        """Every service of every account (snapshot source for shared proxies)."""
        with self._store._read() as conn:
            return self._load_services(conn, sa.true())

    def get_by_domain(self, domain: str) -> Service | None:
        """Installation-wide lookup; hostnames are case-insensitive, so the query is
        lower-cased with one trailing dot removed (stored domains are normalised)."""
        domain = domain.lower()
        if domain.endswith("."):
            domain = domain[:-1]
        with self._store._read() as conn:
            found = self._load_services(conn, services.c.domain == domain)
        return found[0] if found else None

    def list_for_cluster(
        self, cluster_address: str, *, account_id: str | None = None
    ) -> list[Service]:
        """Services whose ``proxy_cluster`` is the address (optionally one account)."""
        cond = services.c.proxy_cluster == cluster_address
        if account_id is not None:
            cond = sa.and_(cond, services.c.account_id == account_id)
        with self._store._read() as conn:
            return self._load_services(conn, cond)

    def resolve_target_hosts(self, service: Service) -> Service:
        """Copy of ``service`` with ``peer`` target hosts replaced by the peer's
        tunnel IPv4 (``unknown`` when the peer is gone); other types unchanged."""
        return self.resolve_services_target_hosts([service])[0]

    def resolve_services_target_hosts(self, services_: Sequence[Service]) -> list[Service]:
        """Batched :meth:`resolve_target_hosts` (one read transaction for all)."""
        wanted: dict[str, set[str]] = {}
        for s in services_:
            for t in s.targets:
                if t.target_type == "peer":
                    wanted.setdefault(s.account_id, set()).add(t.target_id)
        if not wanted:
            return list(services_)
        ips: dict[tuple[str, str], str] = {}
        with self._store._read() as conn:
            for account_id, ids in wanted.items():
                id_list = sorted(ids)
                for i in range(0, len(id_list), 500):
                    q = sa.select(peers.c.id, peers.c.ip).where(
                        peers.c.account_id == account_id, peers.c.id.in_(id_list[i : i + 500])
                    )
                    for pid, ip in conn.execute(q):
                        ips[(account_id, pid)] = ip
        out = []
        for s in services_:
            if any(t.target_type == "peer" for t in s.targets):
                s = dataclasses.replace(
                    s,
                    targets=tuple(
                        dataclasses.replace(t, host=ips.get((s.account_id, t.target_id), "unknown"))
                        if t.target_type == "peer"
                        else t
                        for t in s.targets
                    ),
                )
            out.append(s)
        return out

    # --- cluster derivation ---------------------------------------------------------

    def _derive_cluster(self, conn: Connection, account_id: str, domain: str, now: datetime) -> str:
        return cluster_for_domain(conn, self._store.known_clusters, account_id, domain, now)

    def derive_cluster(self, account_id: str, domain: str, *, now: datetime | None = None) -> str:
        """Cluster serving ``domain``: an active/known cluster address equal to or a
        parent of it, else the longest registered custom domain's target.
        PreconditionFailed ``could not derive cluster from domain <d>: ...``."""
        with self._store._read() as conn:
            return self._derive_cluster(conn, account_id, domain, now or utcnow())

    # --- account-level checks ----------------------------------------------------------

    def _check_service_refs(self, conn: Connection, s: Service) -> None:
        if s.access_groups:
            self._store.groups._check_group_ids(conn, s.account_id, s.access_groups, "access group")
        if s.auth.bearer_auth is not None:
            self._store.groups._check_group_ids(
                conn, s.account_id, s.auth.bearer_auth.distribution_groups, "distribution group"
            )
        for t in s.targets:
            if t.target_type == "peer":
                found = conn.execute(
                    sa.select(peers.c.id).where(
                        peers.c.id == t.target_id, peers.c.account_id == s.account_id
                    )
                ).first()
                if found is None:
                    raise ValidationError(
                        f"peer target {go_quote(t.target_id)} not found in account"
                    )
            elif t.target_type == "cluster" and not t.options.direct_upstream:
                raise ValidationError(f"cluster target {t.host} has direct upstream disabled")

    def _check_domain_free(self, conn: Connection, account_id: str, domain: str,
                           own_id: str | None) -> None:
        """Conflict ``domain already taken`` for another service's domain, and for
        a domain at or under another account's custom domain (whatever cluster
        the name derives to: e.g. a parent address announced by the account's
        own gateway)."""
        row = conn.execute(sa.select(services.c.id).where(services.c.domain == domain)).first()
        if row is not None and row.id != own_id:
            raise Conflict("domain already taken")
        if foreign_domain_over(conn, account_id, domain) is not None:
            raise Conflict("domain already taken")

    def _assign_port(self, conn: Connection, s: Service, own_id: str | None) -> Service:
        """The service's L4 port: a chosen one must be free on the cluster (per
        mode; a public one among the cluster's public services, a private one
        among its account's private services) and, for a public service,
        inside the public L4 ports of every
        active gateway of the cluster that advertised them (ValidationError,
        422, naming them); port 0 of a public TCP/UDP service is assigned inside
        them (a kept auto-assigned port they no longer allow is assigned anew).
        A private service's port is on the tunnel address: not checked."""
        if s.mode not in ("tcp", "udp", "tls"):
            return s
        limits = ([] if s.private else
                  self._store.proxies.l4_port_limits(conn, s.proxy_cluster, s.account_id))
        if s.mode == "tls":
            if s.listen_port:
                self._check_public_port(s, limits)
            return s
        # a public port is the gateway host's (every account's); a private one is
        # on the account's own tunnel address (the gateway's private routers are
        # keyed by account and port): only that account's private services count
        private = sa.func.coalesce(services.c.private, sa.false())
        q = sa.select(services.c.id, services.c.listen_port).where(
            services.c.proxy_cluster == s.proxy_cluster, services.c.mode == s.mode,
            sa.and_(private, services.c.account_id == s.account_id) if s.private
            else sa.not_(private),
        )
        used = {port for sid, port in conn.execute(q) if sid != own_id}
        if s.listen_port and s.port_auto_assigned and limits and l4ports.refusal(
                s.mode, s.listen_port, s.proxy_cluster, limits):
            s = dataclasses.replace(s, listen_port=0)
        if s.listen_port:
            if s.listen_port in used:
                raise Conflict(
                    f"port {s.listen_port} is already in use by another {s.mode} service "
                    f"on cluster {s.proxy_cluster}"
                )
            self._check_public_port(s, limits)
            return s
        if limits:
            port = l4ports.pick_port(used, (L4_PORT_RANGE[0], L4_PORT_RANGE[1] - 1), limits)
            if port is not None:
                return dataclasses.replace(s, listen_port=port, port_auto_assigned=True)
            common = l4ports.common_ranges(limits)
            if not common:
                each = "; ".join(l4ports.format_ranges(g.ranges) or "none" for g in limits)
                raise ValidationError(f"cluster {s.proxy_cluster}'s gateways allow no common "
                                      f"public L4 port (theirs: {each})")
            raise Conflict(f"no free {s.mode} port left on cluster {s.proxy_cluster} inside "
                           f"its gateways' public L4 ports ({l4ports.format_ranges(common)})")
        for port in range(*L4_PORT_RANGE):
            if port not in used:
                return dataclasses.replace(s, listen_port=port, port_auto_assigned=True)
        raise Conflict(f"no free {s.mode} port left on cluster {s.proxy_cluster}")

    @staticmethod
    def _check_public_port(s: Service, limits: Sequence[l4ports.GatewayPorts]) -> None:
        message = l4ports.refusal(s.mode, s.listen_port, s.proxy_cluster, limits)
        if message is not None:
            raise ValidationError(message)

    def _check_sizes(self, new: Service, old: Service | None) -> None:
        """The per-service quotas (targets, access groups, bearer distribution
        groups): QuotaExceeded when ``new`` grows one past its limit (an update
        keeping or shrinking a service over a lowered limit passes)."""
        quotas = self._store.quotas

        def sizes(s: Service | None) -> tuple[int, int, int]:
            if s is None:
                return 0, 0, 0
            return (len(s.targets), len(s.access_groups or ()),
                    len(s.auth.bearer_auth.distribution_groups) if s.auth.bearer_auth else 0)

        now, before = sizes(new), sizes(old)
        for name, have, want in (("service-targets", before[0], now[0]),
                                 ("service-groups", before[1], now[1]),
                                 ("service-groups", before[2], now[2])):
            quotas.check(name, have, want - have)

    # --- writes -------------------------------------------------------------------------

    def create(self, service: Service) -> Service:
        """Validate and create a service.

        Generates id, Ed25519 session key pair, ``meta.created_at`` and status
        ``pending``; derives ``proxy_cluster`` from the domain (PreconditionFailed
        ``could not derive cluster from domain <d>: ...``); hashes secrets;
        rejects unknown access/distribution groups and unknown peer targets
        (ValidationError); Conflict ``domain already taken``.
        """
        s = validate_service(service)
        assertionkeys.validate(s.assertion_mode, s.max_session_age_seconds)

        def run(tx: Tx) -> Service:
            conn = tx.conn
            self._store.accounts.require(conn, s.account_id)
            self._check_sizes(s, None)
            quotas = self._store.quotas
            _quotas.enforce(conn, quotas, "services", s.account_id)
            if (s.mode or "http") != "http":
                _quotas.enforce(conn, quotas, "l4-services", s.account_id)
            now = utcnow()
            cluster = self._derive_cluster(conn, s.account_id, s.domain, now)
            new = dataclasses.replace(s, proxy_cluster=cluster)
            self._check_service_refs(conn, new)
            lock_names(conn)  # another account's claim in flight: wait for its commit
            self._check_domain_free(conn, new.account_id, new.domain, None)
            new = self._assign_port(conn, new, None)
            priv, pub = _secrets.generate_session_keys()
            new = dataclasses.replace(
                new,
                id=new.id or new_id(),
                auth=hash_new_secrets(new.auth, None, creating=True),
                meta=ServiceMeta(created_at=now, status=ServiceStatus.PENDING),
                session_private_key=priv,
                session_public_key=pub,
                assertion_keys=assertionkeys.ensure((), now.timestamp()),
                terminated=False,
            )
            if conn.execute(sa.select(services.c.id).where(services.c.id == new.id)).first():
                raise Conflict("service already exists")
            conn.execute(sa.insert(services).values(id=new.id, **service_values(new)))
            insert_targets(conn, new)
            tx.changed(ChangeKind.SERVICE_CREATED, new.account_id, new.id)
            return self._require_service(conn, new.account_id, new.id)

        return self._store._write(s.account_id, run)

    def update(self, service: Service) -> Service:
        """Full replace (PUT) of ``service.id``: keeps id, account, session keys and
        meta; an empty secret keeps the stored hash. NotFound, PermissionDenied
        ``service is terminated and cannot be updated``, ValidationError ``cannot
        change mode from %q to %q``, plus the create checks."""

        def run(tx: Tx) -> Service:
            conn = tx.conn
            old = self._require_live_service(conn, service.account_id, service.id)
            old_mode, new_mode = old.mode or "http", service.mode or "http"
            if old_mode != new_mode:
                raise ValidationError(
                    f"cannot change mode from {go_quote(old.mode)} to {go_quote(service.mode)}"
                )
            s = validate_service(service)
            assertionkeys.validate(s.assertion_mode, s.max_session_age_seconds)
            self._check_sizes(s, old)
            now = utcnow()
            cluster = self._derive_cluster(conn, s.account_id, s.domain, now)
            new = dataclasses.replace(s, proxy_cluster=cluster)
            self._check_service_refs(conn, new)
            if new.domain != old.domain:
                lock_names(conn)  # as in create: a claim of a new name only
            self._check_domain_free(conn, new.account_id, new.domain, old.id)
            if new.mode in ("tcp", "udp") and not service.listen_port and old.port_auto_assigned:
                new = dataclasses.replace(new, listen_port=old.listen_port, port_auto_assigned=True)
            new = self._assign_port(conn, new, old.id)
            new = dataclasses.replace(
                new,
                auth=hash_new_secrets(new.auth, old.auth, creating=False),
                meta=old.meta,
                session_private_key=old.session_private_key,
                session_public_key=old.session_public_key,
                assertion_keys=assertionkeys.ensure(old.assertion_keys, now.timestamp()),
                source=old.source,
                source_peer=old.source_peer,
                terminated=old.terminated,
            )
            values = service_values(new)
            if new.auth != old.auth:
                # a secret rotated, a way in added or removed, SSO groups
                # changed: the service's nb_session cookies were minted under
                # the old rules, so each re-authenticates (gateways refuse
                # cookies issued before this from the next mapping update)
                values["sessions_not_before"] = int(now.timestamp()) + 1
            conn.execute(sa.update(services).where(services.c.id == old.id).values(**values))
            conn.execute(sa.delete(targets).where(targets.c.service_id == old.id))
            insert_targets(conn, new)
            tx.changed(ChangeKind.SERVICE_UPDATED, new.account_id, new.id)
            return self._require_service(conn, new.account_id, new.id)

        return self._store._write(service.account_id, run)

    def rotate_assertion_key(self, account_id: str, service_id: str,
                             now: datetime | None = None) -> Service:
        """A new signing key for the service's identity assertions; the old one
        stays published until its last token expired (assertionkeys.rotate).
        NotFound ``service <id> not found``."""

        def run(tx: Tx) -> Service:
            old = self._require_service(tx.conn, account_id, service_id)
            keys = assertionkeys.rotate(old.assertion_keys, (now or utcnow()).timestamp())
            self._set_columns(tx, old, assertion_keys=dumps(assertionkeys.to_json(keys)))
            return self._require_service(tx.conn, account_id, old.id)

        return self._store._write(account_id, run)

    def create_token(self, account_id: str, service_id: str, name: str, expires_in: int,
                     now: datetime | None = None) -> tuple[Service, Any, str]:
        """A new machine-client token: (service, record, secret shown once).
        NotFound ``service <id> not found``; Conflict (too many, name taken)."""
        ts = (now or utcnow()).timestamp()

        def run(tx: Tx) -> tuple[Service, Any, str]:
            old = self._require_live_service(tx.conn, account_id, service_id)
            kept, rec, secret = servicetokens.create(old.service_tokens, name, expires_in, ts)
            self._write_tokens(tx, old, kept)
            return self._require_service(tx.conn, account_id, old.id), rec, secret

        return self._store._write(account_id, run)

    def revoke_token(self, account_id: str, service_id: str, token_id: str,
                     now: datetime | None = None) -> Any:
        """Revoke a token (its gateways drop it with the next mapping update).
        NotFound for the service or the token."""
        ts = (now or utcnow()).timestamp()

        def run(tx: Tx) -> Any:
            old = self._require_service(tx.conn, account_id, service_id)
            kept, rec = servicetokens.revoke(old.service_tokens, token_id, ts)
            self._write_tokens(tx, old, kept)
            return rec

        return self._store._write(account_id, run)

    @staticmethod
    def revoke_sessions_in(tx: Tx, account_id: str, now: float | None = None) -> None:
        """Inside a write: every ``nb_session`` cookie of the account's services
        issued up to now is refused from the next mapping update on (a user
        blocked or deleted, a group deleted or its members changed).  Coarse
        on purpose: the cookie carries the groups it was minted with, so every
        session of the account re-authenticates rather than one surviving."""
        cutoff = int(time.time() if now is None else now) + 1
        ids = sorted(tx.conn.execute(sa.select(services.c.id).where(
            services.c.account_id == account_id)).scalars())
        if not ids:
            return
        tx.conn.execute(sa.update(services).where(services.c.account_id == account_id)
                        .values(sessions_not_before=cutoff))
        tx.changed(ChangeKind.SERVICE_UPDATED, account_id, *ids)

    def set_client_cert_auth(self, account_id: str, service_id: str,
                             auth: clientcerts.ClientCertAuth | None) -> Service:
        """Set (or clear, None) the service's mTLS client CA and user
        mapping; its gateways get it with the next mapping update.  NotFound
        ``service <id> not found``; PermissionDenied for a terminated one."""

        def run(tx: Tx) -> Service:
            old = self._require_live_service(tx.conn, account_id, service_id)
            if auth is not None and (old.mode or "http") != "http":
                raise ValidationError("client certificates apply to HTTP services only")
            if auth is not None and old.private:
                raise ValidationError("client certificates apply to non-private services "
                                      "(a private service's credential is the tunnel)")
            self._set_columns(
                tx, old, client_cert_auth=dumps(auth.to_json()) if auth is not None else None)
            return self._require_service(tx.conn, account_id, old.id)

        return self._store._write(account_id, run)

    def resolve_client_cert_rows(self, services_: Sequence[Service]) -> list[Service]:
        """Services with ``client_cert_rows`` filled from their accounts'
        users and groups (only those with client certificates are touched)."""
        accounts = sorted({s.account_id for s in services_ if s.client_cert_auth is not None})
        if not accounts:
            return list(services_)
        data = {}
        for account_id in accounts:
            users = self._store.users.list(account_id)
            names = {g.id: g.name for g in self._store.groups.list(account_id)}
            data[account_id] = (users, names)
        return [dataclasses.replace(s, client_cert_rows=clientcerts.resolve_rows(
                    s.client_cert_auth, *data[s.account_id]))
                if s.client_cert_auth is not None else s for s in services_]

    @staticmethod
    def client_cert_users_changed_in(tx: Tx, account_id: str) -> None:
        """Inside a write: a user of the account was created or changed, so
        the services with client certificates re-resolve their certificate
        -> user table (mapping streams send it only if it changed)."""
        ids = sorted(tx.conn.execute(sa.select(services.c.id).where(
            services.c.account_id == account_id,
            services.c.client_cert_auth.is_not(None))).scalars())
        if ids:
            tx.changed(ChangeKind.SERVICE_UPDATED, account_id, *ids)

    @staticmethod
    def _write_tokens(tx: Tx, old: Service, kept: Sequence[Any]) -> None:
        ServiceRepository._set_columns(
            tx, old, service_tokens=dumps(servicetokens.to_json(kept)) if kept else None)

    @staticmethod
    def _set_columns(tx: Tx, old: Service, **values: Any) -> None:
        """Write some columns of one service and announce it (SERVICE_UPDATED)."""
        tx.conn.execute(sa.update(services).where(services.c.id == old.id).values(**values))
        tx.changed(ChangeKind.SERVICE_UPDATED, old.account_id, old.id)

    def set_status(
        self,
        account_id: str,
        service_id: str,
        status: str,
        *,
        certificate_issued: bool = False,
        message: str = "",
        now: datetime | None = None,
    ) -> Service:
        """Set ``meta.status`` (and ``certificate_issued_at`` when issued) and the
        gateway's ``message`` (kept at most :data:`MAX_STATUS_MESSAGE` characters,
        control characters replaced; "" clears it). NotFound ``service <id> not
        found``."""
        if status not in set(ServiceStatus):
            status = ServiceStatus.ERROR
        message = clean_status_message(message)

        def run(tx: Tx) -> Service:
            values: dict = {
                "meta_status": str(status),
                "meta_status_message": message or None,
                "meta_status_updated_at": now or utcnow(),
            }
            if certificate_issued:
                values["meta_certificate_issued_at"] = now or utcnow()
            res = tx.conn.execute(
                sa.update(services)
                .where(services.c.id == service_id, services.c.account_id == account_id)
                .values(**values)
            )
            if res.rowcount == 0:
                raise NotFound(f"service {service_id} not found")
            tx.changed(ChangeKind.SERVICE_STATUS, account_id, service_id)
            return self._require_service(tx.conn, account_id, service_id)

        return self._store._write(account_id, run)

    def apply_status_reports(self, reports: Sequence[StatusReport],
                             now: datetime | None = None) -> list[Exception | None]:
        """Many gateway status reports in one write transaction, latest per
        service winning, unchanged statuses not written; one result per report
        (None or its error). See :mod:`._statusreports`."""
        return apply_status_reports(self._store, reports, now)

    def delete(self, account_id: str, service_id: str) -> Service:
        """Delete a service and its targets; returns what was deleted."""

        def run(tx: Tx) -> Service:
            old = self._require_service(tx.conn, account_id, service_id)
            tx.conn.execute(sa.delete(targets).where(targets.c.service_id == service_id))
            tx.conn.execute(sa.delete(services).where(services.c.id == service_id))
            tx.changed(ChangeKind.SERVICE_DELETED, account_id, service_id)
            return old

        return self._store._write(account_id, run)
