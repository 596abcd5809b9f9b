"""JSON <-> model mapping for the REST API (upstream ``FromAPIRequest``/``ToAPIResponse``).

Request bodies reaching these functions have already passed the decode-level
type check (:func:`.schemas.check_types`), so fields have the right JSON types;
semantic validation happens in the store. The mapping keeps
upstream's quirks: PUT is a full replace, an absent ``private`` is
false, an absent ``access_groups`` is ``None``, ``private`` is always emitted,
``access_groups`` only when non-empty, secrets are always blanked, durations are
Go duration strings, and ``enabled`` reads ``enabled && !terminated``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import (
    AccessLogEntry,
    AccessRestrictions,
    Account,
    AuthConfig,
    BearerAuth,
    Cluster,
    CustomDomain,
    Group,
    HeaderAuth,
    LoadBalancing,
    PasswordAuth,
    Peer,
    PersonalAccessToken,
    PinAuth,
    ProxyAccessToken,
    Service,
    Target,
    TargetOptions,
    User,
    format_go_duration,
    parse_go_duration,
)

CROWDSEC_MODES = ("", "off", "enforce", "observe")


def ts(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a ``Z`` suffix (what Go's time.Time marshals to)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- services: request -> model --------------------------------------------------


def _duration(value: str | None, index: int, name: str) -> int:
    if not value:
        return 0
    try:
        return parse_go_duration(value)
    except ValueError as exc:
        raise ValidationError(f'target {index}: parse {name} "{value}": {exc}') from None


def target_from_api(index: int, body: Mapping[str, Any]) -> Target:
    opts = body.get("options") or {}
    return Target(
        path=body.get("path"),
        host=body.get("host", ""),
        port=body.get("port", 0),
        protocol=body.get("protocol", ""),
        target_id=body.get("target_id", ""),
        target_type=body.get("target_type", ""),
        enabled=body.get("enabled", False),
        proxy_protocol=bool(opts.get("proxy_protocol", False)),
        options=TargetOptions(
            skip_tls_verify=opts.get("skip_tls_verify", False),
            request_timeout=_duration(opts.get("request_timeout"), index, "request_timeout"),
            session_idle_timeout=_duration(opts.get("session_idle_timeout"), index,
                                           "session_idle_timeout"),
            path_rewrite=opts.get("path_rewrite", ""),
            custom_headers=dict(opts.get("custom_headers") or {}),
            direct_upstream=opts.get("direct_upstream", False),
            upstream_protocol=opts.get("upstream_protocol", "") or "",
        ),
    )


def auth_from_api(body: Mapping[str, Any]) -> AuthConfig:
    pw, pin, bearer = body.get("password_auth"), body.get("pin_auth"), body.get("bearer_auth")
    return AuthConfig(
        password_auth=PasswordAuth(pw.get("enabled", False), pw.get("password", ""))
        if pw is not None else None,
        pin_auth=PinAuth(pin.get("enabled", False), pin.get("pin", "")) if pin is not None
        else None,
        bearer_auth=BearerAuth(bearer.get("enabled", False),
                               tuple(bearer.get("distribution_groups") or ()))
        if bearer is not None else None,
        header_auths=tuple(HeaderAuth(h.get("enabled", False), h.get("header", ""),
                                      h.get("value", ""))
                           for h in body.get("header_auths") or ()),
    )


def restrictions_from_api(body: Mapping[str, Any]) -> AccessRestrictions:
    mode = body.get("crowdsec_mode", "")
    if mode not in CROWDSEC_MODES:
        raise ValidationError(f'invalid crowdsec_mode "{mode}"')
    return AccessRestrictions(
        allowed_cidrs=tuple(body.get("allowed_cidrs") or ()),
        blocked_cidrs=tuple(body.get("blocked_cidrs") or ()),
        allowed_countries=tuple(body.get("allowed_countries") or ()),
        blocked_countries=tuple(body.get("blocked_countries") or ()),
        crowdsec_mode=mode,
    )


def load_balancing_from_api(body: Mapping[str, Any]) -> LoadBalancing:
    """The ``load_balancing`` object (ranges are checked by validation)."""
    check = body.get("health_check") or {}
    return LoadBalancing(
        policy=body.get("policy") or "round_robin",
        max_failures=body.get("max_failures", 0),
        backoff_seconds=body.get("backoff_seconds", 0),
        max_backoff_seconds=body.get("max_backoff_seconds", 0),
        health_path=check.get("path", ""),
        health_interval_seconds=check.get("interval_seconds", 0),
        health_timeout_seconds=check.get("timeout_seconds", 0),
        health_status=check.get("expected_status", 0),
    )


def load_balancing_to_api(lb: LoadBalancing) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": lb.policy}
    for name in ("max_failures", "backoff_seconds", "max_backoff_seconds"):
        if getattr(lb, name):
            out[name] = getattr(lb, name)
    if lb.health_path:
        check: dict[str, Any] = {"path": lb.health_path}
        for name, attr in (("interval_seconds", "health_interval_seconds"),
                           ("timeout_seconds", "health_timeout_seconds"),
                           ("expected_status", "health_status")):
            if getattr(lb, attr):
                check[name] = getattr(lb, attr)
        out["health_check"] = check
    return out


def service_from_api(body: Mapping[str, Any], *, account_id: str, service_id: str = "") -> Service:
    """FromAPIRequest: used for POST and for PUT (a full replace)."""
    fields: dict[str, Any] = {
        "id": service_id,
        "account_id": account_id,
        "name": body.get("name", ""),
        "domain": body.get("domain", ""),
        "enabled": body.get("enabled", False),
        "targets": tuple(target_from_api(i, t) for i, t in enumerate(body.get("targets") or ())),
        "private": body.get("private", False),
        "access_groups": tuple(body["access_groups"]) if "access_groups" in body else None,
        "mode": body.get("mode", ""),
        "listen_port": body.get("listen_port", 0),
        "pass_host_header": body.get("pass_host_header", False),
        "rewrite_redirects": body.get("rewrite_redirects", False),
        "assertion_mode": body.get("assertion", "off"),
        "max_session_age_seconds": body.get("max_session_age_seconds", 0),
    }
    if "auth" in body:
        fields["auth"] = auth_from_api(body["auth"])
    if "access_restrictions" in body:
        fields["restrictions"] = restrictions_from_api(body["access_restrictions"])
    if "load_balancing" in body:
        fields["load_balancing"] = load_balancing_from_api(body["load_balancing"])
    return Service(**fields)


# --- services: model -> response ------------------------------------------------


def target_to_api(t: Target, *, terminated: bool,
                  resolve_host: Callable[[Target], str] | None = None) -> dict[str, Any]:
    o = t.options
    options: dict[str, Any] = {}
    if o.skip_tls_verify:
        options["skip_tls_verify"] = True
    if o.request_timeout:
        options["request_timeout"] = format_go_duration(o.request_timeout)
    if o.path_rewrite:
        options["path_rewrite"] = o.path_rewrite
    if o.custom_headers:
        options["custom_headers"] = dict(o.custom_headers)
    if t.proxy_protocol:
        options["proxy_protocol"] = True
    if o.session_idle_timeout:
        options["session_idle_timeout"] = format_go_duration(o.session_idle_timeout)
    if o.direct_upstream:
        options["direct_upstream"] = True
    if o.upstream_protocol:
        options["upstream_protocol"] = o.upstream_protocol
    out: dict[str, Any] = {
        "target_id": t.target_id,
        "target_type": t.target_type,
        "protocol": t.protocol,
        "host": resolve_host(t) if resolve_host else t.host,
        "port": t.port,
        "enabled": t.enabled and not terminated,
        "options": options,
    }
    if t.path is not None:
        out["path"] = t.path
    return out


def auth_to_api(a: AuthConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a.password_auth is not None:
        out["password_auth"] = {"enabled": a.password_auth.enabled, "password": ""}
    if a.pin_auth is not None:
        out["pin_auth"] = {"enabled": a.pin_auth.enabled, "pin": ""}
    if a.bearer_auth is not None:
        bearer: dict[str, Any] = {"enabled": a.bearer_auth.enabled}
        if a.bearer_auth.distribution_groups:
            bearer["distribution_groups"] = list(a.bearer_auth.distribution_groups)
        out["bearer_auth"] = bearer
    if a.header_auths:
        out["header_auths"] = [{"enabled": h.enabled, "header": h.header, "value": ""}
                               for h in a.header_auths]
    return out


def restrictions_to_api(r: AccessRestrictions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("allowed_cidrs", "blocked_cidrs", "allowed_countries", "blocked_countries"):
        if getattr(r, name):
            out[name] = list(getattr(r, name))
    if r.crowdsec_mode:
        out["crowdsec_mode"] = r.crowdsec_mode
    return out


def service_to_api(s: Service,
                   resolve_host: Callable[[Target], str] | None = None) -> dict[str, Any]:
    """ToAPIResponse; session keys and secrets never leave."""
    out: dict[str, Any] = {
        "id": s.id,
        "name": s.name,
        "domain": s.domain,
        "mode": s.mode or "http",
        "listen_port": s.listen_port,
        "port_auto_assigned": s.port_auto_assigned,
        "enabled": s.enabled and not s.terminated,
        "terminated": s.terminated,
        "pass_host_header": s.pass_host_header,
        "rewrite_redirects": s.rewrite_redirects,
        "auth": auth_to_api(s.auth),
        "private": s.private,
        "assertion": s.assertion_mode,
        "max_session_age_seconds": s.max_session_age_seconds,
        "load_balancing": load_balancing_to_api(s.load_balancing),
        "meta": _prune({"created_at": ts(s.meta.created_at),
                        "certificate_issued_at": ts(s.meta.certificate_issued_at),
                        "status": str(s.meta.status),
                        "status_message": s.meta.status_message or None,
                        "status_updated_at": ts(s.meta.status_updated_at)}),
        "targets": [target_to_api(t, terminated=s.terminated, resolve_host=resolve_host)
                    for t in s.targets],
    }
    if "created_at" not in out["meta"]:
        out["meta"]["created_at"] = ts(datetime.fromtimestamp(0, UTC))
    if s.proxy_cluster:
        out["proxy_cluster"] = s.proxy_cluster
    if s.access_groups:
        out["access_groups"] = list(s.access_groups)
    restrictions = restrictions_to_api(s.restrictions)
    if restrictions:
        out["access_restrictions"] = restrictions
    return out


def service_status_to_api(s: Service) -> dict[str, Any]:
    """One row of the instance admin's status listing (no targets, no secrets)."""
    return _prune({
        "account_id": s.account_id, "id": s.id, "name": s.name, "domain": s.domain,
        "proxy_cluster": s.proxy_cluster or None, "status": str(s.meta.status),
        "status_message": s.meta.status_message or None,
        "status_updated_at": ts(s.meta.status_updated_at)})


