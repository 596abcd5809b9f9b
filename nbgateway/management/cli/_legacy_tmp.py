"""``nbgateway-admin``: administer a management service through its REST API.

Talks HTTP with the standard library only (``urllib``). Connection settings:
``--url`` (env ``NB_ADMIN_URL``, default ``http://127.0.0.1:33071``) and
``--token`` (env ``NB_ADMIN_TOKEN``, else the file ``./nbgateway-data/admin-token``
when present). Output is a plain table, or the API's JSON with ``--json``.

Examples::

    nbgateway-admin groups create admins
    nbgateway-admin peers create laptop --group admins
    nbgateway-admin peer config laptop > wg0.conf
    nbgateway-admin services create --name app --domain app.eu.proxy.example \\
        --private --access-group admins \\
        --target type=cluster,id=eu.proxy.example,host=10.0.0.5,port=8080,direct
    nbgateway-admin logs --status failed --json
    nbgateway-admin quickstart --upstream http://127.0.0.1:8000   # demo in one command
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:33071"
DEFAULT_DATADIR = "nbgateway-data"
DEFAULT_TOKEN_FILE = os.path.join(DEFAULT_DATADIR, "admin-token")
TIMEOUT = 30.0


class CliError(Exception):
    """A failure to report on stderr with exit status ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


