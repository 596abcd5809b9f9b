"""Test helpers: throwaway client-certificate CAs and client certificates
(cryptography), written as PEM files for curl/openssl when asked."""

from __future__ import annotations

import datetime as dt
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class IssuingCA:
    """A CA that issues client certificates."""

    def __init__(self, cn: str = "Test Client CA", *, key_cert_sign: bool = True,
                 ca: bool = True, not_after: dt.datetime | None = None,
                 issuer: IssuingCA | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        builder = (x509.CertificateBuilder()
                   .subject_name(self.name)
                   .issuer_name(issuer.name if issuer else self.name)
                   .public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - dt.timedelta(days=1))
                   .not_valid_after(not_after or NOW + dt.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                       self.key.public_key()), critical=False))
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
            crl_sign=key_cert_sign, encipher_only=False, decipher_only=False), critical=True)
        signer = issuer.key if issuer else self.key
        self.cert = builder.sign(signer, hashes.SHA256())

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, cn: str = "", *, emails: tuple[str, ...] = (), uris: tuple[str, ...] = (),
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              eku: tuple = (ExtendedKeyUsageOID.CLIENT_AUTH,)) -> ClientCert:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn) if cn else x509.Name([]))
                   .issuer_name(self.name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
                   .not_valid_after(not_after or NOW + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        names: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        return ClientCert(builder.sign(self.key, hashes.SHA256()), key, self)


class ClientCert:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 ca: IssuingCA) -> None:
        self.cert = cert
        self.key = key
        self.ca = ca

    def write(self, directory: str, stem: str) -> tuple[str, str]:
        """(cert path, key path); the cert file holds the leaf (and the
        issuer when it is an intermediate)."""
        os.makedirs(directory, exist_ok=True)
        cert_path = os.path.join(directory, stem + ".crt")
        key_path = os.path.join(directory, stem + ".key")
        with open(cert_path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return cert_path, key_path