def account_to_api(a: Account) -> dict[str, Any]:
    return _prune({"id": a.id, "name": a.name or a.id, "domain": a.domain,
                   "network_v4": a.network_v4, "network_v6": a.network_v6 or None,
                   "created_at": ts(a.created_at) or ts(datetime.fromtimestamp(0, UTC))})


# --- clusters, domains, tokens, logs ---------------------------------------------


def cluster_to_api(c: Cluster) -> dict[str, Any]:
    return _prune({
        "id": c.id, "address": c.address, "type": c.type, "online": c.online,
        "connected_proxies": c.connected_proxies,
        "supports_custom_ports": c.supports_custom_ports,
        "require_subdomain": c.require_subdomain,
        "supports_crowdsec": c.supports_crowdsec, "private": c.private,
    })


def free_domain_to_api(c: Cluster) -> dict[str, Any]:
    return _prune({
        "id": "", "domain": c.address, "validated": True, "type": "free",
        "supports_custom_ports": c.supports_custom_ports,
        "require_subdomain": c.require_subdomain,
        "supports_crowdsec": c.supports_crowdsec, "supports_private": c.private,
    })


def custom_domain_to_api(d: CustomDomain, cluster: Cluster | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": d.id, "domain": d.domain, "validated": d.validated,
                           "type": "custom", "target_cluster": d.target_cluster}
    if cluster is not None:
        out.update(_prune({"supports_custom_ports": cluster.supports_custom_ports,
                           "supports_crowdsec": cluster.supports_crowdsec,
                           "supports_private": cluster.private}))
    return out


