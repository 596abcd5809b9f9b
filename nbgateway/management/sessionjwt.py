"""Session JWTs minted and verified by management.

A session JWT is signed with the *service's own* Ed25519 key pair (EdDSA):

* ``session_private_key``: base64-std of Go's 64-byte private key
  (32-byte seed followed by the 32-byte public key);
* ``session_public_key``: base64-std of the 32-byte public key (shipped to
  proxies in ``ProxyMapping.auth.session_key``).

Claims, in this order: ``iss="netbird-management"``, ``sub``, ``aud`` (a JSON
array holding the service domain), ``exp = iat + 24h``, ``nbf = iat``, ``iat``
(integer seconds), ``method`` (``oidc|pin|password|header``), then ``email``,
``groups`` and ``group_names``, each omitted when empty.  No ``jti``.

Verification accepts only EdDSA, requires ``aud`` to contain the domain and
``iss`` to match, enforces ``exp``/``nbf`` with no leeway (``iat`` is not
checked), requires a non-empty ``sub`` and silently drops non-string entries
of ``groups``/``group_names``.  Uses PyJWT + ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "DEFAULT_SESSION_EXPIRY",
    "ISSUER",
    "InvalidServiceKeyError",
    "InvalidSessionTokenError",
    "SessionClaims",
    "load_private_key",
    "load_public_key",
    "sign_session",
    "verify_session",
]

ISSUER = "netbird-management"
DEFAULT_SESSION_EXPIRY = 24 * 3600
METHODS = ("oidc", "pin", "password", "header")


class InvalidServiceKeyError(ValueError):
    """The service's stored key material is unusable (bad base64 or size)."""


class InvalidSessionTokenError(ValueError):
    """The presented token does not verify for this domain/key."""


@dataclass(frozen=True)
class SessionClaims:
    subject: str
    method: str
    email: str
    groups: tuple[str, ...]
    group_names: tuple[str, ...]
    issued_at: int
    expires_at: int


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise InvalidServiceKeyError(f"invalid base64 key: {exc}") from None


def load_private_key(private_b64: str) -> Ed25519PrivateKey:
    """Go-format (64-byte) base64 private key -> ``Ed25519PrivateKey``."""
    raw = _b64decode(private_b64)
    if len(raw) != 64:
        raise InvalidServiceKeyError(f"invalid private key size: got {len(raw)}, want 64")
    key = Ed25519PrivateKey.from_private_bytes(raw[:32])
    return key


def load_public_key(public_b64: str) -> Ed25519PublicKey:
    raw = _b64decode(public_b64)
    if len(raw) != 32:
        raise InvalidServiceKeyError(f"invalid public key size: got {len(raw)}, want 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_session(
    private_b64: str,
    *,
    subject: str,
    domain: str,
    method: str,
    email: str = "",
    groups: Sequence[str] = (),
    group_names: Sequence[str] = (),
    now: float | None = None,
    expiry: int = DEFAULT_SESSION_EXPIRY,
) -> str:
    """Mint a session JWT for ``domain`` (raises :class:`InvalidServiceKeyError`)."""
    if method not in METHODS:
        raise ValueError(f"unknown auth method {method!r}")
    if not subject:
        raise ValueError("missing subject claim")
    key = load_private_key(private_b64)
    iat = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": ISSUER,
        "sub": subject,
        "aud": [domain],
        "exp": iat + expiry,
        "nbf": iat,
        "iat": iat,
        "method": method,
    }
    if email:
        claims["email"] = email
    if groups:
        claims["groups"] = list(groups)
    if group_names:
        claims["group_names"] = list(group_names)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"typ": "JWT"})


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def verify_session(
    token: str, public_b64: str, domain: str, *, now: float | None = None
) -> SessionClaims:
    """Verify ``token`` for ``domain``.

    Raises :class:`InvalidServiceKeyError` when the service key is unusable and
    :class:`InvalidSessionTokenError` for every token problem.
    """
    key = load_public_key(public_b64)
    try:
        payload = _decode_at(token, key, domain, time.time() if now is None else now)
    except jwt.PyJWTError as exc:
        raise InvalidSessionTokenError(str(exc)) from None
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidSessionTokenError("missing subject claim")
    return SessionClaims(
        subject=sub,
        method=str(payload.get("method", "")),
        email=payload.get("email") if isinstance(payload.get("email"), str) else "",
        groups=_strings(payload.get("groups")),
        group_names=_strings(payload.get("group_names")),
        issued_at=int(payload.get("iat", 0) or 0),
        expires_at=int(payload["exp"]),
    )


def _decode_at(token: str, key: Ed25519PublicKey, domain: str, now: float) -> dict:
    """Signature, alg, aud, iss via PyJWT; exp/nbf checked here against ``now`` (no leeway)."""
    payload = jwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=domain,
        issuer=ISSUER,
        options={"require": ["exp", "nbf", "sub", "aud", "iss"], "verify_exp": False,
                 "verify_nbf": False, "verify_iat": False},
    )
    if not isinstance(payload.get("exp"), int) or now >= payload["exp"]:
        raise jwt.ExpiredSignatureError("Signature has expired")
    if not isinstance(payload.get("nbf"), int) or now < payload["nbf"]:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    return payload
