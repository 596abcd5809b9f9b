"""Store part: certificate status and private CAs (``store.certificates``).

:class:`CertificateRepository` owns what gateways report about certificates
(nbgateway extension ``SendStatusUpdateRequest.nbgw_certificate``): per
service the issuer, not-after, source and last error of the certificate the
gateway serves; per account the gateways' private CA certificates, one row per
CA key (a re-issued CA -- same key, wider name constraints -- replaces its row,
never by one with narrower constraints).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nbgateway.management.errors import NotFound, ValidationError
from nbgateway.management.model import utcnow
from nbgateway.management.store._base import Repository, Tx
from nbgateway.management.store.schema import private_ca_certificates as cas
from nbgateway.management.store.schema import service_certificates as certs
from nbgateway.management.store.schema import services
from nbgateway.tls.ca import constraints_of

MAX_ISSUER = 1024
MAX_ERROR = 1000
MAX_CA_PEM = 16384
SOURCES = ("acme", "local-ca", "file")


@dataclass(frozen=True)
class CertificateStatus:
    service_id: str
    account_id: str
    domain: str
    issuer: str
    not_after: datetime | None
    source: str
    last_error: str
    ca_key_id: str
    updated_at: datetime | None


@dataclass(frozen=True)
class PrivateCA:
    account_id: str
    key_id: str
    pem: str
    fingerprint: str
    updated_at: datetime | None


def _clean(text: str, limit: int) -> str:
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text or "")[:limit]


def parse_ca(pem: str) -> tuple[str, str, x509.Certificate]:
    """(key id, SHA-256 fingerprint, certificate) of a CA certificate PEM;
    ValidationError unless it is exactly one CA certificate."""
    if len(pem) > MAX_CA_PEM:
        raise ValidationError("ca_certificate_pem is too long")
    try:
        found = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValidationError(f"ca_certificate_pem: {exc}") from None
    if len(found) != 1:
        raise ValidationError("ca_certificate_pem must hold exactly one certificate")
    cert = found[0]
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise ValidationError("ca_certificate_pem is not a CA certificate")
    except x509.ExtensionNotFound:
        raise ValidationError("ca_certificate_pem is not a CA certificate") from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(spki).hexdigest(), hashlib.sha256(der).hexdigest(), cert


class CertificateRepository(Repository):
    """See the module docstring."""

    def record(self, account_id: str, service_id: str, *, issuer: str,
               not_after: datetime | None, source: str, last_error: str = "",
               clear_error: bool = False, ca_pem: str = "",
               now: datetime | None = None) -> CertificateStatus:
        """Store a gateway's report for a service.  ``last_error`` replaces the
        stored error when not empty; ``clear_error`` (a certificate was issued)
        clears it; otherwise the previous error stays.  NotFound for a service
        not in the account; ValidationError for a bad CA PEM."""
        ca = parse_ca(ca_pem) if ca_pem else None

        def run(tx: Tx) -> CertificateStatus:
            conn = tx.conn
            if conn.execute(sa.select(services.c.id).where(
                    services.c.id == service_id,
                    services.c.account_id == account_id)).first() is None:
                raise NotFound(f"service {service_id} not found")
            self.record_in(conn, account_id, service_id, issuer=issuer, not_after=not_after,
                           source=source, last_error=last_error, clear_error=clear_error,
                           ca_pem=ca_pem, ca=ca, now=now)
            return self._get(conn, account_id, service_id)

        return self._store._write(account_id, run)

    def record_in(self, conn: sa.Connection, account_id: str, service_id: str, *,
                  issuer: str, not_after: datetime | None, source: str, last_error: str,
                  clear_error: bool, ca_pem: str, ca: tuple[str, str, x509.Certificate] | None,
                  now: datetime | None = None) -> None:
        """:meth:`record` inside a write transaction, for a service known to be
        in the account and a CA already parsed (:func:`parse_ca`) when given
        (the batched status reports of ``_statusreports``)."""
        if source not in SOURCES:
            source = "file"
        issuer = _clean(issuer, MAX_ISSUER)
        last_error = _clean(last_error, MAX_ERROR).strip()
        now = now or utcnow()
        old = conn.execute(sa.select(certs.c.last_error)
                           .where(certs.c.service_id == service_id)).first()
        error = last_error or ("" if clear_error or old is None else old.last_error or "")
        values = {"account_id": account_id, "issuer": issuer, "not_after": not_after,
                  "source": source, "last_error": error or None,
                  "ca_key_id": ca[0] if ca else None, "updated_at": now}
        if old is None:
            conn.execute(sa.insert(certs).values(service_id=service_id, **values))
        else:
            conn.execute(sa.update(certs).where(certs.c.service_id == service_id)
                         .values(**values))
        if ca is not None:
            self._store_ca(conn, account_id, ca_pem, ca, now)

    def _store_ca(self, conn: sa.Connection, account_id: str, pem: str,
                  ca: tuple[str, str, x509.Certificate], now: datetime) -> None:
        key_id, fingerprint, cert = ca
        where = sa.and_(cas.c.account_id == account_id, cas.c.key_id == key_id)
        old = conn.execute(sa.select(cas).where(where)).first()
        if old is None:
            conn.execute(sa.insert(cas).values(account_id=account_id, key_id=key_id, pem=pem,
                                               fingerprint=fingerprint, updated_at=now))
            return
        if old.fingerprint == fingerprint:
            return
        # the CA's constraints only grow: never go back to a narrower copy
        # (a late report carrying the CA from before a re-issue)
        try:
            stored = constraints_of(x509.load_pem_x509_certificate(old.pem.encode("ascii")))
        except ValueError:
            stored = None
        new = constraints_of(cert)
        if stored is not None and new is not None and new < stored:
            return
        conn.execute(sa.update(cas).where(where).values(pem=pem, fingerprint=fingerprint,
                                                        updated_at=now))

    def _get(self, conn: sa.Connection, account_id: str, service_id: str) -> CertificateStatus:
        row = conn.execute(
            sa.select(certs, services.c.domain)
            .join(services, services.c.id == certs.c.service_id)
            .where(certs.c.service_id == service_id, certs.c.account_id == account_id)
        ).first()
        if row is None:
            raise NotFound(f"no certificate status for service {service_id}")
        return _status(row)

    def get(self, account_id: str, service_id: str) -> CertificateStatus:
        with self._store._read() as conn:
            return self._get(conn, account_id, service_id)

    def list(self, account_id: str | None) -> list[CertificateStatus]:
        """The account's statuses by domain (every account's for None)."""
        q = (sa.select(certs, services.c.domain)
             .join(services, services.c.id == certs.c.service_id)
             .order_by(services.c.domain))
        if account_id is not None:
            q = q.where(certs.c.account_id == account_id)
        with self._store._read() as conn:
            return [_status(r) for r in conn.execute(q).all()]

    def private_cas(self, account_id: str) -> list[PrivateCA]:
        """The account's private CA certificates (one per gateway CA key)."""
        with self._store._read() as conn:
            rows = conn.execute(sa.select(cas).where(cas.c.account_id == account_id)
                                .order_by(cas.c.key_id)).all()
        return [PrivateCA(r.account_id, r.key_id, r.pem, r.fingerprint, r.updated_at)
                for r in rows]


def _status(r: sa.Row) -> CertificateStatus:
    return CertificateStatus(
        service_id=r.service_id, account_id=r.account_id, domain=r.domain, issuer=r.issuer,
        not_after=r.not_after, source=r.source, last_error=r.last_error or "",
        ca_key_id=r.ca_key_id or "", updated_at=r.updated_at)
