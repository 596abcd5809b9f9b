"""The gateway's own pages for operator auth: the login page, the
access-denied page and the mTLS client-certificate page.

One small self-contained HTML document each: no external assets, no
JavaScript, one inline stylesheet allowed by its hash in a strict
Content-Security-Policy (``default-src 'none'``, ``form-action 'self'``,
``frame-ancestors 'none'``, ``base-uri 'none'``).  The login page offers the
configured methods (password, PIN, "Sign in with SSO", a note for header
auth), each form posts back to the same path with a CSRF form token, and
shows an error state for a wrong password/PIN or an unavailable auth
service.  Every interpolated value is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Any

__all__ = ["CSP", "render_certificate_required", "render_denied", "render_login",
           "send_html"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1b1d21;margin:0}"
    "main{max-width:24rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 4px rgba(0,0,0,.15)}"
    "h1{font-size:1.4rem;margin-top:0}label{display:block;margin:.8rem 0 .3rem;font-weight:600}"
    "input{width:100%;box-sizing:border-box;padding:.55rem;font-size:1rem;border:1px solid #767676;"
    "border-radius:4px}button,.sso{display:block;width:100%;margin-top:.8rem;padding:.6rem;"
    "font-size:1rem;border:0;border-radius:4px;background:#1a5fb4;color:#fff;text-align:center;"
    "text-decoration:none;cursor:pointer}button:focus,input:focus,.sso:focus{outline:3px solid "
    "#f5c211;outline-offset:2px}.err{background:#fde8e8;color:#8a1010;padding:.6rem;"
    "border-radius:4px}hr{margin:1.4rem 0;border:0;border-top:1px solid #ddd}"
    "p.note{color:#444;font-size:.9rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

_ERRORS = {
    "password": "Wrong password. Please try again.",
    "pin": "Wrong PIN. Please try again.",
    "unavailable": "The sign-in service is unavailable right now. Please try again later.",
    "locked": "Too many failed attempts from your address. Please wait and try again.",
}

_DOC = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title}</title>
<style>{style}</style>
</head><body>
<main>{body}</main>
</body></html>
"""


def _doc(title: str, body: str) -> bytes:
    return _DOC.format(title=html.escape(title), style=_STYLE, body=body).encode("utf-8")


def _secret_form(kind: str, label: str, action: str, token: str, autofocus: bool) -> str:
    extra = ' inputmode="numeric" autocomplete="one-time-code"' if kind == "pin" else \
        ' autocomplete="current-password"'
    focus = " autofocus" if autofocus else ""
    return (
        f'<form method="post" action="{html.escape(action)}">'
        f'<input type="hidden" name="nb_csrf" value="{html.escape(token)}">'
        f'<label for="nb-{kind}">{label}</label>'
        f'<input type="password" id="nb-{kind}" name="{kind}" required maxlength="1024"'
        f'{extra}{focus}>'
        f'<button type="submit" id="nb-{kind}-submit">Sign in</button></form>'
    )


def render_login(*, host: str, methods: tuple[tuple[str, str], ...], error: str,
                 action: str, form_token: str) -> bytes:
    """The login page for ``host`` offering ``methods`` ((name, prompt)
    pairs: the OIDC prompt is the IdP URL); ``error`` is ``password``,
    ``pin``, ``unavailable`` or empty."""
    parts = [f"<h1>Sign in to {html.escape(host)}</h1>"]
    if error in _ERRORS:
        parts.append(f'<p class="err" role="alert" id="nb-error">{_ERRORS[error]}</p>')
    sections = []
    first = True
    for name, prompt in methods:
        if name == "password":
            sections.append(_secret_form("password", "Password", action, form_token, first))
        elif name == "pin":
            sections.append(_secret_form("pin", "PIN", action, form_token, first))
        elif name == "oidc" and prompt:
            sections.append(f'<a class="sso" id="nb-sso" href="{html.escape(prompt)}">'
                            "Sign in with SSO</a>")
        elif name == "header":
            sections.append('<p class="note">This service also accepts a credential header '
                            "sent by your client.</p>")
        else:
            continue
        first = False
    parts.append("<hr>".join(sections))
    return _doc(f"Sign in - {host}", "".join(parts))


def render_denied(message: str) -> bytes:
    """The access-denied page (``message`` is escaped here)."""
    return _doc("Access Denied", '<h1>Access Denied</h1>'
                f'<p id="nb-denied" role="alert">{html.escape(message)}</p>')


def render_certificate_required(host: str, reason: str) -> bytes:
    """The mTLS page (401): this service admits only a client certificate
    issued by its CA; ``reason`` says what was wrong (escaped here)."""
    return _doc("Client certificate required",
                f"<h1>Client certificate required</h1>"
                f'<p id="nb-cert" role="alert">{html.escape(host)} accepts only a client '
                "certificate issued by its certificate authority and registered for a user.</p>"
                f'<p class="err" id="nb-cert-reason">{html.escape(reason)}</p>'
                '<p class="note">Install the certificate your administrator issued for you '
                "in your browser or client and try again.</p>")


def send_html(request: Any, status: int, body: bytes) -> None:
    """Write one of these pages as the whole response."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", CSP.encode())
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"same-origin")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def send_plain(request: Any, code: int, body: bytes) -> None:
    """A short plain-text answer as the whole response (refusals, plain
    policy statuses)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
