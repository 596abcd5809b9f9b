"""Test helpers: PEM certificate/key pairs issued by a throwaway CA, and
self-signed server options."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

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


def self_signed_options(name: str = "svc.example", **kw) -> ssl.CertificateOptions:
    """Server ``CertificateOptions`` for a fresh self-signed P-256 leaf for
    ``name``, offering ALPN ``h2`` and ``http/1.1`` (``kw`` passed on)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    pc = ssl.PrivateCertificate.loadPEM(pem)
    return ssl.CertificateOptions(privateKey=pc.privateKey.original,
                                  certificate=pc.original,
                                  acceptableProtocols=[b"h2", b"http/1.1"], **kw)
