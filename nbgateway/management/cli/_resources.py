"""``nbgateway-admin`` commands over the REST resources: users, groups, peers,
services, proxy tokens, access logs, clusters, domains and accounts.

Each handler takes ``(client, args, out)``; :func:`register` adds the
commands with their help texts and examples.  Secrets are printed only when
the command's purpose is to hand one out (``peers config``, ``tokens
create``, ``users token``, ``accounts create``); ``peers create`` never
prints the generated private key.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, TextIO

from nbgateway.management.cli import _clientca
from nbgateway.management.cli._client import Client, CliError, UsageError, _q
from nbgateway.management.cli._output import Progress, emit, table, write_json
from nbgateway.management.cli._parsing import Commands

USER_COLS = ("id", "email", "name", "role", "status", "auto_groups")
GROUP_COLS = ("id", "name", "peers_count", "peers")
PEER_COLS = ("id", "name", "ip", "ipv6", "groups", "user_id", "proxy_cluster")
SERVICE_COLS = ("id", "name", "domain", "mode", "private", "access_groups", "enabled",
                "proxy_cluster", "status")
TOKEN_COLS = ("id", "name", "created_at", "expires_at", "last_used", "revoked")
LOG_COLS = ("timestamp", "method", "host", "path", "status_code", "duration_ms", "source_ip",
            "user_id", "user_groups", "auth_method_used", "reason")
CLUSTER_COLS = ("address", "type", "online", "connected_proxies", "private")
DOMAIN_COLS = ("id", "domain", "type", "target_cluster", "validated", "supports_private")
ACCOUNT_COLS = ("id", "name", "network_v4", "network_v6", "created_at")

Args = argparse.Namespace


# --- name/id resolution --------------------------------------------------------------


def resolve(client: Client, path: str, ref: str, what: str, key: str = "name") -> dict[str, Any]:
    """Find an object by id, else by unique ``key`` (name / domain / email)."""
    items = client.get(path)
    for item in items:
        if item.get("id") == ref:
            return item
    matches = [item for item in items if item.get(key) == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"{what} {ref!r} not found (list them with "
                       f"'nbgateway-admin {what}s list')")
    raise CliError(f"{what} {key} {ref!r} is ambiguous; use the id")


def group_ids(client: Client, refs: Sequence[str] | None) -> list[str]:
    return [resolve(client, "/groups", r, "group")["id"] for r in refs or ()]


# --- target spec -----------------------------------------------------------------

TARGET_HELP = """\
target SPEC: where the gateway forwards requests. Either a URL, reached
directly from the gateway host:

  --target http://10.0.0.5:8080/app     (tcp://10.0.0.5:5432 for --mode tcp/tls,
                                         udp://10.0.0.5:53 for --mode udp)

or comma-separated fields:

  type=cluster|peer|host|domain|subnet   default: cluster (the gateway that serves
                                         the domain dials host:port itself)
  id=ID        the peer/resource id (type=peer etc.); for type=cluster the cluster
               address, default: the cluster whose address ends the --domain
  host=HOST    upstream host or IP (required for type=cluster)
  port=PORT    default 80, or 443 with protocol=https
  protocol=http|https, path=/prefix, timeout=30s
  direct       dial host:port from the gateway host (implied by type=cluster)
  upstream=h2  HTTP/2 to the target (h2c for http, ALPN h2 for https), with
               trailers relayed: for gRPC services (default: HTTP/1.1)"""


def parse_target(spec: str) -> dict[str, Any]:
    """``type=cluster,host=10.0.0.5,port=8080,protocol=http,path=/,direct``, or
    ``http://10.0.0.5:8080/path`` (a cluster target dialled directly).  A
    cluster target's ``target_id`` may be left for :func:`complete_targets`."""
    if "://" in spec:
        return _url_target(spec)
    target: dict[str, Any] = {"protocol": "http", "enabled": True}
    options: dict[str, Any] = {}
    keys = {"type": "target_type", "id": "target_id", "host": "host", "port": "port",
            "protocol": "protocol", "path": "path"}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if name in ("direct", "direct_upstream") and not sep:
            options["direct_upstream"] = True
        elif name == "timeout" and sep:
            options["request_timeout"] = value
        elif name == "upstream" and sep:
            if value not in ("h2", "http1"):
                raise UsageError(f"--target: upstream must be h2 or http1, not {value!r}")
            options["upstream_protocol"] = value
        elif name in keys and sep:
            if name == "port":
                try:
                    target["port"] = int(value)
                except ValueError:
                    raise UsageError(f"--target: port must be a number, not {value!r}") \
                        from None
            else:
                target[keys[name]] = value
        else:
            raise UsageError(f"--target: bad field {part!r}; use a URL or type=,id=,host=,"
                             "port=,protocol=,path=,timeout=,upstream=,direct (see "
                             "'nbgateway-admin services create --help')")
    target.setdefault("target_type", "peer" if "target_id" in target else "cluster")
    if target["target_type"] == "cluster":
        options.setdefault("direct_upstream", True)
        if not target.get("host"):
            raise UsageError("--target: a cluster target needs host= (the upstream the "
                             "gateway dials), e.g. host=10.0.0.5,port=8080")
    if options:
        target["options"] = options
    target.setdefault("port", 443 if target["protocol"] == "https" else 80)
    return target


