"""Tenant isolation, over real HTTP against ``twistd nbmanagement`` (SQLite and PostgreSQL).

Every account is hostile to every other: what one account's admin may claim or
mint must never reach another account's hostnames or users.

* **Hostnames.** A custom domain belongs to one account: another account can
  register neither the same name, nor a name under it (``x.a.test``,
  ``app.a.test``), nor a parent covering it (``a.test`` for ``app.a.test``,
  ``test``), nor a wildcard spelling; and it can create no service whose domain
  is the domain or lies under it, whatever cluster its own gateway announces.
  A registration covering another account's existing service is refused too.
* **The instance admin.** Its tokens reach every account: another admin of
  its account cannot mint or delete its tokens, demote, block or delete it.
"""

from __future__ import annotations

import uuid

import pytest

from nbgateway.management.model import ProxyRecord

from .apiserver import BACKENDS, account_id, new_account, running_server, uniq

CLUSTER = "cl.isolation.test"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def domain(server, auth: str, name: str, cluster: str = CLUSTER):
    return server.post("/api/reverse-proxies/domains",
                       {"domain": name, "target_cluster": cluster}, auth=auth)


def service(server, auth: str, name: str):
    return server.post("/api/reverse-proxies/services", {
        "name": "s", "domain": name, "enabled": True,
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]}, auth=auth)


def test_another_accounts_domain_cannot_be_covered_or_claimed(server):
    a, b = new_account(server), new_account(server)
    apex = f"{uniq('d')}.test"
    assert domain(server, a, f"apps.{apex}").status == 200
    for name in (f"apps.{apex}", f"APPS.{apex}.", f"x.apps.{apex}", f"*.apps.{apex}",
                 apex, "test"):
        resp = domain(server, b, name)
        assert resp.status in (409, 422), (name, resp)
    assert [d for d in server.get("/api/reverse-proxies/domains", auth=b).json
            if d["type"] == "custom"] == []
    # the owning account may still register its own names beneath
    assert domain(server, a, f"eu.apps.{apex}").status == 200
    # no service of B under A's domain
    for name in (f"apps.{apex}", f"login.apps.{apex}"):
        assert service(server, b, name).status in (409, 412), name
    assert service(server, a, f"login.apps.{apex}").status == 200


def test_a_gateway_address_does_not_reach_under_another_accounts_domain(server):
    a, b = new_account(server), new_account(server)
    apex = f"{uniq('d')}.test"
    assert domain(server, a, f"apps.{apex}").status == 200
    # B's own gateway announces a cluster address that is A's domain's parent
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=apex,
            ip_address="127.0.0.1", account_id=account_id(server, b)))
    finally:
        store.close()
    assert service(server, b, f"other.{apex}").status == 200  # its own cluster's names
    resp = service(server, b, f"portal.apps.{apex}")
    assert resp.status == 409, resp
    assert "portal.apps." + apex not in {
        s["domain"] for s in server.get("/api/reverse-proxies/services", auth=b).json}


def test_a_domain_covering_another_accounts_service_is_refused(server):
    a, b = new_account(server), new_account(server)
    apex = f"{uniq('d')}.test"
    assert domain(server, a, f"apps.{apex}").status == 200
    assert service(server, a, f"web.apps.{apex}").status == 200
    store = server.open_store()
    try:  # B's gateway serves a cluster named like A's service's parent
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=f"b.{apex}",
            ip_address="127.0.0.1", account_id=account_id(server, b)))
    finally:
        store.close()
    assert service(server, b, f"x.b.{apex}").status == 200
    # A cannot now register b.<apex>: B's service lies under it
    assert domain(server, a, f"b.{apex}").status == 409


def test_an_account_admin_cannot_take_over_the_instance_admin(server):
    """Another admin of the operator's own account manages that account (its
    users' tokens included) but cannot mint a token for, demote, block or delete
    the instance admin: its powers reach every account."""
    ops = server.post("/api/users", {"email": f"{uniq()}@ops.test", "name": "ops",
                                     "role": "admin", "is_service_user": False}).json
    gen = server.post(f"/api/users/{ops['id']}/tokens", {"name": "t", "expires_in": 1}).json
    as_ops = f"Token {gen['plain_token']}"
    op = server.get("/api/users/admin").json
    mine = server.post("/api/users/admin/tokens", {"name": "keep", "expires_in": 1}).json
    attempts = [
        ("POST", "/api/users/admin/tokens", {"name": "stolen", "expires_in": 1}),
        ("PUT", "/api/users/admin", {"role": "user", "auto_groups": [], "is_blocked": False}),
        ("PUT", "/api/users/admin", {"role": op["role"], "auto_groups": [],
                                     "is_blocked": True}),
        ("DELETE", f"/api/users/admin/tokens/{mine['personal_access_token']['id']}", None),
        ("DELETE", "/api/users/admin", None),
    ]
    for method, path, body in attempts:
        resp = server.request(method, path, body, auth=as_ops)
        assert resp.status == 403, (method, path, resp)
    assert server.get("/api/users/admin").json == op
    names = [t["name"] for t in server.get("/api/users/admin/tokens").json]
    assert "stolen" not in names and "keep" in names
    assert server.post("/api/accounts", {"name": uniq("acct")}).status == 201
    # the rest of the account stays ops's to manage, tokens of other users included
    u = server.post("/api/users", {"email": f"{uniq()}@ops.test", "name": "eve",
                                   "role": "user", "is_service_user": False}, auth=as_ops).json
    resp = server.post(f"/api/users/{u['id']}/tokens", {"name": "t", "expires_in": 1},
                       auth=as_ops)
    assert resp.status == 200, resp
    # and the instance admin still manages itself
    resp = server.put("/api/users/admin", {"role": op["role"], "auto_groups": [],
                                           "is_blocked": False, "name": op["name"]})
    assert resp.status == 200, resp


def test_a_shared_clusters_names_cannot_be_claimed_by_one_account(server):
    a, b = new_account(server), new_account(server)
    shared = f"{uniq('eu')}.proxy.test"
    store = server.open_store()
    try:  # a gateway with a management-wide token serves every account
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=shared,
            ip_address="127.0.0.1"))
    finally:
        store.close()
    for name in (shared, "proxy.test", f"team.{shared}"):
        resp = domain(server, a, name, cluster=shared)
        assert resp.status == 409, (name, resp)
    # the shared names stay first come first served, one service at a time
    assert service(server, a, f"app.{shared}").status == 200
    assert service(server, b, f"web.{shared}").status == 200
    assert service(server, b, f"app.{shared}").status == 409


def test_another_accounts_gateway_address_claims_no_domain(server):
    """A BYOP gateway announces any cluster address it likes (``com`` even):
    that blocks no other account's custom domain, and the custom domain then
    holds its names against the gateway's account."""
    a, b = new_account(server), new_account(server)
    apex = f"{uniq('d')}.test"
    store = server.open_store()
    try:
        for addr in (apex, "test"):
            store.proxies.register(ProxyRecord(
                id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=addr,
                ip_address="127.0.0.1", account_id=account_id(server, b)))
    finally:
        store.close()
    assert domain(server, a, f"apps.{apex}").status == 200
    assert service(server, b, f"x.apps.{apex}").status == 409
    assert service(server, b, f"other.{apex}").status == 200
