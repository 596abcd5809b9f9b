"""mTLS client certificates as an auth scheme (sans-IO).

Owns three things, none of which makes an RPC:

* **CA bundle validation** (:func:`parse_ca_bundle`, defined in the ground-floor
  :mod:`nbgateway.cabundle` that management imports too), used by management
  when an operator uploads a service's client CA and by the gateway when a
  mapping arrives: PEM ``CERTIFICATE`` blocks only (a private key or anything else is
  refused), at most :data:`MAX_BUNDLE_BYTES` and :data:`MAX_CAS` certificates,
  each a CA (``basicConstraints CA:TRUE``, ``keyCertSign`` when key usage is
  present).
* **Chain verification** (:class:`MtlsVerifier`): the certificate a client
  presented in its handshake, with the intermediates it sent, is verified
  against the service's *current* CAs alone (an OpenSSL ``X509Store`` holding
  only them, never the system store; every uploaded CA is a trust anchor) at
  the caller's ``now``.  Re-verifying per request (memoised per chain and CA
  set) is what makes an expired certificate, or one whose CA was removed from
  the service, stop working on an already open connection.  An extended key
  usage, when present, must allow ``clientAuth``.
* **Certificate -> user** (:func:`cert_names`, :func:`identify`): the names a
  certificate carries (SAN emails, SAN URIs, subject CN) looked up in the
  service's table from the mapping (``ProxyMapping.nbgw_client_cert_users``,
  resolved by management from its rule: users' emails or an explicit list).
  Emails compare case-insensitively; the first name that maps wins, in the
  order SAN email, SAN URI, CN.  A verified certificate that maps to no user
  does not authenticate.

The TLS side (asking for the certificate on the service's name, with the
CA's names in the CertificateRequest) is :mod:`nbgateway.tls.contexts`; the
order of schemes is :mod:`nbgateway.auth.policy`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from nbgateway.cabundle import MAX_BUNDLE_BYTES, MAX_CAS, BundleError, parse_ca_bundle
from nbgateway.routes.identity import Identity

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_CAS",
    "MECHANISM",
    "MISDIRECTED",
    "BundleError",
    "CertNames",
    "ClientCA",
    "MtlsVerifier",
    "Presented",
    "Verdict",
    "cert_names",
    "identify",
    "parse_ca_bundle",
]

MECHANISM = "mtls"
#: the reason when a request names an mTLS service on a TLS connection whose
#: SNI was another name (no certificate was requested for it: an HTTP/2
#: connection a browser reused, say); answered 421 so the client retries on
#: a connection of its own (RFC 9110 15.5.20)
MISDIRECTED = "this connection was not opened for this service's name"
#: at most this many intermediates from the client are considered
MAX_CLIENT_CHAIN = 8



@dataclass(eq=False)
class ClientCA:
    """One service's parsed client CA bundle (shared by every service with
    the same bundle).  ``tls_contexts`` is the TLS layer's cache of server
    contexts built for it (see :func:`nbgateway.tls.contexts.client_auth_context`)."""

    key: str  # hex SHA-256 of the bundle text
    cas: tuple[x509.Certificate, ...]
    #: the CAs for OpenSSL (trust store; their subjects go in the CertificateRequest)
    openssl_cas: tuple[crypto.X509, ...]
    tls_contexts: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def from_pem(cls, pem: str) -> ClientCA:
        cas = parse_ca_bundle(pem)
        ossl = tuple(crypto.X509.from_cryptography(c) for c in cas)
        return cls(key=hashlib.sha256(pem.encode("utf-8", "replace")).hexdigest(),
                   cas=tuple(cas), openssl_cas=ossl)

    def store(self, now: float) -> crypto.X509Store:
        st = crypto.X509Store()
        for c in self.openssl_cas:
            st.add_cert(c)
        # every uploaded CA is an anchor (an issuing intermediate alone is enough)
        st.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        st.set_time(datetime.fromtimestamp(now, UTC).replace(tzinfo=None))
        return st


@dataclass(frozen=True, slots=True)
class CertNames:
    """The names a client certificate carries, in lookup order."""

    emails: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    common_name: str = ""

    def candidates(self) -> tuple[str, ...]:
        cn = (self.common_name,) if self.common_name else ()
        return self.emails + self.uris + cn

    def describe(self) -> str:
        return (self.emails + self.uris + (self.common_name,))[0] if (
            self.emails or self.uris or self.common_name) else "(no name)"


def cert_names(cert: x509.Certificate) -> CertNames:
    """SAN emails and URIs and the subject CN of ``cert``."""
    emails: list[str] = []
    uris: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = [str(v) for v in san.get_values_for_type(x509.RFC822Name)]
        uris = [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    cn = ""
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if attrs:
            cn = str(attrs[0].value)
    except ValueError:
        pass
    return CertNames(tuple(emails[:16]), tuple(uris[:16]), cn)


#: a mapping's user table entry: (match, user_id, email, group_ids, group_names)
UserRow = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]


def _norm(value: str) -> str:
    return value.strip().lower() if "@" in value else value.strip()


def identify(users: Sequence[UserRow], names: CertNames) -> Identity | None:
    """The user a verified certificate's names map to (None: not mapped)."""
    table = {_norm(row[0]): row for row in users if row[0] and row[1]}
    for name in names.candidates():
        row = table.get(_norm(name))
        if row is not None:
            _match, user_id, email, gids, gnames = row
            return Identity(user_id=user_id, email=email or user_id, group_ids=tuple(gids),
                            group_names=tuple(gnames), method=MECHANISM)
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one presented chain: ``names`` when it verified, else
    ``reason`` (for the 401 page and the log)."""

    names: CertNames | None
    reason: str = ""
    valid_from: float = 0.0
    valid_until: float = 0.0

    @property
    def ok(self) -> bool:
        return self.names is not None


def _der(cert: Any) -> bytes:
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    return cert.public_bytes(serialization.Encoding.DER)


def _as_crypto(cert: Any) -> x509.Certificate:
    return cert.to_cryptography() if isinstance(cert, crypto.X509) else cert


@dataclass(frozen=True, slots=True)
class Presented:
    """What a client presented in its handshake: the leaf, the other
    certificates it sent (at most :data:`MAX_CLIENT_CHAIN`) and a digest of
    them all (the memo key)."""

    leaf: x509.Certificate
    extra: tuple[x509.Certificate, ...]
    digest: bytes

    @classmethod
    def of(cls, leaf: Any, chain: Sequence[Any]) -> Presented:
        cleaf = _as_crypto(leaf)
        leaf_der = _der(cleaf)
        extra, ders = [], []
        for c in chain[:MAX_CLIENT_CHAIN + 1]:
            cc = _as_crypto(c)
            der = _der(cc)
            if der != leaf_der:
                extra.append(cc)
                ders.append(der)
        return cls(cleaf, tuple(extra[:MAX_CLIENT_CHAIN]),
                   hashlib.sha256(leaf_der + b"".join(ders)).digest())


class MtlsVerifier:
    """Parses bundles (memoised by text) and verifies presented chains
    (memoised per chain and bundle; the time window is re-checked against
    every ``now``).  Both memories are bounded (least recently used out)."""

    def __init__(self, max_bundles: int = 256, max_chains: int = 4096) -> None:
        self.max_bundles = max_bundles
        self.max_chains = max_chains
        #: hex SHA-256 of the bundle text -> parsed bundle (None: unusable)
        self._bundles: OrderedDict[str, ClientCA | None] = OrderedDict()
        self._chains: OrderedDict[tuple[str, bytes], Verdict] = OrderedDict()
        self.verified = 0  # chains verified (not answered from memory)

    def ca_for(self, pem: str) -> ClientCA | None:
        """The parsed bundle, None when empty or unusable (fail closed)."""
        if not pem:
            return None
        key = hashlib.sha256(pem.encode("utf-8", "replace")).hexdigest()
        if key in self._bundles:
            self._bundles.move_to_end(key)
            return self._bundles[key]
        try:
            ca: ClientCA | None = ClientCA.from_pem(pem)
        except BundleError:
            ca = None
        self._bundles[key] = ca
        while len(self._bundles) > self.max_bundles:
            self._bundles.popitem(last=False)
        return ca

    def verify(self, ca: ClientCA, leaf: Any, chain: Sequence[Any], now: float) -> Verdict:
        """Verify ``leaf`` (with the client's ``chain``, leaf excluded or
        not) against ``ca`` at ``now``.  Certificates may be pyOpenSSL or
        cryptography objects."""
        return self.verify_presented(ca, Presented.of(leaf, chain), now)

    def verify_presented(self, ca: ClientCA, p: Presented, now: float) -> Verdict:
        """:meth:`verify` for an already digested :class:`Presented` chain
        (what a connection keeps, so a request costs two lookups)."""
        leaf, extra, digest = p.leaf, p.extra, p.digest
        key = (ca.key, digest)
        hit = self._chains.get(key)
        if hit is None:
            hit = self._verify(ca, leaf, extra, now)
            self._chains[key] = hit
            while len(self._chains) > self.max_chains:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(key)
        if hit.ok and not (hit.valid_from <= now < hit.valid_until):
            # expired since (or not yet valid): verify again for the reason
            hit = self._verify(ca, leaf, extra, now)
            self._chains[key] = hit
        return hit

    def _verify(self, ca: ClientCA, leaf: Any, extra: Sequence[Any], now: float) -> Verdict:
        self.verified += 1
        cleaf = _as_crypto(leaf)
        try:
            ctx = crypto.X509StoreContext(
                ca.store(now), crypto.X509.from_cryptography(cleaf),
                [crypto.X509.from_cryptography(_as_crypto(c)) for c in extra])
            verified = ctx.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            return Verdict(None, f"certificate not accepted: {exc}")
        except crypto.Error as exc:  # pragma: no cover - malformed input
            return Verdict(None, f"certificate not accepted: {exc}")
        try:
            eku = cleaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.CLIENT_AUTH not in eku and \
                    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
                return Verdict(None, "certificate not accepted: not for client authentication")
        except x509.ExtensionNotFound:
            pass
        start = max(c.to_cryptography().not_valid_before_utc.timestamp() for c in verified)
        end = min(c.to_cryptography().not_valid_after_utc.timestamp() for c in verified)
        return Verdict(cert_names(cleaf), valid_from=start, valid_until=end)


def tls_lookup(lookup: Any, verifier: MtlsVerifier) -> Any:
    """The TLS layer's ``client_auth(name, listener_account)`` over a domain
    lookup returning ``ServiceEntry``: the parsed CA of a non-private HTTP
    service that has one, else None (the name asks for no certificate)."""

    def client_auth(name: str, listener_account: str | None) -> ClientCA | None:
        entry = lookup(name)
        if entry is None or entry.private or entry.l4 or not entry.client_ca_pem:
            return None
        return verifier.ca_for(entry.client_ca_pem)

    return client_auth
