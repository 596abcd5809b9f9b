"""Dashboard security and behaviour over HTTP against a real management process:
sessions, CSRF on every form, escaping of stored strings, the CSP on every
response, role-limited views, and validation messages taken from the REST API."""

from __future__ import annotations

import re
import urllib.error

import pytest

from tests.ui.harness import Management, UiClient

#: every form the UI serves, as (path, extra fields); ids are filled in by the test
FORMS = ["/ui/logout", "/ui/services", "/ui/services/{sid}", "/ui/services/{sid}/delete",
         "/ui/groups", "/ui/groups/{gid}/delete", "/ui/peers", "/ui/peers/{pid}/delete",
         "/ui/tokens", "/ui/tokens/{tid}/revoke", "/ui/login"]
PAGES = ["/ui/", "/ui/live", "/ui/live/fragment", "/ui/services", "/ui/services/new",
         "/ui/services/{sid}", "/ui/groups", "/ui/peers", "/ui/peers/{pid}",
         "/ui/peers/{pid}/config", "/ui/tokens", "/ui/access-log", "/ui/accounts"]
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'")


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    try:
        group = m.rest("POST", "/groups", {"name": "<script>alert(1)</script>"})
        peer = m.rest("POST", "/peers", {"name": '"><img src=x onerror=alert(1)>',
                                         "groups": [group["id"]]})
        tok = m.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "<b>gw</b>"})
        m.ids = {"sid": "no-such-service",  # a service needs a gateway (browser tests)
                  "gid": group["id"], "pid": peer["id"], "tid": tok["id"]}
        yield m
    finally:
        m.stop()


@pytest.fixture
def admin(mgmt):
    c = UiClient(mgmt.base)
    c.sign_in(mgmt.admin)
    return c


def test_no_page_renders_without_a_session(mgmt):
    c = UiClient(mgmt.base)
    for page in PAGES:
        status, headers, text = c.get(page.format(**mgmt.ids))
        assert status == 303 and headers["Location"] == "/ui/login", (page, status)
        assert text == ""
    # a made-up cookie is no session either
    c.jar.clear()
    status, headers, _ = UiClient(mgmt.base).request("GET", "/ui/services")
    assert status == 303


def test_every_form_refuses_missing_or_wrong_csrf(mgmt, admin):
    groups_before = len(mgmt.rest("GET", "/groups"))
    for form in FORMS:
        path = form.format(**mgmt.ids)
        for fields in ({"name": "x", "token": mgmt.admin},
                       {"name": "x", "token": mgmt.admin, "csrf": "wrong"}):
            status, _h, text = admin.post(path, fields)
            assert status == 403, (path, fields.get("csrf"), status, text[:200])
            assert "CSRF" in text
    # nothing was changed by the refused posts
    assert len(mgmt.rest("GET", "/groups")) == groups_before
    assert not any(t.get("revoked") for t in mgmt.rest("GET", "/reverse-proxies/proxy-tokens"))
    # and the session still works (logout was refused too)
    assert admin.get("/ui/")[0] == 200


def test_a_csrf_token_from_another_session_is_refused(mgmt, admin):
    other = UiClient(mgmt.base)
    other.sign_in(mgmt.admin)
    foreign = other.csrf("/ui/groups")
    status, _h, _t = admin.post("/ui/groups", {"csrf": foreign, "name": "sneaky"})
    assert status == 403
    assert all(g["name"] != "sneaky" for g in mgmt.rest("GET", "/groups"))


def test_wrong_token_is_refused_and_session_cookie_is_strict(mgmt):
    c = UiClient(mgmt.base)
    csrf = c.csrf("/ui/login")
    status, _h, text = c.post("/ui/login", {"csrf": csrf, "token": "nbp_wrong"})
    assert status == 401 and "not accepted" in text
    status, headers, _ = c.post("/ui/login", {"csrf": c.csrf("/ui/login"),
                                             "token": mgmt.admin})
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; Secure is set under TLS
    assert mgmt.admin not in cookie


