"""Identity and forwarding headers in any spelling (issue 11.3): the pure
header preparation compares names as CGI/WSGI upstreams do."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import (
    drop_underscore_headers,
    header_key,
    is_protected,
    prepare_upstream_headers,
)
from nbgateway.routes.identity import Identity

SPOOFS = {
    "X_NetBird_User": "mallory",
    "X-NetBird_User": "mallory",
    "x_netbird_groups": "admins",
    "X-NETBIRD-GROUPS": "admins",
    "X-NetBird-Anything": "x",
    "X_Forwarded_For": "10.9.9.9",
    "X-Forwarded_Host": "evil",
    "x_forwarded_proto": "https",
    "X_Forwarded_Port": "1",
    "X_Real_IP": "10.9.9.9",
    "Forwarded": "for=10.9.9.9",
}


def _inbound(extra: dict[str, str]) -> Headers:
    h = Headers()
    for name, value in extra.items():
        h.addRawHeader(name.encode(), value.encode())
    return h


def _cgi(headers: Headers) -> dict[str, str]:
    env: dict[str, list[str]] = {}
    for name, values in headers.getAllRawHeaders():
        env.setdefault("HTTP_" + name.decode().upper().replace("-", "_"), []).extend(
            v.decode() for v in values)
    return {k: ",".join(v) for k, v in env.items()}


def test_header_key_and_protection():
    assert header_key(b"X_NetBird_User") == header_key("x-netbird-user")
    assert is_protected("X_Real_IP") and is_protected(b"x-netbird-whatever")
    assert not is_protected("X-Custom_Thing")


def test_no_spelling_reaches_the_upstream_and_stamped_values_stand_alone():
    out = prepare_upstream_headers(
        _inbound({**SPOOFS, "Host": "app.example"}), host_header="app.example",
        target_netloc="10.0.0.5:80", pass_host_header=False,
        identity=Identity("u1", "alice@example.com", ("g1",), ("devs",)),
        client_ip="100.64.0.10", over_tls=False)
    env = _cgi(out)
    assert env["HTTP_X_NETBIRD_USER"] == "alice@example.com"
    assert env["HTTP_X_NETBIRD_GROUPS"] == "devs"
    assert "HTTP_X_NETBIRD_ANYTHING" not in env
    assert env["HTTP_X_FORWARDED_FOR"] == "100.64.0.10"
    assert env["HTTP_X_REAL_IP"] == "100.64.0.10"
    assert env["HTTP_X_FORWARDED_HOST"] == "app.example"
    assert env["HTTP_X_FORWARDED_PROTO"] == "http"
    assert env["HTTP_X_FORWARDED_PORT"] == "80"
    assert "HTTP_FORWARDED" not in env


def test_without_identity_no_identity_header_in_any_spelling():
    out = prepare_upstream_headers(
        _inbound(SPOOFS), host_header="app.example", target_netloc="u:80",
        pass_host_header=False, client_ip="203.0.113.9", over_tls=True)
    assert not [n for n, _ in out.getAllRawHeaders() if b"netbird" in n.lower()]


def test_header_auth_credentials_removed_in_any_spelling():
    out = prepare_upstream_headers(
        _inbound({"X_Api_Key": "secret", "x-api-key": "secret2"}), host_header="a",
        target_netloc="u:80", pass_host_header=False, header_auth_names=("X-Api-Key",),
        client_ip="1.2.3.4", over_tls=False)
    assert "HTTP_X_API_KEY" not in _cgi(out)


def test_upgrade_requests_get_the_same_stripping():
    inbound = _inbound({**SPOOFS, "Upgrade": "websocket", "Connection": "Upgrade"})
    out = prepare_upstream_headers(
        inbound, host_header="a", target_netloc="u:80", pass_host_header=False,
        client_ip="1.2.3.4", over_tls=False, keep_upgrade=True)
    env = _cgi(out)
    assert env["HTTP_UPGRADE"] == "websocket"
    assert "HTTP_X_NETBIRD_USER" not in env and env["HTTP_X_REAL_IP"] == "1.2.3.4"


def test_drop_underscore_headers_default_and_allowed():
    h = _inbound({"X_Custom": "1", "X_NetBird_User": "m", "X-Fine": "2"})
    assert drop_underscore_headers(h) == 2
    assert [n.lower() for n, _ in h.getAllRawHeaders()] == [b"x-fine"]
    h = _inbound({"X_Custom": "1", "X_NetBird_User": "m", "X-Fine": "2"})
    assert drop_underscore_headers(h, allow=True) == 1
    assert sorted(n.lower() for n, _ in h.getAllRawHeaders()) == [b"x-fine", b"x_custom"]
