"""The gateway's private CA: a name-constrained issuing CA kept in the data directory.

Private services' names do not resolve publicly, so no public ACME server can
issue for them; the gateway signs their certificates itself.  Peers trust the
CA certificate once (downloaded from management), so the CA must not be able
to vouch for anything else.  This module owns that CA:

* the key (EC P-256) is ``<datadir>/ca.key``, mode 0600 (an existing key with
  looser permissions is tightened on load); the certificate is ``ca.crt``;
* the certificate carries a *critical* X.509 NameConstraints extension:
  permitted DNS subtrees = the CA's name set, and every IPv4/IPv6 address
  excluded (no IP-address leaves), so a verifier (OpenSSL, browsers) rejects
  any leaf for a name outside the set even if it was signed with the CA key;
* :meth:`PrivateCA.issue` refuses (:class:`NameNotPermittedError`, logged) a name
  outside the set, so the gateway never signs one;
* the name set grows: :meth:`PrivateCA.permit` adds names (the gateway's
  cluster domain at creation, then each domain it is mapped to serve) and, when
  one is new, re-issues the CA certificate with the *same key and subject* and
  the wider set (atomic file replace).  Leaves issued before stay valid; peers
  need the new CA certificate only for the new names (management serves the
  current one, reported by the gateway with each service status).  It shrinks
  only through :meth:`PrivateCA.restrict` (a gateway upgraded to per-account
  CAs narrows its own CA, which listed every account's names, to its default
  name: the constraints are shown with every certificate it signs).

``permitted=None`` makes an unconstrained CA (test fixtures, external CAs in
tests); the gateway always passes a name set.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import sys
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from nbgateway.atomicfile import write_atomic

log = Logger()

CA_LIFETIME_DAYS = 3650
#: at most this many permitted subtrees (bounded certificate size)
MAX_PERMITTED = 4096
_EXCLUDED_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class NameNotPermittedError(ValueError):
    """The CA refused to issue: the name is outside its name constraints."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def normalise(name: str) -> str:
    """As routes.hosts.domain_key: a name already normalised is returned as is."""
    key = name.strip().rstrip(".").lower()
    return name if key == name else key


def within(name: str, subtree: str) -> bool:
    """RFC 5280 DNS subtree match: ``subtree`` itself or any name below it."""
    return name == subtree or name.endswith("." + subtree)


