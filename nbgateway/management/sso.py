"""SSO for public services: GetOIDCURL and ``GET /reverse-proxy/callback``.

Owns what sits between the OIDC flow (:mod:`nbgateway.management.oidc`) and
the store:

* :meth:`SSO.oidc_url` (the ``GetOIDCURL`` RPC): the redirect URL must be
  http(s) and name a service of the caller's account with SSO
  (``bearer_auth``) on; the answer is the IdP's authorization URL.
* :meth:`SSO.callback`: the IdP's answer.  The user is the account's user
  ``oidc-<hash(account, issuer, sub)>``, created on first sign-in
  (auto-provisioning) with the configured auto-groups plus the account's
  groups named in the IdP's groups claim, and kept in step with the claim on
  every sign-in; its e-mail is the ID token's only when ``email_verified``
  is true (else none: the session and ``X-NetBird-User`` never name an
  address the provider did not verify); a pending or blocked user gets no
  token.  Success redirects
  to the service URL with ``session_token`` (an EdDSA session JWT, method
  ``oidc``); any refusal redirects there with ``error=access_denied`` when the
  service is known, else answers 400.
* :class:`CallbackResource`: the twisted.web adapter (GET only, per-client
  rate limit of 10 per minute with a burst of 15, work on the thread pool).
* :func:`http_fetch_json` / :func:`http_post_form`: the flow's HTTP (urllib,
  10 s timeout, 1 MiB cap).

Secrets (client secret, codes, tokens) are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from nbgateway.management import sessionjwt
from nbgateway.management.errors import QuotaExceeded
from nbgateway.management.model import User, utcnow
from nbgateway.management.oidc import OIDCError, OIDCFlow, OIDCSettings
from nbgateway.management.ratelimit import KeyedBuckets

__all__ = ["SSO", "CallbackResource", "http_fetch_json", "http_post_form"]

log = Logger()

HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 1 << 20
CALLBACK_RATE = 10 / 60.0  # tokens per second
CALLBACK_BURST = 15


class SSOError(Exception):
    """A refusal; ``redirect`` is where to send the browser (may be empty)."""

    def __init__(self, message: str, redirect: str = "") -> None:
        super().__init__(message)
        self.redirect = redirect


def http_fetch_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
        return json.loads(resp.read(MAX_RESPONSE))


def http_post_form(url: str, form: Mapping[str, str], auth: tuple[str, str]) -> Any:
    basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=urlencode(form).encode(), method="POST", headers={
        "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"Basic {basic}"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return json.loads(resp.read(MAX_RESPONSE))
    except urllib.error.HTTPError as exc:  # an OAuth error answer is JSON too
        try:
            return json.loads(exc.read(MAX_RESPONSE))
        except ValueError:
            return {"error": f"HTTP {exc.code}"}


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in extra and k != "session_token"]
    pairs += list(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), ""))


class SSO:
    def __init__(self, store_getter: Any, flow: OIDCFlow,
                 auto_groups: Sequence[str] = ()) -> None:
        self._store = store_getter
        self.flow = flow
        #: group names (or ids) every SSO user of an account is put in
        self.auto_groups = tuple(auto_groups)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, store_getter: Any, settings: OIDCSettings,
                      auto_groups: Sequence[str] = ()) -> SSO:
        flow = OIDCFlow(settings, fetch_json=http_fetch_json, post_form=http_post_form,
                        clock=time.time)
        return cls(store_getter, flow, auto_groups)

    def _sso_service(self, host: str) -> Any:
        svc = self._store().services.get_by_domain(host)
        if svc is None:
            return None
        bearer = svc.auth.bearer_auth
        return svc if bearer is not None and bearer.enabled and not svc.private else None

    def oidc_url(self, account_id: str, redirect_url: str) -> str:
        """GetOIDCURL; :class:`OIDCError` (FailedPrecondition) when refused."""
        parts = urlsplit(redirect_url)
        host = (parts.hostname or "").rstrip(".").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise OIDCError("redirect_url must be an http(s) URL")
        if "\\" in redirect_url or "@" in parts.netloc:
            # browsers read a backslash as '/' and userinfo differently from
            # urlsplit: the host checked here must be the host they visit
            raise OIDCError("redirect_url must be an http(s) URL")
        svc = self._sso_service(host)
        if svc is None or svc.account_id != account_id:
            raise OIDCError("service not found in store")
        return self.flow.authorization_url(redirect_url, owner=account_id)

    def callback(self, query: Mapping[str, str]) -> str:
        """The browser's next location; :class:`SSOError` when refused."""
        state = query.get("state", "")
        try:
            redirect = self._redirect_of(state)
        except OIDCError:
            redirect = ""
        svc = self._sso_service((urlsplit(redirect).hostname or "").lower()) if redirect else None
        if svc is None:
            raise SSOError("unknown sign-in")
        denied = _with_query(redirect, {"error": "access_denied",
                                        "error_description": "Sign-in was refused"})
        if query.get("error"):
            raise SSOError(f"identity provider refused: {query['error'][:64]}", denied)
        try:
            claims = self.flow.finish(query.get("code", ""), state)
        except OIDCError as exc:
            raise SSOError(str(exc), denied) from None
        with self._lock:  # one provisioning at a time (the same user may come twice)
            try:
                user = self._provision(svc.account_id, claims)
            except QuotaExceeded as exc:  # the account's user quota: refused, not an outage
                raise SSOError(f"user not created: {exc.message}", denied) from None
        if user.pending_approval or user.blocked:
            raise SSOError(f"user {user.id} is {user.status}", denied)
        groups = self._store().groups.resolve(svc.account_id, list(user.auto_groups))
        token = sessionjwt.sign_session(
            svc.session_private_key, subject=user.id, domain=svc.domain, method="oidc",
            email=user.email, groups=[g.id for g in groups], group_names=[g.name for g in groups],
            expiry=svc.max_session_age_seconds or sessionjwt.DEFAULT_SESSION_EXPIRY)
        log.info("SSO sign-in of {user} for {domain}", user=user.id, domain=svc.domain)
        return _with_query(redirect, {"session_token": token})

    def _redirect_of(self, state: str) -> str:
        # only a state this management signed chooses where the browser goes
        return self.flow.redirect_of(state)

    def _provision(self, account_id: str, claims: Any) -> User:
        store = self._store()
        digest = hashlib.sha256(
            f"{account_id}|{self.flow.settings.issuer}|{claims.subject}".encode()).hexdigest()
        uid = f"oidc-{digest[:24]}"
        by_name = {g.name: g.id for g in store.groups.list(account_id)}
        ids = set(by_name.values())
        wanted: list[str] = []
        for ref in (*self.auto_groups, *claims.groups):
            gid = by_name.get(ref) or (ref if ref in ids else None)
            if gid is not None and gid not in wanted:
                wanted.append(gid)
        email = claims.email if claims.email_verified else ""
        user = store.users.find(uid)
        if user is None:
            return store.users.create(User(
                id=uid, account_id=account_id, email=email,
                name=email or claims.subject, role="user",
                auto_groups=tuple(wanted), created_at=utcnow()))
        if user.account_id != account_id:
            raise SSOError("user belongs to another account")
        if user.email != email or tuple(user.auto_groups) != tuple(wanted):
            from dataclasses import replace

            user = store.users.update(replace(user, email=email,
                                              auto_groups=tuple(wanted)))
        return user