def test_csp_and_security_headers_on_every_response(mgmt, admin):
    anon = UiClient(mgmt.base)
    answers = [anon.get("/ui/login"), anon.get("/ui/"), anon.get("/ui/static/ui.js"),
               anon.get("/ui/nope"), anon.post("/ui/groups", {})]
    answers += [admin.get(p.format(**mgmt.ids)) for p in PAGES]
    for status, headers, _ in answers:
        assert headers["Content-Security-Policy"].startswith(CSP), status
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_stored_strings_are_escaped_everywhere(mgmt, admin):
    for page in PAGES:
        status, _h, text = admin.get(page.format(**mgmt.ids))
        assert status == (404 if "{sid}" in page else 200), (page, status, text[:300])
        if page.endswith("/config"):
            continue  # a text/plain download, not HTML
        assert "<script>alert" not in text, page
        assert "<img src=x" not in text and "<b>gw</b>" not in text, page
        scripts = re.findall(r"<script\b[^>]*>", text)
        assert scripts in ([], ['<script src="/ui/static/ui.js" defer>'])
    groups = admin.get("/ui/groups")[2]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in groups
    peers = admin.get("/ui/peers")[2]
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in peers
    assert "&lt;b&gt;gw&lt;/b&gt;" in admin.get("/ui/tokens")[2]
    # the access log's group picker lists the group by its (escaped) name
    assert ">&lt;script&gt;alert(1)&lt;/script&gt;</option>" in admin.get("/ui/access-log")[2]


def test_private_service_without_groups_shows_the_api_422_message(mgmt, admin):
    form = {"csrf": admin.csrf("/ui/services/new"), "name": "priv",
            "domain": "priv.example.test", "enabled": "on", "private": "on",
            "target_type": "peer", "target_id": mgmt.ids["pid"], "protocol": "http",
            "host": "", "port": "8080", "mode": "http"}
    status, _h, text = admin.post("/ui/services", form)
    assert status == 422
    assert "private services require at least one access group" in text
    assert 'value="priv.example.test"' in text  # the form keeps what was typed
    # with a group the access check passes; without a connected gateway the
    # API's next answer (no cluster for the domain) is shown the same way
    form["access_groups"] = mgmt.ids["gid"]
    status, _h, text = admin.post("/ui/services", form)
    assert status == 412, text[:500]
    assert "private services require" not in text
    assert re.search(r'<p class="error" role="alert" id="form-error">[^<]+</p>', text)


def test_access_log_filters_go_through_the_api_checks(mgmt, admin):
    status, _h, text = admin.get("/ui/access-log?start_date=yesterday")
    assert status == 422
    assert "invalid start_date: expected an rfc 3339 timestamp" in text  # the API's text
    status, _h, text = admin.get("/ui/access-log?status=maybe&user_id=%3Cscript%3E")
    assert status == 422 and "invalid status" in text
    assert 'value="&lt;script&gt;"' in text
    # the group filter is the API's: an unknown group is its 422, here and over REST
    status, _h, text = admin.get("/ui/access-log?group_id=no-such-group")
    assert status == 422 and "unknown group_id" in text
    with pytest.raises(urllib.error.HTTPError) as refused:
        mgmt.rest("GET", "/events/proxy?group_id=no-such-group")
    assert refused.value.code == 422


def test_group_peer_token_round_trip(mgmt, admin):
    csrf = admin.csrf("/ui/groups")
    assert admin.post("/ui/groups", {"csrf": csrf, "name": "ops"})[0] == 303
    gid = next(g for g in mgmt.rest("GET", "/groups") if g["name"] == "ops")["id"]
    status, headers, _ = admin.post("/ui/peers", {"csrf": csrf, "name": "laptop",
                                                  "groups": gid})
    assert status == 303
    page = headers["Location"]
    status, _h, text = admin.get(page)
    assert status == 200 and "[Interface]" in text and 'src="data:image/png;base64,' in text
    status, headers, conf = admin.get(page + "/config")
    assert status == 200 and "[Interface]" in conf
    assert headers["Content-Disposition"] == 'attachment; filename="laptop.conf"'
    # a proxy token is shown once, then only its name
    status, _h, _ = admin.post("/ui/tokens", {"csrf": csrf, "name": "edge"})
    assert status == 303
    first = admin.get("/ui/tokens")[2]
    plain = re.search(r'<pre id="plain-token">([^<]+)</pre>', first).group(1)
    assert plain and plain not in admin.get("/ui/tokens")[2]
    tid = next(t for t in mgmt.rest("GET", "/reverse-proxies/proxy-tokens")
           if t["name"] == "edge")["id"]
    assert admin.post(f"/ui/tokens/{tid}/revoke", {"csrf": csrf})[0] == 303
    assert next(t for t in mgmt.rest("GET", "/reverse-proxies/proxy-tokens")
            if t["id"] == tid)["revoked"]


