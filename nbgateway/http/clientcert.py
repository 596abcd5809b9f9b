"""The request side of mTLS: the client certificate a request's TLS
connection presented, judged for one service.

:func:`peer_chain` finds the pyOpenSSL connection under a Twisted request
(HTTP/1.1: the channel's transport; HTTP/2: the stream's connection's
transport) and returns what its client presented (:class:`~nbgateway.auth.mtls.Presented`,
digested once per connection), also on a resumed session (OpenSSL keeps the
peer's certificates in the session).
:func:`judge` verifies them against the service's current CA bundle with
:class:`~nbgateway.auth.mtls.MtlsVerifier` and maps them to a user: the
``(identity, error)`` pair :class:`~nbgateway.auth.policy.RequestFacts`
carries.  Nothing here trusts what the handshake's verify callback decided.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from twisted.internet.interfaces import ISSLTransport

from nbgateway.auth.mtls import MISDIRECTED, MtlsVerifier, Presented, identify
from nbgateway.routes.hosts import domain_key
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import ServiceEntry

__all__ = ["judge", "peer_chain"]

NO_CERTIFICATE = "no client certificate was presented"
BAD_BUNDLE = "this service's client CA is not usable"
NEEDS_TLS = "client certificates need HTTPS"


def _tls_connection(request: Any) -> Any:
    channel = getattr(request, "channel", None)
    conn = getattr(channel, "_conn", None)  # an HTTP/2 stream's connection
    transport = getattr(conn if conn is not None else channel, "transport", None)
    for _ in range(4):  # a wrapper or two may sit above the TLS protocol
        if transport is None:
            return None
        if ISSLTransport.providedBy(transport) and hasattr(transport, "getHandle"):
            try:
                return transport.getHandle()
            except Exception:
                return None
        transport = getattr(transport, "transport", None)
    return None


#: per TLS connection: what its client presented (a server never lets a
#: client renegotiate, so it cannot change); entries go with their connection
_PRESENTED: weakref.WeakKeyDictionary[Any, Presented | None] = weakref.WeakKeyDictionary()


def peer_chain(request: Any) -> Presented | None:
    """What the client of the request's TLS connection presented, or None."""
    conn = _tls_connection(request)
    if conn is None or not hasattr(conn, "get_peer_certificate"):
        return None
    try:
        return _PRESENTED[conn]
    except (KeyError, TypeError):
        pass
    try:
        leaf = conn.get_peer_certificate(as_cryptography=True)
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        presented = Presented.of(leaf, chain) if leaf is not None else None
    except Exception:
        return None
    with contextlib.suppress(TypeError):
        _PRESENTED[conn] = presented
    return presented


def _sni_is(request: Any, domain: str) -> bool:
    """Did the request's TLS connection name ``domain`` in its SNI?"""
    conn = _tls_connection(request)
    try:
        sni = conn.get_servername() if conn is not None else None
    except Exception:
        sni = None
    return bool(sni) and domain_key(sni.decode("ascii", "replace")) == domain_key(domain)


def judge(verifier: MtlsVerifier, entry: ServiceEntry, request: Any,
          now: float) -> tuple[Identity | None, str]:
    """The identity the request's client certificate proves for ``entry``
    (verified against the service's CA at ``now`` and mapped to a user), or
    None and why not."""
    ca = verifier.ca_for(entry.client_ca_pem)
    if ca is None:
        return None, BAD_BUNDLE
    presented = peer_chain(request)
    if presented is None:
        secure = getattr(request, "isSecure", None)
        if secure is not None and not secure():
            return None, NEEDS_TLS
        if not _sni_is(request, entry.service.domain):
            return None, MISDIRECTED
        return None, NO_CERTIFICATE
    verdict = verifier.verify_presented(ca, presented, now)
    if verdict.names is None:
        return None, verdict.reason
    ident = identify(entry.client_cert_users, verdict.names)
    if ident is None:
        return None, (f"the certificate for {verdict.names.describe()!r} is not "
                      "mapped to a user of this service")
    return ident, ""
