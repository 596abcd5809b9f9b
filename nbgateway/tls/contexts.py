"""TLS contexts: the server side (SNI certificate selection, ALPN) and the
client policy towards upstream targets.

Server: :class:`SNIServerCreator` is an ``IOpenSSLServerConnectionCreator``
for ``TLSMemoryBIOFactory``, so TLS runs over any transport (host sockets or
netstack connections alike).  Every connection starts on a base context
whose servername callback asks the :class:`~nbgateway.tls.ICertificateSource`
for the ClientHello's SNI name and switches the connection to that
certificate's context (built once per :class:`CertifiedKey` and cached on it).
No SNI gets the certificate for ``default_name``.  With a source that
counts its reloads (``reloads``: :class:`~nbgateway.tls.certstore.
CertificateStore`) that certificate is looked up once, not per connection:
again after a reload, and once its renewal is due (two thirds of its
lifetime, as the store renews a local-CA leaf; then at most once a minute
while the store keeps returning the same certificate).  Other sources are
asked per connection.

Each listener has its own creator (``listener_account``: None for the public
listener, the account id for a tunnel listener) and an optional ``visible``
predicate ``(name, listener_account) -> bool`` (:func:`sni_visibility`).  A
name that is not visible on the listener -- a private service's name on the
public listener, any name of another account on a tunnel listener -- is
answered with the default certificate, which names no service: a probe with
``-servername app.<cluster>`` learns nothing (issue 11.6).  TLS 1.2+ only; ALPN
selects ``h2`` when the client offers it (the listeners' channels hand the
connection to Twisted's HTTP/2 support, see :mod:`nbgateway.proxy.streaming`),
else ``http/1.1``; a client offering only other protocols gets no ALPN answer
and the handshake continues.

mTLS (issue 16): an optional ``client_auth`` lookup ``name -> ClientCA``
(:class:`nbgateway.auth.mtls.ClientCA`, duck-typed here: ``cas``,
``openssl_cas``, ``key``, ``tls_contexts``) names the services whose CA asks
for client certificates.  For such a (visible) name the connection switches
to a context presenting the same certificate that *requests* (never
requires) a client certificate, lists the service's CA subjects in the
CertificateRequest and builds the chain against a store holding only the
service's CAs (no system store; every uploaded CA is an anchor).  The
OpenSSL verify callback counts the verdict and lets the handshake finish
either way: the HTTP layer re-verifies the presented chain against the
service's current CAs per request (:class:`nbgateway.auth.mtls.MtlsVerifier`)
and answers a missing or foreign certificate with a 401 page, or falls
through to the service's other schemes.  SSL_set_SSL_CTX does not carry
the verify mode over, so the servername callback sets it on the connection,
and such contexts issue no session tickets, refuse renegotiation (the
request layer reads the presented chain once per connection) and carry a
session id context of their own, so a session never resumes across services.

Client: :class:`ClientTLSPolicy` verifies upstream certificates with
``optionsForClientTLS`` (service_identity host name checks, the platform
trust store or a given CA bundle) unless the mapping sets
``skip_tls_verify``; SNI is sent either way.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from nbgateway.tls import certstore as _certstore
from nbgateway.tls.certstore import CertifiedKey, is_ip_literal, normalize_name

log = Logger()

#: seconds between lookups of a default certificate past its renewal point
DEFAULT_RECHECK = 60.0

#: what we offer upstream targets as a client (the upstream client speaks HTTP/1.1)
ALPN_PROTOCOLS = (b"http/1.1",)


def _server_alpn() -> tuple[bytes, ...]:
    from twisted.web.http import H2_ENABLED  # the h2 package is installed

    return (b"h2", b"http/1.1") if H2_ENABLED else (b"http/1.1",)


#: what the listeners accept, in server preference order (h2 first)
SERVER_ALPN_PROTOCOLS = _server_alpn()
_OPTIONS = (SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE)


def _alpn_select(conn: Any, offered: list[bytes]) -> Any:
    for proto in SERVER_ALPN_PROTOCOLS:
        if proto in offered:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


def context_for(ck: CertifiedKey) -> SSL.Context:
    """The (cached) server context presenting ``ck``.  Contexts cannot be
    changed once a connection used them, so this one is never mutated."""
    if ck.context is None:
        ck.context = build_context(ck)
    return ck.context


def build_context(ck: CertifiedKey, servername_callback: Any = None) -> SSL.Context:
    """A new server context presenting ``ck`` (TLS 1.2+, ALPN h2/http/1.1)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_OPTIONS)
    ctx.use_certificate(ck.cert)
    for extra in ck.chain:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(ck.key)
    ctx.check_privatekey()
    ctx.set_alpn_select_callback(_alpn_select)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if servername_callback is not None:
        ctx.set_tlsext_servername_callback(servername_callback)
    return ctx


