"""``nbgateway-admin tokens``, ``logs``, ``clusters`` and ``domains``: the gateway side.

Proxy access tokens gateways connect with (printed once), the gateways'
access log, the clusters they form and the domains they serve.
"""

from __future__ import annotations

from typing import TextIO

from nbgateway.management.cli._client import Client
from nbgateway.management.cli._lookup import Args, delete_command, list_command
from nbgateway.management.cli._output import emit, table, write_json
from nbgateway.management.cli._parsing import Commands

TOKEN_COLS = ("id", "name", "created_at", "expires_at", "last_used", "revoked")
LOG_COLS = ("timestamp", "method", "host", "path", "status_code", "duration_ms", "source_ip",
            "user_id", "user_groups", "auth_method_used", "reason")
CLUSTER_COLS = ("address", "type", "online", "connected_proxies", "private")
DOMAIN_COLS = ("id", "domain", "type", "target_cluster", "validated", "supports_private")
PROXY_TOKENS = "/reverse-proxies/proxy-tokens"

# --- proxy tokens ------------------------------------------------------------------


tokens_list = list_command(PROXY_TOKENS, TOKEN_COLS)


def tokens_create(client: Client, args: Args, out: TextIO) -> None:
    created = client.post(PROXY_TOKENS,
                          {"name": args.name, "expires_in": args.expires_in})
    if args.json:
        write_json(out, created)
        return
    table([created], TOKEN_COLS, out)
    out.write(f"token (shown once): {created['plain_token']}\n")


tokens_delete = delete_command(PROXY_TOKENS, "token", verb="revoked")


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


clusters_list = list_command("/reverse-proxies/clusters", CLUSTER_COLS)
domains_list = list_command("/reverse-proxies/domains", DOMAIN_COLS)


def domains_create(client: Client, args: Args, out: TextIO) -> None:
    emit(args.json, out, client.post("/reverse-proxies/domains", {
        "domain": args.domain, "target_cluster": args.target_cluster}), DOMAIN_COLS)


domains_delete = delete_command("/reverse-proxies/domains", "domain", key="domain")


# --- registration ------------------------------------------------------------------


def register(cmd: Commands) -> None:
    """Add ``tokens``, ``logs``, ``clusters`` and ``domains``."""
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
