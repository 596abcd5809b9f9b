"""TLS termination for the gateway's listeners and the client TLS policy
towards upstreams.

- :mod:`nbgateway.tls.certstore`: the :class:`ICertificateSource` over a
  certificate directory and a wildcard directory, reloaded on change, with a
  per-gateway local CA issuing fallback certificates;
- :mod:`nbgateway.tls.contexts`: the server connection creator (SNI ->
  certificate, ALPN ``http/1.1``) and :class:`ClientTLSPolicy`.

(``ICertificateSource`` lives here until it moves to ``nbgateway.interfaces``.)
"""

from __future__ import annotations

from zope.interface import Interface


class ICertificateSource(Interface):
    """Chooses the certificate presented for a TLS server name."""

    def certificate_for(server_name: str | None):  # noqa: N805
        """A :class:`nbgateway.tls.certstore.CertifiedKey` for ``server_name``
        (None: the client sent no SNI).  Never raises: unknown names get a
        fallback certificate."""
