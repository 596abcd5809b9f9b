"""The gateway's side of session JWTs: the ``nb_session`` cookie.

Owns local verification of a session token with the service's Ed25519
public key (``ProxyMapping.auth.session_key``) and the ``Set-Cookie`` value.
Verification needs no RPC: EdDSA only (``alg: none``, HS256 signed with the
public key and every other algorithm are refused), ``iss`` must be
``netbird-management``, ``aud`` must contain the request host, ``sub``
non-empty, ``exp``/``nbf`` enforced against the injected ``now`` with no
leeway.  Non-string entries of ``groups``/``group_names`` are dropped.  A
password/PIN/header token has no email; its principal (``password-user``,
``pin-user``, ``header-user``) stands in for it, so the upstream's
``X-NetBird-User`` says which operator scheme admitted the request.
Loaded public keys are kept in a small bounded cache keyed by the base64
text, and tokens that verified in a bounded FIFO keyed by (token, key, host),
so a repeat cookie costs a lookup plus the ``exp``/``nbf`` checks against
``now`` (an expired token is refused from the cache as well).
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nbgateway.routes.identity import Identity

__all__ = ["COOKIE_NAME", "ISSUER", "SessionVerifier", "session_cookie"]

COOKIE_NAME = "nb_session"
ISSUER = "netbird-management"
DEFAULT_MAX_AGE = 86400
#: tokens longer than this are not even parsed (a cookie is at most ~4 KiB)
MAX_TOKEN_LENGTH = 8192
_METHODS = frozenset({"oidc", "pin", "password", "header"})
_OPERATOR_METHODS = frozenset({"pin", "password", "header"})


def session_cookie(token: str, max_age: int = DEFAULT_MAX_AGE) -> str:
    """The ``Set-Cookie`` value installing a session token."""
    return (f"{COOKIE_NAME}={token}; Path=/; Max-Age={max_age or DEFAULT_MAX_AGE}; "
            "HttpOnly; Secure; SameSite=Lax")


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


class SessionVerifier:
    """Verifies session tokens locally; counts what it refused."""

    def __init__(self, max_keys: int = 4096, max_verified: int = 10_000) -> None:
        self._keys: OrderedDict[str, Ed25519PublicKey | None] = OrderedDict()
        self.max_keys = max_keys
        #: (token, key, host) -> (identity, exp, nbf) of tokens whose signature
        #: and claims verified: a repeat costs a dict lookup and the time checks
        self._verified: OrderedDict[tuple[str, str, str],
                                    tuple[Identity, float | None, float | None]] = OrderedDict()
        self.max_verified = max_verified
        self.rejected = 0
        self.cache_hits = 0

    def public_key(self, session_key: str) -> Ed25519PublicKey | None:
        """The key for a mapping's ``session_key`` (None when it is not a
        base64 32-byte key)."""
        if session_key in self._keys:
            self._keys.move_to_end(session_key)
            return self._keys[session_key]
        key: Ed25519PublicKey | None = None
        try:
            raw = base64.b64decode(session_key.encode("ascii"), validate=True)
            if len(raw) == 32:
                key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            key = None
        self._keys[session_key] = key
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return key

    def verify(self, token: str, session_key: str, host: str, now: float) -> Identity | None:
        """The identity a valid token carries for ``host``, else None."""
        cached = self._verified.get((token, session_key, host))
        if cached is not None:
            ident, exp, nbf = cached
            if (exp is not None and now >= exp) or (nbf is not None and now < nbf):
                self.rejected += 1
                return None
            self.cache_hits += 1
            return ident
        key = self.public_key(session_key) if session_key else None
        if key is None or not token or len(token) > MAX_TOKEN_LENGTH:
            self.rejected += 1
            return None
        try:
            payload = jwt.decode(
                token, key, algorithms=["EdDSA"], audience=host, issuer=ISSUER,
                options={"require": ["sub", "aud", "iss"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            self.rejected += 1
            return None
        sub = payload.get("sub")
        exp, nbf = payload.get("exp"), payload.get("nbf")
        if (not isinstance(sub, str) or not sub
                or (exp is not None and (not isinstance(exp, int | float) or now >= exp))
                or (nbf is not None and (not isinstance(nbf, int | float) or now < nbf))):
            self.rejected += 1
            return None
        method = payload.get("method")
        email = payload.get("email")
        email = email if isinstance(email, str) else ""
        if not email and method in _OPERATOR_METHODS:
            # password/PIN/header tokens carry no email; the principal
            # (``password-user``...) becomes X-NetBird-User instead
            email = sub
        ident = Identity(
            user_id=sub,
            email=email,
            group_ids=_strings(payload.get("groups")),
            group_names=_strings(payload.get("group_names")),
            method=method if method in _METHODS else "",
        )
        self._verified[(token, session_key, host)] = (ident, exp, nbf)
        while len(self._verified) > self.max_verified:
            self._verified.popitem(last=False)
        return ident
