"""Operator auth on the front resource: step 5 of
:class:`~nbgateway.http.site.GatewayResource` -- a public service with
operator schemes (password/PIN/OIDC/header/token, client certificates).

:class:`OperatorAuth` is the adapter of the sans-IO
:class:`~nbgateway.auth.policy.Protect` order, mixed into
:class:`~nbgateway.http.site.GatewayResource` (whose attributes it uses:
``proxy``, ``gate``, ``listener_account``, ``auth_client``, ``verifier``,
``limiter``, ``form_tokens``, ``mtls``, ``clock``).  It owns the request
facts the policy reads (query, login form body: urlencoded, at most
:data:`MAX_FORM_BODY` bytes, CSRF-checked by :mod:`nbgateway.auth.csrf`;
the client certificate judged by :mod:`nbgateway.http.clientcert`), the
RPCs the policy asks for (fail closed without a management client), and
the answers: forward to the proxy with the identity, or the
login/denied/certificate pages of :mod:`nbgateway.http.login`.  This path
is twisted.web's only (the HTTP/1.1 fast path never serves it).  The log
lines keep the ``nbgateway.http.site`` namespace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.web import server

from nbgateway.auth import csrf, tokens
from nbgateway.auth.mtls import MtlsVerifier
from nbgateway.auth.policy import (
    CallAuthenticate,
    CallOIDCURL,
    CallTunnel,
    CallValidateSession,
    Forward,
    Protect,
    RequestFacts,
    Respond,
    safe_return_path,
)
from nbgateway.auth.ratelimit import AttemptLimiter
from nbgateway.auth.session import COOKIE_NAME, SessionVerifier
from nbgateway.auth.tunnel import PrivateGate, session_cookie
from nbgateway.http import clientcert
from nbgateway.http.login import (
    render_certificate_required,
    render_denied,
    render_login,
    send_html,
    send_plain,
)
from nbgateway.routes.context import RequestContext
from nbgateway.routes.hosts import host_port
from nbgateway.routes.service import ServiceEntry

log = Logger(namespace="nbgateway.http.site")

#: a login form body larger than this (or streamed) is refused with 413
MAX_FORM_BODY = 16 * 1024
MAX_QUERY_FIELDS = 64


class OperatorAuth:
    """The operator-auth steps of :class:`~nbgateway.http.site.GatewayResource`
    (a mixin: the attributes below are the resource's)."""

    proxy: Any
    gate: PrivateGate | None
    listener_account: str | None
    auth_client: Any
    verifier: SessionVerifier
    limiter: AttemptLimiter
    form_tokens: csrf.FormTokens
    mtls: MtlsVerifier
    clock: Any

    def _protect(self, request: Any, ctx: RequestContext, entry: ServiceEntry) -> Any:
        """A non-private service with operator schemes: run the policy."""
        facts = self._facts(request, ctx, entry)
        if facts is None:
            send_plain(request, 400, b"Bad Request: malformed query\n")
            return server.NOT_DONE_YET
        protect = Protect(facts, self.verifier, self.limiter)
        self._run(request, ctx, entry, protect, protect.start())
        return server.NOT_DONE_YET

    def _facts(self, request: Any, ctx: RequestContext,
               entry: ServiceEntry) -> RequestFacts | None:
        """The request facts, None for a malformed query (a login form body
        too large to read is only refused if the order reaches the scheme
        loop: a cookie-authenticated upload is forwarded untouched)."""
        uri = request.uri.decode("latin-1")
        try:
            pairs = parse_qsl(uri.partition("?")[2], keep_blank_values=True,
                              max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return None
        query: dict[str, str] = {}
        for k, v in pairs:
            query.setdefault(k, v)
        form = dict(query)
        headers = request.requestHeaders
        lower = {name.lower(): (headers.getRawHeaders(name.encode("latin-1")) or [""])[0]
                 .decode("latin-1")
                 for name in ("Origin", "Referer", "Sec-Fetch-Site")
                 if headers.hasHeader(name.encode("latin-1"))}
        for name in entry.service.header_auth_names:
            raw = headers.getRawHeaders(name.encode("latin-1"))
            if raw:
                lower[name.lower()] = raw[0].decode("latin-1")
        if entry.token_auth:
            for name in (*tokens.TOKEN_HEADERS, "authorization"):
                raw = headers.getRawHeaders(name.encode("latin-1"))
                if raw:
                    lower[name] = raw[0].decode("latin-1")
        trusted, oversized = True, False
        interactive = any(s in entry.schemes for s in ("password", "pin"))
        ctype = (headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip()
        if interactive and request.method == b"POST" and \
                ctype.lower() == b"application/x-www-form-urlencoded":
            body = self._form_body(request)
            if body is None:
                oversized, body = True, b""
            try:
                posted = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                                   max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:
                return None
            for k, v in posted:
                form.setdefault(k, v)
            if any(form.get(s) for s in ("password", "pin")):
                host = ctx.service.domain if ctx.service is not None else ""
                now = self.clock.seconds()
                trusted = (self.form_tokens.check(form.get(csrf.FIELD, ""), host, now)
                           and csrf.same_site(lower, host))
        cookies = _session_cookies(headers.getRawHeaders(b"cookie") or ())
        secure = bool(request.isSecure())
        mtls_identity, mtls_error = (clientcert.judge(self.mtls, entry, request,
                                                      self.clock.seconds())
                                     if entry.client_ca_pem else (None, ""))
        return RequestFacts(
            host=entry.service.domain, uri=uri, tls=secure, overlay=ctx.overlay,
            now=self.clock.seconds(), account_id=entry.account_id,
            service_id=entry.service.service_id, schemes=entry.schemes,
            header_names=entry.service.header_auth_names, session_key=entry.session_key,
            max_age=entry.session_max_age, cookies=cookies,
            headers=lower,
            query=query, form=form, scheme="https" if secure else "http",
            form_trusted=trusted, form_oversized=oversized, client_ip=ctx.source_ip,
            port=host_port(ctx.host) or "", tokens=entry.tokens, token_auth=entry.token_auth,
            sessions_not_before=entry.sessions_not_before, mtls=bool(entry.client_ca_pem),
            mtls_identity=mtls_identity, mtls_error=mtls_error)

    @staticmethod
    def _form_body(request: Any) -> bytes | None:
        """A small buffered body, or None (streamed or over the limit)."""
        if getattr(request, "body_stream", None) is not None:
            return None
        content = getattr(request, "content", None)
        if content is None:
            return b""
        try:
            content.seek(0)
            data = content.read(MAX_FORM_BODY + 1)
            content.seek(0)
        except (OSError, ValueError):
            return None
        return None if len(data) > MAX_FORM_BODY else data

    def _run(self, request: Any, ctx: RequestContext, entry: ServiceEntry,
             protect: Protect, step: Any) -> None:
        """Carry out one policy step; calls come back here with the next."""
        if request.finished or getattr(request, "_disconnected", False):
            return
        again = functools.partial(self._run, request, ctx, entry, protect)
        client = self.auth_client
        if isinstance(step, Forward):
            if step.set_cookie:
                request.responseHeaders.addRawHeader(b"set-cookie", session_cookie(
                    step.set_cookie, entry.session_max_age).encode("latin-1"))
            if step.identity is not None:
                ctx.authenticated(step.identity, step.mechanism)
            if step.mechanism == tokens.MECHANISM:
                tokens.strip_credentials(request.requestHeaders)  # the secret stays here
            self.proxy.render(request, ctx)
            return
        if isinstance(step, Respond):
            self._respond(request, ctx, entry, step)
            return
        if client is None:
            self._run_failed(request, ctx, entry, protect, step)
            return
        if isinstance(step, CallTunnel):
            if self.gate is None:
                again(protect.tunnel_done(False, None, ""))
                return
            d = self.gate.check(listener_account=self.listener_account,
                                mapping_account=entry.account_id,
                                domain=entry.service.domain, client_ip=ctx.source_ip)
            # an answer for a domain that left this service (or this
            # listener's account) while the RPC ran is a refusal
            d.addCallback(lambda dec: protect.tunnel_done(
                dec.allowed and self.still_served(entry), dec.identity,
                dec.session_token))
            d.addErrback(lambda _f: protect.tunnel_done(False, None, ""))
        elif isinstance(step, CallAuthenticate):
            kw = ({"header_value": step.value, "header_name": step.header_name}
                  if step.scheme == "header" else {step.scheme: step.value})
            kw["client_ip"] = ctx.source_ip
            d = _call(client.authenticate, entry.service.service_id, entry.account_id, **kw)
            d.addCallbacks(lambda r: protect.authenticate_done(
                bool(r.success), r.session_token, self.clock.seconds()),
                           lambda f: self._rpc_error(f, "Authenticate",
                                                     protect.authenticate_done, None, ""))
        elif isinstance(step, CallOIDCURL):
            d = _call(client.get_oidc_url, entry.service.service_id, entry.account_id,
                      step.redirect_url)
            d.addCallbacks(lambda url: protect.oidc_url_done(str(url or "")),
                           lambda f: self._rpc_error(f, "GetOIDCURL", protect.oidc_url_done, None))
        elif isinstance(step, CallValidateSession):
            d = _call(client.validate_session, entry.service.domain, step.token)
            d.addCallbacks(lambda r: protect.validate_session_done(r, step.token),
                           lambda f: self._rpc_error(f, "ValidateSession",
                                                     protect.validate_session_done, None,
                                                     step.token))
        else:  # pragma: no cover - the policy returns only the steps above
            raise TypeError(f"unknown policy step {step!r}")
        d.addCallback(again)
        d.addErrback(lambda f: log.failure("operator auth step failed", f))

    def _run_failed(self, request: Any, ctx: RequestContext, entry: ServiceEntry,
                    protect: Protect, step: Any) -> None:
        """No management client: every call is an RPC failure (fail closed)."""
        if isinstance(step, CallTunnel):
            nxt = protect.tunnel_done(False, None, "")
        elif isinstance(step, CallAuthenticate):
            nxt = protect.authenticate_done(None, "")
        elif isinstance(step, CallOIDCURL):
            nxt = protect.oidc_url_done(None)
        else:
            nxt = protect.validate_session_done(None, "")
        self._run(request, ctx, entry, protect, nxt)

    @staticmethod
    def _rpc_error(failure: Any, rpc: str, done: Callable[..., Any], *args: Any) -> Any:
        log.info("{rpc} failed: {error}", rpc=rpc, error=failure.getErrorMessage())
        return done(*args)

    def _respond(self, request: Any, ctx: RequestContext, entry: ServiceEntry,
                 step: Respond) -> None:
        if step.mechanism:
            if step.identity is not None:
                ctx.authenticated(step.identity, step.mechanism)
            else:
                ctx.auth_mechanism = step.mechanism
        if step.set_cookie:
            request.responseHeaders.addRawHeader(b"set-cookie", session_cookie(
                step.set_cookie, entry.session_max_age).encode("latin-1"))
        if step.retry_after:
            request.setHeader(b"retry-after", b"%d" % step.retry_after)
        if step.kind == "redirect":
            request.setResponseCode(step.status)
            request.setHeader(b"location", step.location.encode("utf-8"))
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", b"0")
            request.finish()
        elif step.kind == "denied":
            send_html(request, step.status, render_denied(step.message))
        elif step.kind == "certificate":
            send_html(request, step.status,
                      render_certificate_required(entry.service.domain, step.message))
        elif step.kind == "login":
            host = entry.service.domain
            token = self.form_tokens.issue(host, self.clock.seconds())
            send_html(request, step.status, render_login(
                host=host, methods=step.methods, error=step.error,
                action=safe_return_path(request.uri.decode("latin-1")), form_token=token))
        elif step.status == 502 and self._wants_html(request, entry):
            host = entry.service.domain
            send_html(request, 502, render_login(
                host=host, methods=tuple((s, "") for s in entry.schemes if s != "oidc"),
                error="unavailable", action=safe_return_path(request.uri.decode("latin-1")),
                form_token=self.form_tokens.issue(host, self.clock.seconds())))
        else:
            send_plain(request, step.status, (step.body + "\n").encode("utf-8"))

    @staticmethod
    def _wants_html(request: Any, entry: ServiceEntry) -> bool:
        """A browser's login-form post (not a header-auth client) gets the
        login page's error state instead of plain text."""
        if not any(s in entry.schemes for s in ("password", "pin")):
            return False
        accept = (request.getHeader(b"accept") or b"").lower()
        return b"text/html" in accept


def _session_cookies(raw: Any, limit: int = 8) -> tuple[str, ...]:
    """Every ``nb_session`` value of the Cookie headers, in order (at most
    ``limit``): twisted's getCookie keeps only the last one."""
    out: list[str] = []
    prefix = COOKIE_NAME.encode() + b"="
    for line in raw:
        for part in line.split(b";"):
            part = part.strip()
            if part.startswith(prefix) and len(out) < limit:
                out.append(part[len(prefix):].decode("latin-1"))
    return tuple(out)


def _call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Deferred:
    """``fn(...)`` as a Deferred; a client that raises is an RPC failure."""
    try:
        return maybeDeferred(fn, *args, **kw)
    except Exception as exc:  # pragma: no cover - maybeDeferred already catches
        return fail(exc)
