"""``nbgateway-admin services client-ca``: a service's mTLS client CA.

* ``show``: the CA subjects, expiry and fingerprints, and the mapping rule;
* ``set FILE`` (``-`` = stdin) ``[--map email|list] [--user MATCH=USER ...]``:
  upload the client CA bundle (PEM, CA certificates only) and say how a
  certificate maps to a user: ``email`` (SAN email or CN equal to a user's
  email, the default) or an explicit ``list`` of certificate names (SAN
  email, SAN URI or CN) each naming a user by id or email;
* ``clear``: remove it (the service's certificates stop working with the
  next mapping update).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from nbgateway.management.cli._client import Client, UsageError, _q
from nbgateway.management.cli._lookup import resolve
from nbgateway.management.cli._output import write_json


def _user_id(users: list[dict[str, Any]], ref: str) -> str:
    for u in users:
        if ref in (u.get("id"), u.get("email")):
            return str(u["id"])
    raise UsageError(f"--user: no user {ref!r} in this account")


def services_client_ca(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    svc = resolve(client, "/reverse-proxies/services", args.ref, "service", key="domain")
    path = f"/reverse-proxies/services/{_q(svc['id'])}/client-ca"
    if args.action == "show":
        view = client.get(path)
    elif args.action == "clear":
        view = client.delete(path)
    else:
        if not args.file:
            raise UsageError("services client-ca set: FILE (PEM bundle, - for stdin) is required")
        if args.file == "-":
            pem = sys.stdin.read()
        else:
            try:
                with open(args.file, encoding="utf-8") as f:
                    pem = f.read()
            except OSError as exc:
                raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
        mapping = args.map or ("list" if args.user else "email")
        body: dict[str, Any] = {"ca_pem": pem, "mapping": mapping}
        if args.user:
            users = client.get("/users")
            body["users"] = []
            for spec in args.user:
                match, sep, ref = spec.rpartition("=")
                if not sep or not match or not ref:
                    raise UsageError(f"--user {spec!r}: expected CERTIFICATE_NAME=USER")
                body["users"].append({"match": match, "user_id": _user_id(users, ref)})
        view = client.put(path, body)
    if args.json:
        write_json(out, view)
        return
    if not view.get("enabled"):
        out.write(f"{svc['domain']}: no client certificates\n")
        return
    out.write(f"{svc['domain']}: client certificates mapped by {view['mapping']}\n")
    for ca in view.get("certificate_authorities", []):
        out.write(f"  CA {ca['subject']}  not after {ca['not_after']}  sha256 {ca['sha256']}\n")
    for u in view.get("users", []):
        out.write(f"  {u['match']} -> {u['user_id']}\n")


def register(g: Any) -> None:
    """Add ``client-ca`` to the ``services`` command group."""
    c = g.add("client-ca", "a service's mTLS client CA (show, set, clear)",
              func=services_client_ca,
              description="Clients presenting a certificate issued by this CA and mapped\n"
                          "to a user are let in as that user (X-NetBird-User); a service\n"
                          "with no other scheme answers others with a 401 page.",
              example=["nbgateway-admin services client-ca app.example.com set ca.pem",
                       "nbgateway-admin services client-ca app.example.com set ca.pem "
                       "--user bot=ci@x.com",
                       "nbgateway-admin services client-ca app.example.com show",
                       "nbgateway-admin services client-ca app.example.com clear"])
    c.add_argument("ref", metavar="SERVICE", help="service id or domain")
    c.add_argument("action", choices=("show", "set", "clear"))
    c.add_argument("file", nargs="?", metavar="FILE", help="PEM bundle of CA certificates "
                   "(- = stdin), for set")
    c.add_argument("--map", choices=("email", "list"),
                   help="email: a SAN email or CN equal to a user's email (default); "
                        "list: only the --user entries")
    c.add_argument("--user", action="append", metavar="NAME=USER",
                   help="certificate name (SAN email/URI or CN) = user id or email; "
                        "repeatable; implies --map list")
