"""``nbgateway-admin services identity|balance|auth|show`` against a recording client.

These commands read a service and PUT it back whole (PUT is a full replace):
the body must carry every request field the service answer has, with only
the command's change applied, and never the answer-only fields (id, meta).
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest

from nbgateway.management.cli import _services
from nbgateway.management.cli._client import CliError

SERVICE: dict[str, Any] = {
    "id": "svc1", "name": "app", "domain": "app.example.com", "mode": "http",
    "enabled": True, "pass_host_header": False, "private": False,
    "targets": [{"target_type": "cluster", "target_id": "example.com", "protocol": "http",
                 "host": "10.0.0.5", "port": 8080, "path": "/",
                 "options": {"upstream_protocol": "h2"}}],
    "auth": {"header_auths": [{"enabled": True, "header": "X-Key", "value": ""}]},
    "assertion": "off", "max_session_age_seconds": 0,
    "meta": {"status": "active", "status_message": "serving"},
}
REQUEST_FIELDS = {k: v for k, v in SERVICE.items() if k not in ("id", "meta")}


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def get(self, path: str) -> Any:
        self.calls.append(("GET", path, None))
        return [dict(SERVICE)]

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PUT", path, body))
        return {**SERVICE, **body}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        return dict(SERVICE)


def args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"json": False, "ref": "app.example.com", **kw})


def put_body(client: RecordingClient) -> dict[str, Any]:
    puts = [c for c in client.calls if c[0] == "PUT"]
    assert len(puts) == 1
    assert puts[0][1] == "/reverse-proxies/services/svc1"
    return puts[0][2]


def test_identity_sends_the_service_back_with_the_assertion_changed() -> None:
    client, out = RecordingClient(), io.StringIO()
    _services.services_identity(client, args(assertion="on", max_session_age=3600,
                                             rotate_key=False), out)
    assert put_body(client) == {**REQUEST_FIELDS, "assertion": "on",
                                "max_session_age_seconds": 3600}
    assert out.getvalue() == "app.example.com: assertion on, session 3600 s\n"


def test_identity_rotate_only_posts_the_rotation() -> None:
    client, out = RecordingClient(), io.StringIO()
    _services.services_identity(client, args(assertion=None, max_session_age=None,
                                             rotate_key=True), out)
    assert [c[:2] for c in client.calls] == [
        ("GET", "/reverse-proxies/services"),
        ("POST", "/reverse-proxies/services/svc1/assertion-key/rotate")]
    assert out.getvalue().endswith("signing key rotated\n")


def test_balance_sends_load_balancing_and_keeps_the_rest() -> None:
    client, out = RecordingClient(), io.StringIO()
    _services.services_balance(client, args(
        reset=False, policy="least_conn", max_failures=None, backoff=5, max_backoff=None,
        health_path="/healthz", health_interval=None, health_timeout=None,
        health_status=None, no_health_check=False), out)
    assert put_body(client) == {**REQUEST_FIELDS, "load_balancing": {
        "policy": "least_conn", "backoff_seconds": 5, "health_check": {"path": "/healthz"}}}
    assert out.getvalue() == (
        "app.example.com: least_conn, eject after 3 failures, back-off 5-300 s, health "
        "check GET /healthz every 10 s; targets per path: / x1\n")


def test_auth_adds_a_password_and_keeps_the_header_auth() -> None:
    client, out = RecordingClient(), io.StringIO()
    _services.services_auth(client, args(
        password="hunter2", clear_password=False, pin=None, clear_pin=False, header=None,
        clear_header=None, sso=None), out)
    assert put_body(client) == {**REQUEST_FIELDS, "auth": {
        "header_auths": [{"enabled": True, "header": "X-Key", "value": ""}],
        "password_auth": {"enabled": True, "password": "hunter2"}}}
    assert out.getvalue() == "app.example.com: password, header X-Key\n"


def test_show_prints_status_message_and_targets() -> None:
    client, out = RecordingClient(), io.StringIO()
    _services.services_show(client, args(), out)
    text = out.getvalue()
    header, row = text.splitlines()[:2]
    assert header.split()[-1] == "STATUS" and row.split()[-1] == "active"  # from meta
    assert "status message: serving\n" in text
    assert text.endswith("target  cluster example.com -> http://10.0.0.5:8080/ (HTTP/2)\n")


def test_an_unknown_service_is_named_in_the_error() -> None:
    with pytest.raises(CliError, match="service 'nope' not found"):
        _services.services_show(RecordingClient(), args(ref="nope"), io.StringIO())
