"""The site's Host -> routing-key memo (nbgateway.http.site._host_and_domain):
the same (host, domain key) as computing it each time, for the spellings the
front door routes alike, and bounded in entries and value length."""

from __future__ import annotations

from nbgateway.http import site
from nbgateway.routes.hosts import domain_key, host_without_port

SPELLINGS = [b"app.example", b"APP.Example.", b"app.example:443", b"app.example.:8080",
             b" app.example ", b"[fd00::1]:80", b"[fd00::1]", b"fd00::1", b"", b"a:b:c",
             b"caf\xe9.example"]


def test_same_answer_as_computing_it():
    for _ in range(2):  # computed, then from the memo
        for raw in SPELLINGS:
            host = raw.decode("latin-1")
            assert site._host_and_domain(raw) == (host, domain_key(host_without_port(host)))
    assert site._host_and_domain("App.Example:1") == ("App.Example:1", "app.example")


def test_bounded():
    site._HOSTS.clear()
    for i in range(site._HOSTS_MAX * 2 + 5):
        site._host_and_domain(b"h%d.example" % i)
        assert len(site._HOSTS) <= site._HOSTS_MAX
    long_host = b"x" * (site._HOST_CACHED_LEN + 1)
    assert site._host_and_domain(long_host)[1] == long_host.decode()
    assert long_host not in site._HOSTS


def test_session_cookie_memo_is_what_addRawHeader_sets_and_bounded():
    from twisted.web.http_headers import Headers

    from nbgateway.auth.tunnel import session_cookie

    site._COOKIES.clear()
    for token, age in (("tok", 0), ("tok", 3600), ("t\r\nX-Evil: 1", 60), ("", 0)):
        h = Headers()
        h.addRawHeader(b"set-cookie", session_cookie(token, age).encode("latin-1"))
        expected = h.getRawHeaders(b"set-cookie")[0]
        assert site._session_cookie(token, age) == expected  # computed
        assert site._session_cookie(token, age) == expected  # memo
        assert b"\r" not in expected and b"\n" not in expected
    for i in range(site._COOKIES_MAX + 10):
        site._session_cookie(f"t{i}", 60)
        assert len(site._COOKIES) <= site._COOKIES_MAX
    site._session_cookie("x" * 2000, 60)
    assert ("x" * 2000, 60) not in site._COOKIES