class ClientCertStats:
    """What the mTLS verify callback saw (all listeners share one)."""

    def __init__(self) -> None:
        self.requested = 0  # handshakes on a name that asks for a certificate
        self.chain_ok = 0  # certificates (chain elements) OpenSSL accepted
        self.chain_refused = 0  # refused ones (the HTTP layer answers 401)

    def collect(self) -> Any:
        """A prometheus_client custom-collector ``collect``."""
        from prometheus_client.core import CounterMetricFamily

        asked = CounterMetricFamily(
            "nbgateway_mtls_certificate_requests",
            "TLS handshakes on a name whose service has a client CA (a client "
            "certificate was requested)")
        asked.add_metric([], self.requested)
        yield asked
        checks = CounterMetricFamily(
            "nbgateway_mtls_handshake_chain_checks",
            "client certificate chain elements OpenSSL checked against the service CA "
            "during handshakes, by result (the request layer decides: 401 or fall through)",
            labels=["result"])
        checks.add_metric(["ok"], self.chain_ok)
        checks.add_metric(["refused"], self.chain_refused)
        yield checks

    def describe(self) -> list[Any]:
        return []


def client_auth_context(ck: CertifiedKey, ca: Any) -> SSL.Context:
    """The (cached on ``ca``) context presenting ``ck`` that requests a
    client certificate issued by one of ``ca``'s CAs."""
    cache = ca.tls_contexts
    hit = cache.get(id(ck))
    if hit is not None and hit[0] is ck:
        return hit[1]
    ctx = build_context(ck)
    store = ctx.get_cert_store()
    for cert in ca.openssl_cas:
        store.add_cert(cert)
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    for ccert in ca.cas:
        ctx.add_client_ca(ccert)  # named in the CertificateRequest
    ctx.set_verify(SSL.VERIFY_PEER, _accept_and_count)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_id(hashlib.sha256(b"nbgw-mtls|" + ca.key.encode()).digest()[:32])
    if len(cache) >= 4:  # renewals: keep only recent certificates
        cache.clear()
    cache[id(ck)] = (ck, ctx)
    return ctx


CLIENT_CERT_STATS = ClientCertStats()


