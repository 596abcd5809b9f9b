"""The ``/api`` operations: one synchronous handler per route, over the Store.

Handlers run in the store thread pool (see :mod:`.framework`); they translate a
:class:`~.framework.Call` into store calls and the result back into JSON with
:mod:`.mapping`. :func:`build_routes` returns the route table that both the
dispatcher and the OpenAPI document use, so the document lists exactly what is
served.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.public import PrivateKey

from nbgateway.management import clientcerts, peerconfig, servicetokens, wgconfig
from nbgateway.management.errors import BadRequest, NotFound, ValidationError
from nbgateway.management.model import (
    AccessLogQuery,
    CustomDomain,
    Group,
    Peer,
    Target,
    User,
)

from . import mapping as m
from .certificates import certificate_routes
from .framework import ApiError, Call, Identity, QueryParam, Result, Route

_ADMIN_ROLES = ("owner", "admin")

# --- helpers ----------------------------------------------------------------------


def _acct(call: Call) -> str:
    assert call.identity is not None
    return call.identity.account_id


def _require_admin(call: Call) -> None:
    assert call.identity is not None
    if call.identity.role not in _ADMIN_ROLES:
        raise ApiError(403, "user has no permission to perform this action")


def _is_admin(call: Call) -> bool:
    assert call.identity is not None
    return call.identity.role in _ADMIN_ROLES


#: largest page a client may ask for with ``limit``
PAGE_MAX = 1000
_CURSOR_PREFIX = "c1."


def encode_cursor(last_id: str) -> str:
    """Opaque cursor naming the last row of a page (keyset pagination by id)."""
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor names; 422 for anything :func:`encode_cursor` did not make."""
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 200:
        raise ValidationError("invalid cursor")
    body = cursor[len(_CURSOR_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        last_id = raw.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("invalid cursor") from None
    if not last_id or not all(c.isalnum() or c in "-_" for c in last_id):
        raise ValidationError("invalid cursor")
    return last_id


def _page(call: Call) -> tuple[int | None, str | None]:
    """``(limit, after id)`` of a list call; ``(None, None)`` without ``limit`` and
    ``cursor`` (the whole list, the original response). ``cursor`` alone pages by
    100."""
    raw, cursor = call.query.get("limit"), call.query.get("cursor")
    if raw is None and cursor is None:
        return None, None
    limit = 100
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
            raise ValidationError(f"limit must be an integer from 1 to {PAGE_MAX}")
        limit = int(raw)
    return limit, decode_cursor(cursor) if cursor else None


def _paged(call: Call, rows: list[Any], limit: int | None, body: list[Any],
           path: str) -> Result:
    """Result of a page fetched with ``limit + 1``: the first ``limit`` rows, and
    ``X-Next-Cursor`` plus a ``Link: rel="next"`` when more follow."""
    if limit is None or len(rows) <= limit:
        return Result(200, body)
    nxt = encode_cursor(rows[limit - 1].id)
    return Result(200, body[:limit], headers={
        "X-Next-Cursor": nxt, "Link": f'</api{path}?limit={limit}&cursor={nxt}>; rel="next"'})


def _own_peer(call: Call, peer: Peer) -> Peer:
    """A regular user reaches only the peers it owns; others do not exist for it."""
    assert call.identity is not None
    if not _is_admin(call) and peer.user_id != call.identity.user_id:
        raise NotFound("peer not found")
    return peer


def _require_instance_admin(call: Call) -> None:
    assert call.identity is not None
    if not call.identity.instance_admin:
        raise ApiError(403, "only an instance admin may perform this action")


def _int_query(call: Call, name: str, default: int | None) -> int | None:
    raw = call.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"invalid {name}: {raw!r} is not an integer") from None


def _date_query(call: Call, name: str) -> datetime | None:
    raw = call.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"invalid {name}: expected an RFC 3339 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_public_key(key: str) -> str:
    try:
        return wgconfig.check_key(key)
    except wgconfig.WgConfigError:
        raise ValidationError("invalid wireguard public key: expected 32 bytes, base64") from None


def _check_endpoint(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    try:
        return wgconfig.check_endpoint(endpoint)
    except wgconfig.WgConfigError as exc:
        raise ValidationError(f"invalid endpoint: {exc}") from None


class Handlers:
    """Route handlers bound to one Store."""

    def __init__(self, store: Any):
        self.store = store

    # -- auth ------------------------------------------------------------------

    def authenticate(self, token: str) -> Identity:
        user, _pat = self.store.users.authenticate_token(token)
        return Identity(account_id=user.account_id, user_id=user.id, role=user.role,
                        instance_admin=user.instance_admin and user.role in _ADMIN_ROLES)

    # -- accounts (nbgateway extension) ---------------------------------------------

    def list_accounts(self, call: Call) -> Result:
        assert call.identity is not None
        if call.identity.instance_admin:
            found = self.store.accounts.list()
        else:
            found = [self.store.accounts.get(_acct(call))]
        return Result(200, [m.account_to_api(a) for a in found])

    def create_account(self, call: Call) -> Result:
        _require_instance_admin(call)
        name = call.body.get("name", "").strip()
        if not name:
            raise ValidationError("account name is required")
        email = call.body.get("admin_email", "").strip()
        boot = self.store.accounts.create_with_admin(name, admin_email=email)
        assert boot.admin_token is not None
        return Result(201, {**m.account_to_api(boot.account),
                            "admin_user_id": boot.admin_user.id, "token": boot.admin_token})

    def get_account(self, call: Call) -> Result:
        assert call.identity is not None
        aid = call.params["accountId"]
        if aid != call.identity.account_id and not call.identity.instance_admin:
            raise NotFound("account not found")  # other accounts do not exist for you
        return Result(200, m.account_to_api(self.store.accounts.get(aid)))

    def delete_account(self, call: Call) -> Result:
        _require_instance_admin(call)
        if call.params["accountId"] == _acct(call):
            raise BadRequest("an instance admin cannot delete its own account")
        self.store.accounts.delete(call.params["accountId"])
        return Result(200, {})

    def list_service_statuses(self, call: Call) -> Result:
        """Every service's last gateway status and message: all accounts for an
        instance admin, the caller's own account for an account admin."""
        _require_admin(call)
        assert call.identity is not None
        if call.identity.instance_admin:
            found = self.store.services.list_all()
        else:
            found = self.store.services.list(_acct(call))
        wanted = call.query.get("status")
        rows = [m.service_status_to_api(s) for s in found
                if not wanted or str(s.meta.status) == wanted]
        rows.sort(key=lambda r: (r["account_id"], r["domain"]))
        return Result(200, rows)

    # -- services --------------------------------------------------------------

    def _host_resolver(self, account_id: str) -> Callable[[Target], str]:
        """``peer`` targets read back the peer's tunnel IP ("unknown" if it is gone)."""
        cache: dict[str, str] = {}

        def resolve(t: Target) -> str:
            if t.target_type != "peer":
                return t.host
            if t.target_id not in cache:
                try:
                    cache[t.target_id] = self.store.peers.get(account_id, t.target_id).ip
                except NotFound:
                    cache[t.target_id] = "unknown"
            return cache[t.target_id]

        return resolve

    def list_services(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        resolve = self._host_resolver(acct)
        limit, after = _page(call)
        found = self.store.services.list(acct, after=after,
                                         limit=None if limit is None else limit + 1)
        return _paged(call, found, limit,
                      [m.service_to_api(s, resolve) for s in found[:limit]],
                      "/reverse-proxies/services")

    def create_service(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        created = self.store.services.create(m.service_from_api(call.body, account_id=acct))
        return Result(200, m.service_to_api(created, self._host_resolver(acct)))

    def get_service(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        s = self.store.services.get(acct, call.params["serviceId"])
        return Result(200, m.service_to_api(s, self._host_resolver(acct)))

    def update_service(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        sid = call.params["serviceId"]
        self.store.services.get(acct, sid)  # 404 before validation, like upstream
        updated = self.store.services.update(
            m.service_from_api(call.body, account_id=acct, service_id=sid))
        return Result(200, m.service_to_api(updated, self._host_resolver(acct)))

    def rotate_assertion_key(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        s = self.store.services.rotate_assertion_key(acct, call.params["serviceId"])
        return Result(200, m.service_to_api(s, self._host_resolver(acct)))

    # -- mTLS client certificates (clientcerts) -------------------------------

    def get_client_cert_auth(self, call: Call) -> Result:
        _require_admin(call)
        s = self.store.services.get(_acct(call), call.params["serviceId"])
        auth = s.client_cert_auth
        return Result(200, auth.public() if auth is not None else {"enabled": False})

    def set_client_cert_auth(self, call: Call) -> Result:
        """Upload the client CA bundle and the certificate -> user rule."""
        _require_admin(call)
        acct = _acct(call)
        users = [u.id for u in self.store.users.list(acct)]
        auth = clientcerts.validate(call.body, users, time.time())
        s = self.store.services.set_client_cert_auth(acct, call.params["serviceId"], auth)
        return Result(200, s.client_cert_auth.public())

    def clear_client_cert_auth(self, call: Call) -> Result:
        _require_admin(call)
        self.store.services.set_client_cert_auth(_acct(call), call.params["serviceId"], None)
        return Result(200, {"enabled": False})

    # -- machine-client service tokens (servicetokens) ------------------------

    def list_service_tokens(self, call: Call) -> Result:
        _require_admin(call)
        s = self.store.services.get(_acct(call), call.params["serviceId"])
        now = time.time()
        return Result(200, [t.public(now) for t in s.service_tokens])

    def create_service_token(self, call: Call) -> Result:
        """The secret is in this answer only (``secret`` and ``bearer``)."""
        _require_admin(call)
        name, expires_in = servicetokens.validate_request(call.body.get("name"),
                                                          call.body.get("expires_in_seconds"))
        _s, rec, secret = self.store.services.create_token(
            _acct(call), call.params["serviceId"], name, expires_in)
        out = rec.public(time.time())
        out.update(secret=secret, bearer=f"{rec.id}.{secret}")
        return Result(201, out)

    def revoke_service_token(self, call: Call) -> Result:
        _require_admin(call)
        rec = self.store.services.revoke_token(_acct(call), call.params["serviceId"],
                                               call.params["tokenId"])
        return Result(200, rec.public(time.time()))

    def delete_service(self, call: Call) -> Result:
        _require_admin(call)
        self.store.services.delete(_acct(call), call.params["serviceId"])
        return Result(200, {})

    # -- clusters and domains --------------------------------------------------

    def list_clusters(self, call: Call) -> Result:
        _require_admin(call)
        clusters = self.store.proxies.list_clusters(_acct(call))
        return Result(200, [m.cluster_to_api(c) for c in clusters])

    def list_proxies(self, call: Call) -> Result:
        """The gateways visible to the account: connection state, capabilities
        and where each listens inside this account's tunnel (``nbgateway-admin
        status``)."""
        from nbgateway.management.store._proxies import ACTIVE_WINDOW

        _require_admin(call)

        acct = _acct(call)
        listeners: dict[str, list[dict[str, Any]]] = {}
        for li in self.store.proxies.list_inbound_listeners(acct):
            listeners.setdefault(li.proxy_id, []).append(
                {"tunnel_ip": li.tunnel_ip, "https_port": li.https_port,
                 "http_port": li.http_port})
        now = datetime.now(UTC)
        out = []
        for p in self.store.proxies.list(acct):
            seen = p.last_seen.replace(tzinfo=UTC) if p.last_seen and p.last_seen.tzinfo is None \
                else p.last_seen
            caps = p.capabilities
            online = p.status == "connected" and seen is not None and seen > now - ACTIVE_WINDOW
            out.append({
                "id": p.id, "cluster_address": p.cluster_address, "ip_address": p.ip_address,
                "status": p.status, "online": online,
                **({"last_seen": m.ts(seen)} if seen is not None else {}),
                "capabilities": {k: v for k, v in (
                    ("supports_custom_ports", caps.supports_custom_ports),
                    ("require_subdomain", caps.require_subdomain),
                    ("supports_crowdsec", caps.supports_crowdsec),
                    ("private", caps.private)) if v is not None},
                "inbound_listeners": listeners.get(p.id, [])})
        return Result(200, out)

    def delete_cluster(self, call: Call) -> Result:
        _require_admin(call)
        self.store.proxies.delete_cluster(_acct(call), call.params["clusterAddress"])
        return Result(200, {})

    def list_domains(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        clusters = {c.address: c for c in self.store.proxies.list_clusters(acct)}
        out = [m.free_domain_to_api(c) for c in clusters.values() if c.online]
        out += [m.custom_domain_to_api(d, clusters.get(d.target_cluster))
                for d in self.store.domains.list(acct)]
        return Result(200, out)

    def create_domain(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        domain = call.body.get("domain", "").strip().lower().rstrip(".")
        target = call.body.get("target_cluster", "").strip().lower().rstrip(".")
        if not domain:
            raise ValidationError("domain is required")
        if not target:
            raise ValidationError("target_cluster is required")
        if len(domain) > 255 or len(target) > 255:
            raise ValidationError("domain exceeds maximum length of 255 characters")
        created = self.store.domains.create(CustomDomain(account_id=acct, domain=domain,
                                                        target_cluster=target))
        clusters = {c.address: c for c in self.store.proxies.list_clusters(acct)}
        return Result(200, m.custom_domain_to_api(created, clusters.get(created.target_cluster)))

    def delete_domain(self, call: Call) -> Result:
        _require_admin(call)
        self.store.domains.delete(_acct(call), call.params["domainId"])
        return Result(200, {})

    def validate_domain(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        did = call.params["domainId"]
        if not any(d.id == did for d in self.store.domains.list(acct)):
            raise NotFound("domain not found")
        return Result(202, {})

    # -- proxy tokens ------------------------------------------------------------

    def list_proxy_tokens(self, call: Call) -> Result:
        _require_admin(call)
        return Result(200, [m.proxy_token_to_api(t)
                            for t in self.store.proxies.list_tokens(_acct(call))])

    def create_proxy_token(self, call: Call) -> Result:
        _require_admin(call)
        assert call.identity is not None
        name = call.body.get("name", "")
        if not name or len(name) > 255:
            raise ApiError(400, "name is required and must be at most 255 characters")
        expires_in = call.body.get("expires_in", 0)
        if expires_in < 0:
            raise ApiError(400, "expires_in must be non-negative")
        expires_at = None
        if expires_in:
            try:
                expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
            except OverflowError:
                raise ApiError(400, "expires_in is too large") from None
        scope: str | None = _acct(call)
        if call.body.get("global", False):
            _require_instance_admin(call)
            scope = None
        row, plain = self.store.proxies.create_token(name, account_id=scope,
                                                   expires_at=expires_at,
                                                   created_by=call.identity.user_id)
        return Result(200, {**m.proxy_token_to_api(row), "plain_token": plain})

    def revoke_proxy_token(self, call: Call) -> Result:
        _require_admin(call)
        self.store.proxies.revoke_token(_acct(call), call.params["tokenId"])
        return Result(200, {})

    # -- access logs -------------------------------------------------------------

    def list_access_logs(self, call: Call) -> Result:
        q = call.query
        status_code = _int_query(call, "status_code", None)
        query = AccessLogQuery(
            page=_int_query(call, "page", 1), page_size=_int_query(call, "page_size", 50),
            sort_by=q.get("sort_by") or "timestamp", sort_order=q.get("sort_order") or "desc",
            search=q.get("search") or None, service_id=q.get("service_id") or None,
            source_ip=q.get("source_ip") or None, host=q.get("host") or None,
            path=q.get("path") or None, user_id=q.get("user_id") or None,
            user_email=q.get("user_email") or None, user_name=q.get("user_name") or None,
            method=q.get("method") or None, status=q.get("status") or None,
            status_code=status_code, start_date=_date_query(call, "start_date"),
            end_date=_date_query(call, "end_date"), group_id=q.get("group_id") or None)
        assert call.identity is not None
        if not _is_admin(call):  # a regular user reads its own requests only
            query = dataclasses.replace(query, user_id=call.identity.user_id)
        if query.status not in (None, "success", "failed"):
            raise ValidationError(f"invalid status {query.status!r}: use success or failed")
        page = self.store.access_logs.list(_acct(call), query)
        return Result(200, {"data": [m.access_log_to_api(e) for e in page.data],
                            "page": page.page, "page_size": page.page_size,
                            "total_records": page.total_records,
                            "total_pages": page.total_pages})

    # -- users and their tokens ----------------------------------------------------

    def list_users(self, call: Call) -> Result:
        assert call.identity is not None
        found = self.store.users.list(_acct(call))
        if not _is_admin(call):  # a regular user sees itself only
            found = [u for u in found if u.id == call.identity.user_id]
        return Result(200, [m.user_to_api(u) for u in found])

    def create_user(self, call: Call) -> Result:
        _require_admin(call)
        b = call.body
        user = self.store.users.create(User(
            account_id=_acct(call), email=b.get("email", ""), name=b.get("name", ""),
            role=b.get("role", "user"), is_service_user=b.get("is_service_user", False),
            auto_groups=tuple(b.get("auto_groups") or ())))
        return Result(200, m.user_to_api(user))

    def get_user(self, call: Call) -> Result:
        self._own_or_admin(call)
        return Result(200, m.user_to_api(self.store.users.get(_acct(call), call.params["userId"])))

    def update_user(self, call: Call) -> Result:
        _require_admin(call)
        b = call.body
        cur = self.store.users.get(_acct(call), call.params["userId"])
        user = self.store.users.update(User(
            id=cur.id, account_id=cur.account_id, email=b.get("email", cur.email),
            name=b.get("name", cur.name), role=b.get("role", cur.role),
            is_service_user=cur.is_service_user,
            auto_groups=tuple(b.get("auto_groups") or ()),
            blocked=b.get("is_blocked", False), pending_approval=b.get("pending_approval", False),
            created_at=cur.created_at))
        return Result(200, m.user_to_api(user))

    def delete_user(self, call: Call) -> Result:
        _require_admin(call)
        assert call.identity is not None
        if call.params["userId"] == call.identity.user_id:
            raise BadRequest("a user cannot delete itself")
        self.store.users.delete(_acct(call), call.params["userId"])
        return Result(200, {})

    def _own_or_admin(self, call: Call) -> tuple[str, str]:
        assert call.identity is not None
        uid = call.params["userId"]
        if uid != call.identity.user_id:
            _require_admin(call)
        self.store.users.get(_acct(call), uid)
        return _acct(call), uid

    def list_user_tokens(self, call: Call) -> Result:
        acct, uid = self._own_or_admin(call)
        return Result(200, [m.pat_to_api(t)
                            for t in self.store.users.list_tokens(acct, uid)])

    def create_user_token(self, call: Call) -> Result:
        acct, uid = self._own_or_admin(call)
        assert call.identity is not None
        name, days = call.body.get("name", ""), call.body.get("expires_in", 0)
        if not name or len(name) > 255:
            raise ValidationError("token name must be 1..255 characters")
        if not 1 <= days <= 365:
            raise ValidationError("expiration has to be between 1 and 365")
        row, plain = self.store.users.create_token(
            acct, uid, name, expires_at=datetime.now(UTC) + timedelta(days=days),
            created_by=call.identity.user_id)
        return Result(200, {"plain_token": plain, "personal_access_token": m.pat_to_api(row)})

    def delete_user_token(self, call: Call) -> Result:
        acct, uid = self._own_or_admin(call)
        self.store.users.delete_token(acct, uid, call.params["tokenId"])
        return Result(200, {})

    # -- groups ------------------------------------------------------------------

    def _peer_names(self, acct: str) -> dict[str, str]:
        return {p.id: p.name for p in self.store.peers.list(acct)}

    def list_groups(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        names = self._peer_names(acct)
        return Result(200, [m.group_to_api(g, names) for g in self.store.groups.list(acct)])

    def create_group(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        g = self.store.groups.create(Group(account_id=acct, name=call.body.get("name", ""),
                                          peers=tuple(call.body.get("peers") or ())))
        return Result(200, m.group_to_api(g, self._peer_names(acct)))

    def get_group(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        g = self.store.groups.get(acct, call.params["groupId"])
        return Result(200, m.group_to_api(g, self._peer_names(acct)))

    def update_group(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        cur = self.store.groups.get(acct, call.params["groupId"])
        peers = tuple(call.body["peers"]) if "peers" in call.body else cur.peers
        g = self.store.groups.update(Group(id=cur.id, account_id=acct, issued=cur.issued,
                                          name=call.body.get("name", ""), peers=peers))
        return Result(200, m.group_to_api(g, self._peer_names(acct)))

    def delete_group(self, call: Call) -> Result:
        _require_admin(call)
        self.store.groups.delete(_acct(call), call.params["groupId"])
        return Result(200, {})

    # -- peers -------------------------------------------------------------------

    def _groups(self, acct: str, peers: list[Peer] | None = None) -> dict[str, tuple[str, int]]:
        """Name and member count of the groups of ``peers`` (all groups: None)."""
        if peers is None:
            return self.store.groups.summaries(acct)
        return self.store.groups.summaries(acct, sorted({g for p in peers for g in p.groups}))

    def list_peers(self, call: Call) -> Result:
        acct = _acct(call)
        limit, after = _page(call)
        assert call.identity is not None
        found = self.store.peers.list(
            acct, user_id=None if _is_admin(call) else call.identity.user_id, after=after,
            limit=None if limit is None else limit + 1)
        page = found[:limit]
        groups = self._groups(acct, page)
        return _paged(call, found, limit, [m.peer_to_api(p, groups) for p in page], "/peers")

    def create_peer(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        b = call.body
        name = b.get("name", "").strip()
        if not name:
            raise ValidationError("peer name is required")
        if len(name) > 255:
            raise ValidationError("peer name exceeds maximum length of 255 characters")
        private_key = None
        if b.get("public_key"):
            public_key = _check_public_key(b["public_key"])
        else:
            raw = bytearray(bytes(PrivateKey.generate()))
            raw[0] &= 248  # clamp like `wg genkey`, so `wg show` prints the same key
            raw[31] = (raw[31] & 127) | 64
            sk = PrivateKey(bytes(raw))
            private_key = base64.b64encode(bytes(sk)).decode()
            public_key = base64.b64encode(bytes(sk.public_key)).decode()
        cluster = b.get("proxy_cluster", "").strip().lower().rstrip(".")
        # the groups' names and member counts come from the creating transaction
        peer, groups = self.store.peers.create_with_groups(Peer(
            account_id=acct, name=name, key=public_key, user_id=b.get("user_id") or None,
            endpoint=_check_endpoint(b.get("endpoint")), groups=tuple(b.get("groups") or ()),
            proxy=bool(cluster), proxy_cluster=cluster, wg_private_key=private_key))
        out = m.peer_to_api(peer, groups)
        if private_key is not None:
            out["private_key"] = private_key
        return Result(200, out)

    def inspect_private_services(self, call: Call) -> Result:
        from nbgateway.management.synthetic import private_service_inspection

        _require_admin(call)
        return Result(200, private_service_inspection(self.store, _acct(call)))

    def peer_network_map(self, call: Call) -> Result:
        from nbgateway.management.networkmap import inspect_peer_network_map

        _own_peer(call, self.store.peers.get(_acct(call), call.params["peerId"]))
        return Result(200, inspect_peer_network_map(self.store, _acct(call),
                                                    call.params["peerId"]))

    def get_peer(self, call: Call) -> Result:
        acct = _acct(call)
        peer = _own_peer(call, self.store.peers.get(acct, call.params["peerId"]))
        return Result(200, m.peer_to_api(peer, self._groups(acct, [peer])))

    def update_peer(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        b = call.body
        cur = self.store.peers.get(acct, call.params["peerId"])
        name = b.get("name", "").strip()
        if not name:
            raise ValidationError("peer name is required")
        if len(name) > 255:
            raise ValidationError("peer name exceeds maximum length of 255 characters")
        updated = Peer(**{**cur.__dict__, "name": name,
                          "user_id": b.get("user_id", cur.user_id) or None,
                          "endpoint": _check_endpoint(b.get("endpoint", cur.endpoint)),
                          "groups": tuple(b["groups"]) if "groups" in b else cur.groups})
        peer = self.store.peers.update(updated)
        return Result(200, m.peer_to_api(peer, self._groups(acct, [peer])))

    def delete_peer(self, call: Call) -> Result:
        _require_admin(call)
        self.store.peers.delete(_acct(call), call.params["peerId"])
        return Result(200, {})

    def peer_wireguard_config(self, call: Call) -> Result:
        _require_admin(call)
        acct = _acct(call)
        fmt = call.query.get("format") or "conf"
        if fmt not in ("conf", "qr"):
            raise ValidationError('format must be "conf" or "qr"')
        peer = self.store.peers.get(acct, call.params["peerId"])
        try:  # lists only the gateways this peer may reach; says why for the others
            text = peerconfig.render_peer_config(self.store, acct, peer,
                                                 with_ca=fmt == "conf")  # small QR
        except wgconfig.WgConfigError as exc:
            raise ApiError(409, f"cannot render wireguard config: {exc}") from None
        if fmt == "qr":
            return Result(200, wgconfig.render_qr_png(text), content_type="image/png")
        return Result(200, text.encode(), content_type="text/plain; charset=utf-8",
                      headers={"Content-Disposition":
                               f'attachment; filename="{_conf_name(peer.name)}.conf"'})


def _conf_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:15]
    return safe or "wg0"


def _q(name: str, kind: str = "string", description: str = "", **extra: Any) -> QueryParam:
    return QueryParam(name, {"type": kind, **extra}, description)


_PAGE_QUERY = [
    _q("limit", "integer", "page size; without it (and without cursor) the whole list",
       minimum=1, maximum=PAGE_MAX),
    _q("cursor", description="opaque cursor from the previous page's X-Next-Cursor header"),
]
_PAGE_DESCRIPTION = (
    "Keyset pagination: with `limit` the body is the first page (same element shape) and, "
    "when more follow, the `X-Next-Cursor` header (and a `Link` rel=\"next\") names the "
    "cursor for the next page. Pages are ordered by id, so rows created meanwhile are "
    "neither skipped nor repeated before the cursor.")

_LOG_QUERY = [
    _q("page", "integer", "page number (>= 1)", minimum=1, default=1),
    _q("page_size", "integer", "entries per page", minimum=1, maximum=100, default=50),
    _q("sort_by", description="sort field", enum=[
        "timestamp", "url", "host", "path", "method", "status_code", "duration", "source_ip",
        "user_id", "auth_method", "reason"]),
    _q("sort_order", enum=["asc", "desc"], default="desc"),
    _q("search", description="substring over host, path, user id, source ip, reason"),
    _q("service_id"), _q("source_ip"), _q("host"), _q("path"), _q("user_id"),
    _q("user_email"), _q("user_name"), _q("method"),
    _q("status", enum=["success", "failed"]),
    _q("status_code", "integer", minimum=100, maximum=599),
    _q("start_date", format="date-time"), _q("end_date", format="date-time"),
    _q("group_id", description="entries whose user was in this group when logged"),
]


_PROXIES_SCHEMA: dict[str, Any] = {"type": "array", "items": {
    "type": "object",
    "required": ["id", "cluster_address", "status", "online", "capabilities",
                 "inbound_listeners"],
    "properties": {
        "id": {"type": "string"}, "cluster_address": {"type": "string"},
        "ip_address": {"type": "string"}, "status": {"type": "string"},
        "last_seen": {"type": "string", "format": "date-time"}, "online": {"type": "boolean"},
        "capabilities": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "inbound_listeners": {"type": "array", "items": {
            "type": "object", "required": ["tunnel_ip", "https_port", "http_port"],
            "properties": {"tunnel_ip": {"type": "string"}, "https_port": {"type": "integer"},
                           "http_port": {"type": "integer"}}}}}}}


def build_routes(h: Handlers) -> list[Route]:
    """The route table: dispatch order and the OpenAPI document both come from it."""

    def arr(name: str) -> dict[str, Any]:
        return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    svc, rp = "/reverse-proxies/services", "/reverse-proxies"
    w = (400, 403, 404, 409, 412, 413, 422)
    r = (404,)
    return [
        Route("GET", "/accounts", h.list_accounts, "listAccounts",
              "List accounts (every account for an instance admin, else the caller's own)",
              "Accounts", response_schema=arr("Account")),
        Route("POST", "/accounts", h.create_account, "createAccount",
              "Create an account and its first admin (instance admins only; the admin's "
              "personal access token is shown once)", "Accounts",
              request_schema="AccountRequest", response_schema=ref("AccountCreated"),
              response_status=201, errors=(400, 403, 413, 422)),
        Route("GET", "/accounts/{accountId}", h.get_account, "getAccount", "Get an account",
              "Accounts", response_schema=ref("Account"), errors=r),
        Route("DELETE", "/accounts/{accountId}", h.delete_account, "deleteAccount",
              "Delete an account and everything in it (instance admins only)", "Accounts",
              response_schema=ref("Empty"), errors=(400, 403, 404)),
        Route("GET", rp + "/service-status", h.list_service_statuses, "listServiceStatuses",
              "Each service's last gateway status and message, e.g. why a gateway refused "
              "it (every account for an instance admin)", "Services",
              query=[_q("status", enum=["pending", "active", "tunnel_not_created",
                                        "certificate_pending", "certificate_failed", "error"])],
              response_schema=arr("ServiceStatus"), errors=(403,)),
        Route("GET", svc, h.list_services, "listServices", "List services", "Services",
              response_schema=arr("Service"), query=_PAGE_QUERY, errors=(422,),
              description=_PAGE_DESCRIPTION),
        Route("POST", svc, h.create_service, "createService", "Create a service", "Services",
              request_schema="ServiceRequest", response_schema=ref("Service"), errors=w),
        Route("GET", svc + "/{serviceId}", h.get_service, "getService", "Get a service",
              "Services", response_schema=ref("Service"), errors=r),
        Route("PUT", svc + "/{serviceId}", h.update_service, "updateService",
              "Replace a service (full replace)", "Services", request_schema="ServiceRequest",
              response_schema=ref("Service"), errors=w),
        Route("DELETE", svc + "/{serviceId}", h.delete_service, "deleteService",
              "Delete a service", "Services", response_schema=ref("Empty"), errors=(403, 404)),
        Route("POST", svc + "/{serviceId}/assertion-key/rotate", h.rotate_assertion_key,
              "rotateAssertionKey", "New identity assertion signing key (the old one stays "
              "in the JWKS until its tokens expired)", "Services",
              response_schema=ref("Service"), errors=(403, 404)),
        Route("GET", svc + "/{serviceId}/client-ca", h.get_client_cert_auth,
              "getClientCertAuth", "A service's mTLS client CA (subjects, expiry, "
              "fingerprints) and certificate -> user rule", "Services",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("PUT", svc + "/{serviceId}/client-ca", h.set_client_cert_auth,
              "setClientCertAuth", "Set a service's mTLS client CA bundle (PEM, CA "
              "certificates only) and how a certificate maps to a user (email or list)",
              "Services", request_schema="ClientCertAuthRequest",
              response_schema=ref("Empty"), errors=w),
        Route("DELETE", svc + "/{serviceId}/client-ca", h.clear_client_cert_auth,
              "clearClientCertAuth", "Remove a service's mTLS client CA (its certificates "
              "stop working with the next mapping update)", "Services",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", svc + "/{serviceId}/tokens", h.list_service_tokens, "listServiceTokens",
              "List a service's machine-client tokens (never the secrets)", "Services",
              response_schema=arr("Empty"), errors=(403, 404)),
        Route("POST", svc + "/{serviceId}/tokens", h.create_service_token,
              "createServiceToken", "Create a machine-client token; the secret is shown "
              "once, in this answer", "Services", request_schema="ServiceTokenRequest",
              response_schema=ref("Empty"), response_status=201, errors=w),
        Route("DELETE", svc + "/{serviceId}/tokens/{tokenId}", h.revoke_service_token,
              "revokeServiceToken", "Revoke a machine-client token (gateways drop it "
              "with the next mapping update)", "Services", response_schema=ref("Empty"),
              errors=(403, 404)),
        Route("GET", rp + "/clusters", h.list_clusters, "listClusters", "List proxy clusters",
              "Clusters", response_schema=arr("ProxyCluster")),
        Route("GET", rp + "/proxies", h.list_proxies, "listProxies",
              "List the gateways (proxies) with capabilities and inbound listeners",
              "Services", response_schema=_PROXIES_SCHEMA),
        Route("DELETE", rp + "/clusters/{clusterAddress}", h.delete_cluster, "deleteCluster",
              "Delete the account's own proxies of a cluster", "Clusters",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", rp + "/domains", h.list_domains, "listDomains",
              "List free and custom domains", "Domains", response_schema=arr("ReverseProxyDomain")),
        Route("POST", rp + "/domains", h.create_domain, "createDomain",
              "Register a custom domain", "Domains", request_schema="ReverseProxyDomainRequest",
              response_schema=ref("ReverseProxyDomain"), errors=(400, 403, 409, 413, 422)),
        Route("DELETE", rp + "/domains/{domainId}", h.delete_domain, "deleteDomain",
              "Delete a custom domain", "Domains", response_schema=ref("Empty"),
              errors=(403, 404)),
        Route("GET", rp + "/domains/{domainId}/validate", h.validate_domain, "validateDomain",
              "Request validation of a custom domain (nbgateway records the request only)",
              "Domains", response_schema=ref("Empty"), response_status=202, errors=(403, 404)),
        Route("GET", rp + "/proxy-tokens", h.list_proxy_tokens, "listProxyTokens",
              "List the account's proxy access tokens", "Proxy tokens",
              response_schema=arr("ProxyToken")),
        Route("POST", rp + "/proxy-tokens", h.create_proxy_token, "createProxyToken",
              "Create an account-scoped proxy access token (plain token shown once)",
              "Proxy tokens", request_schema="ProxyTokenRequest",
              response_schema=ref("ProxyTokenCreated"), errors=(400, 403, 413, 422)),
        Route("DELETE", rp + "/proxy-tokens/{tokenId}", h.revoke_proxy_token,
              "revokeProxyToken", "Revoke a proxy access token", "Proxy tokens",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", "/events/proxy", h.list_access_logs, "listProxyEvents",
              "Paginated, filterable reverse-proxy access log", "Events", query=_LOG_QUERY,
              response_schema=ref("ProxyAccessLogsResponse"), errors=(422,)),
        Route("GET", "/users", h.list_users, "listUsers", "List users", "Users",
              response_schema=arr("User")),
        Route("POST", "/users", h.create_user, "createUser", "Create a user", "Users",
              request_schema="UserCreateRequest", response_schema=ref("User"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/users/{userId}", h.get_user, "getUser", "Get a user", "Users",
              response_schema=ref("User"), errors=r),
        Route("PUT", "/users/{userId}", h.update_user, "updateUser", "Update a user", "Users",
              request_schema="UserRequest", response_schema=ref("User"),
              errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/users/{userId}", h.delete_user, "deleteUser", "Delete a user",
              "Users", response_schema=ref("Empty"), errors=(400, 403, 404)),
        Route("GET", "/users/{userId}/tokens", h.list_user_tokens, "listUserTokens",
              "List a user's personal access tokens", "Users",
              response_schema=arr("PersonalAccessToken"), errors=(403, 404)),
        Route("POST", "/users/{userId}/tokens", h.create_user_token, "createUserToken",
              "Create a personal access token (plain token shown once)", "Users",
              request_schema="PersonalAccessTokenRequest",
              response_schema=ref("PersonalAccessTokenGenerated"),
              errors=(400, 403, 404, 413, 422)),
        Route("DELETE", "/users/{userId}/tokens/{tokenId}", h.delete_user_token,
              "deleteUserToken", "Delete a personal access token", "Users",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", "/groups", h.list_groups, "listGroups", "List groups", "Groups",
              response_schema=arr("Group")),
        Route("POST", "/groups", h.create_group, "createGroup", "Create a group", "Groups",
              request_schema="GroupRequest", response_schema=ref("Group"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/groups/{groupId}", h.get_group, "getGroup", "Get a group", "Groups",
              response_schema=ref("Group"), errors=r),
        Route("PUT", "/groups/{groupId}", h.update_group, "updateGroup",
              "Update a group (peers kept when omitted)", "Groups", request_schema="GroupRequest",
              response_schema=ref("Group"), errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/groups/{groupId}", h.delete_group, "deleteGroup", "Delete a group",
              "Groups", response_schema=ref("Empty"), errors=(400, 403, 404)),
        Route("GET", "/peers", h.list_peers, "listPeers", "List peers", "Peers",
              response_schema=arr("Peer"), query=_PAGE_QUERY, errors=(422,),
              description=_PAGE_DESCRIPTION),
        Route("POST", "/peers", h.create_peer, "createPeer",
              "Create a stock WireGuard peer (server-generated or client-supplied key)", "Peers",
              request_schema="PeerCreateRequest", response_schema=ref("PeerCreated"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/peers/{peerId}", h.get_peer, "getPeer", "Get a peer", "Peers",
              response_schema=ref("Peer"), errors=r),
        Route("PUT", "/peers/{peerId}", h.update_peer, "updatePeer", "Update a peer", "Peers",
              request_schema="PeerRequest", response_schema=ref("Peer"),
              errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/peers/{peerId}", h.delete_peer, "deletePeer", "Delete a peer",
              "Peers", response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", rp + "/private-services", h.inspect_private_services,
              "inspectPrivateServices",
              "Synthetic DNS zones and access policies derived from the private services",
              "Services", response_schema=ref("PrivateServiceInspection")),
        Route("GET", "/peers/{peerId}/network-map", h.peer_network_map, "getPeerNetworkMap",
              "The network map the peer currently receives (roster, DNS, firewall rules)",
              "Peers", response_schema=ref("PeerNetworkMap"), errors=r),
        Route("GET", "/peers/{peerId}/wireguard-config", h.peer_wireguard_config,
              "getPeerWireguardConfig",
              "wg-quick configuration for the peer ([Peer] = the account's proxy peers)",
              "Peers", response_content_types=("text/plain", "image/png"),
              query=[_q("format", enum=["conf", "qr"], default="conf",
                        description="qr returns a PNG QR code of the config")],
              errors=(403, 404, 409, 422)),
        *certificate_routes(h.store, _require_admin),
    ]
