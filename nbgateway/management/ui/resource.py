"""The web UI under ``/ui/`` (twisted.web adapter + page handlers).

Owns the HTTP side of the dashboard: security headers on every response (a
strict Content-Security-Policy, no framing, no caching, no sniffing), the
session cookie (``__Host-`` named over TLS, so no other host under the same
parent domain can set it; a request carrying it twice acts in no session),
the CSRF check on every POST, sign-in/sign-out, static files
shipped in the package, and the pages.  Pages run in the store thread pool and
read and write only through :class:`~.bridge.ApiBridge`, i.e. the REST API's
own handlers, authorisation and validation messages.  Templates are Jinja2
with autoescaping on, so stored strings are always escaped.
"""

from __future__ import annotations

import base64
import hmac
import importlib.resources
import json
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jinja2
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from nbgateway.management.api.framework import Identity, match_segments
from nbgateway.management.oidc import OIDCError

from .bridge import ApiBridge, Outcome
from .live import LiveStreams
from .sessions import Session, SessionStore
from .sso import SESSION_PREFIX, DashboardSSO, SignInRefusedError

log = Logger()

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
COOKIE = "nbgw_ui"
#: over TLS the cookies carry this prefix: browsers take such a cookie only
#: from this very host (Secure, Path=/, no Domain), never from a sibling host
HOST_PREFIX = "__Host-"
#: binds an SSO sign-in to the browser that started it; SameSite=Lax so the
#: provider's redirect back (a cross-site navigation) carries it
SSO_COOKIE = "nbgw_ui_sso"
MAX_PENDING_SSO = 1000
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
MAX_FIELD = 8192


@dataclass
class Page:
    status: int = 200
    html: str = ""
    redirect: str | None = None
    content_type: str = "text/html; charset=utf-8"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: set on the session for the next page (a token shown once)
    flash: dict[str, str] | None = None


class Ctx:
    """One request as the page handlers see it (thread-pool side)."""

    def __init__(self, ui: UiResource, identity: Identity, session: Session,
                 form: dict[str, list[str]], query: dict[str, str], flash: dict[str, str] | None):
        self.ui = ui
        self.identity = identity
        self.session = session
        self.form = form
        self.query = query
        self.flash = flash

    def api(self, op: str, params: dict[str, str] | None = None,
            query: dict[str, str] | None = None, body: Any = None) -> Outcome:
        return self.ui.bridge.call(self.identity, op, params, query, body)

    def listing(self, op: str, **kw: Any) -> tuple[list[Any], str]:
        """A list operation's rows, or ``([], message)`` when the API refuses."""
        out = self.api(op, **kw)
        if out.ok:
            return list(out.body or []), ""
        return [], out.message

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[-1].strip() if values else default

    def fields(self, name: str) -> list[str]:
        return [v for v in self.form.get(name, []) if v]

    def checked(self, name: str) -> bool:
        return self.field(name) in ("on", "1", "true")

    def render(self, template: str, status: int = 200, **values: Any) -> Page:
        html = self.ui.env.get_template(template).render(
            csrf=self.session.csrf, me=self.identity, flash=self.flash, **values)
        return Page(status, html)


Handler = Callable[..., Page]


