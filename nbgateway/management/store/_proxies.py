"""Store part: the proxy repository (``store.proxies``).

:class:`ProxyRepository` owns proxy records and sessions, the cluster view,
inbound listeners and proxy access tokens.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import sqlalchemy as sa

from nbgateway.management import l4ports
from nbgateway.management.errors import Conflict, NotFound, Unauthenticated, ValidationError
from nbgateway.management.model import (
    ChangeKind,
    Cluster,
    ProxyAccessToken,
    ProxyCapabilities,
    ProxyInboundListener,
    ProxyRecord,
    new_id,
    utcnow,
)
from nbgateway.management.store import _quotas, _secrets
from nbgateway.management.store._base import Repository, Tx
from nbgateway.management.store.schema import (
    domains,
    proxies,
    proxy_access_tokens,
    proxy_inbound_listeners,
)

ACTIVE_WINDOW = timedelta(minutes=2)
PROXY_SCOPE = "proxies"
TOKEN_SCOPE = "proxy-tokens"


def row_proxy(r: sa.Row) -> ProxyRecord:
    return ProxyRecord(
        id=r.id,
        session_id=r.session_id,
        cluster_address=r.cluster_address,
        ip_address=r.ip_address,
        account_id=r.account_id,
        status=r.status,
        last_seen=r.last_seen,
        connected_at=r.connected_at,
        disconnected_at=r.disconnected_at,
        capabilities=ProxyCapabilities(
            supports_custom_ports=r.supports_custom_ports,
            require_subdomain=r.require_subdomain,
            supports_crowdsec=r.supports_crowdsec,
            private=r.private,
            l4_ports=_row_l4_ports(r.l4_public_ports, r.l4_tls_port),
        ),
    )


def _row_l4_ports(text: str | None, tls_port: int | None) -> l4ports.GatewayPorts | None:
    if text is None:
        return None
    return l4ports.GatewayPorts(l4ports.parse_ranges(text), tls_port or 0)


def row_proxy_token(r: sa.Row) -> ProxyAccessToken:
    return ProxyAccessToken(
        id=r.id,
        name=r.name,
        hashed_token=r.hashed_token,
        account_id=r.account_id,
        expires_at=r.expires_at,
        created_by=r.created_by,
        created_at=r.created_at,
        last_used=r.last_used,
        revoked=bool(r.revoked),
    )


def _any_true(values: list[bool | None]) -> bool | None:
    reported = [v for v in values if v is not None]
    if not reported:
        return None
    return any(reported)


def _unanimous(values: list[bool | None]) -> bool | None:
    if all(v is None for v in values):
        return None
    return all(v is True for v in values)


def aggregate_clusters(rows: list[ProxyRecord], now: datetime) -> list[Cluster]:
    """Cluster view over proxy rows already filtered for visibility."""
    by_addr: dict[str, list[ProxyRecord]] = {}
    for r in rows:
        by_addr.setdefault(r.cluster_address, []).append(r)
    out = []
    for addr in sorted(by_addr):
        group = by_addr[addr]
        active = [
            r
            for r in group
            if r.status == "connected"
            and r.last_seen is not None
            and r.last_seen > now - ACTIVE_WINDOW
        ]
        caps = [r.capabilities for r in active]
        out.append(
            Cluster(
                id=min(r.id for r in group),
                address=addr,
                type="account" if any(r.account_id for r in group) else "shared",
                online=bool(active),
                connected_proxies=len(active),
                supports_custom_ports=_any_true([c.supports_custom_ports for c in caps]),
                require_subdomain=_any_true([c.require_subdomain for c in caps]),
                supports_crowdsec=_unanimous([c.supports_crowdsec for c in caps]),
                private=_any_true([c.private for c in caps]),
            )
        )
    return out


class ProxyRepository(Repository):
    """Proxy rows and sessions, the cluster view, inbound listeners and proxy access tokens.

    Reached as ``store.proxies``."""

    # --- proxy rows ------------------------------------------------------------------

    def register(self, record: ProxyRecord, *, now: datetime | None = None) -> ProxyRecord:
        """Upsert a proxy row as connected (capabilities replaced). Conflict
        ``proxy id ... is in use by another account's gateway`` when the row
        exists with another scope (``account_id``; None = management-wide): a
        proxy id belongs to the scope that registered it until its row is gone."""
        if not record.id:
            raise ValidationError("proxy_id is required")
        now = now or utcnow()

        def run(tx: Tx) -> ProxyRecord:
            caps = record.capabilities
            values = {
                "session_id": record.session_id,
                "cluster_address": record.cluster_address,
                "ip_address": record.ip_address,
                "account_id": record.account_id,
                "last_seen": now,
                "connected_at": now,
                "disconnected_at": None,
                "status": "connected",
                "supports_custom_ports": caps.supports_custom_ports,
                "require_subdomain": caps.require_subdomain,
                "supports_crowdsec": caps.supports_crowdsec,
                "private": caps.private,
                "l4_public_ports": (None if caps.l4_ports is None
                                    else l4ports.format_ranges(caps.l4_ports.ranges)),
                "l4_tls_port": None if caps.l4_ports is None else caps.l4_ports.tls_port,
            }
            exists = tx.conn.execute(
                sa.select(proxies.c.id, proxies.c.account_id).where(proxies.c.id == record.id)
            ).first()
            if exists and exists.account_id != record.account_id:
                raise Conflict(f"proxy id {record.id} is in use by another account's gateway")
            if exists:
                tx.conn.execute(
                    sa.update(proxies).where(proxies.c.id == record.id).values(**values)
                )
            else:
                tx.conn.execute(sa.insert(proxies).values(id=record.id, **values))
            tx.changed(ChangeKind.PROXY, record.account_id or "", record.id)
            return row_proxy(
                tx.conn.execute(sa.select(proxies).where(proxies.c.id == record.id)).one()
            )

        return self._store._write(PROXY_SCOPE, run)

    def _session_update(self, proxy_id: str, session_id: str, values: dict) -> bool:
        def run(tx: Tx) -> bool:
            res = tx.conn.execute(
                sa.update(proxies)
                .where(proxies.c.id == proxy_id, proxies.c.session_id == session_id)
                .values(**values)
            )
            if res.rowcount:
                account = tx.conn.execute(
                    sa.select(proxies.c.account_id).where(proxies.c.id == proxy_id)
                ).scalar()
                tx.changed(ChangeKind.PROXY, account or "", proxy_id)
            return bool(res.rowcount)

        return self._store._write(PROXY_SCOPE, run)

    def heartbeat(
        self, proxy_id: str, session_id: str, *, now: datetime | None = None
    ) -> bool:
        """Refresh ``last_seen`` if ``session_id`` is current; False otherwise."""
        return self._session_update(proxy_id, session_id, {"last_seen": now or utcnow()})

    def disconnect(
        self, proxy_id: str, session_id: str, *, now: datetime | None = None
    ) -> bool:
        """Mark disconnected only if ``session_id`` is still the current session."""
        now = now or utcnow()
        return self._session_update(
            proxy_id, session_id, {"status": "disconnected", "disconnected_at": now}
        )

    def get(self, proxy_id: str) -> ProxyRecord:
        """NotFound ``proxy not found``."""
        with self._store._read() as conn:
            row = conn.execute(sa.select(proxies).where(proxies.c.id == proxy_id)).first()
        if row is None:
            raise NotFound("proxy not found")
        return row_proxy(row)

    def list(self, account_id: str | None = None) -> list[ProxyRecord]:
        """Rows visible to the account (shared + its own); all rows for None."""
        q = sa.select(proxies).order_by(proxies.c.id)
        if account_id is not None:
            q = q.where(sa.or_(proxies.c.account_id.is_(None), proxies.c.account_id == account_id))
        with self._store._read() as conn:
            return [row_proxy(r) for r in conn.execute(q)]

    def l4_port_limits(self, conn: sa.Connection, cluster: str, account_id: str, *,
                       now: datetime | None = None) -> list[l4ports.GatewayPorts]:
        """What the active gateways of ``cluster`` visible to the account
        (connected, seen within :data:`ACTIVE_WINDOW`) that advertised public L4
        ports advertised, in the caller's transaction ``conn``."""
        since = (now or utcnow()) - ACTIVE_WINDOW
        rows = conn.execute(
            sa.select(proxies.c.l4_public_ports, proxies.c.l4_tls_port).where(
                proxies.c.cluster_address == cluster,
                proxies.c.status == "connected",
                proxies.c.last_seen > since,
                proxies.c.l4_public_ports.is_not(None),
                sa.or_(proxies.c.account_id.is_(None), proxies.c.account_id == account_id),
            ).order_by(proxies.c.id)
        ).all()
        return [p for p in (_row_l4_ports(r.l4_public_ports, r.l4_tls_port) for r in rows)
                if p is not None]

    def cluster_address_in_use(self, address: str, account_id: str) -> bool:
        """True if a shared proxy or another account's proxy uses ``address``,
        or the address is equal to or under another account's custom domain
        (how an account holds its BYOP cluster's names while its gateways
        are away and their rows have been removed as stale)."""
        labels = address.lower().rstrip(".").split(".")
        covering = [".".join(labels[i:]) for i in range(len(labels) - 1)]
        with self._store._read() as conn:
            row = conn.execute(
                sa.select(proxies.c.id).where(
                    proxies.c.cluster_address == address,
                    sa.or_(proxies.c.account_id.is_(None), proxies.c.account_id != account_id),
                )
            ).first()
            if row is None and covering:
                row = conn.execute(
                    sa.select(domains.c.id).where(domains.c.domain.in_(covering),
                                                  domains.c.account_id != account_id)
                ).first()
        return row is not None

    def delete_stale(self, older_than: datetime) -> int:
        """Delete proxy rows with ``last_seen`` before ``older_than``; count."""

        def run(tx: Tx) -> int:
            stale = tx.conn.execute(
                sa.select(proxies.c.id, proxies.c.account_id).where(
                    sa.or_(proxies.c.last_seen < older_than, proxies.c.last_seen.is_(None))
                )
            ).all()
            if stale:
                tx.conn.execute(sa.delete(proxies).where(proxies.c.id.in_([s.id for s in stale])))
                for s in stale:
                    tx.changed(ChangeKind.PROXY, s.account_id or "", s.id)
            return len(stale)

        return self._store._write(PROXY_SCOPE, run)

    def list_clusters(self, account_id: str, *, now: datetime | None = None) -> list[Cluster]:
        """Cluster view: visible rows grouped by address, capability
        aggregates over active rows (connected and seen within 2 minutes)."""
        return aggregate_clusters(self.list(account_id), now or utcnow())

    def delete_cluster(self, account_id: str, address: str) -> int:
        """Delete the account's BYOP proxy rows for ``address``. NotFound
        ``cluster not found`` if none."""

        def run(tx: Tx) -> int:
            ids = list(
                tx.conn.execute(
                    sa.select(proxies.c.id).where(
                        proxies.c.account_id == account_id, proxies.c.cluster_address == address
                    )
                ).scalars()
            )
            if not ids:
                raise NotFound("cluster not found")
            tx.conn.execute(sa.delete(proxies).where(proxies.c.id.in_(ids)))
            tx.changed(ChangeKind.PROXY, account_id, *ids)
            return len(ids)

        return self._store._write(PROXY_SCOPE, run)

    # --- inbound listeners ----------------------------------------------------------------

    def set_inbound_listener(self, listener: ProxyInboundListener) -> None:
        """Upsert where a proxy listens inside an account's tunnel."""
        if not listener.proxy_id or not listener.account_id:
            raise ValidationError("proxy_id and account_id are required")
        t = proxy_inbound_listeners

        def run(tx: Tx) -> None:
            values = {
                "tunnel_ip": listener.tunnel_ip,
                "https_port": listener.https_port,
                "http_port": listener.http_port,
                "updated_at": listener.updated_at or utcnow(),
            }
            where = sa.and_(
                t.c.proxy_id == listener.proxy_id, t.c.account_id == listener.account_id
            )
            if tx.conn.execute(sa.select(t.c.proxy_id).where(where)).first():
                tx.conn.execute(sa.update(t).where(where).values(**values))
            else:
                tx.conn.execute(
                    sa.insert(t).values(
                        proxy_id=listener.proxy_id, account_id=listener.account_id, **values
                    )
                )
            tx.changed(ChangeKind.PROXY, listener.account_id, listener.proxy_id)

        self._store._write(PROXY_SCOPE, run)

    def list_inbound_listeners(self, account_id: str) -> list[ProxyInboundListener]:
        """Inbound listeners of every proxy inside this account's tunnel."""
        t = proxy_inbound_listeners
        with self._store._read() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.account_id == account_id).order_by(t.c.proxy_id)
            ).all()
        return [
            ProxyInboundListener(
                proxy_id=r.proxy_id,
                account_id=r.account_id,
                tunnel_ip=r.tunnel_ip,
                https_port=r.https_port,
                http_port=r.http_port,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    # --- proxy access tokens -------------------------------------------------------------

    def create_token(
        self,
        name: str,
        *,
        account_id: str | None,
        expires_at: datetime | None = None,
        created_by: str = "",
    ) -> tuple[ProxyAccessToken, str]:
        """Create a token (``nbx_`` + 30 base62 + 6-char CRC32, 40 chars); returns
        the row and the plain token (not stored)."""
        if not name or len(name.encode()) > 255:
            raise ValidationError("name is required and must be at most 255 characters")

        def run(tx: Tx) -> tuple[ProxyAccessToken, str]:
            if account_id is not None:
                self._store.accounts.require(tx.conn, account_id)  # type: ignore[attr-defined]
                self._make_token_room(tx, account_id)
            plain = _secrets.generate_token(_secrets.PROXY_TOKEN_PREFIX)
            tok = ProxyAccessToken(
                id=new_id(),
                name=name,
                hashed_token=_secrets.hash_token(plain),
                account_id=account_id,
                expires_at=expires_at,
                created_by=created_by,
                created_at=utcnow(),
            )
            tx.conn.execute(sa.insert(proxy_access_tokens).values(**dataclasses.asdict(tok)))
            tx.changed(ChangeKind.PROXY_TOKEN, account_id or "", tok.id)
            return tok, plain

        return self._store._write(TOKEN_SCOPE, run)

    def _make_token_room(self, tx: Tx, account_id: str) -> None:
        """The account's proxy-token quota: at the limit, its revoked or expired
        tokens are deleted first (oldest first; a dead token authenticates
        nothing), then QuotaExceeded if live tokens still fill it."""
        quotas = self._store.quotas
        limit = quotas.limit("proxy-tokens")
        if not limit:
            return
        have = _quotas.count(tx.conn, "proxy-tokens", account_id)
        if have >= limit:
            purged = _quotas.purge_dead_proxy_tokens(tx.conn, account_id, utcnow(),
                                                     have - limit + 1)
            if purged:
                tx.changed(ChangeKind.PROXY_TOKEN, account_id, *purged)
            have -= len(purged)
        quotas.check("proxy-tokens", have)

    def list_tokens(self, account_id: str | None) -> list[ProxyAccessToken]:
        """Tokens of the account (None: management-wide tokens)."""
        t = proxy_access_tokens
        cond = t.c.account_id.is_(None) if account_id is None else t.c.account_id == account_id
        with self._store._read() as conn:
            rows = conn.execute(sa.select(t).where(cond).order_by(t.c.created_at, t.c.id)).all()
        return [row_proxy_token(r) for r in rows]

    def get_token(self, token_id: str) -> ProxyAccessToken:
        """NotFound ``token not found`` (used by the heartbeat revocation check)."""
        t = proxy_access_tokens
        with self._store._read() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == token_id)).first()
        if row is None:
            raise NotFound("token not found")
        return row_proxy_token(row)

    def revoke_token(self, account_id: str | None, token_id: str) -> ProxyAccessToken:
        """Set ``revoked``. NotFound ``token not found`` for foreign/global tokens."""
        t = proxy_access_tokens

        def run(tx: Tx) -> ProxyAccessToken:
            cond = t.c.account_id.is_(None) if account_id is None else t.c.account_id == account_id
            res = tx.conn.execute(sa.update(t).where(t.c.id == token_id, cond).values(revoked=True))
            if res.rowcount == 0:
                raise NotFound("token not found")
            tx.changed(ChangeKind.PROXY_TOKEN, account_id or "", token_id)
            return row_proxy_token(tx.conn.execute(sa.select(t).where(t.c.id == token_id)).one())

        return self._store._write(TOKEN_SCOPE, run)

    def verify_token(self, plain: str, *, now: datetime | None = None) -> ProxyAccessToken:
        """Check a presented token. Unauthenticated ``invalid token format`` /
        ``invalid token`` / ``token expired or revoked``. Refreshes ``last_used``
        at most once a minute."""
        if not _secrets.token_format_ok(plain, _secrets.PROXY_TOKEN_PREFIX):
            raise Unauthenticated("invalid token format")
        now = now or utcnow()
        t = proxy_access_tokens
        with self._store._read() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.hashed_token == _secrets.hash_token(plain))
            ).first()
        if row is None:
            raise Unauthenticated("invalid token")
        tok = row_proxy_token(row)
        if not tok.is_valid(now):
            raise Unauthenticated("token expired or revoked")
        if tok.last_used is None or (now - tok.last_used).total_seconds() >= 60:

            def run(tx: Tx) -> None:
                tx.conn.execute(sa.update(t).where(t.c.id == tok.id).values(last_used=now))

            self._store._write(TOKEN_SCOPE, run)
            tok = dataclasses.replace(tok, last_used=now)
        return tok
