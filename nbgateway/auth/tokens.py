"""Service tokens: machine clients of a protected service (sans-IO).

Owns how a request presents a service token and how the gateway checks it.
A token is an id (``nbt_`` + 24 hex digits) and a secret (43 URL-safe base64
characters, 256 random bits) that management shows once.  A client sends it
either as two headers, ``X-NetBird-Token-Id`` and ``X-NetBird-Token-Secret``,
or as ``Authorization: Bearer <id>.<secret>``.

Management sends only the SHA-256 digest of each secret in the mapping
(``ProxyMapping.nbgw_tokens``).  A fast unkeyed hash is sound here because
the secret is high-entropy: there is no dictionary to try, so argon2id would
only cost CPU on every request.  The gateway checks a presented secret
locally (constant-time compare) against the digests of the service's current
mapping, so no RPC is made per request; revoking a token (or its expiry) drops
it from the next mapping update, which is how a revoked token gets 401 within
the mapping propagation time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from nbgateway.routes.identity import Identity

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

__all__ = [
    "BEARER_PREFIX",
    "ID_HEADER",
    "MECHANISM",
    "SECRET_HEADER",
    "TOKEN_HEADERS",
    "TokenRecord",
    "check",
    "digest",
    "new_token",
    "presented",
    "strip_credentials",
]

ID_HEADER = "x-netbird-token-id"
SECRET_HEADER = "x-netbird-token-secret"
#: request headers that carry a token (never forwarded upstream)
TOKEN_HEADERS = (ID_HEADER, SECRET_HEADER)
BEARER_PREFIX = "nbt_"
MECHANISM = "token"

_ID_RE = re.compile(r"^nbt_[0-9a-f]{24}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


class TokenRecord(NamedTuple):
    """One token as a mapping carries it (the routes package keeps these as
    plain ``(id, name, secret_sha256, expires_at)`` tuples)."""

    id: str
    name: str
    secret_sha256: str  # lower-case hex
    expires_at: int = 0  # unix seconds, 0 = never


def digest(secret: str) -> str:
    """Hex SHA-256 of a token secret (what management stores and sends)."""
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh ``(id, secret)`` pair."""
    return BEARER_PREFIX + secrets.token_hex(12), secrets.token_urlsafe(32)


def presented(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The ``(id, secret)`` a request presents (lower-case header names), or
    None when it presents no service token.  A ``Bearer`` value that is not
    shaped like a service token (an OIDC access token, say) is not ours."""
    tid = headers.get(ID_HEADER)
    sec = headers.get(SECRET_HEADER)
    if tid is not None or sec is not None:
        return (tid or "").strip(), (sec or "").strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    if not value.startswith(BEARER_PREFIX) or "." not in value:
        return None
    tid, _, sec = value.partition(".")
    return tid, sec


def check(tokens: tuple[tuple[str, str, str, int], ...], token_id: str, secret: str,
          now: float) -> Identity | None:
    """The identity of a valid token, None for an unknown id, a wrong secret,
    a malformed value or an expired token (all answered alike)."""
    if not _ID_RE.fullmatch(token_id) or not _SECRET_RE.fullmatch(secret):
        return None
    want = digest(secret)
    for rec in tokens:
        tid, _name, secret_sha256, expires_at = rec
        if tid != token_id:
            continue
        if expires_at and now >= expires_at:
            return None
        if hmac.compare_digest(secret_sha256, want):
            # the access log (user_id) and X-NetBird-User (stamped from email)
            # name the token by its id
            return Identity(user_id=f"token:{tid}", email=f"token:{tid}", method=MECHANISM)
        return None
    return None


def strip_credentials(headers: Headers) -> None:
    """Remove a token from Twisted ``Headers`` before forwarding: the two
    token headers, and ``Authorization`` when it carries a service token."""
    for name in TOKEN_HEADERS:
        headers.removeHeader(name.encode("ascii"))
    raw = headers.getRawHeaders(b"authorization") or []
    if any(presented({"authorization": v.decode("latin-1")}) is not None for v in raw):
        headers.removeHeader(b"authorization")
