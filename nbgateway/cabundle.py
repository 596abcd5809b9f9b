"""Client CA bundles: the validation both ends of the mapping share (ground floor).

Owns :func:`parse_ca_bundle`, used by management when an operator uploads a
service's client CA (``management/clientcerts.py``) and by the gateway when a
mapping arrives (``auth/mtls.py``): PEM ``CERTIFICATE`` blocks only (a private
key or anything else is refused), at most :data:`MAX_BUNDLE_BYTES` and
:data:`MAX_CAS` certificates, each a CA (``basicConstraints CA:TRUE``,
``keyCertSign`` when key usage is present), none expired at ``now``.  It lives
here, importing nothing of nbgateway, so the management server does not import
the gateway's auth package (and the reverse).
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = ["MAX_BUNDLE_BYTES", "MAX_CAS", "BundleError", "parse_ca_bundle"]

MAX_BUNDLE_BYTES = 64 * 1024
MAX_CAS = 16
_SHA256 = hashes.SHA256()
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


class BundleError(ValueError):
    """A client CA bundle that cannot be used (the message says why)."""


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:  # pragma: no cover - undecodable attribute
        return "?"


def parse_ca_bundle(pem: str | bytes, now: float | None = None) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle, or :class:`BundleError`.
    ``now`` (unix seconds) also refuses a CA that has expired."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else bytes(pem)
    if not data.strip():
        raise BundleError("client CA bundle is empty")
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"client CA bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    kinds = {m.group(1).decode("ascii") for m in _PEM_BEGIN.finditer(data)}
    if not kinds:
        raise BundleError("client CA bundle holds no PEM certificate")
    if kinds != {"CERTIFICATE"}:
        other = sorted(kinds - {"CERTIFICATE"})
        raise BundleError("client CA bundle must hold certificates only, found "
                          + ", ".join(other))
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BundleError(f"client CA bundle: unreadable certificate ({exc})") from None
    if len(certs) > MAX_CAS:
        raise BundleError(f"client CA bundle holds more than {MAX_CAS} certificates")
    seen: set[bytes] = set()
    out = []
    for i, cert in enumerate(certs):
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise BundleError(f"certificate {i + 1} ({_subject(cert)}) is not a CA")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                raise BundleError(f"certificate {i + 1} ({_subject(cert)}) may not sign "
                                  "certificates (key usage)")
        except x509.ExtensionNotFound:
            pass
        if now is not None and cert.not_valid_after_utc.timestamp() <= now:
            raise BundleError(f"certificate {i + 1} ({_subject(cert)}) has expired")
        fp = cert.fingerprint(_SHA256)
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return out
