"""CSRF defence for the gateway's login form (sans-IO).

Owns the hidden form token and the same-site test of a posted form.  A
token is ``<issued-at>.<HMAC-SHA256(secret, host|issued-at)>`` (hex), bound
to the service host and valid for ``ttl`` seconds; the secret is random per
gateway process (a restart only costs a reload of the login page).  A posted
login form is trusted only when its token is valid for the request's host
*and* the browser does not say the post is cross-site: an ``Origin`` (or,
without one, a ``Referer``) must name the same host, and
``Sec-Fetch-Site: cross-site`` is refused.  The session cookie is
``SameSite=Lax`` on top of that.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["FIELD", "FormTokens", "same_site"]

FIELD = "nb_csrf"
DEFAULT_TTL = 3600.0


class FormTokens:
    def __init__(self, secret: bytes | None = None, ttl: float = DEFAULT_TTL) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        self.ttl = ttl

    def _mac(self, host: str, issued: int) -> str:
        msg = f"{host}|{issued}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def issue(self, host: str, now: float) -> str:
        issued = int(now)
        return f"{issued}.{self._mac(host, issued)}"

    def check(self, token: str, host: str, now: float) -> bool:
        stamp, _, mac = token.partition(".")
        if not stamp.isdigit() or len(stamp) > 12 or len(mac) != 64:
            return False
        issued = int(stamp)
        if not (issued - 60 <= now <= issued + self.ttl):
            return False
        return hmac.compare_digest(mac, self._mac(host, issued))


def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").rstrip(".").lower() or None
    except ValueError:
        return None


def same_site(headers: Mapping[str, str], host: str) -> bool:
    """Do the browser's own headers allow this post for ``host``?
    ``headers``: lower-case names."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return False
    origin = headers.get("origin")
    if origin is not None:
        return origin != "null" and _host_of(origin) == host
    referer = headers.get("referer")
    if referer is not None:
        return _host_of(referer) == host
    return True
