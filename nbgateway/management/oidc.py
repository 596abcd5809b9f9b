"""OpenID Connect relying party for public services' SSO (management side).

Owns the authorization-code flow with PKCE against any standard OpenID
Provider, independent of transport: HTTP is injected (``fetch_json`` for GET,
``post_form`` for the token request) and so is the clock, so the flow is
tested without a network.  Not yet wired into ``GetOIDCURL`` or a
``/reverse-proxy/callback`` resource (see docs/auth.md).

* :class:`OIDCSettings`: issuer, client id, client secret (from a file or an
  environment variable; never in ``repr`` or logs), scopes, groups claim and
  the management's callback URL.
* State: ``base64url(redirect)|nonce|hex(HMAC-SHA256(key, redirect|nonce))``;
  the nonce also keys the pending flow (PKCE S256 verifier and redirect),
  kept :data:`FLOW_TTL` seconds, bounded, and usable once.  A flow has an
  owner (the account whose service asked); a full table gives up the oldest
  flow of the owner holding the most, so one tenant starting sign-ins over
  and over never drops another tenant's.
* :class:`OIDCFlow`: discovery (cached), the authorization URL, and
  :meth:`OIDCFlow.finish`: state check, code exchange with the verifier, ID
  token verification against the JWKS (asymmetric algorithms only; an
  unknown ``kid`` refetches the JWKS once, at most every
  :data:`JWKS_MIN_REFRESH` seconds, which follows key rotation), ``iss``,
  ``aud``, ``exp``/``iat`` and the nonce, then ``sub``, ``email`` and the
  groups claim.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt

__all__ = [
    "FLOW_TTL",
    "OIDCClaims",
    "OIDCError",
    "OIDCFlow",
    "OIDCSettings",
    "load_client_secret",
    "pkce_pair",
]

FLOW_TTL = 600.0
MAX_FLOWS = 10_000
JWKS_MIN_REFRESH = 10.0
#: signature algorithms an ID token may use (never ``none`` or an HMAC)
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")


class OIDCError(Exception):
    """The flow cannot continue; the message is safe to log (no secrets)."""


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    callback_url: str = ""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str = "groups"

    def __post_init__(self) -> None:
        if not self.issuer or not self.client_id:
            raise OIDCError("OIDC needs an issuer URL and a client id")
        if "openid" not in self.scopes:
            raise OIDCError("OIDC scopes must include openid")


def load_client_secret(path: str = "", env: str = "NB_MANAGEMENT_OIDC_CLIENT_SECRET") -> str:
    """The client secret from ``path`` (first line) or the environment."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    return os.environ.get(env, "").strip()


@dataclass(frozen=True)
class OIDCClaims:
    subject: str
    email: str
    email_verified: bool
    groups: tuple[str, ...]
    redirect_url: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """``(verifier, S256 challenge)``."""
    verifier = _b64url(secrets.token_bytes(32))
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass
class _Flow:
    verifier: str
    redirect: str
    created: float
    owner: str = ""


