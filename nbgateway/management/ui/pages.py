"""The dashboard's pages: one synchronous function per (method, path) under ``/ui``.

Every read and write goes through :meth:`.resource.Ctx.api`, i.e. the REST
API's route handlers by operation id, so a user-role token sees exactly what the
REST API would show it and a form error is the API's 422/400 message, shown
inline next to the form.  Runs in the store thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nbgateway.management.model import MODES, TARGET_PROTOCOLS, TARGET_TYPES

from .bridge import Outcome
from .resource import Ctx, Page, ca_certificate_text, data_uri, qs

PAGE_SIZE = 25


def _lines(text: str) -> list[str]:
    return [p.strip() for p in text.replace(",", "\n").splitlines() if p.strip()]


def _int(text: str, default: int = 0) -> int | str:
    text = text.strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        return text  # the API's type check names the field


# -- overview and live view ---------------------------------------------------------


def _live_state(ctx: Ctx) -> dict[str, Any]:
    proxies, proxies_error = ctx.listing("listProxies")
    clusters, _ = ctx.listing("listClusters")
    services, services_error = ctx.listing("listServices")
    return {"proxies": proxies, "proxies_error": proxies_error, "clusters": clusters,
            "services": services, "services_error": services_error}


def overview(ctx: Ctx) -> Page:
    state = _live_state(ctx)
    peers, _ = ctx.listing("listPeers")
    groups, _ = ctx.listing("listGroups")
    denials = ctx.api("listProxyEvents", query={"status": "failed", "page_size": "10"})
    return ctx.render("overview.html", **state, peers=peers, groups=groups,
                      denials=denials.body["data"] if denials.ok else [],
                      denials_error=denials.message)


def live(ctx: Ctx) -> Page:
    return ctx.render("live.html", **_live_state(ctx))


def live_fragment(ctx: Ctx) -> Page:
    return ctx.render("live_fragment.html", **_live_state(ctx))


# -- services -------------------------------------------------------------------------


def services(ctx: Ctx) -> Page:
    rows, error = ctx.listing("listServices")
    return ctx.render("services.html", services=rows, error=error)


def _service_form(ctx: Ctx, values: dict[str, Any], error: str = "", status: int = 200,
                  service_id: str = "") -> Page:
    groups, _ = ctx.listing("listGroups")
    return ctx.render("service_form.html", status, v=values, error=error, groups=groups,
                      service_id=service_id, modes=MODES, target_types=TARGET_TYPES,
                      protocols=TARGET_PROTOCOLS)


def _service_values(svc: dict[str, Any]) -> dict[str, Any]:
    t = (svc.get("targets") or [{}])[0]
    r = svc.get("access_restrictions") or {}
    return {
        "name": svc.get("name", ""), "domain": svc.get("domain", ""),
        "enabled": svc.get("enabled", True), "private": svc.get("private", False),
        "access_groups": svc.get("access_groups") or [], "mode": svc.get("mode") or "http",
        "listen_port": svc.get("listen_port") or "",
        "pass_host_header": svc.get("pass_host_header", False),
        "target_type": t.get("target_type", "cluster"), "target_id": t.get("target_id", ""),
        "protocol": t.get("protocol", "http"), "host": t.get("host", ""),
        "port": t.get("port") or "", "path": t.get("path") or "",
        "direct_upstream": (t.get("options") or {}).get("direct_upstream", False),
        "upstream_h2": (t.get("options") or {}).get("upstream_protocol") == "h2",
        "allowed_cidrs": "\n".join(r.get("allowed_cidrs") or []),
        "blocked_cidrs": "\n".join(r.get("blocked_cidrs") or []),
        "auth_state": _auth_state(svc.get("auth") or {}),
    }


def _auth_state(auth: dict[str, Any]) -> dict[str, Any]:
    """What the form shows of a service's auth: which methods are on, header
    names; never a secret (the API returns none)."""
    return {
        "password": bool((auth.get("password_auth") or {}).get("enabled")),
        "pin": bool((auth.get("pin_auth") or {}).get("enabled")),
        "sso": bool((auth.get("bearer_auth") or {}).get("enabled")),
        "headers": [h.get("header", "") for h in auth.get("header_auths") or []
                    if h.get("header")],
    }


def _auth_from_form(ctx: Ctx, auth: dict[str, Any]) -> dict[str, Any]:
    """The ``auth`` object to send: the service's current one (secrets come back
    empty from the API, which keeps the stored hashes) with the form's changes,
    exactly as ``nbgateway-admin services auth`` builds it."""
    auth = dict(auth)
    password, pin = ctx.field("auth_password"), ctx.field("auth_pin")
    if password:
        auth["password_auth"] = {"enabled": True, "password": password}
    elif ctx.checked("auth_clear_password"):
        auth.pop("password_auth", None)
    if pin:
        auth["pin_auth"] = {"enabled": True, "pin": pin}
    elif ctx.checked("auth_clear_pin"):
        auth.pop("pin_auth", None)
    drop = {n.lower() for n in ctx.fields("auth_clear_header")}
    headers = [dict(h) for h in auth.get("header_auths") or []
               if h.get("header", "").lower() not in drop]
    name, value = ctx.field("auth_header_name"), ctx.field("auth_header_value")
    if name:
        headers = [h for h in headers if h.get("header", "").lower() != name.lower()]
        headers.append({"enabled": True, "header": name, "value": value})
    if headers:
        auth["header_auths"] = headers
    else:
        auth.pop("header_auths", None)
    bearer = dict(auth.get("bearer_auth") or {})
    if ctx.checked("auth_sso") or bearer:
        bearer["enabled"] = ctx.checked("auth_sso")
        auth["bearer_auth"] = bearer
    return auth


def _values_from_form(ctx: Ctx) -> dict[str, Any]:
    return {
        "name": ctx.field("name"), "domain": ctx.field("domain"),
        "enabled": ctx.checked("enabled"), "private": ctx.checked("private"),
        "access_groups": ctx.fields("access_groups"), "mode": ctx.field("mode", "http"),
        "listen_port": ctx.field("listen_port"), "pass_host_header": ctx.checked(
            "pass_host_header"),
        "target_type": ctx.field("target_type"), "target_id": ctx.field("target_id"),
        "protocol": ctx.field("protocol"), "host": ctx.field("host"), "port": ctx.field("port"),
        "path": ctx.field("path"), "direct_upstream": ctx.checked("direct_upstream"),
        "upstream_h2": ctx.checked("upstream_h2"),
        "allowed_cidrs": ctx.field("allowed_cidrs"), "blocked_cidrs": ctx.field("blocked_cidrs"),
    }


#: fields of a stored service that the form does not edit but an update keeps
_KEPT_FIELDS = ("rewrite_redirects", "assertion", "max_session_age_seconds", "load_balancing")


def _service_body(v: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = {
        "target_type": v["target_type"], "target_id": v["target_id"],
        "protocol": v["protocol"], "host": v["host"], "port": _int(v["port"]),
        "enabled": True, "options": {"direct_upstream": v["direct_upstream"]}}
    if v.get("upstream_h2"):  # HTTP/2 to the target (gRPC); kept across edits
        target["options"]["upstream_protocol"] = "h2"
    if v["path"]:
        target["path"] = v["path"]
    body: dict[str, Any] = {
        "name": v["name"], "domain": v["domain"], "enabled": v["enabled"],
        "private": v["private"], "mode": v["mode"], "targets": [target],
        "pass_host_header": v["pass_host_header"],
        "access_restrictions": {"allowed_cidrs": _lines(v["allowed_cidrs"]),
                                "blocked_cidrs": _lines(v["blocked_cidrs"])}}
    if v["private"]:
        body["access_groups"] = v["access_groups"]
    if v["mode"] != "http":
        body["listen_port"] = _int(v["listen_port"])
    return body


def service_new(ctx: Ctx) -> Page:
    return _service_form(ctx, _service_values({"enabled": True}))


def service_edit(ctx: Ctx, service_id: str) -> Page:
    out = ctx.api("getService", {"serviceId": service_id})
    if not out.ok:
        return ctx.render("error.html", out.status, message=out.message)
    return _service_form(ctx, _service_values(out.body), service_id=service_id)


def service_save(ctx: Ctx, service_id: str = "") -> Page:
    values = _values_from_form(ctx)
    body = _service_body(values)
    current: dict[str, Any] = {}
    if service_id:
        got = ctx.api("getService", {"serviceId": service_id})
        if not got.ok:
            return ctx.render("error.html", got.status, message=got.message)
        current = got.body
        body.update({k: current[k] for k in _KEPT_FIELDS if k in current})
    auth = _auth_from_form(ctx, current.get("auth") or {})
    if auth:
        body["auth"] = auth
    values["auth_state"] = _auth_state(current.get("auth") or {})
    if service_id:
        out = ctx.api("updateService", {"serviceId": service_id}, body=body)
    else:
        out = ctx.api("createService", body=body)
    if not out.ok:  # typed secrets are not shown again
        return _service_form(ctx, values, out.message, out.status, service_id)
    return Page(redirect="/ui/services")


def service_delete(ctx: Ctx, service_id: str) -> Page:
    out = ctx.api("deleteService", {"serviceId": service_id})
    if not out.ok:
        return ctx.render("error.html", out.status, message=out.message)
    return Page(redirect="/ui/services")


def _written(ctx: Ctx, out: Outcome, back: Callable[[Ctx, str, int], Page], to: str) -> Page:
    """After a write: redirect to ``to``, or, when the API refused it, the list
    page ``back`` with the API's message and status."""
    if not out.ok:
        return back(ctx, out.message, out.status)
    return Page(redirect=to)


