"""Test helpers: write PEM certificate/key pairs issued by a throwaway CA."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization

from nbgateway.tls.certstore import LocalCA


def write_pair(ca: LocalCA, directory: str, stem: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    ck = ca.issue(name)
    with open(os.path.join(directory, stem + ".crt"), "wb") as f:
        f.write(ck.cert_pem())
    with open(os.path.join(directory, stem + ".key"), "wb") as f:
        f.write(ck.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return ck.cert.subject.rfc4514_string()