def _accept_and_count(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    if ok:
        CLIENT_CERT_STATS.chain_ok += 1
    else:
        CLIENT_CERT_STATS.chain_refused += 1
        log.debug("client certificate refused by the service CA (depth {depth}, error {errno})",
                  depth=depth, errno=errno)
    return True  # decided per request at the HTTP layer (401 page or fall through)


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerCreator:
    """Server connections choosing their certificate by SNI (see module doc)."""

    def __init__(self, source: Any, default_name: str = "localhost", *,
                 listener_account: str | None = None,
                 visible: Callable[[str, str | None], bool] | None = None,
                 challenges: Any = None,
                 client_auth: Callable[[str, str | None], Any] | None = None) -> None:
        self.source = source
        #: mTLS: (name, listener_account) -> the service's ClientCA or None
        self.client_auth = client_auth
        #: pending tls-alpn-01 answers (nbgateway.acme.challenges), public listener
        self.challenges = challenges
        self.default_name = default_name
        self.listener_account = listener_account
        self.visible = visible
        self.sni_seen = 0
        self.sni_hidden = 0  # names answered with the default certificate instead
        self._base: SSL.Context | None = None
        self._base_ck: CertifiedKey | None = None
        #: the default certificate's lookup holds while the source's reload
        #: count is ``_base_reloads`` and the time (certstore's clock) is
        #: before ``_base_until``
        self._base_reloads: int | None = None
        self._base_until: Any = None

    def for_listener(self, listener_account: str | None) -> SNIServerCreator:
        """A creator for another listener sharing source, default and predicate."""
        return SNIServerCreator(self.source, self.default_name,
                                listener_account=listener_account, visible=self.visible,
                                challenges=self.challenges if listener_account is None else None,
                                client_auth=self.client_auth)

    def _base_context(self) -> SSL.Context:
        # The base context presents the default certificate (no SNI) and
        # carries the servername callback; it is this creator's own, rebuilt
        # when the source replaces the default certificate (renewal, reload).
        until = self._base_until
        if until is not None:
            if (getattr(self.source, "reloads", None) == self._base_reloads
                    and _certstore._now() < until):
                return self._base  # type: ignore[return-value]
            self._base_until = None
        default = self.source.certificate_for(self.default_name)
        if self._base is None or default is not self._base_ck:
            self._base = build_context(default, self._servername)
            self._base_ck = default
        reloads = getattr(self.source, "reloads", None)
        if reloads is not None:  # a source that signals its changes: cache
            now = _certstore._now()
            cert = default.cert
            start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
            renew = start + (end - start) * _certstore.RENEW_FRACTION
            if renew <= now:
                # due, and the store kept it (a static certificate past
                # its renewal point): ask again in a minute
                renew = now + datetime.timedelta(seconds=DEFAULT_RECHECK)
            self._base_reloads = reloads
            self._base_until = renew
        return self._base

    def _servername(self, conn: SSL.Connection) -> None:
        name = conn.get_servername()
        if not name:
            return
        self.sni_seen += 1
        try:
            if self.visible is not None and not self.visible(
                    normalize_name(name), self.listener_account):
                self.sni_hidden += 1
                return  # the base context presents the default certificate
            if self.challenges is not None and self.challenges.has_tls_alpn01(name):
                from nbgateway.acme.challenges import tls_alpn_context

                conn.set_context(tls_alpn_context(self.challenges,
                                                  self.source.certificate_for(name)))
                return
            ca = (self.client_auth(normalize_name(name), self.listener_account)
                  if self.client_auth is not None else None)
            if ca is not None:
                CLIENT_CERT_STATS.requested += 1
                conn.set_context(client_auth_context(self.source.certificate_for(name), ca))
                conn.set_verify(SSL.VERIFY_PEER, _accept_and_count)
                # the presented chain is read once per connection: no renegotiation
                conn.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
                return
            conn.set_context(context_for(self.source.certificate_for(name)))
        except Exception:  # keep the default certificate rather than abort
            log.failure("choosing a certificate for {name!r} failed", name=name)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._base_context(), None)


def sni_visibility(lookup: Callable[[str], Any]) -> Callable[[str, str | None], bool]:
    """The ``visible`` predicate over a domain lookup returning entries with
    ``private`` and ``account_id`` (``ServiceEntry``).  Names the gateway does
    not route are visible (the certificate source decides about them); a
    routed name is visible on the public listener unless it is private, and
    on a tunnel listener only for its own account."""

    def visible(name: str, listener_account: str | None) -> bool:
        entry = lookup(name)
        if entry is None:
            return True
        if listener_account is None:
            return not entry.private
        return entry.account_id == listener_account

    return visible


def server_tls_factory(source: Any, wrapped_factory: Any,
                       default_name: str = "localhost") -> TLSMemoryBIOFactory:
    """Wrap an (HTTP) server factory with TLS terminated by SNI certificate."""
    return TLSMemoryBIOFactory(SNIServerCreator(source, default_name), False, wrapped_factory)


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureClientCreator:
    """``skip_tls_verify``: encrypt, send SNI, accept any certificate."""

    def __init__(self, hostname: str, alpn: tuple[bytes, ...] = ALPN_PROTOCOLS) -> None:
        self.hostname = hostname
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        ctx.set_alpn_protos(list(alpn))
        self.ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        if not is_ip_literal(self.hostname):
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        conn.set_connect_state()
        return conn


class ClientTLSPolicy:
    """Upstream TLS: verify (service_identity) unless ``skip_verify``.

    ``ca_pem`` (bytes) replaces the platform trust store, e.g. for tests or a
    private upstream CA."""

    def __init__(self, ca_pem: bytes | None = None) -> None:
        self.trust_root: Any = None
        if ca_pem is not None:
            certs = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(ca_pem)]
            self.trust_root = ssl.trustRootFromCertificates(certs)

    def creator(self, hostname: str, skip_verify: bool,
                alpn: tuple[bytes, ...] = ALPN_PROTOCOLS) -> Any:
        """``alpn``: the protocols offered (``(b"h2",)`` for HTTP/2 targets)."""
        if skip_verify:
            return _InsecureClientCreator(hostname, alpn)
        return ssl.optionsForClientTLS(hostname, trustRoot=self.trust_root,
                                       acceptableProtocols=list(alpn))

    __call__ = creator


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [part + end for part in data.split(end) if b"-----BEGIN CERTIFICATE-----" in part]