# -- groups and peers -------------------------------------------------------------------


def groups(ctx: Ctx, error: str = "", status: int = 200) -> Page:
    rows, list_error = ctx.listing("listGroups")
    return ctx.render("groups.html", status, groups=rows, error=error or list_error)


def group_create(ctx: Ctx) -> Page:
    return _written(ctx, ctx.api("createGroup", body={"name": ctx.field("name")}), groups,
                    "/ui/groups")


def group_delete(ctx: Ctx, group_id: str) -> Page:
    return _written(ctx, ctx.api("deleteGroup", {"groupId": group_id}), groups, "/ui/groups")


def peers(ctx: Ctx, error: str = "", status: int = 200, name: str = "") -> Page:
    rows, list_error = ctx.listing("listPeers")
    group_rows, _ = ctx.listing("listGroups")
    return ctx.render("peers.html", status, peers=rows, groups=group_rows,
                      error=error or list_error, name=name)


def peer_create(ctx: Ctx) -> Page:
    out = ctx.api("createPeer", body={"name": ctx.field("name"),
                                      "groups": ctx.fields("groups")})
    if not out.ok:
        return peers(ctx, out.message, out.status, ctx.field("name"))
    return Page(redirect=f"/ui/peers/{out.body['id']}")


def peer_detail(ctx: Ctx, peer_id: str) -> Page:
    peer = ctx.api("getPeer", {"peerId": peer_id})
    if not peer.ok:
        return ctx.render("error.html", peer.status, message=peer.message)
    conf = ctx.api("getPeerWireguardConfig", {"peerId": peer_id})
    qr = ctx.api("getPeerWireguardConfig", {"peerId": peer_id}, query={"format": "qr"})
    return ctx.render("peer.html", peer=peer.body,
                      ca_cert=_account_ca(ctx),
                      config=conf.body.decode() if conf.ok else "",
                      config_error=conf.message,
                      qr=data_uri("image/png", qr.body) if qr.ok else "")


