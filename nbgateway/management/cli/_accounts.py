"""``nbgateway-admin accounts``: the tenants of a management service.

Creating and deleting one needs the instance admin's token; ``accounts
create`` prints the first admin's token once.
"""

from __future__ import annotations

from typing import Any, TextIO

from nbgateway.management.cli._client import Client
from nbgateway.management.cli._lookup import Args, delete_command, list_command, show_command
from nbgateway.management.cli._output import table, write_json
from nbgateway.management.cli._parsing import Commands

ACCOUNT_COLS = ("id", "name", "network_v4", "network_v6", "created_at")

# --- accounts ----------------------------------------------------------------------


accounts_list = list_command("/accounts", ACCOUNT_COLS)
accounts_show = show_command("/accounts", "account", ACCOUNT_COLS)


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


accounts_delete = delete_command("/accounts", "account")


# --- registration ------------------------------------------------------------------


def register(cmd: Commands) -> None:
    """Add the ``accounts`` command group."""
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