class Client:
    """Minimal REST client: JSON in, JSON (or bytes) out, envelope errors raised."""

    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT):
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        url = self.base + "/api" + path
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            if clean:
                url += "?" + urllib.parse.urlencode(clean)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise CliError(_error_text(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach {self.base}: {reason}", 2) from None
        if raw:
            return payload
        return json.loads(payload) if payload.strip() else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        message = body.get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    return f"{message} (HTTP {exc.code})"


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --- output ----------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list | tuple):
            return ",".join(cell(v) for v in value) or "-"
        if isinstance(value, dict):
            return value.get("name") or value.get("id") or json.dumps(value)
        return str(value).replace("\n", " ")

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
              .rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


# --- name/id resolution --------------------------------------------------------------


def resolve(client: Client, path: str, ref: str, what: str, key: str = "name") -> dict[str, Any]:
    """Find an object by id, else by unique ``key`` (name / domain)."""
    items = client.get(path)
    for item in items:
        if item.get("id") == ref:
            return item
    matches = [item for item in items if item.get(key) == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"{what} {ref!r} not found")
    raise CliError(f"{what} name {ref!r} is ambiguous; use the id")


def group_ids(client: Client, refs: Sequence[str] | None) -> list[str]:
    return [resolve(client, "/groups", r, "group")["id"] for r in refs or ()]


# --- target spec -----------------------------------------------------------------


def parse_target(spec: str) -> dict[str, Any]:
    """``type=cluster,id=eu.proxy,host=10.0.0.5,port=8080,protocol=http,path=/,direct``."""
    target: dict[str, Any] = {"target_type": "peer", "protocol": "http", "enabled": True}
    options: dict[str, Any] = {}
    keys = {"type": "target_type", "id": "target_id", "host": "host", "port": "port",
            "protocol": "protocol", "path": "path"}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if name in ("direct", "direct_upstream") and not sep:
            options["direct_upstream"] = True
        elif name == "timeout" and sep:
            options["request_timeout"] = value
        elif name in keys and sep:
            if name == "port":
                try:
                    target["port"] = int(value)
                except ValueError:
                    raise CliError(f"target port must be a number: {value!r}") from None
            else:
                target[keys[name]] = value
        else:
            raise CliError(f"bad target field {part!r} (use type=,id=,host=,port=,protocol=,"
                           "path=,timeout=,direct)")
    if options:
        target["options"] = options
    target.setdefault("port", 443 if target["protocol"] == "https" else 80)
    return target


# --- commands ----------------------------------------------------------------------

Handler = Callable[[Client, argparse.Namespace, TextIO], Any]


def _emit(args: argparse.Namespace, out: TextIO, data: Any, columns: Sequence[str]) -> None:
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        table(data if isinstance(data, list) else [data], columns, out)


USER_COLS = ("id", "email", "name", "role", "status", "auto_groups")
GROUP_COLS = ("id", "name", "peers_count", "peers")
PEER_COLS = ("id", "name", "ip", "ipv6", "groups", "user_id", "proxy_cluster")
SERVICE_COLS = ("id", "name", "domain", "mode", "private", "access_groups", "enabled",
                "proxy_cluster")
TOKEN_COLS = ("id", "name", "created_at", "expires_at", "last_used", "revoked")
LOG_COLS = ("timestamp", "method", "host", "path", "status_code", "duration_ms", "source_ip",
            "user_id", "user_groups", "reason")


def cmd_users(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "list":
        return _emit(args, out, client.get("/users"), USER_COLS)
    if args.action == "create":
        body = {"email": args.email or "", "name": args.name or "", "role": args.role,
                "auto_groups": group_ids(client, args.auto_group), "is_service_user": False}
        return _emit(args, out, client.post("/users", body), USER_COLS)
    user = resolve(client, "/users", args.ref, "user", key="email")
    if args.action == "token":
        gen = client.post(f"/users/{_q(user['id'])}/tokens",
                          {"name": args.name, "expires_in": args.days})
        if args.json:
            out.write(json.dumps(gen, indent=2) + "\n")
        else:
            table([gen["personal_access_token"]], ("id", "name", "expiration_date"), out)
            out.write(f"token (shown once): {gen['plain_token']}\n")
        return None
    if args.action == "delete":
        client.delete(f"/users/{_q(user['id'])}")
        out.write(f"deleted user {user['id']}\n")
        return None
    body = {"role": user["role"], "auto_groups": user["auto_groups"],
            "is_blocked": args.action == "block", "pending_approval": False}
    return _emit(args, out, client.put(f"/users/{_q(user['id'])}", body), USER_COLS)


def cmd_groups(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "list":
        return _emit(args, out, client.get("/groups"), GROUP_COLS)
    if args.action == "create":
        peers = [resolve(client, "/peers", p, "peer")["id"] for p in args.peer or ()]
        return _emit(args, out, client.post("/groups", {"name": args.name, "peers": peers}),
                     GROUP_COLS)
    group = resolve(client, "/groups", args.ref, "group")
    if args.action == "delete":
        client.delete(f"/groups/{_q(group['id'])}")
        out.write(f"deleted group {group['id']}\n")
        return None
    peer = resolve(client, "/peers", args.peer_ref, "peer")["id"]
    members = [p["id"] for p in group["peers"]]
    if args.action == "add-peer" and peer not in members:
        members.append(peer)
    elif args.action == "remove-peer":
        members = [m for m in members if m != peer]
    body = {"name": group["name"], "peers": members}
    return _emit(args, out, client.put(f"/groups/{_q(group['id'])}", body), GROUP_COLS)


def cmd_peers(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "list":
        return _emit(args, out, client.get("/peers"), PEER_COLS)
    if args.action == "create":
        body: dict[str, Any] = {"name": args.name, "groups": group_ids(client, args.group)}
        if args.public_key:
            body["public_key"] = args.public_key
        if args.user:
            body["user_id"] = resolve(client, "/users", args.user, "user", key="email")["id"]
        if args.endpoint:
            body["endpoint"] = args.endpoint
        if args.proxy_cluster:
            body["proxy_cluster"] = args.proxy_cluster
        created = client.post("/peers", body)
        if args.json:
            out.write(json.dumps(created, indent=2) + "\n")
        else:
            table([created], PEER_COLS, out)
            if created.get("private_key"):
                out.write("private key (shown once; also in `peer config`): "
                          f"{created['private_key']}\n")
        return None
    peer = resolve(client, "/peers", args.ref, "peer")
    if args.action == "delete":
        client.delete(f"/peers/{_q(peer['id'])}")
        out.write(f"deleted peer {peer['id']}\n")
        return None
    # config
    path = f"/peers/{_q(peer['id'])}/wireguard-config"
    if args.qr:
        png = client.request("GET", path, query={"format": "qr"}, raw=True)
        with open(args.qr, "wb") as f:
            f.write(png)
        print(f"wrote QR code to {args.qr}", file=sys.stderr)
        return None
    out.write(client.request("GET", path, raw=True).decode())
    return None


def cmd_services(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "list":
        return _emit(args, out, client.get("/reverse-proxies/services"), SERVICE_COLS)
    if args.action == "create":
        if not args.target:
            raise CliError("at least one --target is required")
        body: dict[str, Any] = {"name": args.name, "domain": args.domain,
                                "enabled": not args.disabled, "mode": args.mode,
                                "targets": [parse_target(t) for t in args.target],
                                "pass_host_header": args.pass_host_header}
        if args.private:
            body["private"] = True
            body["access_groups"] = group_ids(client, args.access_group)
        elif args.access_group:
            body["access_groups"] = group_ids(client, args.access_group)
        return _emit(args, out, client.post("/reverse-proxies/services", body), SERVICE_COLS)
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    if args.action == "get":
        out.write(json.dumps(svc, indent=2) + "\n") if args.json else table([svc], SERVICE_COLS,
                                                                            out)
        return None
    client.delete(f"/reverse-proxies/services/{_q(svc['id'])}")
    out.write(f"deleted service {svc['id']} ({svc['domain']})\n")
    return None


def cmd_tokens(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.action == "list":
        return _emit(args, out, client.get("/reverse-proxies/proxy-tokens"), TOKEN_COLS)
    if args.action == "create":
        created = client.post("/reverse-proxies/proxy-tokens",
                              {"name": args.name, "expires_in": args.expires_in})
        if args.json:
            out.write(json.dumps(created, indent=2) + "\n")
        else:
            table([created], TOKEN_COLS, out)
            out.write(f"token (shown once): {created['plain_token']}\n")
        return None
    token = resolve(client, "/reverse-proxies/proxy-tokens", args.ref, "token")
    client.delete(f"/reverse-proxies/proxy-tokens/{_q(token['id'])}")
    out.write(f"revoked token {token['id']}\n")
    return None


def cmd_logs(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    query = {k: getattr(args, k) for k in (
        "page", "page_size", "sort_by", "sort_order", "search", "host", "path", "user_id",
        "source_ip", "method", "status", "status_code", "start_date", "end_date")}
    page = client.request("GET", "/events/proxy", query=query)
    if args.json:
        out.write(json.dumps(page, indent=2) + "\n")
        return
    table(page["data"], LOG_COLS, out)
    out.write(f"page {page['page']}/{page['total_pages']}, {page['total_records']} entries\n")


def cmd_clusters(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    _emit(args, out, client.get("/reverse-proxies/clusters"),
          ("address", "type", "online", "connected_proxies", "private"))


def cmd_domains(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    cols = ("id", "domain", "type", "target_cluster", "validated", "supports_private")
    if args.action == "list":
        return _emit(args, out, client.get("/reverse-proxies/domains"), cols)
    if args.action == "create":
        return _emit(args, out, client.post("/reverse-proxies/domains", {
            "domain": args.domain, "target_cluster": args.target_cluster}), cols)
    dom = resolve(client, "/reverse-proxies/domains", args.ref, "domain", key="domain")
    client.delete(f"/reverse-proxies/domains/{_q(dom['id'])}")
    out.write(f"deleted domain {dom['domain']}\n")
    return None


# --- quickstart: nbgateway/management/quickstart.py ---------------------------------

QUICKSTART_POLL = 0.5


def cmd_quickstart(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    from nbgateway.management import quickstart

    quickstart.run(client, args, out)


# --- argument parsing ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbgateway-admin", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help=f"management URL (env NB_ADMIN_URL; "
                                               f"default {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="personal access token (env NB_ADMIN_TOKEN; "
                                                 f"default: contents of ./{DEFAULT_TOKEN_FILE})")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = p.add_subparsers(dest="resource", required=True)

    def actions(name: str, fn: Handler, aliases: Sequence[str] = ()) -> Any:
        sp = sub.add_parser(name, aliases=list(aliases))
        sp.set_defaults(func=fn)
        return sp.add_subparsers(dest="action", required=True)

    a = actions("users", cmd_users, ["user"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("--email")
    c.add_argument("--name")
    c.add_argument("--role", default="user", choices=["owner", "admin", "user"])
    c.add_argument("--auto-group", action="append", help="group name or id (repeatable)")
    for verb in ("delete", "block", "unblock"):
        a.add_parser(verb).add_argument("ref", help="user id or email")
    c = a.add_parser("token", help="create a personal access token for the REST API")
    c.add_argument("ref", help="user id or email")
    c.add_argument("--name", default="nbgateway-admin")
    c.add_argument("--days", type=int, default=30, help="lifetime in days (1..365)")

    a = actions("groups", cmd_groups, ["group"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("name")
    c.add_argument("--peer", action="append", help="peer name or id (repeatable)")
    a.add_parser("delete").add_argument("ref")
    for verb in ("add-peer", "remove-peer"):
        c = a.add_parser(verb)
        c.add_argument("ref", help="group name or id")
        c.add_argument("peer_ref", help="peer name or id")

    a = actions("peers", cmd_peers, ["peer"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("name")
    c.add_argument("--public-key", help="client-generated WireGuard public key "
                                        "(default: the server generates the key pair)")
    c.add_argument("--group", action="append", help="group name or id (repeatable)")
    c.add_argument("--user", help="owning user id or email")
    c.add_argument("--endpoint", help="static UDP endpoint host:port")
    c.add_argument("--proxy-cluster", help="register a proxy peer (gateway) serving this "
                                           "cluster address; it appears as [Peer] in configs")
    a.add_parser("delete").add_argument("ref")
    c = a.add_parser("config", help="print the wg-quick config (redirect to wg0.conf)")
    c.add_argument("ref", help="peer name or id")
    c.add_argument("--qr", metavar="FILE", help="write a PNG QR code to FILE instead")

    a = actions("services", cmd_services, ["service"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("--name", required=True)
    c.add_argument("--domain", required=True)
    c.add_argument("--mode", default="http", choices=["http", "tcp", "udp", "tls"])
    c.add_argument("--private", action="store_true", help="NetBird-only (tunnel) service")
    c.add_argument("--access-group", action="append", help="group name or id (repeatable)")
    c.add_argument("--target", action="append", metavar="SPEC",
                   help="type=peer|host|domain|subnet|cluster,id=..,host=..,port=..,"
                        "protocol=http|https,path=/,timeout=30s,direct (repeatable)")
    c.add_argument("--pass-host-header", action="store_true")
    c.add_argument("--disabled", action="store_true")
    a.add_parser("get").add_argument("ref", help="service id or domain")
    a.add_parser("delete").add_argument("ref", help="service id or domain")

    a = actions("tokens", cmd_tokens, ["token", "proxy-tokens"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("name")
    c.add_argument("--expires-in", type=int, default=0, help="seconds (0 = never)")
    a.add_parser("revoke").add_argument("ref", help="token id or name")

    sp = sub.add_parser("logs", aliases=["access-logs"], help="proxy access logs")
    sp.set_defaults(func=cmd_logs)
    sp.add_argument("--page", type=int)
    sp.add_argument("--page-size", type=int)
    for opt in ("sort-by", "search", "host", "path", "user-id", "source-ip", "method",
                "start-date", "end-date"):
        sp.add_argument(f"--{opt}")
    sp.add_argument("--sort-order", choices=["asc", "desc"])
    sp.add_argument("--status", choices=["success", "failed"])
    sp.add_argument("--status-code", type=int)

    sp = sub.add_parser("clusters", help="list proxy clusters")
    sp.set_defaults(func=cmd_clusters)

    a = actions("domains", cmd_domains, ["domain"])
    a.add_parser("list")
    c = a.add_parser("create")
    c.add_argument("domain")
    c.add_argument("target_cluster")
    a.add_parser("delete").add_argument("ref", help="domain id or name")

    sp = sub.add_parser(
        "quickstart", help="demo in one command: a group, a peer in it and a private "
        "service on the connected gateway; prints the peer's wg-quick config, a QR code "
        "and the curl command to try (idempotent)")
    sp.set_defaults(func=cmd_quickstart)
    from nbgateway.management import quickstart

    quickstart.add_arguments(sp)
    return p


def _default_token(path: str = DEFAULT_TOKEN_FILE) -> str | None:
    env = os.environ.get("NB_ADMIN_TOKEN")
    if env:
        return env.strip()
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _wait_for_token(path: str, wait: float) -> str | None:
    """quickstart right after starting the gateway: the embedded management
    writes its admin token a moment later."""
    deadline = time.monotonic() + wait
    while True:
        token = _default_token(path)
        if token or time.monotonic() >= deadline:
            return token
        time.sleep(QUICKSTART_POLL)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    url = args.url or os.environ.get("NB_ADMIN_URL") or DEFAULT_URL
    token = args.token or _default_token()
    if not token and args.func is cmd_quickstart:
        token = _wait_for_token(os.path.join(args.datadir, "admin-token"), args.wait)
    if not token:
        err.write(f"error: no token: pass --token, set NB_ADMIN_TOKEN or run where "
                  f"{DEFAULT_TOKEN_FILE} exists\n")
        return 2
    try:
        args.func(Client(url, token), args, out)
    except CliError as exc:
        err.write(f"error: {exc.message}\n")
        return exc.code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
