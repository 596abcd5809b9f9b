"""``nbgateway-admin ca``: the private CA peers trust, and certificate status.

* ``ca show``: print the account's private CA certificate(s) (PEM), as
  management received them from the gateways;
* ``ca download [-o FILE]``: write it to a file (default ``nbgateway-ca.crt``)
  and print its SHA-256 fingerprint(s) to stderr;
* ``ca status``: each service's certificate (domain, source, issuer,
  not-after, last error).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nbgateway.atomicfile import write_atomic
from nbgateway.management.cli._client import Client, CliError
from nbgateway.management.cli._output import emit
from nbgateway.management.cli._parsing import Commands

STATUS_COLS = ("domain", "source", "issuer", "not_after", "last_error")
CA_PATH = "/reverse-proxies/ca-certificate"


def _fingerprints(pem: bytes) -> list[str]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CliError("management answered with something that is not a PEM "
                       "certificate") from None
    return [hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
            for c in certs]


def ca_show(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    pem = client.request("GET", CA_PATH, raw=True)
    _fingerprints(pem)
    out.write(pem.decode("ascii"))


def ca_download(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    pem = client.request("GET", CA_PATH, raw=True)
    prints = _fingerprints(pem)
    write_atomic(args.output, pem, 0o644)
    for fp in prints:
        print(f"wrote {args.output} (SHA-256 {fp})", file=sys.stderr)


def ca_status(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    emit(args.json, out, client.get("/reverse-proxies/certificates"), STATUS_COLS)


def register(cmd: Commands) -> None:
    g = cmd.group("ca", "the private CA certificate peers trust for private services, and "
                  "each service's certificate status", aliases=["certificates"], example=[
                      "nbgateway-admin ca download -o nbgateway-ca.crt",
                      "curl --cacert nbgateway-ca.crt https://app.nbgateway.internal/"])
    g.add("show", "print the account's private CA certificate (PEM)", func=ca_show,
          example=["nbgateway-admin ca show > ca.crt"])
    c = g.add("download", "write the account's private CA certificate to a file",
              func=ca_download, example=["nbgateway-admin ca download -o ca.crt"])
    c.add_argument("-o", "--output", default="nbgateway-ca.crt",
                   help="file to write (default: %(default)s)")
    g.add("status", "each service's certificate: source (acme, local-ca, file), issuer, "
          "not-after, last error", func=ca_status,
          example=["nbgateway-admin ca status", "nbgateway-admin ca status --json"])