def _url_target(spec: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(spec)
    if parts.scheme not in ("http", "https", "tcp", "udp") or not parts.hostname:
        raise UsageError(f"--target: {spec!r} is not an http(s)://host[:port] or "
                         "tcp|udp://host:port URL")
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        raise UsageError(f"--target: invalid port in {spec!r}") from None
    if port is None:
        raise UsageError(f"--target: {spec!r} needs a port (tcp://host:port)")
    target: dict[str, Any] = {"target_type": "cluster", "protocol": parts.scheme,
                              "host": parts.hostname, "port": port, "enabled": True,
                              "options": {"direct_upstream": True}}
    if parts.path not in ("", "/"):
        target["path"] = parts.path
    return target


def complete_targets(client: Client, domain: str, targets: list[dict[str, Any]]) -> None:
    """Fill a cluster target's missing id: the cluster serving ``domain``
    (a connected cluster's address, or a custom domain's target cluster)."""
    if all(t.get("target_id") for t in targets):
        return
    served: dict[str, str] = {}  # domain suffix -> cluster
    for d in client.get("/reverse-proxies/domains") or []:
        cluster = d.get("target_cluster") or (d.get("domain") if d.get("type") == "free" else "")
        if d.get("domain") and cluster:
            served[d["domain"]] = cluster
    owning = sorted((suffix for suffix in served
                     if domain == suffix or domain.endswith("." + suffix)), key=len, reverse=True)
    if not owning:
        raise UsageError(f"no gateway cluster serves {domain!r} (domains: "
                         f"{', '.join(sorted(served)) or 'none'}); pick a domain under one, or "
                         "give id=CLUSTER in --target")
    for t in targets:
        t.setdefault("target_id", served[owning[0]])


def deleted(args: Args, out: TextIO, what: str, ident: str, label: str | None = None,
            verb: str = "deleted") -> None:
    """Report a deletion: a line, or ``{"deleted": ...}`` with --json."""
    if args.json:
        write_json(out, {verb: what, "id": ident, **({"name": label} if label else {})})
    else:
        out.write(f"{verb} {what} {ident}{f' ({label})' if label else ''}\n")


# --- users -------------------------------------------------------------------------


def users_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/users"), USER_COLS)


def users_show(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, resolve(client, "/users", args.ref, "user", key="email"), USER_COLS)


def users_create(client: Client, args: Args, out: TextIO) -> None:
    body = {"email": args.email or "", "name": args.name or "", "role": args.role,
            "auto_groups": group_ids(client, args.auto_group), "is_service_user": False}
    emit(args.json, out, client.post("/users", body), USER_COLS)


def users_delete(client: Client, args: Args, out: TextIO) -> None:
    user = resolve(client, "/users", args.ref, "user", key="email")
    client.delete(f"/users/{_q(user['id'])}")
    deleted(args, out, "user", user["id"], user.get("email"))


def _users_block(client: Client, args: Args, out: TextIO, blocked: bool) -> None:
    user = resolve(client, "/users", args.ref, "user", key="email")
    body = {"role": user["role"], "auto_groups": user["auto_groups"], "is_blocked": blocked,
            "pending_approval": False}
    emit(args.json, out, client.put(f"/users/{_q(user['id'])}", body), USER_COLS)


def users_block(client: Client, args: Args, out: TextIO) -> None:
    _users_block(client, args, out, True)


def users_unblock(client: Client, args: Args, out: TextIO) -> None:
    _users_block(client, args, out, False)


def users_token(client: Client, args: Args, out: TextIO) -> None:
    user = resolve(client, "/users", args.ref, "user", key="email")
    gen = client.post(f"/users/{_q(user['id'])}/tokens",
                      {"name": args.name, "expires_in": args.days})
    if args.json:
        write_json(out, gen)
        return
    table([gen["personal_access_token"]], ("id", "name", "expiration_date"), out)
    out.write(f"token (shown once): {gen['plain_token']}\n")


# --- groups ------------------------------------------------------------------------


def groups_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/groups"), GROUP_COLS)


def groups_show(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, resolve(client, "/groups", args.ref, "group"), GROUP_COLS)


def groups_create(client: Client, args: Args, out: TextIO) -> None:
    peers = [resolve(client, "/peers", p, "peer")["id"] for p in args.peer or ()]
    progress = Progress(sys.stderr, len(args.name))
    created = []
    for name in args.name:
        created.append(client.post("/groups", {"name": name, "peers": peers}))
        progress.step(f"created group {name}")
    emit(args.json, out, created if len(created) > 1 else created[0], GROUP_COLS)


def groups_delete(client: Client, args: Args, out: TextIO) -> None:
    group = resolve(client, "/groups", args.ref, "group")
    client.delete(f"/groups/{_q(group['id'])}")
    deleted(args, out, "group", group["id"], group.get("name"))


def _groups_member(client: Client, args: Args, out: TextIO, add: bool) -> None:
    group = resolve(client, "/groups", args.ref, "group")
    peer = resolve(client, "/peers", args.peer_ref, "peer")["id"]
    members = [p["id"] for p in group["peers"]]
    if add and peer not in members:
        members.append(peer)
    elif not add:
        members = [m for m in members if m != peer]
    body = {"name": group["name"], "peers": members}
    emit(args.json, out, client.put(f"/groups/{_q(group['id'])}", body), GROUP_COLS)


def groups_add_peer(client: Client, args: Args, out: TextIO) -> None:
    _groups_member(client, args, out, True)


def groups_remove_peer(client: Client, args: Args, out: TextIO) -> None:
    _groups_member(client, args, out, False)


# --- peers -------------------------------------------------------------------------


def peers_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/peers"), PEER_COLS)


def peers_show(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, resolve(client, "/peers", args.ref, "peer"), PEER_COLS)


def peers_create(client: Client, args: Args, out: TextIO) -> None:
    if args.public_key and len(args.name) > 1:
        raise UsageError("peers create: --public-key names one key; create one peer at a time")
    base: dict[str, Any] = {"groups": group_ids(client, args.group)}
    if args.public_key:
        base["public_key"] = args.public_key
    if args.user:
        base["user_id"] = resolve(client, "/users", args.user, "user", key="email")["id"]
    if args.endpoint:
        base["endpoint"] = args.endpoint
    if args.proxy_cluster:
        base["proxy_cluster"] = args.proxy_cluster
    progress = Progress(sys.stderr, len(args.name))
    created = []
    for name in args.name:
        peer = client.post("/peers", {**base, "name": name})
        peer.pop("private_key", None)  # a secret: only `peers config` prints it
        created.append(peer)
        progress.step(f"created peer {name}")
    if args.json:
        write_json(out, created if len(created) > 1 else created[0])
        return
    table(created, PEER_COLS, out)
    if not args.public_key:
        out.write("its WireGuard config (with the private key): nbgateway-admin peers config "
                  f"{created[0]['name'] if len(created) == 1 else 'NAME'} > wg0.conf\n")


def peers_delete(client: Client, args: Args, out: TextIO) -> None:
    peer = resolve(client, "/peers", args.ref, "peer")
    client.delete(f"/peers/{_q(peer['id'])}")
    deleted(args, out, "peer", peer["id"], peer.get("name"))


def peers_config(client: Client, args: Args, out: TextIO) -> None:
    peer = resolve(client, "/peers", args.ref, "peer")
    path = f"/peers/{_q(peer['id'])}/wireguard-config"
    if args.qr:
        png = client.request("GET", path, query={"format": "qr"}, raw=True)
        with open(args.qr, "wb") as f:
            f.write(png)
        print(f"wrote QR code to {args.qr}", file=sys.stderr)
        return
    conf = client.request("GET", path, raw=True).decode()
    if args.json:
        write_json(out, {"peer": peer["id"], "name": peer["name"], "config": conf})
    else:
        out.write(conf)


# --- services ----------------------------------------------------------------------


def _with_status(svc: dict[str, Any]) -> dict[str, Any]:
    meta = svc.get("meta") or {}
    return {**svc, "status": meta.get("status")}


def services_list(client: Client, args: Args, out: TextIO) -> None:
    services = client.get("/reverse-proxies/services")
    if args.json:
        write_json(out, services)
    else:
        table([_with_status(s) for s in services], SERVICE_COLS, out)


def services_show(client: Client, args: Args, out: TextIO) -> None:
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    if args.json:
        write_json(out, svc)
        return
    table([_with_status(svc)], SERVICE_COLS, out)
    message = (svc.get("meta") or {}).get("status_message")
    if message:
        out.write(f"status message: {message}\n")
    for t in svc.get("targets") or []:
        h2 = " (HTTP/2)" if (t.get("options") or {}).get("upstream_protocol") == "h2" else ""
        out.write(f"target  {t.get('target_type')} {t.get('target_id')} -> "
                  f"{t.get('protocol')}://{t.get('host')}:{t.get('port')}"
                  f"{t.get('path') or ''}{h2}\n")


def services_create(client: Client, args: Args, out: TextIO) -> None:
    if not args.target:
        raise UsageError("services create: at least one --target is required, e.g. "
                         "--target http://10.0.0.5:8080")
    targets = [parse_target(t) for t in args.target]
    complete_targets(client, args.domain, targets)
    body: dict[str, Any] = {"name": args.name or args.domain.split(".")[0],
                            "domain": args.domain, "enabled": not args.disabled,
                            "mode": args.mode, "targets": targets,
                            "pass_host_header": args.pass_host_header}
    if args.listen_port is not None:
        body["listen_port"] = args.listen_port
    if args.private:
        body["private"] = True
    if args.access_group:
        body["access_groups"] = group_ids(client, args.access_group)
    created = client.post("/reverse-proxies/services", body)
    if args.json:
        write_json(out, created)
    else:
        table([_with_status(created)], SERVICE_COLS, out)


_REQUEST_FIELDS = ("name", "domain", "mode", "listen_port", "targets", "enabled",
                   "pass_host_header", "rewrite_redirects", "auth", "access_restrictions",
                   "private", "access_groups", "assertion", "max_session_age_seconds",
                   "load_balancing")


def _secret(value: str | None, stdin: TextIO | None = None) -> str | None:
    """A secret from the command line; ``-`` reads one line from stdin (keeps it
    out of the process list)."""
    if value != "-":
        return value
    line = (stdin or sys.stdin).readline().rstrip("\r\n")
    if not line:
        raise UsageError("services auth: an empty secret on stdin")
    return line


def services_identity(client: Client, args: Args, out: TextIO) -> None:
    """Set the signed identity assertion mode and the session length of a
    service, or rotate its assertion signing key (the old key stays in the
    JWKS until its last token expired)."""
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    updated = svc
    if args.assertion is not None or args.max_session_age is not None:
        body = {k: svc[k] for k in _REQUEST_FIELDS if k in svc}
        if args.assertion is not None:
            body["assertion"] = args.assertion
        if args.max_session_age is not None:
            body["max_session_age_seconds"] = args.max_session_age
        updated = client.put(f"/reverse-proxies/services/{_q(svc['id'])}", body)
    if args.rotate_key:
        updated = client.post(
            f"/reverse-proxies/services/{_q(svc['id'])}/assertion-key/rotate", {})
    if args.json:
        write_json(out, updated)
        return
    age = updated.get("max_session_age_seconds") or 0
    out.write(f"{updated['domain']}: assertion {updated.get('assertion', 'off')}, session "
              f"{f'{age} s' if age else 'default (86400 s)'}"
              f"{', signing key rotated' if args.rotate_key else ''}\n")


def services_balance(client: Client, args: Args, out: TextIO) -> None:
    """Set how gateways balance the targets of each path of a service
    (several --target with the same path) and check their health."""
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    lb = {} if args.reset else dict(svc.get("load_balancing") or {})
    for flag, key in (("policy", "policy"), ("max_failures", "max_failures"),
                      ("backoff", "backoff_seconds"), ("max_backoff", "max_backoff_seconds")):
        value = getattr(args, flag)
        if value is not None:
            lb[key] = value
    check = dict(lb.get("health_check") or {})
    for flag, key in (("health_path", "path"), ("health_interval", "interval_seconds"),
                      ("health_timeout", "timeout_seconds"), ("health_status", "expected_status")):
        value = getattr(args, flag)
        if value is not None:
            check[key] = value
    if args.no_health_check:
        check = {}
    if check:
        lb["health_check"] = check
    else:
        lb.pop("health_check", None)
    body = {k: svc[k] for k in _REQUEST_FIELDS if k in svc}
    body["load_balancing"] = lb
    updated = client.put(f"/reverse-proxies/services/{_q(svc['id'])}", body)
    if args.json:
        write_json(out, updated)
        return
    got = updated.get("load_balancing") or {}
    hc = got.get("health_check")
    paths: dict[str, int] = {}
    for t in updated.get("targets") or ():
        paths[t.get("path") or "/"] = paths.get(t.get("path") or "/", 0) + 1
    spread = ", ".join(f"{p} x{n}" for p, n in sorted(paths.items()))
    out.write(f"{updated['domain']}: {got.get('policy', 'round_robin')}, eject after "
              f"{got.get('max_failures') or 3} failures, back-off "
              f"{got.get('backoff_seconds') or 10}-{got.get('max_backoff_seconds') or 300} s, "
              + (f"health check GET {hc['path']} every {hc.get('interval_seconds') or 10} s"
                 if hc else "no health check")
              + f"; targets per path: {spread}\n")


def services_token(client: Client, args: Args, out: TextIO) -> None:
    """A service's machine-client tokens: list, create (the secret is printed
    once) or revoke."""
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    base = f"/reverse-proxies/services/{_q(svc['id'])}/tokens"
    if args.action == "list":
        rows = client.get(base)
        if args.json:
            write_json(out, rows)
            return
        for t in rows:
            exp = t.get("expires_at") or "never"
            out.write(f"{t['id']}  {t['state']:<8} {t['name']}  expires {exp}\n")
        return
    if not args.arg:
        raise UsageError(f"services token {args.action}: "
                         f"{'NAME' if args.action == 'create' else 'TOKEN_ID'} is required")
    if args.action == "create":
        body: dict = {"name": args.arg}
        if args.expires_in is not None:
            body["expires_in_seconds"] = args.expires_in
        made = client.post(base, body)
        if args.json:
            write_json(out, made)
            return
        out.write(f"token {made['id']} ({made['name']}) created; the secret is shown only "
                  f"now:\n  X-NetBird-Token-Id: {made['id']}\n"
                  f"  X-NetBird-Token-Secret: {made['secret']}\n"
                  f"  Authorization: Bearer {made['bearer']}\n")
        return
    gone = client.delete(f"{base}/{_q(args.arg)}")
    if args.json:
        write_json(out, gone)
        return
    out.write(f"token {gone['id']} revoked\n")


def services_auth(client: Client, args: Args, out: TextIO) -> None:
    """Set or clear password / PIN / header auth on a service.  Management
    stores argon2id hashes; responses never carry the secrets (an unchanged
    secret is sent back empty, which keeps the stored hash)."""
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    body = {k: svc[k] for k in _REQUEST_FIELDS if k in svc}
    auth = dict(body.get("auth") or {})
    password, pin = _secret(args.password), _secret(args.pin)
    if args.password is not None and args.clear_password:
        raise UsageError("services auth: --password and --clear-password together")
    if args.pin is not None and args.clear_pin:
        raise UsageError("services auth: --pin and --clear-pin together")
    if password is not None:
        auth["password_auth"] = {"enabled": True, "password": password}
    elif args.clear_password:
        auth.pop("password_auth", None)
    if pin is not None:
        if not pin.isdigit():
            raise UsageError("services auth: --pin must be digits")
        auth["pin_auth"] = {"enabled": True, "pin": pin}
    elif args.clear_pin:
        auth.pop("pin_auth", None)
    headers = [dict(h) for h in auth.get("header_auths") or []]
    for name in args.clear_header or []:
        headers = [h for h in headers if h.get("header", "").lower() != name.lower()]
    for spec in args.header or []:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise UsageError("services auth: --header takes NAME=VALUE (VALUE - reads stdin)")
        value = _secret(value) or ""
        headers = [h for h in headers if h.get("header", "").lower() != name.strip().lower()]
        headers.append({"enabled": True, "header": name.strip(), "value": value})
    if headers:
        auth["header_auths"] = headers
    else:
        auth.pop("header_auths", None)
    if args.sso is not None:
        bearer = dict(auth.get("bearer_auth") or {})
        bearer["enabled"] = args.sso
        auth["bearer_auth"] = bearer
    body["auth"] = auth
    updated = client.put(f"/reverse-proxies/services/{_q(svc['id'])}", body)
    if args.json:
        write_json(out, updated)
        return
    a = updated.get("auth") or {}
    methods = [m for m, key in (("password", "password_auth"), ("pin", "pin_auth"),
                                ("sso", "bearer_auth")) if (a.get(key) or {}).get("enabled")]
    methods += [f"header {h['header']}" for h in a.get("header_auths") or [] if h.get("enabled")]
    out.write(f"{updated['domain']}: {', '.join(methods) or 'no operator auth'}\n")


def services_delete(client: Client, args: Args, out: TextIO) -> None:
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    client.delete(f"/reverse-proxies/services/{_q(svc['id'])}")
    deleted(args, out, "service", svc["id"], svc["domain"])


# --- proxy tokens ------------------------------------------------------------------


def tokens_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/reverse-proxies/proxy-tokens"), TOKEN_COLS)


def tokens_create(client: Client, args: Args, out: TextIO) -> None:
    created = client.post("/reverse-proxies/proxy-tokens",
                          {"name": args.name, "expires_in": args.expires_in})
    if args.json:
        write_json(out, created)
        return
    table([created], TOKEN_COLS, out)
    out.write(f"token (shown once): {created['plain_token']}\n")


def tokens_delete(client: Client, args: Args, out: TextIO) -> None:
    token = resolve(client, "/reverse-proxies/proxy-tokens", args.ref, "token")
    client.delete(f"/reverse-proxies/proxy-tokens/{_q(token['id'])}")
    deleted(args, out, "token", token["id"], token.get("name"), verb="revoked")


# --- logs, clusters, domains -------------------------------------------------------

LOG_FILTERS = ("page", "page_size", "sort_by", "sort_order", "search", "host", "path",
               "user_id", "source_ip", "method", "status", "status_code", "start_date",
               "end_date")


def logs_list(client: Client, args: Args, out: TextIO) -> None:
    page = client.request("GET", "/events/proxy",
                          query={k: getattr(args, k) for k in LOG_FILTERS})
    if args.json:
        write_json(out, page)
        return
    table(page["data"], LOG_COLS, out)
    out.write(f"page {page['page']}/{page['total_pages']}, {page['total_records']} entries\n")


def clusters_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/reverse-proxies/clusters"), CLUSTER_COLS)


def domains_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/reverse-proxies/domains"), DOMAIN_COLS)


def domains_create(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.post("/reverse-proxies/domains", {
        "domain": args.domain, "target_cluster": args.target_cluster}), DOMAIN_COLS)


def domains_delete(client: Client, args: Args, out: TextIO) -> None:
    dom = resolve(client, "/reverse-proxies/domains", args.ref, "domain", key="domain")
    client.delete(f"/reverse-proxies/domains/{_q(dom['id'])}")
    deleted(args, out, "domain", dom["id"], dom["domain"])


# --- accounts ----------------------------------------------------------------------


def accounts_list(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.get("/accounts"), ACCOUNT_COLS)


def accounts_show(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, resolve(client, "/accounts", args.ref, "account"), ACCOUNT_COLS)


def accounts_create(client: Client, args: Args, out: TextIO) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.admin_email:
        body["admin_email"] = args.admin_email
    created = client.post("/accounts", body)
    if args.json:
        write_json(out, created)
        return
    table([created], (*ACCOUNT_COLS, "admin_user_id"), out)
    out.write(f"first admin's token (shown once): {created.get('token')}\n"
              f"use it: NB_ADMIN_TOKEN=<token> nbgateway-admin groups list\n")


def accounts_delete(client: Client, args: Args, out: TextIO) -> None:
    account = resolve(client, "/accounts", args.ref, "account")
    client.delete(f"/accounts/{_q(account['id'])}")
    deleted(args, out, "account", account["id"], account.get("name"))


# --- registration ------------------------------------------------------------------


def register(cmd: Commands) -> None:
    g = cmd.group("users", "list, create, block or delete users; create their API tokens",
                  aliases=["user"], example=[
                      "nbgateway-admin users list",
                      "nbgateway-admin users create --email eve@example.com --auto-group ops",
                      "nbgateway-admin users token eve@example.com --days 7"])
    g.add("list", "list the account's users", func=users_list,
          example=["nbgateway-admin users list --json"])
    g.add("show", "show one user", func=users_show,
          example=["nbgateway-admin users show eve@example.com"]).add_argument(
        "ref", metavar="USER", help="user id or email")
    c = g.add("create", "create a user", func=users_create,
              example=["nbgateway-admin users create --email eve@example.com --role admin"])
    c.add_argument("--email", help="the user's email (how other commands find the user)")
    c.add_argument("--name", help="display name")
    c.add_argument("--role", default="user", choices=["owner", "admin", "user"],
                   help="default: %(default)s")
    c.add_argument("--auto-group", action="append", metavar="GROUP",
                   help="group name or id the user's peers join (repeatable)")
    for verb, func, text in (("delete", users_delete, "delete a user"),
                             ("block", users_block, "block a user (their tokens stop working)"),
                             ("unblock", users_unblock, "unblock a user")):
        g.add(verb, text, func=func, example=[f"nbgateway-admin users {verb} eve@example.com"]
              ).add_argument("ref", metavar="USER", help="user id or email")
    c = g.add("token", "create a personal access token for the REST API (printed once)",
              func=users_token,
              example=["nbgateway-admin users token eve@example.com --name ci --days 7"])
    c.add_argument("ref", metavar="USER", help="user id or email")
    c.add_argument("--name", default="nbgateway-admin", help="token name (default: %(default)s)")
    c.add_argument("--days", type=int, default=30, help="lifetime in days, 1..365 "
                                                        "(default: %(default)s)")

    g = cmd.group("groups", "list, create or delete groups; add or remove peers",
                  aliases=["group"], example=[
                      "nbgateway-admin groups create admins",
                      "nbgateway-admin groups add-peer admins laptop"])
    g.add("list", "list groups with their peers", func=groups_list,
          example=["nbgateway-admin groups list"])
    g.add("show", "show one group", func=groups_show,
          example=["nbgateway-admin groups show admins"]).add_argument(
        "ref", metavar="GROUP", help="group name or id")
    c = g.add("create", "create one or more groups", func=groups_create,
              example=["nbgateway-admin groups create admins",
                       "nbgateway-admin groups create dev ops qa"])
    c.add_argument("name", nargs="+", metavar="NAME", help="group name(s)")
    c.add_argument("--peer", action="append", metavar="PEER",
                   help="peer name or id to put in the group (repeatable)")
    g.add("delete", "delete a group (refused while a service uses it)", func=groups_delete,
          example=["nbgateway-admin groups delete admins"]).add_argument(
        "ref", metavar="GROUP", help="group name or id")
    for verb, func, text in (("add-peer", groups_add_peer, "put a peer in a group"),
                             ("remove-peer", groups_remove_peer, "take a peer out of a group")):
        c = g.add(verb, text, func=func, example=[f"nbgateway-admin groups {verb} admins laptop"])
        c.add_argument("ref", metavar="GROUP", help="group name or id")
        c.add_argument("peer_ref", metavar="PEER", help="peer name or id")

    g = cmd.group("peers", "list, create or delete WireGuard peers; print their configs",
                  aliases=["peer"], example=[
                      "nbgateway-admin peers create laptop --group admins",
                      "nbgateway-admin peers config laptop > wg0.conf"])
    g.add("list", "list peers", func=peers_list, example=["nbgateway-admin peers list"])
    g.add("show", "show one peer", func=peers_show,
          example=["nbgateway-admin peers show laptop"]).add_argument(
        "ref", metavar="PEER", help="peer name or id")
    c = g.add("create", "create one or more peers (the private key is printed only by "
                        "'peers config')", func=peers_create,
              example=["nbgateway-admin peers create laptop --group admins",
                       "nbgateway-admin peers create phone --public-key $(wg pubkey < key)",
                       "nbgateway-admin peers create pc1 pc2 pc3 --group lab"])
    c.add_argument("name", nargs="+", metavar="NAME", help="peer name(s)")
    c.add_argument("--public-key", help="client-generated WireGuard public key (default: "
                                        "management generates the key pair)")
    c.add_argument("--group", action="append", metavar="GROUP",
                   help="group name or id (repeatable)")
    c.add_argument("--user", help="owning user id or email")
    c.add_argument("--endpoint", metavar="HOST:PORT", help="static UDP endpoint")
    c.add_argument("--proxy-cluster", metavar="CLUSTER",
                   help="register a proxy peer (gateway) serving this cluster address; it "
                        "appears as [Peer] in other peers' configs")
    g.add("delete", "delete a peer", func=peers_delete,
          example=["nbgateway-admin peers delete laptop"]).add_argument(
        "ref", metavar="PEER", help="peer name or id")
    c = g.add("config", "print the peer's wg-quick config, private key included",
              func=peers_config,
              example=["nbgateway-admin peers config laptop > wg0.conf",
                       "nbgateway-admin peers config laptop --qr wg0.png"])
    c.add_argument("ref", metavar="PEER", help="peer name or id")
    c.add_argument("--qr", metavar="FILE", help="write a PNG QR code to FILE instead")

    g = cmd.group("services", "list, create, show or delete reverse-proxy services",
                  aliases=["service"], example=[
                      "nbgateway-admin services create --domain app.nbgateway.internal \\",
                      "    --private --access-group admins --target http://127.0.0.1:8000",
                      "nbgateway-admin services show app.nbgateway.internal"])
    g.add("list", "list services with their status", func=services_list,
          example=["nbgateway-admin services list"])
    c = g.add("show", "show one service, its status and targets", func=services_show,
              aliases=["get"], example=["nbgateway-admin services show app.example.com"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c = g.add("create", "create a service: a domain the gateway serves and where it "
                        "forwards", func=services_create,
              description="Create a service: a domain the gateway serves and the upstream "
                          "it forwards to.\n\n" + TARGET_HELP,
              example=["nbgateway-admin services create --domain app.nbgateway.internal \\",
                       "    --private --access-group admins --target http://127.0.0.1:8000",
                       "nbgateway-admin services create --domain db.example.com --mode tcp \\",
                       "    --listen-port 5432 --target tcp://10.0.0.5:5432",
                       "nbgateway-admin services create --name api --domain api.example.com \\",
                       "    --target type=cluster,id=example.com,host=10.0.0.5,port=8443,"
                       "protocol=https"])
    c.add_argument("--domain", required=True, help="the service's FQDN (under a cluster "
                                                   "address or a custom domain)")
    c.add_argument("--name", help="service name (default: the domain's first label)")
    c.add_argument("--mode", default="http", choices=["http", "tcp", "udp", "tls"],
                   help="default: %(default)s")
    c.add_argument("--listen-port", type=int, metavar="PORT",
                   help="tcp/udp/tls: the port the gateway relays (a host port, or the "
                        "tunnel port of a --private service)")
    c.add_argument("--private", action="store_true",
                   help="reachable only through the WireGuard tunnel, by --access-group members")
    c.add_argument("--access-group", action="append", metavar="GROUP",
                   help="group name or id allowed in (repeatable; required with --private)")
    c.add_argument("--target", action="append", metavar="SPEC",
                   help="upstream URL or field list, see above (repeatable)")
    c.add_argument("--pass-host-header", action="store_true",
                   help="send the client's Host header upstream")
    c.add_argument("--disabled", action="store_true", help="create it disabled")
    g.add("delete", "delete a service", func=services_delete,
          example=["nbgateway-admin services delete app.example.com"]).add_argument(
        "ref", metavar="SERVICE", help="service id or domain")
    c = g.add("auth", "set or clear password, PIN, header or SSO auth on a public service",
              func=services_auth,
              description="Set or clear the operator auth of a (non-private) service.\n"
                          "Secrets are stored as argon2id hashes and never shown again;\n"
                          "a secret given as - is read from stdin (keeps it out of the\n"
                          "process list).",
              example=["echo 'correct horse' | nbgateway-admin services auth app.example.com "
                       "--password -",
                       "nbgateway-admin services auth app.example.com --clear-password \\",
                       "    --header X-Api-Key=-"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c.add_argument("--password", metavar="SECRET", help="set the password (- reads stdin)")
    c.add_argument("--clear-password", action="store_true", help="remove password auth")
    c.add_argument("--pin", metavar="DIGITS", help="set the PIN (- reads stdin)")
    c.add_argument("--clear-pin", action="store_true", help="remove PIN auth")
    c.add_argument("--header", action="append", metavar="NAME=VALUE",
                   help="require header NAME with VALUE (- reads stdin; repeatable)")
    c.add_argument("--clear-header", action="append", metavar="NAME",
                   help="remove the header auth for NAME (repeatable)")
    c.add_argument("--sso", dest="sso", action="store_true", default=None,
                   help="turn SSO (OIDC bearer auth) on")
    c.add_argument("--no-sso", dest="sso", action="store_false", help="turn SSO off")
    c = g.add("identity", "signed identity assertion and session length of a service",
              func=services_identity,
              description="Set whether the gateway stamps a signed X-NetBird-Jwt-Assertion\n"
                          "(off, on, required: never forward unsigned), the session length,\n"
                          "or rotate the assertion signing key.  Upstreams verify against\n"
                          "/.well-known/nbgateway/jwks.json?domain=SERVICE on the REST API.",
              example=["nbgateway-admin services identity app.example.com --assertion on",
                       "nbgateway-admin services identity app.example.com --max-session-age 3600",
                       "nbgateway-admin services identity app.example.com --rotate-key"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c.add_argument("--assertion", choices=("off", "on", "required"),
                   help="X-NetBird-Jwt-Assertion mode")
    c.add_argument("--max-session-age", type=int, metavar="SECONDS",
                   help="session cookie lifetime (0 = 24 h default; 60 to 2592000)")
    c.add_argument("--rotate-key", action="store_true",
                   help="new assertion signing key (the old one stays published 10 min)")

    c = g.add("balance", "load balancing and health checks of a service's targets",
              func=services_balance,
              description="Targets with the same path (repeat --target on create) share\n"
                          "that path's requests: round_robin or least_conn.  A target that\n"
                          "fails MAX_FAILURES times in a row (refused, reset, timeout) is\n"
                          "out of rotation for a back-off that doubles per ejection; an\n"
                          "optional active check GETs a path on every target.  Idempotent\n"
                          "requests that never reached a target are retried on another.",
              example=["nbgateway-admin services balance app.example.com --policy least_conn",
                       "nbgateway-admin services balance app.example.com --health-path /healthz",
                       "nbgateway-admin services balance app.example.com --reset"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c.add_argument("--policy", choices=("round_robin", "least_conn"))
    c.add_argument("--max-failures", type=int, metavar="N",
                   help="consecutive failures that eject a target (0 = 3)")
    c.add_argument("--backoff", type=int, metavar="SECONDS",
                   help="first ejection's back-off (0 = 10), doubled per ejection")
    c.add_argument("--max-backoff", type=int, metavar="SECONDS", help="back-off cap (0 = 300)")
    c.add_argument("--health-path", metavar="PATH", help="active check: GET PATH on each target")
    c.add_argument("--health-interval", type=int, metavar="SECONDS", help="0 = 10")
    c.add_argument("--health-timeout", type=int, metavar="SECONDS", help="0 = 5")
    c.add_argument("--health-status", type=int, metavar="CODE",
                   help="healthy status (0 = any 2xx/3xx)")
    c.add_argument("--no-health-check", action="store_true", help="remove the active check")
    c.add_argument("--reset", action="store_true", help="back to the defaults first")

    c = g.add("token", "machine-client tokens of a service (list, create, revoke)",
              func=services_token,
              description="Service tokens let machine clients (CI, mobile apps) call a\n"
                          "protected service with X-NetBird-Token-Id/X-NetBird-Token-Secret\n"
                          "or Authorization: Bearer ID.SECRET.  The secret is shown once;\n"
                          "a revoked token is refused as soon as the gateways get the update.",
              example=["nbgateway-admin services token app.example.com create ci",
                       "nbgateway-admin services token app.example.com list",
                       "nbgateway-admin services token app.example.com revoke nbt_0123"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c.add_argument("action", choices=("list", "create", "revoke"))
    c.add_argument("arg", nargs="?", metavar="NAME|TOKEN_ID",
                   help="the new token's name (create) or the token id (revoke)")
    c.add_argument("--expires-in", type=int, metavar="SECONDS",
                   help="create: the token expires after this many seconds (default never)")
    _clientca.register(g)  # mTLS client CA (its own module)

    g = cmd.group("tokens", "list, create or delete proxy access tokens (for gateways "
                            "connecting with --mgmt)", aliases=["token", "proxy-tokens"],
                  example=["nbgateway-admin tokens create eu-gateway",
                           "nbgateway-admin tokens delete eu-gateway"])
    g.add("list", "list proxy tokens", func=tokens_list, example=["nbgateway-admin tokens list"])
    c = g.add("create", "create a proxy token (printed once)", func=tokens_create,
              example=["nbgateway-admin tokens create eu-gateway --expires-in 86400"])
    c.add_argument("name", metavar="NAME", help="token name")
    c.add_argument("--expires-in", type=int, default=0, metavar="SECONDS",
                   help="lifetime in seconds (default: 0 = never expires)")
    g.add("delete", "revoke a proxy token", func=tokens_delete, aliases=["revoke"],
          example=["nbgateway-admin tokens delete eu-gateway"]).add_argument(
        "ref", metavar="TOKEN", help="token id or name")

    c = cmd.add("logs", "list the gateways' access log entries", func=logs_list,
                aliases=["access-logs"],
                example=["nbgateway-admin logs list --status failed",
                         "nbgateway-admin logs list --host app.example.com --page-size 20 --json"])
    c.add_argument("action", nargs="?", choices=["list"], default="list",
                   help="list (the default)")
    c.add_argument("--page", type=int, help="page number, from 1")
    c.add_argument("--page-size", type=int, help="entries per page")
    for opt, text in (("sort-by", "field to sort by, e.g. timestamp"),
                      ("search", "free-text search"), ("host", "request host"),
                      ("path", "request path"), ("user-id", "authenticated user id"),
                      ("source-ip", "client IP"), ("method", "HTTP method"),
                      ("start-date", "from this time (RFC 3339)"),
                      ("end-date", "until this time (RFC 3339)")):
        c.add_argument(f"--{opt}", help=text)
    c.add_argument("--sort-order", choices=["asc", "desc"])
    c.add_argument("--status", choices=["success", "failed"], help="outcome")
    c.add_argument("--status-code", type=int, help="HTTP status code")

    c = cmd.add("clusters", "list gateway clusters and whether a gateway is connected",
                func=clusters_list, aliases=["cluster"],
                example=["nbgateway-admin clusters list"])
    c.add_argument("action", nargs="?", choices=["list"], default="list",
                   help="list (the default)")

    g = cmd.group("domains", "list, create or delete custom domains", aliases=["domain"],
                  example=["nbgateway-admin domains create apps.example.com eu.proxy.example"])
    g.add("list", "list domains (cluster addresses and custom domains)", func=domains_list,
          example=["nbgateway-admin domains list"])
    c = g.add("create", "add a custom domain served by a cluster", func=domains_create,
              example=["nbgateway-admin domains create apps.example.com eu.proxy.example"])
    c.add_argument("domain", metavar="DOMAIN", help="the custom domain")
    c.add_argument("target_cluster", metavar="CLUSTER", help="cluster address serving it")
    g.add("delete", "delete a custom domain", func=domains_delete,
          example=["nbgateway-admin domains delete apps.example.com"]).add_argument(
        "ref", metavar="DOMAIN", help="domain id or name")

    g = cmd.group("accounts", "list, create, show or delete accounts (tenants); creating "
                              "and deleting needs the instance admin's token",
                  aliases=["account"],
                  example=["nbgateway-admin accounts create acme --admin-email ops@acme.test",
                           "nbgateway-admin accounts list"])
    g.add("delete", "delete an account and everything in it", func=accounts_delete,
          example=["nbgateway-admin accounts delete acme"]).add_argument(
        "ref", metavar="ACCOUNT", help="account id or name")
    g.add("list", "list accounts (an account admin sees only their own)", func=accounts_list,
          example=["nbgateway-admin accounts list --json"])
    g.add("show", "show one account", func=accounts_show,
          example=["nbgateway-admin accounts show acme"]).add_argument(
        "ref", metavar="ACCOUNT", help="account id or name")
    c = g.add("create", "create an account and its first admin; prints that admin's token "
                        "once", func=accounts_create,
              example=["nbgateway-admin accounts create acme --admin-email ops@acme.test",
                       "nbgateway-admin accounts create acme --json | jq -r .token"])
    c.add_argument("name", metavar="NAME", help="account name")
    c.add_argument("--admin-email", metavar="EMAIL", help="the first admin's email")