def constraints_of(cert: x509.Certificate) -> frozenset[str] | None:
    """The permitted DNS subtrees of ``cert`` (None: not name-constrained)."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return frozenset(normalise(g.value) for g in nc.permitted_subtrees or ()
                     if isinstance(g, x509.DNSName))


class PrivateCA:
    """See the module docstring.  Not thread-safe: use from the reactor thread."""

    def __init__(self, data_dir: str, common_name: str = "nbgateway local CA",
                 permitted: Iterable[str] | None = None) -> None:
        self.data_dir = data_dir
        self.cert_path = os.path.join(data_dir, "ca.crt")
        self.key_path = os.path.join(data_dir, "ca.key")
        self.refused = 0  # issue() refusals (names outside the constraints)
        wanted = None if permitted is None else {normalise(n) for n in permitted if n}
        if os.path.exists(self.cert_path) and os.path.exists(self.key_path):
            if os.stat(self.key_path).st_mode & 0o077:
                os.chmod(self.key_path, 0o600)
                log.warn("local CA key {path} was readable by others; now 0600",
                         path=self.key_path)
            with open(self.cert_path, "rb") as f:
                self.cert = x509.load_pem_x509_certificate(f.read())
            with open(self.key_path, "rb") as f:
                self.key = serialization.load_pem_private_key(f.read(), password=None)
            existing = constraints_of(self.cert)
            self.permitted: frozenset[str] | None = existing
            if wanted is not None:
                if existing is None:  # a CA from before constraints: constrain it now
                    self.permitted = frozenset()
                    self._reissue(frozenset(wanted))
                else:
                    self.permit(wanted)
        else:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.permitted = None if wanted is None else frozenset(wanted)
            now = _now()
            self.cert = self._sign_ca(common_name, now - datetime.timedelta(hours=1),
                                      now + datetime.timedelta(days=CA_LIFETIME_DAYS))
            self._save(with_key=True)

    # -- the CA certificate ------------------------------------------------
    def _sign_ca(self, common_name: str | x509.Name, not_before: datetime.datetime,
                 not_after: datetime.datetime) -> x509.Certificate:
        name = (common_name if isinstance(common_name, x509.Name) else
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        builder = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
        )
        if self.permitted is not None:
            builder = builder.add_extension(x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(n) for n in sorted(self.permitted)] or None,
                excluded_subtrees=[x509.IPAddress(net) for net in _EXCLUDED_IPS]),
                critical=True)
        return builder.sign(self.key, hashes.SHA256())

    def _save(self, with_key: bool = False) -> None:
        if with_key:
            write_atomic(self.key_path, self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600, exact_mode=True)
        write_atomic(self.cert_path, self.cert.public_bytes(serialization.Encoding.PEM), 0o644,
                     exact_mode=True)

    def _reissue(self, names: frozenset[str]) -> None:
        self.permitted = frozenset(self.permitted or ()) | names
        self.cert = self._sign_ca(self.cert.subject, self.cert.not_valid_before_utc,
                                  self.cert.not_valid_after_utc)
        self._save()
        log.info("local CA re-issued, name constraints now {count} DNS subtrees "
                 "(fingerprint {fingerprint})", count=len(self.permitted),
                 fingerprint=self.fingerprint())

    def covers(self, name: str) -> bool:
        """True when the CA may issue for ``name``."""
        name = normalise(name)
        if self.permitted is None:
            return True
        try:
            ipaddress.ip_address(name)
            return False  # every address is excluded
        except ValueError:
            pass
        return any(within(name, sub) for sub in self.permitted)

    def permit(self, names: Iterable[str]) -> bool:
        """Add names to the constraints (re-issuing the CA certificate when one is
        new); True if it re-issued.  Addresses and over-long sets are refused."""
        if self.permitted is None:
            return False
        new = set()
        for raw in names:
            name = sys.intern(normalise(raw))  # shared with the service table's key
            if not name or name.startswith("*.") or self.covers(name):
                continue
            try:
                ipaddress.ip_address(name)
                continue
            except ValueError:
                new.add(name)
        if not new:
            return False
        if len(self.permitted) + len(new) > MAX_PERMITTED:
            log.warn("local CA: name constraint set full ({limit}); {count} names not added",
                     limit=MAX_PERMITTED, count=len(new))
            return False
        self._reissue(frozenset(new))
        return True

    def restrict(self, keep: Iterable[str]) -> bool:
        """Narrow the constraints to the names of ``keep`` already permitted
        (re-issuing the CA certificate, same key and subject); True if it
        re-issued.  Never to an empty set (a NameConstraints without permitted
        subtrees permits every DNS name): then nothing changes."""
        if self.permitted is None:
            return False
        narrowed = self.permitted & {normalise(n) for n in keep if n}
        if not narrowed or narrowed == self.permitted:
            return False
        dropped = len(self.permitted) - len(narrowed)
        self.permitted = frozenset(narrowed)
        self.cert = self._sign_ca(self.cert.subject, self.cert.not_valid_before_utc,
                                  self.cert.not_valid_after_utc)
        self._save()
        log.info("local CA re-issued with {dropped} DNS subtrees fewer, now {count} "
                 "(fingerprint {fingerprint})", dropped=dropped, count=len(narrowed),
                 fingerprint=self.fingerprint())
        return True

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate's DER, hex."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    # -- leaves ------------------------------------------------------------
    def sign_leaf(self, name: str, days: float,
                  now: datetime.datetime | None = None) -> tuple[x509.Certificate, Any]:
        """A server certificate for ``name``; :class:`NameNotPermittedError` when the
        name is outside the constraints (logged, counted)."""
        if not self.covers(name):
            self.refused += 1
            log.warn("local CA refused to issue for {name}: outside its name constraints",
                     name=name)
            raise NameNotPermittedError(f"{name} is outside the local CA's name constraints")
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        now = now or _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key
