"""The private CA next to a peer's wg-quick config.

Gateways report the private CA certificate of each account they serve to
management (one CA per account on each gateway, see nbgateway.tls.certstore;
``store.certificates`` keeps them per account); a peer's config carries its
account's as a comment block at the end, so whoever sets up the tunnel also
gets the certificate to trust (``wg-quick`` and ``wg setconf`` ignore
comments).  :func:`config_block` renders the block ("" when no gateway
reported a CA for the account); :func:`strip_block` removes it (QR codes stay
small).
"""

from __future__ import annotations

from typing import Any

BEGIN = "# --- nbgateway private CA: TLS for private services ---"
END = "# --- end of nbgateway private CA ---"

_HEAD = (
    "# Trust this CA once to reach private services with verified TLS (it is",
    "# name-constrained to this account's names). Save the certificate below",
    "# without the leading \"# \" as nbgateway-ca.crt, or download it:",
    "#   nbgateway-admin ca download -o nbgateway-ca.crt",
    "#   (REST: GET /api/reverse-proxies/ca-certificate)",
    "# then: curl --cacert nbgateway-ca.crt https://<service>/",
)


def config_block(store: Any, account_id: str) -> str:
    repo = getattr(store, "certificates", None)
    if repo is None:
        return ""
    cas = repo.private_cas(account_id)
    if not cas:
        return ""
    lines = [BEGIN, *_HEAD]
    for ca in cas:
        lines += ["# " + line for line in ca.pem.strip().splitlines()]
    lines.append(END)
    return "\n" + "\n".join(lines) + "\n"


def strip_block(conf: str) -> str:
    """``conf`` without the CA block."""
    start = conf.find("\n" + BEGIN)
    end = conf.find(END, start)
    if start < 0 or end < 0:
        return conf
    return conf[:start] + conf[end + len(END):].lstrip("\n")
