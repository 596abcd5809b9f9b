"""``nbgateway-admin users``, ``groups`` and ``peers``: who and what is in an account.

Users (and their personal access tokens, printed once by ``users token``),
groups and their member peers, WireGuard peers and their wg-quick configs.
``peers create`` never prints the generated private key; ``peers config``
does, since handing it out is its purpose.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from nbgateway.atomicfile import write_secret_output
from nbgateway.management.cli._client import Client, UsageError, _q
from nbgateway.management.cli._lookup import (
    Args,
    delete_command,
    group_ids,
    list_command,
    resolve,
    show_command,
)
from nbgateway.management.cli._output import Progress, emit, table, write_json
from nbgateway.management.cli._parsing import Commands

USER_COLS = ("id", "email", "name", "role", "status", "auto_groups")
GROUP_COLS = ("id", "name", "peers_count", "peers")
PEER_COLS = ("id", "name", "ip", "ipv6", "groups", "user_id", "proxy_cluster")

# --- users -------------------------------------------------------------------------


users_list = list_command("/users", USER_COLS)
users_show = show_command("/users", "user", USER_COLS, key="email")


def users_create(client: Client, args: Args, out: TextIO) -> None:
    body = {"email": args.email or "", "name": args.name or "", "role": args.role,
            "auto_groups": group_ids(client, args.auto_group), "is_service_user": False}
    emit(args.json, out, client.post("/users", body), USER_COLS)


users_delete = delete_command("/users", "user", key="email")


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


groups_list = list_command("/groups", GROUP_COLS)
groups_show = show_command("/groups", "group", GROUP_COLS)


def groups_create(client: Client, args: Args, out: TextIO) -> None:
    peers = [resolve(client, "/peers", p, "peer")["id"] for p in args.peer or ()]
    progress = Progress(sys.stderr, len(args.name))
    created = []
    for name in args.name:
        created.append(client.post("/groups", {"name": name, "peers": peers}))
        progress.step(f"created group {name}")
    emit(args.json, out, created if len(created) > 1 else created[0], GROUP_COLS)


groups_delete = delete_command("/groups", "group")


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


peers_list = list_command("/peers", PEER_COLS)
peers_show = show_command("/peers", "peer", PEER_COLS)


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


peers_delete = delete_command("/peers", "peer")


def peers_config(client: Client, args: Args, out: TextIO) -> None:
    peer = resolve(client, "/peers", args.ref, "peer")
    path = f"/peers/{_q(peer['id'])}/wireguard-config"
    if args.qr:
        png = client.request("GET", path, query={"format": "qr"}, raw=True)
        write_secret_output(args.qr, png)  # the QR code holds the private key
        print(f"wrote QR code to {args.qr}", file=sys.stderr)
        return
    conf = client.request("GET", path, raw=True).decode()
    if args.json:
        write_json(out, {"peer": peer["id"], "name": peer["name"], "config": conf})
    else:
        out.write(conf)


# --- registration ------------------------------------------------------------------


def register(cmd: Commands) -> None:
    """Add the ``users``, ``groups`` and ``peers`` command groups."""
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