class UiResource(Resource):
    """``/ui/...``: static files, sign-in, and the pages of :mod:`.pages`."""

    isLeaf = True

    def __init__(self, bridge: ApiBridge, threadpool: Any, reactor: Any,
                 sessions: SessionStore | None = None, ca_cert_path: str | None = None,
                 sso: DashboardSSO | None = None, live: LiveStreams | None = None):
        super().__init__()
        #: server-sent events for the live view (None: the page polls)
        self.live = live
        #: accepted from older callers and not read: the dashboard offers the
        #: signed-in account's private CA from management (the gateway's own
        #: ``DATADIR/ca.crt`` signs only its default name)
        self.ca_cert_path = ca_cert_path
        self.sso = sso
        #: SSO binding cookie value -> the flow's state (bounded, oldest first out)
        self._sso_pending: OrderedDict[str, str] = OrderedDict()
        from . import pages

        self.bridge = bridge
        self.sessions = sessions or SessionStore(reactor.seconds)
        self._pool = threadpool
        self._reactor = reactor
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("nbgateway.management.ui", "templates"),
            autoescape=True)
        self.env.filters["tojson_compact"] = lambda v: json.dumps(v, separators=(",", ":"))
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = pages.ROUTES
        self.static = {name: importlib.resources.files(__package__).joinpath(
            "static", name).read_bytes() for name in STATIC}

    # -- reactor thread ---------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        for k, v in SECURITY_HEADERS.items():
            request.setHeader(k, v)
        try:
            return self._render(request)
        except Exception:
            log.failure("UI request failed")
            return self._text(request, 500, "internal server error")

    def _render(self, request: server.Request) -> bytes | int:
        segments = tuple(s for s in request.path.decode("latin-1").split("/") if s)[1:]
        method = request.method.decode("latin-1").upper()
        if getattr(request, "body_too_large", False):
            return self._text(request, 413, "request body too large")
        if len(segments) == 2 and segments[0] == "static" and method in ("GET", "HEAD"):
            data = self.static.get(segments[1])
            if data is None:
                return self._text(request, 404, "not found")
            request.setHeader("Content-Type", STATIC[segments[1]])
            request.setHeader("Cache-Control", "no-cache")
            return data
        session = self.sessions.get(_cookie(request, COOKIE))
        form = _form(request) if method == "POST" else {}
        if form is None:
            return self._text(request, 400, "malformed form")
        if method == "POST" and not SessionStore.csrf_ok(session, _one(form, "csrf")):
            log.info("UI POST refused: CSRF token missing or wrong", path=request.path[:100])
            return self._text(request, 403, "CSRF token missing or wrong; reload the page")
        if segments == ("login",):
            return self._login(request, method, session, form)
        if segments[:1] == ("sso",) and method == "GET":
            return self._sso(request, segments[1:])
        if session is None or session.token is None:
            if method == "GET":
                request.setResponseCode(303)
                request.setHeader("Location", "/ui/login")
                return b""
            return self._text(request, 403, "sign in first")
        if segments == ("logout",) and method == "POST":
            self.sessions.drop(session.sid)
            self._set_cookie(request, "", expire=True)
            request.setResponseCode(303)
            request.setHeader("Location", "/ui/login")
            return b""
        if segments == ("live", "events") and method == "GET":
            return self._events(request, session)
        found = next(((h, p) for m, pat, h in self._routes if m == method
                      for p in (_match(pat, segments),) if p is not None), None)
        if found is None:
            return self._text(request, 404, "not found")
        handler, params = found
        query = {}
        for k, v in request.args.items():
            if method == "GET" and v:
                try:
                    query[k.decode()] = v[-1].decode("utf-8")[:MAX_FIELD]
                except UnicodeDecodeError:
                    return self._text(request, 400, "query is not UTF-8")
        flash, session.flash = session.flash, None
        token = session.token
        d = deferToThreadPool(self._reactor, self._pool, self._page, handler, token, session,
                              form, query, flash, params)
        d.addCallbacks(self._write, self._failed, callbackArgs=(request, session),
                       errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _login(self, request: server.Request, method: str, session: Session | None,
               form: dict[str, list[str]]) -> bytes | int:
        if method == "GET":
            if session is None:
                session = self.sessions.create_anonymous()
                self._set_cookie(request, session.sid)
            return self._html(request, 200, self.env.get_template("login.html").render(
                csrf=session.csrf, error="", me=None, flash=None, sso=self.sso is not None))
        if method != "POST":
            return self._text(request, 405, "method not allowed")
        token = _one(form, "token") or ""
        d = deferToThreadPool(self._reactor, self._pool, self.bridge.identity, token)

        def done(identity: Identity | None) -> None:
            if request._disconnected or request.finished:
                return
            if identity is None or session is None:
                log.info("UI sign-in refused")
                request.write(self._html(request, 401, self.env.get_template(
                    "login.html").render(csrf=session.csrf if session else "", me=None,
                                         flash=None, error="That token was not accepted.",
                                         sso=self.sso is not None)))
                request.finish()
                return
            fresh = self.sessions.sign_in(session, token, owner=identity.account_id)
            log.info("UI sign-in", user_id=identity.user_id, account_id=identity.account_id)
            self._set_cookie(request, fresh.sid)
            request.setResponseCode(303)
            request.setHeader("Location", "/ui/")
            request.finish()

        d.addCallback(done)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _sso(self, request: server.Request, rest: tuple[str, ...]) -> bytes | int:
        """``/ui/sso/start`` (to the provider) and ``/ui/sso/callback`` (back)."""
        if self.sso is None:
            return self._text(request, 404, "SSO is not configured")
        if rest == ("start",):
            d = deferToThreadPool(self._reactor, self._pool, self.sso.start)

            def go(started: tuple[str, str]) -> None:
                url, state = started
                binding = secrets.token_urlsafe(32)
                self._sso_pending[binding] = state
                while len(self._sso_pending) > MAX_PENDING_SSO:
                    self._sso_pending.popitem(last=False)
                self._sso_cookie(request, binding)
                request.setResponseCode(303)
                request.setHeader("Location", url)
                request.finish()

            d.addCallbacks(go, self._sso_refused, errbackArgs=(request,))
            return server.NOT_DONE_YET
        if rest != ("callback",):
            return self._text(request, 404, "not found")
        query = {k.decode("latin-1"): v[-1].decode("latin-1")[:MAX_FIELD]
                 for k, v in request.args.items() if v}
        binding = _cookie(request, SSO_COOKIE) or ""
        expected = self._sso_pending.pop(binding, None) if binding else None
        self._sso_cookie(request, "", expire=True)
        state = query.get("state", "")
        if expected is None or not hmac.compare_digest(expected.encode(), state.encode()):
            log.info("dashboard SSO callback refused: not started in this browser")
            return self._login_page(request, 403, "That sign-in was not started here; "
                                    "sign in again.")
        if query.get("error"):
            log.info("dashboard SSO refused by the provider", error=query["error"][:64])
            return self._login_page(request, 403, "The identity provider refused the sign-in.")
        d = deferToThreadPool(self._reactor, self._pool, self._finish_sso,
                              query.get("code", ""), state)

        def signed_in(found: tuple[str, str]) -> None:
            if request._disconnected or request.finished:
                return
            token, account_id = found
            old = self.sessions.get(_cookie(request, COOKIE))
            fresh = self.sessions.sign_in(old, token, owner=account_id)
            self._set_cookie(request, fresh.sid)
            # a page, not a redirect: the navigation to /ui/ then starts on this
            # site, so the SameSite=Strict session cookie is sent with it
            request.write(self._html(request, 200, self.env.get_template(
                "signed_in.html").render(me=None, flash=None, csrf="")))
            request.finish()

        d.addCallbacks(signed_in, self._sso_refused, errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _finish_sso(self, code: str, state: str) -> tuple[str, str]:
        """``(session token, account id)`` of a finished SSO sign-in (thread pool)."""
        assert self.sso is not None
        token = self.sso.finish(code, state)
        identity = self.sso.identity(token)
        return token, identity.account_id if identity is not None else ""

    def _sso_refused(self, failure: Failure, request: server.Request) -> None:
        if failure.check(SignInRefusedError, OIDCError):
            log.info("dashboard SSO sign-in refused: {why}", why=str(failure.value)[:200])
            message = f"Single sign-on was refused: {failure.value}"
        else:
            log.failure("dashboard SSO failed", failure)
            message = "Single sign-on failed; try again later."
        if request._disconnected or request.finished:
            return
        request.write(self._login_page(request, 403, message))
        request.finish()

    def _login_page(self, request: server.Request, status: int, error: str) -> bytes:
        session = self.sessions.create_anonymous()
        self._set_cookie(request, session.sid)
        return self._html(request, status, self.env.get_template("login.html").render(
            csrf=session.csrf, error=error, me=None, flash=None, sso=self.sso is not None))

    def _sso_cookie(self, request: server.Request, value: str, expire: bool = False) -> None:
        if request.isSecure():
            parts = [f"{HOST_PREFIX}{SSO_COOKIE}={value}", "Path=/", "Secure"]
        else:
            parts = [f"{SSO_COOKIE}={value}", "Path=/ui/sso/"]
        parts += ["HttpOnly", "SameSite=Lax", "Max-Age=0" if expire else "Max-Age=600"]
        request.responseHeaders.addRawHeader("Set-Cookie", "; ".join(parts))

    def _events(self, request: server.Request, session: Session) -> bytes | int:
        """``/ui/live/events``: a server-sent event stream of "re-fetch" signals."""
        if self.live is None:
            return self._text(request, 404, "not found")
        assert session.token is not None
        d = deferToThreadPool(self._reactor, self._pool, self._identify, session.token)

        def go(identity: Identity | None) -> None:
            if request._disconnected or request.finished:
                return
            if identity is None:
                self.sessions.drop(session.sid)
                request.write(self._text(request, 403, "sign in first"))
                request.finish()
                return
            assert self.live is not None
            if not self.live.start(request, session.sid, identity.account_id,
                                   identity.instance_admin):
                request.setHeader("Retry-After", "30")
                request.write(self._text(request, 503, "too many live streams; polling"))
                request.finish()

        d.addCallbacks(go, self._failed, errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _identify(self, token: str) -> Identity | None:
        if self.sso is not None and token.startswith(SESSION_PREFIX):
            return self.sso.identity(token)
        return self.bridge.identity(token)

    # -- thread pool ------------------------------------------------------------

    def _page(self, handler: Handler, token: str, session: Session,
              form: dict[str, list[str]], query: dict[str, str],
              flash: dict[str, str] | None, params: dict[str, str]) -> Page | None:
        identity = self._identify(token)
        if identity is None:
            return None  # the token was revoked or its user blocked: sign out
        return handler(Ctx(self, identity, session, form, query, flash), **params)

    # -- back in the reactor ------------------------------------------------------

    def _write(self, page: Page | None, request: server.Request, session: Session) -> None:
        if request._disconnected or request.finished:
            return
        if page is None:
            self.sessions.drop(session.sid)
            self._set_cookie(request, "", expire=True)
            page = Page(303, redirect="/ui/login")
        if page.flash is not None:
            session.flash = page.flash
        for k, v in page.headers.items():
            request.setHeader(k, v)
        if page.redirect is not None:
            request.setResponseCode(303)
            request.setHeader("Location", page.redirect)
            request.finish()
            return
        request.setResponseCode(page.status)
        request.setHeader("Content-Type", page.content_type)
        request.write(page.body if page.body is not None else page.html.encode())
        request.finish()

    def _failed(self, failure: Failure, request: server.Request) -> None:
        log.failure("UI page failed", failure)
        if request._disconnected or request.finished:
            return
        request.write(self._text(request, 500, "internal server error"))
        request.finish()

    # -- helpers -------------------------------------------------------------------

    def _set_cookie(self, request: server.Request, value: str, expire: bool = False) -> None:
        if request.isSecure():
            parts = [f"{HOST_PREFIX}{COOKIE}={value}", "Path=/", "Secure"]
        else:
            parts = [f"{COOKIE}={value}", "Path=/ui/"]
        parts += ["HttpOnly", "SameSite=Strict"]
        if expire:
            parts.append("Max-Age=0")
        request.responseHeaders.addRawHeader("Set-Cookie", "; ".join(parts))

    @staticmethod
    def _html(request: server.Request, status: int, html: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return html.encode()

    @staticmethod
    def _text(request: server.Request, status: int, text: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return text.encode() + b"\n"


def _cookie(request: server.Request, name: str) -> str | None:
    """The value of the dashboard's cookie *name* (``__Host-`` prefixed over
    TLS); None when absent, not ASCII, or sent more than once: another host
    under the same parent domain can add a cookie of the name (``Domain=``,
    ``Path=/``), and browsers send it after ours, so which value is ours cannot
    be told (twisted's ``getCookie`` keeps the last one: the other host's)."""
    prefix = ((HOST_PREFIX if request.isSecure() else "") + name + "=").encode()
    found = [part[len(prefix):] for line in request.requestHeaders.getRawHeaders(b"cookie") or ()
             for part in (p.strip() for p in line.split(b";")) if part.startswith(prefix)]
    if len(found) != 1:
        return None
    try:
        return found[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def _form(request: server.Request) -> dict[str, list[str]] | None:
    """The urlencoded POST body (twisted already parsed it into ``args``)."""
    out: dict[str, list[str]] = {}
    try:
        for k, values in request.args.items():
            out[k.decode("utf-8")] = [v.decode("utf-8")[:MAX_FIELD] for v in values[:200]]
    except UnicodeDecodeError:
        return None
    return out


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values else None


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    """:func:`match_segments`, refusing a parameter with a control character."""
    params = match_segments(pattern, segments)
    if params is None or any(ord(c) < 0x20 for got in params.values() for c in got):
        return None
    return params


#: a CA certificate body larger than this is not offered
MAX_CA_CERT = 64 * 1024


def ca_certificate_text(raw: bytes | str | None) -> str:
    """The PEM certificate(s) in *raw* (the account's private CA as
    ``getPrivateCACertificate`` returns it), or "" when absent, too large, or
    not certificates only (a body holding any key is never offered)."""
    if not raw or len(raw) > MAX_CA_CERT:
        return ""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return ""
    else:
        text = raw
    if "-----BEGIN CERTIFICATE-----" not in text or "KEY-----" in text:
        return ""
    return text


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def qs(**values: Any) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})
