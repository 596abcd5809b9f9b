"""The gateway's signer for ``X-NetBird-Jwt-Assertion`` (issue 16).

For a request forwarded for a validated :class:`~nbgateway.routes.identity.Identity`
the gateway stamps a short-lived EdDSA JWT that an upstream verifies against
the service's JWKS instead of trusting its network position.  The signing key
is the service's *assertion* key pair (not the session-cookie key), delivered
by management in ``ProxyMapping.nbgw_assertion`` over the authenticated
ProxyService stream; its public half is published at
``/.well-known/nbgateway/jwks.json``.

Claims: ``iss``, ``aud`` (the service domain), ``sub``, ``email``, ``groups``,
``group_names``, ``method``, ``peer_ip``, ``iat``, ``nbf``, ``exp`` (at most
300 s after ``iat``) and ``jti``; the JOSE header names the key (``kid``).

:class:`AssertionSigner` owns a bounded LRU of minted tokens keyed by (key,
audience, identity, peer address): a token is reused while more than half
of its lifetime is left, so a busy identity costs one signature per half
lifetime.  The clock is injected; nothing here does I/O or logs secrets.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.logger import Logger

from nbgateway.routes.identity import Identity
from nbgateway.routes.service import AssertionSettings

log = Logger()

HEADER = "X-NetBird-Jwt-Assertion"
DEFAULT_ISSUER = "nbgateway"
MAX_CACHED = 4096
_MAX_KEYS = 256


def load_seed(private_b64: str) -> Ed25519PrivateKey | None:
    """A base64-std 32-byte Ed25519 seed (or Go's 64-byte seed||public) as a
    key; None when unusable."""
    try:
        raw = base64.b64decode(private_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) not in (32, 64):
        return None
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


class AssertionSigner:
    """Mints and caches assertion JWTs (see the module docstring).

    ``clock`` is anything with ``seconds()`` (a reactor, ``task.Clock``)."""

    def __init__(self, clock: Any, *, max_cached: int = MAX_CACHED,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.clock = clock
        self.max_cached = max_cached
        self.new_id = new_id
        self._tokens: OrderedDict[Any, tuple[str, int]] = OrderedDict()
        self._keys: OrderedDict[tuple[str, str], Ed25519PrivateKey | None] = OrderedDict()
        self.minted = 0
        self.unusable_keys = 0

    def _key(self, kid: str, private_key: str) -> Ed25519PrivateKey | None:
        ref = (kid, private_key)
        if ref in self._keys:
            return self._keys[ref]
        key = load_seed(private_key) if private_key and kid else None
        if key is None:
            self.unusable_keys += 1
            log.warn("identity assertion key unusable", kid=kid)
        self._keys[ref] = key
        while len(self._keys) > _MAX_KEYS:
            self._keys.popitem(last=False)
        return key

    def token(self, settings: AssertionSettings | None, identity: Identity | None,
              peer_ip: str, audience: str) -> str | None:
        """The assertion for ``identity`` calling ``audience`` from ``peer_ip``;
        None when the service has assertions off, there is no identity or no
        usable key (the caller refuses a ``required`` service then)."""
        if settings is None or identity is None or settings.mode == "off":
            return None
        now = int(self.clock.seconds())
        kid, private_key = settings.signing_key(now)
        key = self._key(kid, private_key)
        if key is None:
            return None
        cache_key: Any = (kid, audience, identity, peer_ip)
        try:
            hit = self._tokens.get(cache_key)
        except TypeError:  # an Identity built with lists: not cached
            cache_key, hit = None, None
        if hit is not None and hit[1] - now > settings.lifetime // 2:
            self._tokens.move_to_end(cache_key)
            return hit[0]
        exp = now + settings.lifetime
        claims = {
            "iss": settings.issuer or DEFAULT_ISSUER,
            "aud": audience,
            "sub": identity.user_id,
            "email": identity.email,
            "groups": list(identity.group_ids),
            "group_names": list(identity.group_names),
            "method": identity.method or "tunnel",
            "peer_ip": peer_ip,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": self.new_id(),
        }
        token = jwt.encode(claims, key, algorithm="EdDSA",
                           headers={"kid": kid, "typ": "JWT"})
        self.minted += 1
        if cache_key is not None:
            self._tokens[cache_key] = (token, exp)
            self._tokens.move_to_end(cache_key)
            while len(self._tokens) > self.max_cached:
                self._tokens.popitem(last=False)
        return token

    def __len__(self) -> int:
        return len(self._tokens)
