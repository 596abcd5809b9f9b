"""``nbgateway-admin services``: the reverse-proxy services of an account.

List, show, create (targets: :mod:`._targets`) and delete services; set their
operator auth (password, PIN, header, SSO; a secret given as ``-`` is read
from stdin), identity assertion and session length, load balancing and health
checks, and machine-client tokens (the secret is printed once).  The mTLS
client CA is :mod:`._clientca`.  Updates read the service and send it back
whole (PUT is a full replace).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from nbgateway.management.cli import _clientca
from nbgateway.management.cli._client import Client, UsageError, _q
from nbgateway.management.cli._lookup import Args, delete_command, group_ids, resolve
from nbgateway.management.cli._output import table, write_json
from nbgateway.management.cli._parsing import Commands
from nbgateway.management.cli._targets import TARGET_HELP, complete_targets, parse_target

SERVICE_COLS = ("id", "name", "domain", "mode", "private", "access_groups", "enabled",
                "proxy_cluster", "status")
SERVICES = "/reverse-proxies/services"

#: what a service answer has that a PUT sends back (PUT is a full replace)
_REQUEST_FIELDS = ("name", "domain", "mode", "listen_port", "targets", "enabled",
                   "pass_host_header", "rewrite_redirects", "auth", "access_restrictions",
                   "private", "access_groups", "assertion", "max_session_age_seconds",
                   "load_balancing")


def _find(client: Client, ref: str) -> dict[str, Any]:
    """The service by id, else by domain."""
    return resolve(client, SERVICES, ref, "service", key="domain")


def _replace(client: Client, svc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """PUT *svc* back with *changes*; the updated service."""
    body = {k: svc[k] for k in _REQUEST_FIELDS if k in svc}
    body.update(changes)
    return client.put(f"{SERVICES}/{_q(svc['id'])}", body)


def _table(services: list[dict[str, Any]], out: TextIO) -> None:
    """Services as a table, with their status column."""
    table([{**s, "status": (s.get("meta") or {}).get("status")} for s in services],
          SERVICE_COLS, out)


def services_list(client: Client, args: Args, out: TextIO) -> None:
    services = client.get(SERVICES)
    if args.json:
        write_json(out, services)
    else:
        _table(services, out)


def services_show(client: Client, args: Args, out: TextIO) -> None:
    svc = _find(client, args.ref)
    if args.json:
        write_json(out, svc)
        return
    _table([svc], out)
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
    created = client.post(SERVICES, body)
    if args.json:
        write_json(out, created)
    else:
        _table([created], out)


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
    svc = _find(client, args.ref)
    updated = svc
    if args.assertion is not None or args.max_session_age is not None:
        changes: dict[str, Any] = {}
        if args.assertion is not None:
            changes["assertion"] = args.assertion
        if args.max_session_age is not None:
            changes["max_session_age_seconds"] = args.max_session_age
        updated = _replace(client, svc, **changes)
    if args.rotate_key:
        updated = client.post(
            f"{SERVICES}/{_q(svc['id'])}/assertion-key/rotate", {})
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
    svc = _find(client, args.ref)
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
    updated = _replace(client, svc, load_balancing=lb)
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
    svc = _find(client, args.ref)
    base = f"{SERVICES}/{_q(svc['id'])}/tokens"
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
    svc = _find(client, args.ref)
    auth = dict(svc.get("auth") or {})
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
    updated = _replace(client, svc, auth=auth)
    if args.json:
        write_json(out, updated)
        return
    a = updated.get("auth") or {}
    methods = [m for m, key in (("password", "password_auth"), ("pin", "pin_auth"),
                                ("sso", "bearer_auth")) if (a.get(key) or {}).get("enabled")]
    methods += [f"header {h['header']}" for h in a.get("header_auths") or [] if h.get("enabled")]
    out.write(f"{updated['domain']}: {', '.join(methods) or 'no operator auth'}\n")


services_delete = delete_command(SERVICES, "service", key="domain")


# --- registration ------------------------------------------------------------------


def register(cmd: Commands) -> None:
    """Add the ``services`` command group."""
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
