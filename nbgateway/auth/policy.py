"""The operator-auth policy of a non-private service (sans-IO).

Owns the order of checks that follows the access restrictions and the
private gate for a service with operator schemes (password, PIN, OIDC,
header).  A :class:`Protect` is created per request from
:class:`RequestFacts` and driven by the adapter
(:class:`~nbgateway.http.site.GatewayResource`): every method returns a
*step* -- :class:`Forward`, :class:`Respond`, or a call the adapter makes
(:class:`CallAuthenticate`, :class:`CallTunnel`, :class:`CallOIDCURL`,
:class:`CallValidateSession`) whose result it feeds back with the matching
``*_done`` method.  No I/O, no reactor; ``now`` comes from the caller.

Order (after restrictions and the private gate):

1. no schemes -> forward without identity;
2. ``?error=`` (an OAuth callback error) -> access-denied page 403 with the
   (escaped by the page) ``error_description``;
3. a valid ``nb_session`` cookie not issued before the mapping's
   ``sessions_not_before`` (session revocation) -> forward with the token's identity (no
   RPC; invalid cookies are ignored);
3a. a presented service token (``X-NetBird-Token-Id``/``-Secret`` or
   ``Authorization: Bearer nbt_...``, see :mod:`.tokens`) decides: valid ->
   forward with the token's identity (no cookie, no RPC), else 401;
3b. mTLS: a client certificate verified against the service's
   CA and mapped to a user (:mod:`.mtls`, decided by the adapter before the
   order starts) -> forward with that identity (no cookie, no RPC); no
   certificate on a TLS connection opened for another name (SNI) -> 421 so
   the client reconnects; without one, a service whose only scheme is mTLS
   answers 401 with the
   client-certificate page (never a login form), else the order goes on;
4. header schemes in order: the first configured header present decides
   (Authenticate: not successful 401 ``Unauthorized``, RPC error 502
   ``authentication service unavailable``, token not valid locally 400
   ``invalid session token``, else cookie + forward);
5. tunnel-peer fast path (inbound listener only) -> cookie + forward, a
   failure falls through;
6. OIDC configured and not over TLS -> 400 ``OIDC requires TLS — use port 443``;
7. the scheme loop (password, PIN, OIDC): the first scheme producing a token
   wins -> cookie + 303 to the original URI without ``session_token``; no
   token -> 302 to the IdP when OIDC is the only method, else the login
   page with 401.

Post-login redirects are relative to the request's own host: the target is
the request's path and query with leading slashes collapsed, so ``//evil``
can never become a protocol-relative redirect.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from nbgateway.routes.identity import Identity

from .mtls import MECHANISM as MTLS_MECHANISM
from .mtls import MISDIRECTED as MTLS_MISDIRECTED
from .ratelimit import AttemptLimiter
from .session import SessionVerifier
from .tokens import MECHANISM as TOKEN_MECHANISM
from .tokens import check as check_token
from .tokens import presented as presented_token

__all__ = [
    "CallAuthenticate",
    "CallOIDCURL",
    "CallTunnel",
    "CallValidateSession",
    "Forward",
    "Protect",
    "RequestFacts",
    "Respond",
    "revoked_session",
    "safe_return_path",
]

UNAVAILABLE = "authentication service unavailable"
OIDC_TLS = "OIDC requires TLS — use port 443"
DENIED_DEFAULT = "An error occurred during authentication"
NOT_AUTHORIZED = "You are not authorized to access this service"
NO_CERTIFICATE = "no client certificate was presented"
MAX_SECRET_LENGTH = 1024  # longer form values are refused without an RPC
#: header-auth attempts one address may have in flight beyond the failure
#: bound (machine clients without a cookie jar send concurrently)
HEADER_IN_FLIGHT = 64


@dataclass(frozen=True)
class RequestFacts:
    """What the policy needs to know about one request."""

    host: str  # domain key (port stripped, normalised)
    uri: str  # the request target as received (origin form)
    tls: bool
    overlay: bool
    now: float
    account_id: str
    service_id: str
    schemes: tuple[str, ...]  # interactive schemes: password, pin, oidc (in that order)
    header_names: tuple[str, ...]
    session_key: str
    max_age: int
    #: every nb_session value the request carried, in order (a sibling
    #: subdomain may toss one with Domain=<parent>): each is tried
    cookies: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case name -> value
    query: Mapping[str, str] = field(default_factory=dict)  # first value per query key
    form: Mapping[str, str] = field(default_factory=dict)  # query + urlencoded body
    scheme: str = "https"  # for GetOIDCURL's redirect_url
    #: the login form was posted with a valid form token and a same-site origin
    form_trusted: bool = True
    #: a login form body was posted but was too large (or streamed) to read
    form_oversized: bool = False
    client_ip: str = ""  # the socket peer (rate limiting of secret guesses)
    port: str = ""  # the Host header's explicit port (kept in the OIDC return URL)
    #: the service's tokens: (id, name, secret SHA-256 hex, expires_at)
    tokens: tuple[tuple[str, str, str, int], ...] = ()
    #: the service is token-protected (closed even when no token is live)
    token_auth: bool = False
    #: session revocation: a cookie issued (iat) before this is refused
    sessions_not_before: int = 0
    #: the service accepts mTLS client certificates
    mtls: bool = False
    #: the identity of the verified, mapped client certificate (None: none)
    mtls_identity: Identity | None = None
    #: why the connection's certificate does not authenticate (for the 401 page)
    mtls_error: str = ""


@dataclass(frozen=True)
class Forward:
    identity: Identity | None
    mechanism: str = ""
    set_cookie: str = ""  # session token to install, if any


@dataclass(frozen=True)
class Respond:
    """An answer made here.  ``kind``: ``plain`` (``body`` text), ``login``
    (the login page, ``methods`` and ``error``), ``denied`` (the
    access-denied page with ``message``), ``certificate`` (the mTLS
    client-certificate page with ``message``), ``redirect`` (``location``)."""

    status: int
    kind: str
    body: str = ""
    message: str = ""
    location: str = ""
    methods: tuple[tuple[str, str], ...] = ()
    error: str = ""
    set_cookie: str = ""
    mechanism: str = ""
    identity: Identity | None = None
    retry_after: int = 0


@dataclass(frozen=True)
class CallAuthenticate:
    scheme: str  # password | pin | header
    value: str
    header_name: str = ""


@dataclass(frozen=True)
class CallTunnel:
    pass


@dataclass(frozen=True)
class CallOIDCURL:
    redirect_url: str


@dataclass(frozen=True)
class CallValidateSession:
    token: str


Step = Forward | Respond | CallAuthenticate | CallTunnel | CallOIDCURL | CallValidateSession


def revoked_session(token: str, not_before: int) -> bool:
    """Was this (already verified) session JWT issued before ``not_before``?
    Management sets that time when a user is blocked or leaves a group; a
    token whose ``iat`` cannot be read counts as revoked (fail closed)."""
    if not not_before:
        return False
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        iat = claims["iat"]
    except (IndexError, ValueError, KeyError, TypeError):
        return True
    return not isinstance(iat, int | float) or iat < not_before


def safe_return_path(uri: str) -> str:
    """The same-host redirect target for ``uri``: its path (leading slashes
    collapsed, so never ``//host``; backslashes refused) and its query
    without ``session_token`` or submitted credentials."""
    path, _, query = uri.partition("?")
    path = path.replace("\\", "/")
    if not path.startswith("/"):
        path = "/" + path
    path = "/" + path.lstrip("/")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        path = "/"
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
             if k not in ("session_token", "password", "pin")]
    return path + ("?" + urlencode(pairs) if pairs else "")


class Protect:
    """One request through the operator-auth order of checks."""

    def __init__(self, facts: RequestFacts, verifier: SessionVerifier,
                 limiter: AttemptLimiter | None = None) -> None:
        self.facts = facts
        self.verifier = verifier
        self.limiter = limiter
        self._loop = 0  # next scheme index in the scheme loop
        self._prompts: list[tuple[str, str]] = []
        self._failed = ""  # the scheme whose submitted credentials failed
        self._pending = ""  # scheme whose Authenticate is in flight
        self._now = facts.now  # advanced by answers that arrive later

    # -- entry ---------------------------------------------------------------
    def start(self) -> Step:
        f = self.facts
        if not f.schemes and not f.header_names and not (f.token_auth or f.tokens) \
                and not f.mtls:
            return Forward(None)
        if "error" in f.query:
            desc = f.query.get("error_description", "") or DENIED_DEFAULT
            return Respond(403, "denied", message=desc, mechanism="oidc")
        for cookie in f.cookies:
            ident = self.verifier.verify(cookie, f.session_key, f.host, f.now)
            if (ident is not None and not revoked_session(cookie, f.sessions_not_before)
                    and self._still_offered(ident.method)):
                return Forward(ident, ident.method)
        if f.token_auth or f.tokens:
            creds = presented_token(f.headers)
            if creds is not None:
                ident = check_token(f.tokens, creds[0], creds[1], f.now)
                if ident is None:
                    return Respond(401, "plain", body="Unauthorized: invalid service token",
                                   mechanism=TOKEN_MECHANISM)
                return Forward(ident, TOKEN_MECHANISM)
        if f.mtls:
            if f.mtls_identity is not None:
                return Forward(f.mtls_identity, MTLS_MECHANISM)
            if f.mtls_error == MTLS_MISDIRECTED:  # a reused connection: retry on a new one
                return Respond(421, "plain", body="Misdirected Request: " + MTLS_MISDIRECTED,
                               mechanism=MTLS_MECHANISM)
            if not f.schemes and not f.header_names and not (f.token_auth or f.tokens):
                return Respond(401, "certificate", message=f.mtls_error or NO_CERTIFICATE,
                               mechanism=MTLS_MECHANISM)
        for name in f.header_names:
            value = f.headers.get(name.lower())
            if value is not None:
                wait = self._locked(HEADER_IN_FLIGHT)
                if wait:
                    return Respond(429, "plain", body="Too Many Requests", mechanism="header",
                                   retry_after=wait)
                self._pending = "header"
                return CallAuthenticate("header", value, name)
        return self._after_headers()

    def _after_headers(self) -> Step:
        if self.facts.overlay:
            return CallTunnel()
        return self._after_tunnel()

    # -- results fed back ----------------------------------------------------
    def tunnel_done(self, allowed: bool, identity: Identity | None, token: str) -> Step:
        if allowed and identity is not None and token:
            return Forward(identity, "oidc", token)
        return self._after_tunnel()

    def authenticate_done(self, success: bool | None, token: str,
                          now: float | None = None) -> Step:
        """``success`` is None when the RPC failed; ``now`` is the time the
        answer arrived (a token minted during the RPC has ``nbf`` after the
        request's own arrival time)."""
        if now is not None:
            self._now = now
        scheme, self._pending = self._pending, ""
        if self.limiter is not None:
            self.limiter.release(self.facts.service_id, self.facts.client_ip)
        if success is None:
            return Respond(502, "plain", body=UNAVAILABLE, mechanism=scheme)
        if self.limiter is not None:
            f = self.facts
            if success:
                self.limiter.succeeded(f.service_id, f.client_ip)
            else:
                self.limiter.failed(f.service_id, f.client_ip, f.now)
        if scheme == "header":
            if not success:
                return Respond(401, "plain", body="Unauthorized", mechanism="header")
            ident = self._local(token)
            if ident is None:
                return Respond(400, "plain", body="invalid session token", mechanism="header")
            return Forward(ident, "header", token)
        if not success or not token:
            self._failed = scheme
            self._prompts.append((scheme, scheme))
            return self._scheme_loop()
        return self._token_won(scheme, token)

    def oidc_url_done(self, url: str | None) -> Step:
        if url is None:
            return Respond(502, "plain", body=UNAVAILABLE, mechanism="oidc")
        self._prompts.append(("oidc", url))
        return self._scheme_loop()

    def validate_session_done(self, response: object | None, token: str) -> Step:
        if response is None:
            return Respond(502, "plain", body=UNAVAILABLE, mechanism="oidc")
        if not getattr(response, "valid", False):
            return Respond(403, "denied", message=NOT_AUTHORIZED, mechanism="oidc")
        ident = Identity(
            user_id=getattr(response, "user_id", ""),
            email=getattr(response, "user_email", ""),
            group_ids=tuple(getattr(response, "peer_group_ids", ()) or ()),
            group_names=tuple(getattr(response, "peer_group_names", ()) or ()),
            method="oidc",
        )
        return self._redirect(token, ident, "oidc")

    # -- the rest of the order -----------------------------------------------
    def _after_tunnel(self) -> Step:
        f = self.facts
        if "oidc" in f.schemes and not f.tls:
            return Respond(400, "plain", body=OIDC_TLS)
        return self._scheme_loop()

    def _scheme_loop(self) -> Step:
        f = self.facts
        if f.form_oversized:
            return Respond(413, "plain", body="Request Entity Too Large")
        while self._loop < len(f.schemes):
            scheme = f.schemes[self._loop]
            self._loop += 1
            if scheme in ("password", "pin"):
                value = f.form.get(scheme, "")
                if not value:
                    self._prompts.append((scheme, scheme))
                    continue
                if not f.form_trusted:
                    return Respond(403, "plain", body="Forbidden: cross-site form post refused",
                                   mechanism=scheme)
                if len(value) > MAX_SECRET_LENGTH:
                    self._failed = scheme
                    self._prompts.append((scheme, scheme))
                    continue
                wait = self._locked()
                if wait:
                    return Respond(429, "login", methods=self._login_methods(), error="locked",
                                   mechanism=scheme, retry_after=wait)
                self._pending = scheme
                return CallAuthenticate(scheme, value)
            if scheme == "oidc":
                token = f.query.get("session_token", "")
                if token:
                    return CallValidateSession(token)
                path = f.uri.partition("?")[0]
                authority = f"{f.host}:{f.port}" if f.port.isdigit() else f.host
                return CallOIDCURL(f"{f.scheme}://{authority}{path}")
        return self._no_token()

    def _no_token(self) -> Step:
        f = self.facts
        prompts = dict(self._prompts)
        if f.header_names:
            prompts.setdefault("header", "")
        if list(prompts) == ["oidc"] and prompts["oidc"]:
            return Respond(302, "redirect", location=prompts["oidc"], mechanism="")
        order = [m for m in ("password", "pin", "oidc", "header") if m in prompts]
        return Respond(401, "login", methods=tuple((m, prompts[m]) for m in order),
                       error=self._failed, mechanism=self._failed)

    def _still_offered(self, method: str) -> bool:
        """Was the cookie minted by a way in this service still offers?  A
        PIN cookie must not outlive the PIN when SSO replaced it.  ``oidc``
        cookies also come from the tunnel fast path (inbound listener)."""
        f = self.facts
        if not method:
            # a method this gateway does not know (another management's
            # spelling, or none): the signature vouches for the session, as
            # before; only known ways in are held to the current schemes
            return True
        if method == "header":
            return bool(f.header_names)
        if method == "oidc":
            return "oidc" in f.schemes or f.overlay
        # password and PIN are both shared secrets of the service: a cookie
        # of one stays good while the service offers either
        return method in ("password", "pin") and ("password" in f.schemes
                                                  or "pin" in f.schemes)

    def _locked(self, in_flight: int = 1) -> int:
        """Seconds this client must wait before guessing again (0: go, and
        the attempt is reserved until its answer)."""
        if self.limiter is None:
            return 0
        f = self.facts
        wait = self.limiter.reserve(f.service_id, f.client_ip, f.now, in_flight)
        return int(wait) + 1 if wait > 0 else 0

    def _login_methods(self) -> tuple[tuple[str, str], ...]:
        f = self.facts
        names = [s for s in f.schemes if s != "oidc"] + (["header"] if f.header_names else [])
        return tuple((n, "") for n in names)

    def _local(self, token: str) -> Identity | None:
        f = self.facts
        return self.verifier.verify(token, f.session_key, f.host, self._now)

    def _token_won(self, scheme: str, token: str) -> Step:
        ident = self._local(token)
        if ident is None:
            return Respond(400, "plain", body="invalid session token", mechanism=scheme)
        return self._redirect(token, ident, scheme)

    def _redirect(self, token: str, ident: Identity, scheme: str) -> Step:
        return Respond(303, "redirect", location=safe_return_path(self.facts.uri),
                       set_cookie=token, mechanism=scheme, identity=ident)
