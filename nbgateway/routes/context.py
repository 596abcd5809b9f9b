"""The per-request context: what the request chain knows about one request.

One :class:`RequestContext` is created by the front resource
(:class:`~nbgateway.http.site.GatewayResource`) when a request arrives and is
passed explicitly down the chain -- auth decision, reverse proxy, upgrade
relay, access log -- instead of attributes stuck on the twisted.web request.
Each stage fills in what it decides (the matched service entry, the
validated identity, the access-log verdict, the matched path route, the
upstream start time).  Pure data: no reactor, no twisted.web.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbgateway.routes.identity import Identity
from nbgateway.routes.paths import Route
from nbgateway.routes.service import ProxyService, ServiceEntry


@dataclass(slots=True, eq=False)
class RequestContext:
    """One request's state as it moves through the gateway.

    ``overlay`` is true on a tunnel (inbound) listener, whose account is
    ``listener_account``; ``source_ip`` is the socket peer (never a forwarded
    header); ``host`` is the Host header as sent.  ``auth_mechanism`` is the
    access-log verdict (``oidc`` after the private gate, ``ip_restricted``,
    ``direct_upstream_denied``...), ``user_id`` the validated user.  Times are
    the injected clock's seconds: ``started`` when the request reached the
    front resource, ``upstream_started`` when the proxy sent it upstream.
    The front resource makes it with positional arguments (cheaper per
    request): new fields go last.
    """

    overlay: bool = False
    source_ip: str = ""
    host: str = ""
    listener_account: str | None = None
    entry: ServiceEntry | None = None
    service: ProxyService | None = None
    route: Route | None = None
    #: the upstream target used (``scheme://host:port``; "" before one is chosen)
    target: str = ""
    identity: Identity | None = None
    request_id: str = ""
    auth_mechanism: str = ""
    user_id: str = ""
    started: float = 0.0
    upstream_started: float | None = None
    #: the request's path (no query) as text, when the front resource
    #: decoded it (for the access log): the proxy reuses it (None: decode)
    path: str | None = None

    def serve(self, entry: ServiceEntry | None) -> None:
        """Record the service entry the Host resolved to (or none)."""
        self.entry = entry
        self.service = entry.service if entry is not None else None

    def authenticated(self, identity: Identity | None, mechanism: str) -> None:
        """Record the auth layer's verdict for this request."""
        self.identity = identity
        self.auth_mechanism = mechanism
        self.user_id = identity.user_id if identity is not None else ""
