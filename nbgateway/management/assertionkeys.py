"""Per-service identity assertion keys: generation, rotation, JWKS (issue 16).

Each service has its own Ed25519 *assertion* key pair, separate from the
session-cookie key (:mod:`nbgateway.management.sessionjwt`): the gateway signs
``X-NetBird-Jwt-Assertion`` with it and upstreams verify against the public
half.  Management keeps the key list in ``services.assertion_keys`` (JSON, the
private seed never leaves except in the service's mapping to its gateways over
the authenticated ProxyService stream, redacted in logs) and publishes the
public keys as a JWKS, one document per service (a JWKS listing every
service's key would let a gateway holding account A's key sign for account
B's domain).

Rotation is publish-then-sign: the new key is listed in the JWKS at once but
signs only from ``activates`` = now + :func:`publish_ahead` (60 s), so a
verifier that refetches the JWKS on an unknown key id, but at most every 30 s
(PyJWT's PyJWKClient), already has it; the mapping carries it as the *next*
key with that time and the gateway switches by its clock.  The old key signs
until then (``retired`` = the same instant) and stays published for
:data:`RETIRED_GRACE` seconds more, so every token it signed expires before it
leaves the JWKS; then it is dropped.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nbgateway._proto import proxy_service_pb2 as pb

MODES = ("off", "on", "required")
#: assertion lifetime (seconds); tokens live at most this long
LIFETIME = 300
MIN_LIFETIME = 5
#: a shorter lifetime for every service (seconds, 5 to 300), e.g. for tests
LIFETIME_ENV = "NB_MANAGEMENT_ASSERTION_LIFETIME"
#: how long a rotated-in key is published before it signs (default)
PUBLISH_AHEAD = 60
PUBLISH_AHEAD_ENV = "NB_MANAGEMENT_ASSERTION_PUBLISH_AHEAD"
#: how long a retired key stays in the JWKS after it stopped signing
RETIRED_GRACE = 2 * LIFETIME
MAX_KEYS = 8
ISSUER = "nbgateway-management"


def _env_seconds(name: str, default: int, low: int, high: int, environ: Any) -> int:
    raw = (os.environ if environ is None else environ).get(name, "")
    if raw.isdigit() and low <= int(raw) <= high:
        return int(raw)
    return default


def lifetime(environ: Any = None) -> int:
    """The assertion lifetime gateways are told to use: :data:`LIFETIME`, or
    ``NB_MANAGEMENT_ASSERTION_LIFETIME`` when that is a whole number of
    seconds from 5 to 300 (anything else is ignored)."""
    return _env_seconds(LIFETIME_ENV, LIFETIME, MIN_LIFETIME, LIFETIME, environ)


def publish_ahead(environ: Any = None) -> int:
    """Seconds a new key is published before it signs: 60, or
    ``NB_MANAGEMENT_ASSERTION_PUBLISH_AHEAD`` (0 to 3600)."""
    return _env_seconds(PUBLISH_AHEAD_ENV, PUBLISH_AHEAD, 0, 3600, environ)


@dataclass(frozen=True)
class AssertionKey:
    kid: str
    #: base64-std of the 32-byte Ed25519 seed: secret
    private: str = field(repr=False)
    #: base64url (unpadded) of the 32-byte public key (JWK ``x``)
    x: str
    created: int
    #: when it stopped (or stops) signing; None while it is the signing key
    retired: int | None = None
    #: when it starts signing (published before that)
    activates: int = 0

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "kid": self.kid, "x": self.x}


def generate(now: float, activates: float = 0) -> AssertionKey:
    """A fresh key pair with a random key id."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    x = base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).rstrip(b"=").decode()
    return AssertionKey(kid=secrets.token_urlsafe(9), private=base64.b64encode(seed).decode(),
                        x=x, created=int(now), activates=int(activates))


def current(keys: Sequence[AssertionKey], now: float) -> AssertionKey | None:
    """The key signing at ``now``."""
    return next((k for k in keys if k.activates <= now
                 and (k.retired is None or k.retired > now)), None)


def upcoming(keys: Sequence[AssertionKey], now: float) -> AssertionKey | None:
    """A rotated-in key that is published but does not sign yet."""
    return next((k for k in keys if k.activates > now and k.retired is None), None)


def published(keys: Iterable[AssertionKey], now: float) -> list[AssertionKey]:
    """Keys to list in the JWKS: current, upcoming and those that stopped
    signing less than :data:`RETIRED_GRACE` ago."""
    return [k for k in keys if k.retired is None or now - k.retired < RETIRED_GRACE]


