"""Account creation by an instance admin, through real HTTP against ``twistd nbmanagement``.

The bootstrap admin is the instance admin: it creates accounts (each with its
own first admin and token, shown once), lists every account and a management-
wide proxy token; an account's own admin sees and touches only its account.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid

import pytest

from .apiserver import BACKENDS, running_server, uniq

ACCOUNTS = "/api/accounts"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def as_(token: str) -> str:
    return f"Token {token}"


def assert_error(resp, status: int, fragment: str | None = None) -> None:
    assert resp.status == status, resp
    body = resp.json
    assert set(body) == {"message", "code"} and body["code"] == status, body
    if fragment is not None:
        assert fragment in body["message"], body


def create_account(server, name: str | None = None, **extra) -> dict:
    resp = server.post(ACCOUNTS, {"name": name or uniq("acct"), **extra})
    assert resp.status == 201, resp
    return resp.json


def test_instance_admin_creates_an_account_with_a_working_admin_token(server):
    created = create_account(server, "Tenant B", admin_email="b-admin@example.com")
    assert created["name"] == "Tenant B"
    assert created["id"] and created["id"] != "default"
    assert created["token"].startswith("nbp_")
    assert created["network_v4"] == "100.64.0.0/10"  # same overlay as every account
    token = created["token"]
    # the new admin is an owner of the new account, reading only its own data
    users = server.get("/api/users", auth=as_(token)).json
    assert [(u["id"], u["role"], u["email"]) for u in users] == [
        (created["admin_user_id"], "owner", "b-admin@example.com")]
    assert [a["id"] for a in server.get(ACCOUNTS, auth=as_(token)).json] == [created["id"]]
    groups = server.get("/api/groups", auth=as_(token)).json
    assert [g["name"] for g in groups] == ["All"]
    # the instance admin sees every account, the bootstrap one first
    listed = [a["id"] for a in server.ok("GET", ACCOUNTS)]
    assert listed[0] == "default" and created["id"] in listed
    assert server.ok("GET", f"{ACCOUNTS}/{created['id']}")["name"] == "Tenant B"
    # the token is shown once: nothing lists it again
    assert "token" not in server.ok("GET", f"{ACCOUNTS}/{created['id']}")


def test_tunnel_addresses_overlap_across_accounts(server):
    a = create_account(server)
    b = create_account(server)
    pa = server.post("/api/peers", {"name": "laptop"}, auth=as_(a["token"])).json
    pb = server.post("/api/peers", {"name": "laptop"}, auth=as_(b["token"])).json
    assert pa["ip"] == pb["ip"]  # each account allocates from its own 100.64.0.0/10
    assert pa["id"] != pb["id"]


def test_only_an_instance_admin_creates_or_deletes_accounts(server):
    b = create_account(server)
    assert_error(server.post(ACCOUNTS, {"name": "x"}, auth=as_(b["token"])), 403,
                 "instance admin")
    # an ordinary admin user of the bootstrap account is not an instance admin either
    other_admin = server.ok("POST", "/api/users", {"email": f"{uniq()}@example.com",
                                                   "role": "admin", "is_service_user": True})
    pat = server.ok("POST", f"/api/users/{other_admin['id']}/tokens",
                    {"name": "t", "expires_in": 1})["plain_token"]
    assert_error(server.post(ACCOUNTS, {"name": "x"}, auth=as_(pat)), 403)
    assert [a["id"] for a in server.get(ACCOUNTS, auth=as_(pat)).json] == ["default"]
    assert_error(server.delete(f"{ACCOUNTS}/{b['id']}", auth=as_(b["token"])), 403)
    assert_error(server.get(f"{ACCOUNTS}/default", auth=as_(b["token"])), 404,
                 "account not found")


def test_account_request_validation(server):
    assert_error(server.post(ACCOUNTS, {"name": "  "}), 422, "account name is required")
    assert_error(server.post(ACCOUNTS, {}), 422)
    assert_error(server.post(ACCOUNTS, {"name": 5}), 400)
    assert_error(server.post(ACCOUNTS, {"name": "x" * 300}), 422, "maximum length")
    assert_error(server.post(ACCOUNTS, {"name": "ok", "admin_email": "a\x00b"}), 400)


def test_delete_account_removes_everything_and_its_tokens(server):
    b = create_account(server)
    peer = server.post("/api/peers", {"name": "p"}, auth=as_(b["token"]))
    assert peer.status == 200, peer
    assert server.ok("DELETE", f"{ACCOUNTS}/{b['id']}") == {}
    assert_error(server.get(f"{ACCOUNTS}/{b['id']}"), 404)
    assert server.get("/api/peers", auth=as_(b["token"])).status == 401
    assert_error(server.delete(f"{ACCOUNTS}/default"), 400)
    assert_error(server.delete(f"{ACCOUNTS}/{b['id']}"), 404)


def test_global_proxy_token_is_instance_admin_only(server):
    b = create_account(server)
    resp = server.post("/api/reverse-proxies/proxy-tokens", {"name": "gw", "global": True},
                       auth=as_(b["token"]))
    assert_error(resp, 403)
    created = server.ok("POST", "/api/reverse-proxies/proxy-tokens",
                        {"name": "gw", "global": True})
    store = server.open_store()
    try:
        assert store.proxies.verify_token(created["plain_token"]).account_id is None
    finally:
        store.close()
    # a global token is not one of the account's tokens
    assert created["id"] not in {t["id"] for t in
                                 server.ok("GET", "/api/reverse-proxies/proxy-tokens")}


def test_other_accounts_objects_are_invisible(server):
    a = create_account(server)
    b = create_account(server)
    ta, tb = as_(a["token"]), as_(b["token"])
    grp = server.post("/api/groups", {"name": "devs"}, auth=ta).json
    peer = server.post("/api/peers", {"name": "pa", "groups": [grp["id"]]}, auth=ta).json
    for path in (f"/api/groups/{grp['id']}", f"/api/peers/{peer['id']}",
                 f"/api/users/{a['admin_user_id']}",
                 f"/api/peers/{peer['id']}/wireguard-config",
                 f"/api/peers/{peer['id']}/network-map"):
        assert server.get(path, auth=tb).status == 404, path
    assert server.put(f"/api/peers/{peer['id']}", {"name": "stolen"}, auth=tb).status == 404
    assert server.delete(f"/api/peers/{peer['id']}", auth=tb).status == 404
    assert server.get("/api/peers", auth=tb).json == []


def test_instance_admin_cannot_be_granted_through_the_users_api(server):
    # an unknown body field is ignored: the flag is never settable over REST
    resp = server.post("/api/users", {"email": f"{uniq()}@example.com", "role": "owner",
                                      "is_service_user": True, "instance_admin": True})
    assert resp.status in (200, 400), resp
    if resp.status == 200:
        uid = resp.json["id"]
        pat = server.ok("POST", f"/api/users/{uid}/tokens",
                        {"name": "t", "expires_in": 1})["plain_token"]
        assert_error(server.post(ACCOUNTS, {"name": "x"}, auth=as_(pat)), 403)
    # updating the bootstrap admin keeps it the instance admin
    me = server.ok("GET", "/api/users/admin")
    server.ok("PUT", "/api/users/admin", {"role": me["role"], "auto_groups": [],
                                          "is_blocked": False, "name": "operator"})
    assert create_account(server)["token"]
    # another account's owner updating itself stays an account admin
    b = create_account(server)
    resp = server.put(f"/api/users/{b['admin_user_id']}",
                      {"role": "owner", "auto_groups": [], "is_blocked": False},
                      auth=as_(b["token"]))
    assert resp.status == 200, resp
    assert_error(server.post(ACCOUNTS, {"name": "x"}, auth=as_(b["token"])), 403)


def test_writes_cannot_reference_another_accounts_objects(server):
    a, b = create_account(server), create_account(server)
    ta, tb = as_(a["token"]), as_(b["token"])
    tag = uuid.uuid4().hex[:6]
    grp_a = server.post("/api/groups", {"name": "devs"}, auth=ta).json
    peer_a = server.post("/api/peers", {"name": "pa", "groups": [grp_a["id"]]}, auth=ta).json
    assert server.post("/api/reverse-proxies/domains",
                       {"domain": f"b{tag}.test", "target_cluster": "cl.test"},
                       auth=tb).status == 200
    target = {"target_id": "cl.test", "target_type": "cluster", "protocol": "http",
              "host": "10.0.0.5", "port": 80, "enabled": True,
              "options": {"direct_upstream": True}}
    attempts = [
        ("POST", "/api/groups", {"name": "mine", "peers": [peer_a["id"]]}),
        ("POST", "/api/peers", {"name": "p", "groups": [grp_a["id"]]}),
        ("POST", "/api/peers", {"name": "p", "user_id": a["admin_user_id"]}),
        ("POST", "/api/users", {"email": "x@example.com", "role": "user",
                                "is_service_user": True, "auto_groups": [grp_a["id"]]}),
        ("POST", "/api/reverse-proxies/services",
         {"name": "s", "domain": f"s.b{tag}.test", "enabled": True, "private": True,
          "access_groups": [grp_a["id"]], "targets": [target]}),
        ("POST", "/api/reverse-proxies/services",
         {"name": "s", "domain": f"t.b{tag}.test", "enabled": True,
          "targets": [{**target, "target_type": "peer", "target_id": peer_a["id"]}]}),
    ]
    for method, path, body in attempts:
        resp = server.request(method, path, body, auth=tb)
        assert resp.status in (404, 422), (path, body, resp)
    # nothing of A changed
    assert server.get(f"/api/groups/{grp_a['id']}", auth=ta).json["peers_count"] == 1
