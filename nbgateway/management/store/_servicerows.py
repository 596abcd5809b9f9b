"""Store part: how a service and its targets are stored.

The encoding of a service's JSON columns (auth, restrictions, access groups,
assertion keys, machine tokens, load balancing, client certificates) and its
decoding into immutable model values (memoised per bulk load, so services
sharing a configuration share one decoded value), the row -> model
converters (:func:`row_service`, :func:`row_target`), the column values a
service is written with (:func:`service_values`, :func:`insert_targets`),
and the hashing of submitted auth secrets before they are stored
(:func:`hash_new_secrets`: an empty secret on update keeps the stored hash).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nbgateway.management import assertionkeys, clientcerts, servicetokens
from nbgateway.management.errors import ValidationError
from nbgateway.management.model import (
    AccessRestrictions,
    AuthConfig,
    BearerAuth,
    HeaderAuth,
    LoadBalancing,
    PasswordAuth,
    PinAuth,
    Service,
    ServiceMeta,
    Target,
    TargetOptions,
)
from nbgateway.management.store import _secrets
from nbgateway.management.store._base import dumps, loads
from nbgateway.management.store.schema import targets


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


def service_values(s: Service) -> dict:
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


def hash_new_secrets(new: AuthConfig, old: AuthConfig | None, creating: bool) -> AuthConfig:
    """Hash submitted secrets; an empty secret on update keeps the stored hash."""
    pw, pin = new.password_auth, new.pin_auth
    if pw is not None:
        kept = old.password_auth.password if old and old.password_auth is not None else None
        pw = dataclasses.replace(pw, password=_stored_secret(
            pw.password, kept, pw.enabled, "password_auth: password"))
    if pin is not None:
        kept = old.pin_auth.pin if old and old.pin_auth is not None else None
        pin = dataclasses.replace(pin, pin=_stored_secret(pin.pin, kept, pin.enabled,
                                                          "pin_auth: pin"))
    headers = []
    old_headers = {h.header.lower(): h.value for h in (old.header_auths if old else ())}
    for i, h in enumerate(new.header_auths):
        kept = None if creating else old_headers.get(h.header.lower())
        headers.append(dataclasses.replace(h, value=_stored_secret(
            h.value, kept, h.enabled, f"header_auths[{i}]: value")))
    return dataclasses.replace(new, password_auth=pw, pin_auth=pin, header_auths=tuple(headers))


def _stored_secret(submitted: str, kept: str | None, enabled: bool, what: str) -> str:
    """What one secret is stored as: the hash of a submitted one, else the kept
    (stored, already hashed) one; ValidationError ``<what> is required`` when it
    is enabled with neither."""
    value = submitted
    if submitted:
        value = _secrets.hash_secret(submitted)
    elif kept is not None:
        value = kept
    if enabled and not value:
        raise ValidationError(f"{what} is required")
    return value


def insert_targets(conn: Connection, s: Service) -> None:
    """Insert the service's targets in order (``position``); the caller has
    deleted the old ones on an update."""
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