def rotate(keys: Sequence[AssertionKey], now: float,
           ahead: float | None = None) -> tuple[AssertionKey, ...]:
    """A new key first, signing from now + ``ahead`` (at once when no key
    signs now: nobody can hold a token of a key that never signed); the keys
    that would still sign then retire at that instant; keys past their grace
    dropped."""
    if current(keys, now) is None and upcoming(keys, now) is None:
        ahead = 0
    switch = int(now + (publish_ahead() if ahead is None else ahead))
    kept = [replace(k, retired=switch) if k.retired is None or k.retired > switch else k
            for k in published(keys, now)]
    return (generate(now, activates=switch), *kept)[:MAX_KEYS]


def ensure(keys: Sequence[AssertionKey], now: float) -> tuple[AssertionKey, ...]:
    """``keys`` with a signing or upcoming key (generated, signing at once,
    when there is neither)."""
    if current(keys, now) is not None or upcoming(keys, now) is not None:
        return tuple(keys)
    return (generate(now), *published(keys, now))[:MAX_KEYS]


def jwks(keys: Iterable[AssertionKey], now: float) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in published(keys, now)]}


def to_json(keys: Iterable[AssertionKey]) -> list[dict[str, Any]]:
    return [{"kid": k.kid, "private": k.private, "x": k.x, "created": k.created,
             "retired": k.retired, "activates": k.activates} for k in keys]


def from_json(data: Any) -> tuple[AssertionKey, ...]:
    """Stored JSON -> keys (malformed entries skipped)."""
    out = []
    for d in data if isinstance(data, list) else ():
        if not isinstance(d, dict):
            continue
        kid, private, x = d.get("kid"), d.get("private"), d.get("x")
        if not (isinstance(kid, str) and isinstance(private, str) and isinstance(x, str)):
            continue
        retired, activates = d.get("retired"), d.get("activates")
        out.append(AssertionKey(kid, private, x, int(d.get("created") or 0),
                                int(retired) if isinstance(retired, int) else None,
                                int(activates) if isinstance(activates, int) else 0))
    return tuple(out)


def fill_mapping(msg: pb.NbgwIdentityAssertion, mode: str, keys: Sequence[AssertionKey],
                 now: float) -> None:
    """Set a mapping's ``nbgw_assertion`` (mode, signing key, the next key and
    when it takes over, published keys)."""
    msg.mode = mode if mode in MODES else "required"
    msg.issuer = ISSUER
    msg.lifetime_seconds = lifetime()
    signing = current(keys, now)
    if signing is not None:
        msg.kid, msg.private_key = signing.kid, signing.private
    following = upcoming(keys, now)
    if following is not None:
        msg.next_kid, msg.next_private_key = following.kid, following.private
        msg.next_from = following.activates
    for k in published(keys, now):
        msg.keys.add(kid=k.kid, x=k.x)


#: longest session a service may ask for (30 days); shortest 1 minute
MAX_SESSION_AGE = 30 * 86400
MIN_SESSION_AGE = 60


def validate(mode: str, max_session_age_seconds: int) -> None:
    """ValidationError for an unknown mode or a session length out of range
    (0 = the default)."""
    from nbgateway.management.errors import ValidationError

    if mode not in MODES:
        raise ValidationError(f"assertion must be one of {', '.join(MODES)}")
    age = max_session_age_seconds
    if not isinstance(age, int) or isinstance(age, bool) or (
            age and not MIN_SESSION_AGE <= age <= MAX_SESSION_AGE):
        raise ValidationError(f"max_session_age_seconds must be 0 (default) or from "
                              f"{MIN_SESSION_AGE} to {MAX_SESSION_AGE}")


def jwks_route(store: Any) -> Any:
    """``GET /.well-known/nbgateway/jwks.json?domain=<service domain>`` (no auth):
    that service's published keys.  Without ``domain`` 400; a service that is
    unknown or has assertions off 404."""
    import time

    from nbgateway.management.api.framework import QueryParam, Result, Route

    def handler(call: Any) -> Any:
        domain = (call.query.get("domain") or "").strip().rstrip(".").lower()
        if not domain:
            return Result(400, {"code": 400, "message": "query parameter domain is required "
                                "(one JWKS per service)"})
        svc = store.services.get_by_domain(domain)
        if svc is None or svc.assertion_mode == "off" or svc.terminated:
            return Result(404, {"code": 404, "message": "no identity assertion keys for "
                                "this domain"})
        return Result(200, jwks(svc.assertion_keys, time.time()))

    return Route("GET", "/jwks.json", handler, "getAssertionJwks",
                 "A service's identity assertion public keys (JWKS)", "Identity",
                 query=[QueryParam("domain", {"type": "string"}, "the service's domain")],
                 auth=False, errors=(400, 404))
