"""``nbgateway-admin services auth`` against a live ``twistd nbmanagement``:
password, PIN and header auth set and cleared, secrets hashed in the store
and never printed or returned, a secret read from stdin."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from .apiserver import running_server
from .test_cli import CLUSTER, ok, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def _svc(server, domain):
    return json.loads(ok(server, "--json", "services", "create", "--domain", domain,
                         "--target", f"type=cluster,id={CLUSTER},host=10.0.0.5,port=8080"))


def test_set_and_clear_operator_auth(server, monkeypatch):
    zone = f"auth-{uuid.uuid4().hex[:6]}.test"
    ok(server, "domains", "create", zone, CLUSTER)
    domain = f"app.{zone}"
    _svc(server, domain)
    out = ok(server, "services", "auth", domain, "--password", "correct horse", "--pin",
             "2468", "--header", "X-Api-Key=k3y")
    assert out == f"{domain}: password, pin, header X-Api-Key\n"
    shown = ok(server, "services", "show", domain, "--json")
    for secret in ("correct horse", "2468", "k3y"):
        assert secret not in shown
    auth = json.loads(shown)["auth"]
    assert auth["password_auth"] == {"enabled": True, "password": ""}
    assert auth["header_auths"] == [{"enabled": True, "header": "X-Api-Key", "value": ""}]
    # changing one method keeps the other hashes; a secret from stdin
    monkeypatch.setattr("sys.stdin", io.StringIO("new secret\n"))
    out = ok(server, "services", "auth", domain, "--clear-pin", "--password", "-")
    assert out == f"{domain}: password, header X-Api-Key\n"
    out = ok(server, "services", "auth", domain, "--clear-password", "--clear-header",
             "x-api-key")
    assert out == f"{domain}: no operator auth\n"
    code, _, err = run(server, "services", "auth", domain, "--pin", "12ab")
    assert code == 2 and "digits" in err
