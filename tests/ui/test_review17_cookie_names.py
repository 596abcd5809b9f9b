"""Review 17 (sec17), finding F3 in-process: the dashboard's cookies against a
host beside the management that sets cookies for the parent domain
(``Domain=example.com; Path=/``), which the browser then sends along with
the management's own (after them: shorter path).

* Over TLS the cookies are named ``__Host-nbgw_ui`` / ``__Host-nbgw_ui_sso``
  (``Secure; Path=/``, no ``Domain``): a browser takes a ``__Host-`` cookie
  only from the host itself, so a sibling cannot plant one; a plain
  ``nbgw_ui_sso`` planted by a sibling binds nothing.  On main a sibling
  plants ``nbgw_ui_sso=<binding of a sign-in the attacker started>`` and
  sends the victim to the callback with the attacker's code and state: the
  victim's browser is signed in to the dashboard as the attacker (login
  CSRF), and from then on acts in the attacker's account.
* Over plain HTTP (no prefix possible) a request carrying the session
  cookie twice acts in no session; on main the last value (the sibling's)
  is the session.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from nbgateway.management.api.framework import Identity
from nbgateway.management.ui import UiResource
from nbgateway.management.ui.bridge import ApiBridge


class Request(DummyRequest):
    def __init__(self, path: bytes, query: dict[bytes, list[bytes]] | None = None,
                 cookie: str = "", secure: bool = False):
        super().__init__([s for s in path.split(b"/")[2:]])
        self.path = path
        self.args = dict(query or {})
        if cookie:
            self.requestHeaders.setRawHeaders(b"cookie", [cookie.encode()])
        self._secure = secure
        self._disconnected = False

    def getCookie(self, key: bytes) -> bytes | None:  # twisted.web's rule: the last value
        found = None
        for line in self.requestHeaders.getRawHeaders(b"cookie") or ():
            for part in line.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == key:
                    found = v
        return found

    def isSecure(self) -> bool:
        return self._secure


class InlinePool:
    """A thread pool that runs the work at once (deferToThreadPool's API)."""

    def callInThreadWithCallback(self, on_result, f, *a, **kw) -> None:
        on_result(True, f(*a, **kw))


class Reactor(Clock):
    def callFromThread(self, f, *a, **kw) -> None:
        f(*a, **kw)


class FakeSSO:
    """The dashboard SSO with the provider's answer fixed: the code and state
    are the attacker's own sign-in."""

    def finish(self, code: str, state: str) -> str:
        assert code == "attackers-code"
        return "sso-user:u-attacker"

    def identity(self, token: str) -> Identity | None:
        return Identity(account_id="acct-attacker", user_id="u-attacker", role="admin")


def _ui(authenticate: Any = lambda token: None) -> UiResource:
    return UiResource(ApiBridge([], {}, authenticate), threadpool=InlinePool(),
                      reactor=Reactor(), sso=FakeSSO())  # type: ignore[arg-type]


def _render(ui: UiResource, req: Request) -> bytes:
    """The whole body: what render returned, else what it wrote."""
    out = ui.render(req)
    return out if isinstance(out, bytes) else b"".join(req.written)


def _set_cookies(req: Request) -> list[str]:
    return req.responseHeaders.getRawHeaders("set-cookie") or []


def test_over_tls_the_session_cookie_is_host_prefixed():
    ui = _ui()
    req = Request(b"/ui/login", secure=True)
    ui.render(req)
    (cookie,) = _set_cookies(req)
    parts = [p.strip() for p in cookie.split(";")]
    # main: "nbgw_ui=...; Path=/ui/; ...; Secure" -- settable by any sibling host
    assert parts[0].startswith("__Host-nbgw_ui=")
    assert "Path=/" in parts and "Secure" in parts
    assert not any(p.lower().startswith("domain=") for p in parts)


def test_a_planted_sso_binding_signs_no_one_in_over_tls():
    ui = _ui()
    # the attacker started a sign-in (its binding and state are pending here)
    ui._sso_pending["attackers-binding"] = "attackers-state"
    # a sibling host planted the binding cookie in the victim's browser
    req = Request(b"/ui/sso/callback",
                  {b"code": [b"attackers-code"], b"state": [b"attackers-state"]},
                  cookie="nbgw_ui_sso=attackers-binding", secure=True)
    body = _render(ui, req)
    # main: 200 "Signed in" with a fresh session of the attacker's user
    assert req.responseCode == 403 and b"not started here" in body
    assert b"Signed in" not in body


def test_a_session_cookie_sent_twice_acts_in_no_session():
    seen: list[str] = []

    def authenticate(token: str) -> Identity:
        seen.append(token)
        return Identity(account_id="acct-" + token, user_id="u-" + token, role="admin")

    ui = _ui(authenticate)
    victim = ui.sessions.sign_in(None, "victim-token", owner="acct-victim")
    attacker = ui.sessions.sign_in(None, "attacker-token", owner="acct-attacker")
    req = Request(b"/ui/groups", cookie=f"nbgw_ui={victim.sid}; nbgw_ui={attacker.sid}")
    ui.render(req)
    # main: the page runs with the attacker's session (the last value)
    assert "attacker-token" not in seen
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders("location") == ["/ui/login"]


def test_one_session_cookie_still_works():
    """The other side: the ordinary case is unchanged (plain HTTP)."""
    ui = _ui()
    victim = ui.sessions.sign_in(None, "victim-token", owner="acct-victim")
    req = Request(b"/ui/login", cookie=f"nbgw_ui={victim.sid}")
    body = _render(ui, req)
    assert req.responseCode == 200  # the sign-in form, with the session's CSRF token
    assert victim.csrf.encode() in body
