"""The UI's sans-IO session table and the cookie attributes of its adapter."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from nbgateway.management.ui.bridge import ApiBridge
from nbgateway.management.ui.resource import CSP, UiResource
from nbgateway.management.ui.sessions import SessionStore


def test_sessions_expire_when_idle_and_activity_extends_them():
    now = [0.0]
    s = SessionStore(lambda: now[0], signed_in_ttl=100, anonymous_ttl=10)
    anon = s.create_anonymous()
    signed = s.sign_in(None, "tok")
    now[0] = 9
    assert s.get(anon.sid) is anon
    now[0] = 18  # 9 s after the last use
    assert s.get(anon.sid) is anon
    now[0] = 29
    assert s.get(anon.sid) is None
    now[0] = 110
    assert s.get(signed.sid) is None
    assert len(s) == 0


def test_sign_in_replaces_the_anonymous_session_id_and_csrf():
    s = SessionStore(lambda: 0.0)
    anon = s.create_anonymous()
    signed = s.sign_in(anon, "tok")
    assert signed.sid != anon.sid and signed.csrf != anon.csrf
    assert s.get(anon.sid) is None and s.get(signed.sid).token == "tok"


def test_table_is_bounded_and_anonymous_floods_do_not_evict_signed_in():
    s = SessionStore(lambda: 0.0, max_signed_in=3, max_anonymous=2)
    signed = [s.sign_in(None, f"t{i}") for i in range(3)]
    for _ in range(50):
        s.create_anonymous()
    assert len(s) == 5
    assert all(s.get(x.sid) is not None for x in signed)
    s.get(signed[0].sid)  # most recently used now
    s.sign_in(None, "t3")  # evicts the least recently used signed-in session
    assert s.get(signed[1].sid) is None and s.get(signed[0].sid) is not None
    assert s.evicted == 49


def test_a_full_table_drops_expired_sessions_before_evicting_live_ones():
    now = [0.0]
    s = SessionStore(lambda: now[0], max_signed_in=2, signed_in_ttl=10)
    old = s.sign_in(None, "old")
    now[0] = 5
    live = s.sign_in(None, "live")
    now[0] = 12  # "old" has expired, "live" has not
    s.sign_in(None, "new")
    assert s.get(live.sid) is not None and s.get(old.sid) is None
    assert s.evicted == 0


def test_csrf_comparison():
    s = SessionStore(lambda: 0.0)
    a = s.create_anonymous()
    assert SessionStore.csrf_ok(a, a.csrf)
    assert not SessionStore.csrf_ok(a, "")
    assert not SessionStore.csrf_ok(a, None)
    assert not SessionStore.csrf_ok(None, a.csrf)
    assert not SessionStore.csrf_ok(a, a.csrf + "x")
    assert not SessionStore.csrf_ok(a, "\udcff")


class Request(DummyRequest):
    """DummyRequest with the cookie lookup of twisted.web's Request."""

    def __init__(self, path: bytes, secure: bool = False):
        super().__init__([s for s in path.split(b"/")[2:]])
        self.path = path
        self.cookies_in: dict[bytes, bytes] = {}
        self._secure = secure

    def getCookie(self, key: bytes) -> bytes | None:
        return self.cookies_in.get(key)

    def isSecure(self) -> bool:
        return self._secure


def _ui() -> UiResource:
    return UiResource(ApiBridge([], {}, lambda token: None), threadpool=None, reactor=Clock())


def test_cookie_is_secure_under_tls_and_never_names_the_token():
    ui = _ui()
    for secure in (True, False):
        req = Request(b"/ui/login", secure)
        body = ui.render(req)
        assert b'name="csrf"' in body
        cookie = req.responseHeaders.getRawHeaders("set-cookie")[0]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert ("Secure" in cookie) is secure
        assert req.responseHeaders.getRawHeaders("content-security-policy") == [CSP]


def test_malformed_cookie_and_unknown_static_file():
    ui = _ui()
    req = Request(b"/ui/static/x.js")
    assert ui.render(req) == b"not found\n" and req.responseCode == 404
    req = Request(b"/ui/")
    req.cookies_in[b"nbgw_ui"] = b"\xff" * 300
    ui.render(req)
    assert req.responseCode == 303
