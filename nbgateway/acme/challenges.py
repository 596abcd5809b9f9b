"""Pending ACME challenge answers and the places that serve them.

:class:`ChallengeResponder` holds, while an order runs, the http-01 key
authorizations by token and the tls-alpn-01 certificates (RFC 8737) by domain.
It is bounded (``max_pending``) and only ever answers for what an order of
this gateway published: a ``acme-tls/1`` ClientHello for any other name gets
no challenge certificate, an unknown token is a 404.

:class:`HTTP01Resource` serves ``/.well-known/acme-challenge/<token>`` on the
``--acme-addr`` listener (everything else there is 404).
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from twisted.logger import Logger
from twisted.web.resource import Resource

from nbgateway.tls.certstore import CertifiedKey, normalize_name

log = Logger()

ACME_TLS_1 = b"acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737)
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HTTP01_PREFIX = b"/.well-known/acme-challenge/"
MAX_PENDING = 1024


def tls_alpn_certificate(domain: str, key_authorization: str) -> CertifiedKey:
    """The self-signed tls-alpn-01 certificate for ``domain``: its only SAN
    is the domain, and the critical acmeIdentifier extension carries the
    SHA-256 of the key authorization as a DER OCTET STRING."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(
            ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert, key, [], (domain,), source="acme-tls-alpn-01")


class ChallengeResponder:
    """See the module docstring.  Orders publish from their worker thread
    while the listeners read on the reactor thread: every method holds a
    lock (never across I/O), so no order ever waits for the reactor."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._lock = threading.Lock()
        self.max_pending = max_pending
        self._http: dict[str, bytes] = {}
        self._alpn: dict[str, CertifiedKey] = {}
        self.answered = {"http-01": 0, "tls-alpn-01": 0}
        self.refused = {"http-01": 0, "tls-alpn-01": 0}

    def add_http01(self, token: str, key_authorization: str) -> bool:
        with self._lock:
            if token not in self._http and len(self._http) >= self.max_pending:
                return False
            self._http[token] = key_authorization.encode("ascii")
            return True

    def remove_http01(self, token: str) -> None:
        with self._lock:
            self._http.pop(token, None)

    def http01(self, token: str) -> bytes | None:
        with self._lock:
            answer = self._http.get(token)
            (self.answered if answer is not None else self.refused)["http-01"] += 1
            return answer

    def add_tls_alpn01(self, domain: str, key_authorization: str) -> bool:
        name = normalize_name(domain)
        ck = tls_alpn_certificate(name, key_authorization)
        with self._lock:
            if name not in self._alpn and len(self._alpn) >= self.max_pending:
                return False
            self._alpn[name] = ck
            return True

    def remove_tls_alpn01(self, domain: str) -> None:
        with self._lock:
            self._alpn.pop(normalize_name(domain), None)

    def has_tls_alpn01(self, server_name: str | bytes | None) -> bool:
        with self._lock:
            return normalize_name(server_name) in self._alpn

    def tls_alpn01(self, server_name: str | bytes | None) -> CertifiedKey | None:
        with self._lock:
            ck = self._alpn.get(normalize_name(server_name))
            (self.answered if ck is not None else self.refused)["tls-alpn-01"] += 1
            return ck


class HTTP01Resource(Resource):
    """``GET /.well-known/acme-challenge/<token>``: the key authorization of a
    pending http-01 challenge; anything else 404."""

    isLeaf = True

    def __init__(self, responder: ChallengeResponder) -> None:
        super().__init__()
        self.responder = responder

    def render(self, request: Any) -> bytes:
        path = request.path or b""
        answer = None
        if request.method in (b"GET", b"HEAD") and path.startswith(HTTP01_PREFIX):
            token = path[len(HTTP01_PREFIX):].decode("ascii", "replace")
            answer = self.responder.http01(token)
        request.setHeader(b"content-type", b"text/plain")
        if answer is None:
            request.setResponseCode(404)
            return b"not found\n"
        return answer


def tls_alpn_context(responder: ChallengeResponder, ck: CertifiedKey) -> Any:
    """A server context presenting ``ck`` unless the client offers only
    ``acme-tls/1`` -- then, when an order of ours is pending for the server
    name, the challenge certificate is swapped in from the ALPN callback
    (OpenSSL chooses the certificate after ALPN).  A client offering
    ``acme-tls/1`` for a name without a pending challenge gets no ALPN
    protocol and the normal certificate.  Built per connection and only
    while a tls-alpn-01 challenge is pending for the name."""
    from OpenSSL import SSL

    from nbgateway.tls.contexts import _alpn_select, build_context

    ctx = build_context(ck)

    def select(conn: Any, offered: list[bytes]) -> Any:
        if ACME_TLS_1 not in offered:
            return _alpn_select(conn, offered)
        challenge = responder.tls_alpn01(conn.get_servername())
        if challenge is None:
            return SSL.NO_OVERLAPPING_PROTOCOLS
        conn.use_certificate(challenge.cert)
        conn.use_privatekey(challenge.key)
        return ACME_TLS_1

    ctx.set_alpn_select_callback(select)
    return ctx