def peer_config(ctx: Ctx, peer_id: str) -> Page:
    conf = ctx.api("getPeerWireguardConfig", {"peerId": peer_id})
    if not conf.ok:
        return ctx.render("error.html", conf.status, message=conf.message)
    peer = ctx.api("getPeer", {"peerId": peer_id})
    name = "".join(c if c.isalnum() or c in "-_" else "-"
                   for c in (peer.body or {}).get("name", "wg0"))[:15] or "wg0"
    return Page(200, body=conf.body, content_type="text/plain; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}.conf"'})


def _account_ca(ctx: Ctx) -> str:
    """The signed-in account's private CA certificate(s) as management has them
    from the gateways (the REST API's ``getPrivateCACertificate``: that
    account's CAs only, never another account's or a gateway's own), or ""."""
    out = ctx.api("getPrivateCACertificate")
    return ca_certificate_text(out.body) if out.ok else ""


def ca_certificate(ctx: Ctx) -> Page:
    pem = _account_ca(ctx)
    if not pem:
        return ctx.render("error.html", 404,
                          message="no gateway has reported a private CA for this account yet")
    return Page(200, body=pem.encode(), content_type="application/x-pem-file",
                headers={"Content-Disposition": 'attachment; filename="nbgateway-ca.crt"'})


def peer_delete(ctx: Ctx, peer_id: str) -> Page:
    return _written(ctx, ctx.api("deletePeer", {"peerId": peer_id}), peers, "/ui/peers")


# -- proxy tokens -------------------------------------------------------------------------


def tokens(ctx: Ctx, error: str = "", status: int = 200) -> Page:
    rows, list_error = ctx.listing("listProxyTokens")
    return ctx.render("tokens.html", status, tokens=rows, error=error or list_error)


def token_create(ctx: Ctx) -> Page:
    out = ctx.api("createProxyToken", body={"name": ctx.field("name")})
    if not out.ok:
        return tokens(ctx, out.message, out.status)
    page = Page(redirect="/ui/tokens")
    page.flash = {"token_name": out.body["name"], "plain_token": out.body["plain_token"]}
    return page


def token_revoke(ctx: Ctx, token_id: str) -> Page:
    return _written(ctx, ctx.api("revokeProxyToken", {"tokenId": token_id}), tokens,
                    "/ui/tokens")


# -- access log ---------------------------------------------------------------------------

LOG_FILTERS = ("service_id", "user_id", "group_id", "search", "status", "status_code",
               "start_date", "end_date")


def access_log(ctx: Ctx) -> Page:
    filters = {k: ctx.query.get(k, "").strip() for k in LOG_FILTERS}
    page_no = ctx.query.get("page", "1")
    # the API filters by group, so every page is a full page of matching entries
    query = {**filters, "page": page_no, "page_size": str(PAGE_SIZE)}
    out = ctx.api("listProxyEvents", query=query)
    svc_rows, _ = ctx.listing("listServices")
    group_rows, _ = ctx.listing("listGroups")
    rows = out.body["data"] if out.ok else []
    pages = out.body["total_pages"] if out.ok else 0
    current = out.body["page"] if out.ok else 1
    nav = {"prev": qs(**filters, page=current - 1) if current > 1 else "",
           "next": qs(**filters, page=current + 1) if current < pages else ""}
    return ctx.render("access_log.html", rows=rows, filters=filters, groups=group_rows,
                      error=out.message, total=out.body["total_records"] if out.ok else 0,
                      page=current, pages=pages, nav=nav, services=svc_rows,
                      status=200 if out.ok else out.status)


# -- accounts (instance admin) ---------------------------------------------------------

#: service statuses counted as failing on the accounts page
FAILING = ("error", "certificate_failed", "tunnel_not_created")


def _account_counts(statuses: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in statuses:
        c = counts.setdefault(row.get("account_id", ""),
                              {"services": 0, "active": 0, "pending": 0, "failing": 0})
        c["services"] += 1
        status = row.get("status", "")
        if status == "active":
            c["active"] += 1
        elif status in FAILING:
            c["failing"] += 1
        else:
            c["pending"] += 1
    return counts


def accounts(ctx: Ctx) -> Page:
    """Every account for an instance admin (the API's listing), with counts from
    the service-status listing; others see their own account only."""
    rows, error = ctx.listing("listAccounts")
    statuses, _ = ctx.listing("listServiceStatuses")
    empty = {"services": 0, "active": 0, "pending": 0, "failing": 0}
    counts = _account_counts(statuses)
    return ctx.render("accounts.html", accounts=rows, error=error,
                      counts={a["id"]: counts.get(a["id"], empty) for a in rows},
                      failing=[r for r in statuses if r.get("status") in FAILING])


def account_detail(ctx: Ctx, account_id: str) -> Page:
    """One account's context: the account and its services' statuses, read
    through the same REST operations (writes stay in the signed-in account)."""
    out = ctx.api("getAccount", {"accountId": account_id})
    if not out.ok:
        return ctx.render("account.html", out.status, account=None, error=out.message,
                          services=[])
    statuses, error = ctx.listing("listServiceStatuses")
    return ctx.render("account.html", account=out.body, error=error,
                      services=[r for r in statuses if r.get("account_id") == account_id],
                      own=account_id == ctx.identity.account_id)


ROUTES: list[tuple[str, tuple[str, ...], Any]] = [
    ("GET", ("accounts",), accounts),
    ("GET", ("accounts", "{account_id}"), account_detail),
    ("GET", (), overview),
    ("GET", ("live",), live),
    ("GET", ("live", "fragment"), live_fragment),
    ("GET", ("services",), services),
    ("GET", ("services", "new"), service_new),
    ("POST", ("services",), service_save),
    ("GET", ("services", "{service_id}"), service_edit),
    ("POST", ("services", "{service_id}"), service_save),
    ("POST", ("services", "{service_id}", "delete"), service_delete),
    ("GET", ("groups",), groups),
    ("POST", ("groups",), group_create),
    ("POST", ("groups", "{group_id}", "delete"), group_delete),
    ("GET", ("peers",), peers),
    ("POST", ("peers",), peer_create),
    ("GET", ("peers", "{peer_id}"), peer_detail),
    ("GET", ("peers", "{peer_id}", "config"), peer_config),
    ("POST", ("peers", "{peer_id}", "delete"), peer_delete),
    ("GET", ("ca.crt",), ca_certificate),
    ("GET", ("tokens",), tokens),
    ("POST", ("tokens",), token_create),
    ("POST", ("tokens", "{token_id}", "revoke"), token_revoke),
    ("GET", ("access-log",), access_log),
]