class OIDCFlow:
    def __init__(self, settings: OIDCSettings, *, fetch_json: Callable[[str], Any],
                 post_form: Callable[[str, Mapping[str, str], tuple[str, str]], Any],
                 clock: Callable[[], float], state_key: bytes | None = None) -> None:
        self.settings = settings
        self._fetch = fetch_json
        self._post = post_form
        self._clock = clock
        self._key = state_key if state_key is not None else secrets.token_bytes(32)
        self._flows: OrderedDict[str, _Flow] = OrderedDict()
        #: owner -> its pending nonces, oldest first (a full table evicts from the biggest)
        self._owners: dict[str, OrderedDict[str, None]] = {}
        self._discovery: dict[str, Any] | None = None
        self._jwks: dict[str, Any] = {}
        self._jwks_fetched = float("-inf")

    # -- provider metadata ---------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = self._fetch(url)
            if not isinstance(doc, dict):
                raise OIDCError("discovery document is not a JSON object")
            if doc.get("issuer") != self.settings.issuer:
                raise OIDCError("discovery issuer does not match the configured issuer")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(key), str) or not doc[key]:
                    raise OIDCError(f"discovery document lacks {key}")
            self._discovery = doc
        return self._discovery

    def _refresh_jwks(self) -> bool:
        now = self._clock()
        if now - self._jwks_fetched < JWKS_MIN_REFRESH:
            return False
        self._jwks_fetched = now
        doc = self._fetch(self.discovery()["jwks_uri"])
        keys: dict[str, Any] = {}
        for entry in (doc or {}).get("keys", []) if isinstance(doc, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWTError, ValueError, KeyError, TypeError):
                continue  # a key type this library cannot use
            if key.algorithm_name not in ASYMMETRIC and entry.get("alg") not in ASYMMETRIC:
                continue
            keys[str(entry.get("kid", ""))] = key
        self._jwks = keys
        return True

    def _key_for(self, kid: str) -> Any:
        if kid not in self._jwks and not self._refresh_jwks():
            raise OIDCError("ID token signed with an unknown key")
        if kid not in self._jwks:
            raise OIDCError("ID token signed with an unknown key")
        return self._jwks[kid]

    # -- state -----------------------------------------------------------------
    def _mac(self, redirect: str, nonce: str) -> str:
        return hmac.new(self._key, f"{redirect}|{nonce}".encode(), hashlib.sha256).hexdigest()

    def _parse_state(self, state: str) -> tuple[str, str]:
        parts = state.split("|")
        if len(parts) != 3:
            raise OIDCError("malformed state")
        try:
            raw = parts[0] + "=" * (-len(parts[0]) % 4)
            redirect = base64.urlsafe_b64decode(raw.encode("ascii")).decode("utf-8")
        except (ValueError, UnicodeError):
            raise OIDCError("malformed state") from None
        nonce = parts[1]
        if not hmac.compare_digest(parts[2], self._mac(redirect, nonce)):
            raise OIDCError("state signature mismatch")
        return redirect, nonce

    def redirect_of(self, state: str) -> str:
        """The redirect a state names, only when its HMAC verifies
        (:class:`OIDCError` otherwise): an IdP error answer is sent back
        there before :meth:`finish` runs."""
        return self._parse_state(state)[0]

    def _drop(self, nonce: str) -> _Flow | None:
        flow = self._flows.pop(nonce, None)
        if flow is not None:
            mine = self._owners[flow.owner]
            del mine[nonce]
            if not mine:
                del self._owners[flow.owner]
        return flow

    def _sweep(self, now: float) -> None:
        while self._flows:  # expired flows first (the oldest are in front)
            nonce, flow = next(iter(self._flows.items()))
            if now - flow.created <= FLOW_TTL:
                break
            self._drop(nonce)
        while len(self._flows) > MAX_FLOWS:
            # the owner holding the most gives up its oldest
            biggest = max(self._owners.values(), key=len)
            self._drop(next(iter(biggest)))

    # -- the flow --------------------------------------------------------------
    def authorization_url(self, redirect_url: str, owner: str = "") -> str:
        """The IdP URL that starts a sign-in returning to ``redirect_url``
        (the caller has checked it is http(s) and one of the account's
        service domains); *owner* is the account that asked (see the module
        docstring)."""
        parts = urlsplit(redirect_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OIDCError("redirect URL must be http(s) with a host")
        now = self._clock()
        self._sweep(now)
        nonce = _b64url(secrets.token_bytes(18))
        verifier, challenge = pkce_pair()
        self._flows[nonce] = _Flow(verifier, redirect_url, now, owner)
        self._owners.setdefault(owner, OrderedDict())[nonce] = None
        self._sweep(now)
        state = f"{_b64url(redirect_url.encode())}|{nonce}|{self._mac(redirect_url, nonce)}"
        query = urlencode({
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.callback_url,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        endpoint = self.discovery()["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def finish(self, code: str, state: str) -> OIDCClaims:
        """The callback: verify, exchange, validate; the signed-in identity."""
        if not code or not state:
            raise OIDCError("callback without code or state")
        redirect, nonce = self._parse_state(state)
        now = self._clock()
        self._sweep(now)
        flow = self._drop(nonce)  # once only
        if flow is None or flow.redirect != redirect:
            raise OIDCError("unknown or expired sign-in (state used or older than 10 min)")
        doc = self.discovery()
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.settings.callback_url, "code_verifier": flow.verifier,
                "client_id": self.settings.client_id}
        answer = self._post(doc["token_endpoint"], form,
                            (self.settings.client_id, self.settings.client_secret))
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise OIDCError("token response without an id_token")
        claims = self._verify_id_token(id_token, nonce, now)
        return OIDCClaims(
            subject=claims["sub"],
            email=claims.get("email") if isinstance(claims.get("email"), str) else "",
            email_verified=claims.get("email_verified") is True,
            groups=_groups(claims.get(self.settings.groups_claim)),
            redirect_url=redirect,
        )

    def _verify_id_token(self, token: str, nonce: str, now: float) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OIDCError("malformed ID token") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC:
            raise OIDCError(f"ID token algorithm {alg!r} is not accepted")
        key = self._key_for(str(header.get("kid", "")))
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.settings.client_id,
                                issuer=self.settings.issuer,
                                options={"require": ["iss", "aud", "sub", "exp", "iat"],
                                         "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise OIDCError(f"ID token rejected: {exc}") from None
        if not isinstance(claims.get("exp"), int | float) or now >= claims["exp"]:
            raise OIDCError("ID token expired")
        if claims.get("nonce") != nonce:
            raise OIDCError("ID token nonce mismatch")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise OIDCError("ID token without a subject")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.settings.client_id:
            raise OIDCError("ID token for several audiences without azp")
        return claims


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)
