"""Review 13: secrets never reach the management's log, over real HTTP
against ``twistd nbmanagement`` (SQLite and PostgreSQL).

The log is the operator's (one file for every account), so a tenant's
secret there is a secret shown to someone else.  After an account is
created, and its admin mints a personal access token, a proxy token and a
service (machine-client) token, uses them, signs in to the dashboard with a
token and fails with a wrong one, and the instance admin lists everything:
none of the plain tokens (nor their secrets) is anywhere in the log; the
answers of another account never carry them either.
"""

from __future__ import annotations

import pytest

from tests.ui.harness import UiClient

from .apiserver import BACKENDS, new_account, server_with_cluster, uniq

CLUSTER = "cl.review13log.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with server_with_cluster(tmp_path_factory, request.param, CLUSTER) as srv:
        yield srv


def test_no_plain_token_in_the_log_or_in_another_accounts_answers(server) -> None:
    owner = new_account(server)
    other = new_account(server)
    me = server.get("/api/users", auth=owner).json[0]["id"]
    pat = server.post(f"/api/users/{me}/tokens", {"name": "t", "expires_in": 3}, auth=owner)
    assert pat.status == 200, pat
    proxy = server.post("/api/reverse-proxies/proxy-tokens", {"name": "gw"}, auth=owner)
    svc = server.post(SERVICES, {
        "name": uniq("s"), "domain": f"{uniq('app')}.{CLUSTER}", "enabled": True,
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]}, auth=owner)
    assert proxy.status == 200 and svc.status == 200, (proxy, svc)
    machine = server.post(f"{SERVICES}/{svc.json['id']}/tokens", {"name": "m"}, auth=owner)
    assert machine.status == 201, machine
    secrets = [owner.removeprefix("Token "), pat.json["plain_token"],
               proxy.json["plain_token"], machine.json["secret"], machine.json["bearer"]]
    # use them, and fail with near misses
    assert server.get("/api/peers", auth=f"Token {pat.json['plain_token']}").status == 200
    wrong = pat.json["plain_token"][:-1] + ("A" if pat.json["plain_token"][-1] != "A" else "B")
    assert server.get("/api/peers", auth=f"Token {wrong}").status == 401
    secrets.append(wrong)
    ui = UiClient(server.url)
    ui.sign_in(pat.json["plain_token"])
    bad = UiClient(server.url)
    csrf = bad.csrf("/ui/login")
    assert bad.post("/ui/login", {"csrf": csrf, "token": wrong})[0] == 401
    # the other account and the instance admin read everything they can
    seen = b""
    for auth in (other, True):
        for path in ("/api/users", "/api/peers", SERVICES, "/api/reverse-proxies/proxy-tokens",
                     "/api/reverse-proxies/proxies", "/api/accounts", "/api/events/proxy",
                     "/api/reverse-proxies/service-status", "/api/groups"):
            seen += server.get(path, auth=auth).data
    for secret in secrets:
        assert secret.encode() not in seen
    log = server.log()  # the last part of the log
    with open(server.log_path, "rb") as f:
        full = f.read()
    assert log and full
    for secret in secrets:
        assert secret.encode() not in full, "a plain token is in the management log"
