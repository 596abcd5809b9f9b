"""Per-service machine-client tokens on the management side (issue 16).

Owns the token records management keeps for a service, creating one (the
secret is returned once and only its SHA-256 digest is kept), revoking one,
and what goes into the service's mapping (``ProxyMapping.nbgw_tokens``: the
live tokens' digests).  The records live as a JSON list in
``services.service_tokens``, written only through
``store.services.create_token`` / ``revoke_token`` (a service update never
touches them); a change is an ordinary SERVICE_UPDATED, so the new mapping
reaches the service's gateways on the mapping-update stream and a revoked
token stops working there as soon as it arrives.

Why SHA-256 and not argon2id: the secret is 256 random bits
(:func:`new_token`; the gateway's
``nbgateway.auth.tokens`` checks the same shapes, which management may not
import), so nothing short of brute force over
2^256 finds it from a digest; a slow hash protects low-entropy passwords and
would only cost the gateway CPU on every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.errors import Conflict, NotFound, ValidationError

#: live (not revoked, not expired) tokens per service
MAX_LIVE = 50
#: records kept per service (revoked/expired ones are dropped oldest first)
MAX_KEPT = 200
MAX_NAME = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@-]*$")


def new_token() -> tuple[str, str]:
    """A fresh ``(id, secret)``: ``nbt_`` + 24 hex digits, 43 URL-safe characters."""
    return "nbt_" + secrets.token_hex(12), secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """Hex SHA-256 of a secret (what is stored and sent to gateways)."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ServiceToken:
    """One token record (never the secret)."""

    id: str
    name: str
    secret_sha256: str
    created_at: int
    expires_at: int = 0  # unix seconds, 0 = never
    revoked_at: int = 0  # unix seconds, 0 = not revoked

    def live(self, now: float) -> bool:
        return not self.revoked_at and (not self.expires_at or now < self.expires_at)

    def public(self, now: float) -> dict[str, Any]:
        """The REST view (no digest)."""
        state = ("revoked" if self.revoked_at
                 else "expired" if self.expires_at and now >= self.expires_at else "active")
        return {"id": self.id, "name": self.name, "created_at": self.created_at,
                "expires_at": self.expires_at or None, "revoked_at": self.revoked_at or None,
                "state": state}


def validate_request(name: Any, expires_in: Any) -> tuple[str, int]:
    """A create request's ``name`` and ``expires_in_seconds`` (0 = never);
    ValidationError with a clear message otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or \
            not _NAME_RE.fullmatch(name):
        raise ValidationError(f"token name must be 1-{MAX_NAME} characters of letters, digits, "
                              "space and ._:@-")
    if expires_in is None:
        expires_in = 0
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or \
            not 0 <= expires_in <= 10 * 366 * 86400:
        raise ValidationError("expires_in_seconds must be a whole number of seconds "
                              "from 0 (never) to ten years")
    return name, expires_in


def create(tokens: Sequence[ServiceToken], name: str, expires_in: int,
           now: float) -> tuple[tuple[ServiceToken, ...], ServiceToken, str]:
    """The new list, the new record and its secret (shown once)."""
    live = [t for t in tokens if t.live(now)]
    if len(live) >= MAX_LIVE:
        raise Conflict(f"a service has at most {MAX_LIVE} active tokens; revoke one first")
    if any(t.name == name for t in live):
        raise Conflict(f"an active token named {name!r} exists")
    tid, secret = new_token()
    rec = ServiceToken(id=tid, name=name, secret_sha256=digest(secret), created_at=int(now),
                       expires_at=int(now) + expires_in if expires_in else 0)
    kept = [*tokens, rec]
    while len(kept) > MAX_KEPT:
        dead = next((t for t in kept if not t.live(now)), None)
        if dead is None:
            break
        kept.remove(dead)
    return tuple(kept), rec, secret


def revoke(tokens: Sequence[ServiceToken], token_id: str,
           now: float) -> tuple[tuple[ServiceToken, ...], ServiceToken]:
    """The new list and the revoked record (revoking twice keeps the first time)."""
    for i, t in enumerate(tokens):
        if t.id == token_id:
            rec = t if t.revoked_at else replace(t, revoked_at=int(now))
            return (*tokens[:i], rec, *tokens[i + 1:]), rec
    raise NotFound(f"token {token_id} not found")


def to_json(tokens: Iterable[ServiceToken]) -> list[dict[str, Any]]:
    return [{"id": t.id, "name": t.name, "sha256": t.secret_sha256, "created": t.created_at,
             "expires": t.expires_at, "revoked": t.revoked_at} for t in tokens]


def from_json(data: Any) -> tuple[ServiceToken, ...]:
    """Records from the stored JSON; malformed entries are dropped (fail closed:
    a token that cannot be read is not accepted anywhere)."""
    out = []
    for d in data if isinstance(data, list) else ():
        try:
            out.append(ServiceToken(id=str(d["id"]), name=str(d["name"]),
                                    secret_sha256=str(d["sha256"]),
                                    created_at=int(d["created"]), expires_at=int(d["expires"]),
                                    revoked_at=int(d["revoked"])))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)


def fill_mapping(mapping: pb.ProxyMapping, tokens: Iterable[ServiceToken], now: float) -> None:
    """Add the live tokens' digests to ``mapping.nbgw_tokens`` and mark the
    service token-protected (also when none is live: revoking the last token
    must close the service, never open it)."""
    mapping.nbgw_token_auth = True
    for t in tokens:
        if t.live(now):
            mapping.nbgw_tokens.add(id=t.id, name=t.name, secret_sha256=t.secret_sha256,
                                    expires_at=t.expires_at)