def test_a_user_role_token_gets_what_the_rest_api_gives_it(mgmt):
    user = mgmt.rest("POST", "/users", {"email": "u@example.test", "name": "u", "role": "user",
                                        "is_service_user": True})
    pat = mgmt.rest("POST", f"/users/{user['id']}/tokens", {"name": "ui", "expires_in": 1})
    c = UiClient(mgmt.base)
    c.sign_in(pat["plain_token"])
    text = c.get("/ui/services")[2]
    assert "user has no permission to perform this action" in text
    assert "app.example.test" not in text
    assert "onerror" not in c.get("/ui/peers")[2]  # owns no peer: sees none
    status, _h, text = c.post("/ui/groups", {"csrf": c.csrf("/ui/groups"), "name": "mine"})
    assert status == 403 and "no permission" in text
    assert all(g["name"] != "mine" for g in mgmt.rest("GET", "/groups"))


def test_sign_out_ends_the_session_and_a_revoked_token_signs_out(mgmt):
    c = UiClient(mgmt.base)
    c.sign_in(mgmt.admin)
    assert c.post("/ui/logout", {"csrf": c.csrf()})[0] == 303
    assert c.get("/ui/")[0] == 303
    user = mgmt.rest("POST", "/users", {"email": "a@example.test", "name": "a", "role": "admin",
                                        "is_service_user": True})
    pat = mgmt.rest("POST", f"/users/{user['id']}/tokens", {"name": "ui", "expires_in": 1})
    c = UiClient(mgmt.base)
    c.sign_in(pat["plain_token"])
    assert c.get("/ui/")[0] == 200
    mgmt.rest("DELETE", f"/users/{user['id']}/tokens/{pat['personal_access_token']['id']}")
    status, headers, _ = c.get("/ui/")
    assert status == 303 and headers["Location"] == "/ui/login"


def test_api_paths_are_unchanged(mgmt):
    c = UiClient(mgmt.base)
    status, _h, text = c.get("/api/groups")
    assert status == 401 and '"code":401' in text
    status, _h, text = c.get("/")
    assert status == 404 and '"code":404' in text


def test_a_refused_delete_or_revoke_shows_the_list_page_with_the_api_message(mgmt, admin):
    """Group/peer delete and token revoke: a refusal renders the list page with
    the REST API's status and message (no redirect); unknown ids are 404."""
    csrf = admin.csrf("/ui/groups")
    for path, page, message in (
            ("/ui/groups/no-such-group/delete", "/ui/groups", "group not found"),
            ("/ui/peers/no-such-peer/delete", "/ui/peers", "peer not found"),
            ("/ui/tokens/no-such-token/revoke", "/ui/tokens", "token not found")):
        status, headers, text = admin.post(path, {"csrf": csrf})
        assert status == 404 and "Location" not in headers, (path, status)
        assert f'id="form-error">{message}' in text, path
        assert f'action="{page}"' in text, path  # the list page's own form



def test_page_router_matches_like_the_rest_router_and_refuses_control_characters():
    """The dashboard's router (resource._match) and the REST routes
    (framework.match_segments) match a template alike; the dashboard's also
    refuses a parameter holding a control character (raw path bytes)."""
    from nbgateway.management.api.framework import match_segments
    from nbgateway.management.ui.resource import _match

    pattern = ("peers", "{peerId}", "config")
    for segments, params in ((("peers", "p1", "config"), {"peerId": "p1"}),
                             (("peers", "", "config"), None),
                             (("peers", "p1"), None),
                             (("peers", "p1", "conf"), None),
                             (("groups", "p1", "config"), None)):
        assert match_segments(pattern, segments) == params, segments
        assert _match(pattern, segments) == params, segments
    assert match_segments(pattern, ("peers", "a\x01b", "config")) == {"peerId": "a\x01b"}
    assert _match(pattern, ("peers", "a\x01b", "config")) is None
    assert _match(pattern, ("peers", "a\x1f", "config")) is None
    assert _match(pattern, ("peers", "a b~\x7f", "config")) == {"peerId": "a b~\x7f"}