def proxy_token_to_api(t: ProxyAccessToken) -> dict[str, Any]:
    return _prune({"id": t.id, "name": t.name, "expires_at": ts(t.expires_at),
                   "created_at": ts(t.created_at), "last_used": ts(t.last_used),
                   "revoked": t.revoked})


def access_log_to_api(e: AccessLogEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.id, "service_id": e.service_id, "timestamp": ts(e.timestamp),
        "method": e.method, "host": e.host, "path": e.path,
        "duration_ms": e.duration // 1_000_000, "status_code": e.status_code,
        "bytes_upload": e.bytes_upload, "bytes_download": e.bytes_download,
    }
    for name in ("source_ip", "reason", "user_id", "auth_method_used", "country_code",
                 "city_name", "subdivision_code", "protocol", "upstream_target"):
        if getattr(e, name):
            out[name] = getattr(e, name)
    if e.metadata:
        out["metadata"] = dict(e.metadata)
    if e.user_groups is not None:
        out["user_groups"] = list(e.user_groups)
    return out


# --- users, groups, peers, PATs ------------------------------------------------------


def user_to_api(u: User) -> dict[str, Any]:
    return {"id": u.id, "email": u.email, "name": u.name, "role": u.role, "status": u.status,
            "auto_groups": list(u.auto_groups), "is_service_user": u.is_service_user,
            "is_blocked": u.blocked, "pending_approval": u.pending_approval, "issued": "api"}


def pat_to_api(t: PersonalAccessToken) -> dict[str, Any]:
    return _prune({"id": t.id, "name": t.name, "expiration_date": ts(t.expires_at),
                   "created_by": t.created_by, "created_at": ts(t.created_at),
                   "last_used": ts(t.last_used)})


def group_to_api(g: Group, peer_names: Mapping[str, str]) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "issued": g.issued or "api", "peers_count": len(g.peers),
            "peers": [{"id": p, "name": peer_names.get(p, "")} for p in g.peers]}


def peer_to_api(p: Peer, groups: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """``groups``: ``{group id: (name, member count)}`` (``store.groups.summaries``)."""
    return _prune({
        "id": p.id, "name": p.name, "ip": p.ip, "ipv6": p.ipv6 or None,
        "dns_label": p.dns_label, "public_key": p.key, "user_id": p.user_id,
        "endpoint": p.endpoint, "connected": p.connected, "last_seen": ts(p.last_seen),
        "groups": [{"id": gid, "name": groups.get(gid, ("", 0))[0],
                    "peers_count": groups.get(gid, ("", 0))[1]}
                   for gid in p.groups],
        "proxy_embedded": p.proxy, "proxy_cluster": p.proxy_cluster or None,
        "ephemeral": p.ephemeral,
    })


def total_pages(total: int, page_size: int) -> int:
    return math.ceil(total / page_size) if page_size else 0
