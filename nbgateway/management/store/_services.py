"""Store part: the service and domain repositories.

:class:`ServiceRepository` (``store.services``: services and targets, port
assignment, cluster derivation) and :class:`DomainRepository`
(``store.domains``: custom domains).

Create/update run the pure validation first, then the account-level checks
(upstream's "manager-level" checks), all inside one serialised write transaction, so a
rejected request stores nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import assertionkeys, clientcerts, servicetokens
from nbgateway.management.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ValidationError,
)
from nbgateway.management.model import (
    AccessRestrictions,
    AuthConfig,
    BearerAuth,
    ChangeKind,
    CustomDomain,
    HeaderAuth,
    LoadBalancing,
    PasswordAuth,
    PinAuth,
    Service,
    ServiceMeta,
    ServiceStatus,
    Target,
    TargetOptions,
    new_id,
    utcnow,
)
from nbgateway.management.store import _secrets
from nbgateway.management.store._base import Repository, Tx, dumps, loads
from nbgateway.management.store._statusreports import (
    StatusReport,
    apply_status_reports,
    clean_status_message,
)
from nbgateway.management.store.schema import domains, peers, proxies, services, targets
from nbgateway.management.validation import go_quote, validate_service

ACTIVE_WINDOW = timedelta(minutes=2)
L4_PORT_RANGE = (10000, 65535)


# --- (de)serialisation of JSON columns -------------------------------------------


def auth_to_json(a: AuthConfig) -> dict:
    out: dict = {}
    if a.password_auth is not None:
        out["password_auth"] = {
            "enabled": a.password_auth.enabled,
            "password": a.password_auth.password,
        }
    if a.pin_auth is not None:
        out["pin_auth"] = {"enabled": a.pin_auth.enabled, "pin": a.pin_auth.pin}
    if a.bearer_auth is not None:
        out["bearer_auth"] = {
            "enabled": a.bearer_auth.enabled,
            "distribution_groups": list(a.bearer_auth.distribution_groups),
        }
    if a.header_auths:
        out["header_auths"] = [
            {"enabled": h.enabled, "header": h.header, "value": h.value} for h in a.header_auths
        ]
    return out


def auth_from_json(d: dict | None) -> AuthConfig:
    d = d or {}
    pw, pin, bearer = d.get("password_auth"), d.get("pin_auth"), d.get("bearer_auth")
    return AuthConfig(
        password_auth=PasswordAuth(bool(pw.get("enabled")), pw.get("password") or "")
        if pw is not None
        else None,
        pin_auth=PinAuth(bool(pin.get("enabled")), pin.get("pin") or "")
        if pin is not None
        else None,
        bearer_auth=BearerAuth(
            bool(bearer.get("enabled")), tuple(bearer.get("distribution_groups") or ())
        )
        if bearer is not None
        else None,
        header_auths=tuple(
            HeaderAuth(bool(h.get("enabled")), h.get("header") or "", h.get("value") or "")
            for h in d.get("header_auths") or ()
        ),
    )


def restrictions_to_json(r: AccessRestrictions) -> dict | None:
    if r.is_empty():
        return None
    return {
        "allowed_cidrs": list(r.allowed_cidrs),
        "blocked_cidrs": list(r.blocked_cidrs),
        "allowed_countries": list(r.allowed_countries),
        "blocked_countries": list(r.blocked_countries),
        "crowdsec_mode": r.crowdsec_mode,
    }


def restrictions_from_json(d: dict | None) -> AccessRestrictions:
    d = d or {}
    return AccessRestrictions(
        allowed_cidrs=tuple(d.get("allowed_cidrs") or ()),
        blocked_cidrs=tuple(d.get("blocked_cidrs") or ()),
        allowed_countries=tuple(d.get("allowed_countries") or ()),
        blocked_countries=tuple(d.get("blocked_countries") or ()),
        crowdsec_mode=d.get("crowdsec_mode") or "",
    )


def row_target(r: sa.Row) -> Target:
    return Target(
        id=r.id,
        path=r.path,
        host=r.host,
        port=r.port,
        protocol=r.protocol,
        target_id=r.target_id,
        target_type=r.target_type,
        enabled=bool(r.enabled),
        proxy_protocol=bool(r.proxy_protocol),
        options=TargetOptions(
            skip_tls_verify=bool(r.skip_tls_verify),
            request_timeout=r.request_timeout,
            session_idle_timeout=r.session_idle_timeout,
            path_rewrite=r.path_rewrite,
            custom_headers=loads(r.custom_headers) or {},
            direct_upstream=bool(r.direct_upstream),
            upstream_protocol=r.upstream_protocol or "",
        ),
    )


#: column -> decoder of its stored JSON into an immutable model value
_JSON_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "auth": auth_from_json,
    "restrictions": restrictions_from_json,
    "access_groups": lambda ag: tuple(ag) if ag is not None else None,
    "assertion_keys": assertionkeys.from_json,
    "service_tokens": servicetokens.from_json,
    "load_balancing": lambda d: _lb_from_json(d),
    "client_cert_auth": clientcerts.ClientCertAuth.from_json,
}


def _decoded(memo: dict[tuple[str, str | None], Any] | None, column: str,
             text: str | None) -> Any:
    """The model value of one JSON column. ``memo`` (one per bulk load) maps
    (column, stored text) to the decoded value: the values are immutable, so
    services sharing a configuration (same auth, restrictions, groups...)
    share one decoded object instead of parsing the same text again."""
    if memo is None:
        return _JSON_COLUMNS[column](loads(text))
    key = (column, text)
    try:
        return memo[key]
    except KeyError:
        value = memo[key] = _JSON_COLUMNS[column](loads(text))
        return value


def row_service(r: sa.Row, tgts: list[Target],
                memo: dict[tuple[str, str | None], Any] | None = None) -> Service:
    return Service(
        id=r.id,
        account_id=r.account_id,
        name=r.name,
        domain=r.domain,
        proxy_cluster=r.proxy_cluster,
        targets=tuple(tgts),
        enabled=bool(r.enabled),
        terminated=bool(r.terminated),
        pass_host_header=bool(r.pass_host_header),
        rewrite_redirects=bool(r.rewrite_redirects),
        auth=_decoded(memo, "auth", r.auth),
        restrictions=_decoded(memo, "restrictions", r.restrictions),
        meta=ServiceMeta(
            created_at=r.meta_created_at,
            certificate_issued_at=r.meta_certificate_issued_at,
            status=r.meta_status,
            last_renewed_at=r.meta_last_renewed_at,
            status_message=r.meta_status_message or "",
            status_updated_at=r.meta_status_updated_at,
        ),
        session_private_key=r.session_private_key,
        session_public_key=r.session_public_key,
        source=r.source,
        source_peer=r.source_peer,
        mode=r.mode,
        listen_port=r.listen_port,
        port_auto_assigned=bool(r.port_auto_assigned),
        private=bool(r.private),
        access_groups=_decoded(memo, "access_groups", r.access_groups),
        assertion_mode=r.assertion_mode or "off",
        assertion_keys=_decoded(memo, "assertion_keys", r.assertion_keys),
        max_session_age_seconds=r.max_session_age_seconds or 0,
        service_tokens=_decoded(memo, "service_tokens", r.service_tokens),
        sessions_not_before=r.sessions_not_before or 0,
        load_balancing=_decoded(memo, "load_balancing", r.load_balancing),
        client_cert_auth=_decoded(memo, "client_cert_auth", r.client_cert_auth),
    )


def _lb_from_json(data: Any) -> LoadBalancing:
    if not isinstance(data, dict):
        return LoadBalancing()
    known = {f.name for f in dataclasses.fields(LoadBalancing)}
    return LoadBalancing(**{k: v for k, v in data.items() if k in known})


def _lb_to_json(lb: LoadBalancing) -> str | None:
    return None if lb.is_default() else dumps(dataclasses.asdict(lb))


def _service_values(s: Service) -> dict:
    return {
        "account_id": s.account_id,
        "name": s.name,
        "domain": s.domain,
        "proxy_cluster": s.proxy_cluster,
        "enabled": s.enabled,
        "terminated": s.terminated,
        "pass_host_header": s.pass_host_header,
        "rewrite_redirects": s.rewrite_redirects,
        "auth": dumps(auth_to_json(s.auth)),
        "restrictions": dumps(restrictions_to_json(s.restrictions)),
        "meta_created_at": s.meta.created_at,
        "meta_certificate_issued_at": s.meta.certificate_issued_at,
        "meta_status": s.meta.status,
        "meta_last_renewed_at": s.meta.last_renewed_at,
        "meta_status_message": s.meta.status_message or None,
        "meta_status_updated_at": s.meta.status_updated_at,
        "session_private_key": s.session_private_key,
        "session_public_key": s.session_public_key,
        "source": s.source,
        "source_peer": s.source_peer,
        "mode": s.mode,
        "listen_port": s.listen_port,
        "port_auto_assigned": s.port_auto_assigned,
        "private": s.private,
        "access_groups": dumps(list(s.access_groups)) if s.access_groups is not None else None,
        "assertion_mode": s.assertion_mode if s.assertion_mode != "off" else None,
        "assertion_keys": dumps(assertionkeys.to_json(s.assertion_keys))
        if s.assertion_keys else None,
        "max_session_age_seconds": s.max_session_age_seconds or None,
        "load_balancing": _lb_to_json(s.load_balancing),
    }


def _hash_new_secrets(new: AuthConfig, old: AuthConfig | None, creating: bool) -> AuthConfig:
    """Hash submitted secrets; an empty secret on update keeps the stored hash."""
    pw, pin = new.password_auth, new.pin_auth
    if pw is not None:
        if pw.password:
            pw = dataclasses.replace(pw, password=_secrets.hash_secret(pw.password))
        elif old is not None and old.password_auth is not None:
            pw = dataclasses.replace(pw, password=old.password_auth.password)
        if pw.enabled and not pw.password:
            raise ValidationError("password_auth: password is required")
    if pin is not None:
        if pin.pin:
            pin = dataclasses.replace(pin, pin=_secrets.hash_secret(pin.pin))
        elif old is not None and old.pin_auth is not None:
            pin = dataclasses.replace(pin, pin=old.pin_auth.pin)
        if pin.enabled and not pin.pin:
            raise ValidationError("pin_auth: pin is required")
    headers = []
    old_headers = {h.header.lower(): h.value for h in (old.header_auths if old else ())}
    for i, h in enumerate(new.header_auths):
        if h.value:
            h = dataclasses.replace(h, value=_secrets.hash_secret(h.value))
        elif not creating and h.header.lower() in old_headers:
            h = dataclasses.replace(h, value=old_headers[h.header.lower()])
        if h.enabled and not h.value:
            raise ValidationError(f"header_auths[{i}]: value is required")
        headers.append(h)
    return dataclasses.replace(new, password_auth=pw, pin_auth=pin, header_auths=tuple(headers))


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

    def _active_clusters(self, conn: Connection, account_id: str, now: datetime) -> dict:
        q = sa.select(proxies.c.cluster_address, proxies.c.require_subdomain).where(
            sa.or_(proxies.c.account_id.is_(None), proxies.c.account_id == account_id),
            proxies.c.status == "connected",
            proxies.c.last_seen > now - ACTIVE_WINDOW,
        )
        out: dict[str, bool] = {addr: False for addr in self._store.known_clusters}
        for addr, req in conn.execute(q):
            out[addr] = out.get(addr, False) or bool(req)
        return out

    def _derive_cluster(self, conn: Connection, account_id: str, domain: str, now: datetime) -> str:
        clusters = self._active_clusters(conn, account_id, now)
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

    def _check_domain_free(self, conn: Connection, domain: str, own_id: str | None) -> None:
        row = conn.execute(sa.select(services.c.id).where(services.c.domain == domain)).first()
        if row is not None and row.id != own_id:
            raise Conflict("domain already taken")

    def _assign_port(self, conn: Connection, s: Service, own_id: str | None) -> Service:
        if s.mode not in ("tcp", "udp"):
            return s
        q = sa.select(services.c.id, services.c.listen_port).where(
            services.c.proxy_cluster == s.proxy_cluster, services.c.mode == s.mode
        )
        used = {port for sid, port in conn.execute(q) if sid != own_id}
        if s.listen_port:
            if s.listen_port in used:
                raise Conflict(
                    f"port {s.listen_port} is already in use by another {s.mode} service "
                    f"on cluster {s.proxy_cluster}"
                )
            return s
        for port in range(*L4_PORT_RANGE):
            if port not in used:
                return dataclasses.replace(s, listen_port=port, port_auto_assigned=True)
        raise Conflict(f"no free {s.mode} port left on cluster {s.proxy_cluster}")

    def _insert_targets(self, conn: Connection, s: Service) -> None:
        for pos, t in enumerate(s.targets):
            o = t.options
            conn.execute(
                sa.insert(targets).values(
                    account_id=s.account_id,
                    service_id=s.id,
                    position=pos,
                    path=t.path,
                    host=t.host,
                    port=t.port,
                    protocol=t.protocol,
                    target_id=t.target_id,
                    target_type=t.target_type,
                    enabled=t.enabled,
                    proxy_protocol=t.proxy_protocol,
                    skip_tls_verify=o.skip_tls_verify,
                    request_timeout=o.request_timeout,
                    session_idle_timeout=o.session_idle_timeout,
                    path_rewrite=o.path_rewrite,
                    custom_headers=dumps(dict(o.custom_headers)) if o.custom_headers else None,
                    direct_upstream=o.direct_upstream,
                    upstream_protocol=o.upstream_protocol or None,
                )
            )

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
            now = utcnow()
            cluster = self._derive_cluster(conn, s.account_id, s.domain, now)
            new = dataclasses.replace(s, proxy_cluster=cluster)
            self._check_service_refs(conn, new)
            self._check_domain_free(conn, new.domain, None)
            new = self._assign_port(conn, new, None)
            priv, pub = _secrets.generate_session_keys()
            new = dataclasses.replace(
                new,
                id=new.id or new_id(),
                auth=_hash_new_secrets(new.auth, None, creating=True),
                meta=ServiceMeta(created_at=now, status=ServiceStatus.PENDING),
                session_private_key=priv,
                session_public_key=pub,
                assertion_keys=assertionkeys.ensure((), now.timestamp()),
                terminated=False,
            )
            if conn.execute(sa.select(services.c.id).where(services.c.id == new.id)).first():
                raise Conflict("service already exists")
            conn.execute(sa.insert(services).values(id=new.id, **_service_values(new)))
            self._insert_targets(conn, new)
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
            old = self._require_service(conn, service.account_id, service.id)
            if old.terminated:
                raise PermissionDenied("service is terminated and cannot be updated")
            old_mode, new_mode = old.mode or "http", service.mode or "http"
            if old_mode != new_mode:
                raise ValidationError(
                    f"cannot change mode from {go_quote(old.mode)} to {go_quote(service.mode)}"
                )
            s = validate_service(service)
            assertionkeys.validate(s.assertion_mode, s.max_session_age_seconds)
            now = utcnow()
            cluster = self._derive_cluster(conn, s.account_id, s.domain, now)
            new = dataclasses.replace(s, proxy_cluster=cluster)
            self._check_service_refs(conn, new)
            self._check_domain_free(conn, new.domain, old.id)
            if new.mode in ("tcp", "udp") and not service.listen_port and old.port_auto_assigned:
                new = dataclasses.replace(new, listen_port=old.listen_port, port_auto_assigned=True)
            new = self._assign_port(conn, new, old.id)
            new = dataclasses.replace(
                new,
                auth=_hash_new_secrets(new.auth, old.auth, creating=False),
                meta=old.meta,
                session_private_key=old.session_private_key,
                session_public_key=old.session_public_key,
                assertion_keys=assertionkeys.ensure(old.assertion_keys, now.timestamp()),
                source=old.source,
                source_peer=old.source_peer,
                terminated=old.terminated,
            )
            conn.execute(
                sa.update(services).where(services.c.id == old.id).values(**_service_values(new))
            )
            conn.execute(sa.delete(targets).where(targets.c.service_id == old.id))
            self._insert_targets(conn, new)
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
            tx.conn.execute(sa.update(services).where(services.c.id == old.id).values(
                assertion_keys=dumps(assertionkeys.to_json(keys))))
            tx.changed(ChangeKind.SERVICE_UPDATED, account_id, old.id)
            return self._require_service(tx.conn, account_id, old.id)

        return self._store._write(account_id, run)

    def create_token(self, account_id: str, service_id: str, name: str, expires_in: int,
                     now: datetime | None = None) -> tuple[Service, Any, str]:
        """A new machine-client token: (service, record, secret shown once).
        NotFound ``service <id> not found``; Conflict (too many, name taken)."""
        ts = (now or utcnow()).timestamp()

        def run(tx: Tx) -> tuple[Service, Any, str]:
            old = self._require_service(tx.conn, account_id, service_id)
            if old.terminated:
                raise PermissionDenied("service is terminated and cannot be updated")
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
            old = self._require_service(tx.conn, account_id, service_id)
            if old.terminated:
                raise PermissionDenied("service is terminated and cannot be updated")
            if auth is not None and (old.mode or "http") != "http":
                raise ValidationError("client certificates apply to HTTP services only")
            if auth is not None and old.private:
                raise ValidationError("client certificates apply to non-private services "
                                      "(a private service's credential is the tunnel)")
            tx.conn.execute(sa.update(services).where(services.c.id == old.id).values(
                client_cert_auth=dumps(auth.to_json()) if auth is not None else None))
            tx.changed(ChangeKind.SERVICE_UPDATED, account_id, old.id)
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
        tx.conn.execute(sa.update(services).where(services.c.id == old.id).values(
            service_tokens=dumps(servicetokens.to_json(kept)) if kept else None))
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