class CallbackResource(Resource):
    """``GET /reverse-proxy/callback`` (no API token: the state is the proof)."""

    isLeaf = True

    def __init__(self, sso: SSO, threadpool: Any, reactor: Any) -> None:
        super().__init__()
        self.sso = sso
        self.threadpool = threadpool
        self.reactor = reactor
        #: per client address (management's one keyed token bucket)
        self.limits = KeyedBuckets(CALLBACK_RATE, CALLBACK_BURST)

    def render_GET(self, request: Any) -> Any:
        if [p for p in request.postpath if p] != [b"callback"]:
            return self._plain(request, 404, "not found\n")
        client = str(getattr(request.getClientAddress(), "host", ""))
        if self.limits.take(client, self.reactor.seconds()):
            return self._plain(request, 429, "too many sign-in attempts\n")
        try:
            query = {k: v for k, v in reversed(parse_qsl(
                request.uri.decode("latin-1").partition("?")[2], keep_blank_values=True,
                max_num_fields=16))}
        except ValueError:
            return self._plain(request, 400, "malformed callback\n")
        d = deferToThreadPool(self.reactor, self.threadpool, self.sso.callback, query)
        d.addCallbacks(lambda loc: self._redirect(request, loc),
                       lambda f: self._refused(request, f))
        return server.NOT_DONE_YET

    def _refused(self, request: Any, failure: Any) -> None:
        exc = failure.value
        if isinstance(exc, SSOError):
            log.info("SSO callback refused: {reason}", reason=str(exc))
            if exc.redirect:
                self._redirect(request, exc.redirect)
                return
            self._plain(request, 400, "sign-in failed\n")
            return
        log.failure("SSO callback failed", failure)
        self._plain(request, 502, "sign-in failed: identity provider unavailable\n")

    @staticmethod
    def _redirect(request: Any, location: str) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.finish()

    @staticmethod
    def _plain(request: Any, code: int, text: str) -> Any:
        if request.finished or getattr(request, "_disconnected", False):
            return server.NOT_DONE_YET
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        body = text.encode()
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
        return server.NOT_DONE_YET
