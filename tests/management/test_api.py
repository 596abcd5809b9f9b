"""REST API through real HTTP against a real ``twistd nbmanagement`` (SQLite and PostgreSQL).

Covers every endpoint, the auth failures, the error envelope and the
service rules that are visible over REST.
"""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from nbgateway.management.model import (
    AccessLogEntry,
    Account,
    ProxyCapabilities,
    ProxyRecord,
)

from .apiserver import BACKENDS, running_server, uniq

CLUSTER = "eu.proxy.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        # every service domain below *.apps.test derives CLUSTER
        srv.add_domain("apps.test", CLUSTER)
        yield srv


def wg_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def group(server, name=None) -> dict:
    return server.ok("POST", "/api/groups", {"name": name or uniq("grp")})


def cluster_target(**over) -> dict:
    t = {"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
         "host": "backend.lan", "port": 8080, "enabled": True,
         "options": {"direct_upstream": True}}
    t.update(over)
    return t


def private_body(gid: str, **over) -> dict:
    body = {"name": uniq("svc"), "domain": f"{uniq('app')}.apps.test", "enabled": True,
            "private": True, "access_groups": [gid], "targets": [cluster_target()]}
    body.update(over)
    return body


def service_count(server) -> int:
    return len(server.ok("GET", SERVICES))


def assert_error(resp, status: int, fragment: str | None = None) -> None:
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json
    assert set(body) == {"message", "code"} and body["code"] == status
    if fragment is not None:
        assert fragment in body["message"], body


# --- auth and envelope ----------------------------------------------------------------


def test_admin_token_file_is_0600(server):
    mode = os.stat(os.path.join(server.datadir, "admin-token")).st_mode & 0o777
    assert mode == 0o600
    assert server.token.startswith("nbp_")
    assert server.token not in server.log()  # never logged


@pytest.mark.parametrize("auth", [False, "Token", "Token nbp_wrong", "Bearer x",
                                  "Token " + "nbp_" + "A" * 36, "Basic YWRtaW46YWRtaW4="])
def test_missing_or_bad_token_is_401(server, auth):
    assert_error(server.get(SERVICES, auth=auth), 401)


def test_unknown_path_and_method(server):
    assert_error(server.get("/api/nope"), 404, "not found")
    resp = server.request("PATCH", SERVICES)
    assert_error(resp, 405)
    assert "GET" in resp.headers["allow"] and "POST" in resp.headers["allow"]


def test_openapi_served_without_auth(server):
    resp = server.get("/api/openapi.json", auth=False)
    assert resp.status == 200
    doc = resp.json
    assert doc["openapi"].startswith("3.")
    assert "/api/reverse-proxies/services/{serviceId}" in doc["paths"]


# --- services: validation ---------------------------------------------------------------


def test_private_requires_access_group_nothing_stored(server):
    before = service_count(server)
    assert_error(server.post(SERVICES, private_body("x", access_groups=[])), 422,
                 "private services require at least one access group")
    body = private_body("x")
    del body["access_groups"]
    assert_error(server.post(SERVICES, body), 422,
                 "private services require at least one access group")
    assert service_count(server) == before


def test_private_rejects_bearer_lowercased_message(server):
    gid = group(server)["id"]
    resp = server.post(SERVICES, private_body(gid, auth={"bearer_auth": {"enabled": True}}))
    assert_error(resp, 422)
    assert resp.json["message"] == ("private services cannot enable bearer auth (sso): "
                                    "netbird-only access and sso are mutually exclusive")


def test_private_with_bearer_disabled_accepted(server):
    gid = group(server)["id"]
    resp = server.post(SERVICES, private_body(gid, auth={"bearer_auth": {"enabled": False}}))
    assert resp.status == 200, resp


def test_private_tcp_needs_listen_port(server):
    gid = group(server)["id"]
    assert_error(server.post(SERVICES, private_body(gid, mode="tcp")), 422,
                 "listen_port is required for private tcp/udp/tls services")


def test_private_create_response_shape(server):
    gid = group(server)["id"]
    body = private_body(gid)
    created = server.ok("POST", SERVICES, body)
    assert created["mode"] == "http"  # mode omitted -> http
    assert created["private"] is True
    assert created["access_groups"] == [gid]
    assert created["meta"]["status"] == "pending"
    assert created["proxy_cluster"] == CLUSTER
    assert created["targets"][0]["host"] == "backend.lan"  # a host target keeps its host
    assert created["targets"][0]["options"] == {"direct_upstream": True}
    assert created["auth"] == {}
    # no session key material; the session length is a setting, not a secret
    assert not any("session" in k for k in created if k != "max_session_age_seconds")
    assert created["max_session_age_seconds"] == 0 and created["assertion"] == "off"
    assert server.ok("GET", f"{SERVICES}/{created['id']}") == created


def test_private_with_peer_target_accepted_and_host_resolved(server):
    gid = group(server)["id"]
    peer = server.ok("POST", "/api/peers", {"name": uniq("peer")})
    target = {"target_id": peer["id"], "target_type": "peer", "protocol": "http",
              "host": "bad host", "port": 80, "enabled": True}
    created = server.ok("POST", SERVICES, private_body(gid, targets=[target]))
    assert created["targets"][0]["host"] == peer["ip"]  # a peer target resolves to its tunnel IP
    assert created["targets"][0]["options"] == {}  # absent key


@pytest.mark.parametrize("target,fragment", [
    (cluster_target(host=""), "has empty host"),
    (cluster_target(options={}), "direct upstream disabled"),
    (cluster_target(options={"direct_upstream": False}), "direct upstream disabled"),
    (cluster_target(target_id=""), "empty target_id"),
    (cluster_target(host="backend.lan:8080"), "must not include a port"),
    (cluster_target(target_type="bogus"), "invalid target_type"),
    (cluster_target(options={"direct_upstream": True, "request_timeout": "abc"}),
     "parse request_timeout"),
])
def test_target_validation(server, target, fragment):
    gid = group(server)["id"]
    before = service_count(server)
    assert_error(server.post(SERVICES, private_body(gid, targets=[target])), 422, fragment)
    assert service_count(server) == before


def test_peer_target_with_bad_host_and_direct_upstream(server):
    gid = group(server)["id"]
    peer = server.ok("POST", "/api/peers", {"name": uniq("peer")})
    target = {"target_id": peer["id"], "target_type": "peer", "protocol": "http",
              "host": "bad host", "port": 80, "enabled": True,
              "options": {"direct_upstream": True}}
    assert_error(server.post(SERVICES, private_body(gid, targets=[target])), 422,
                 "contains invalid characters")


def test_request_timeout_formatted_like_go(server):
    gid = group(server)["id"]
    t = cluster_target(options={"direct_upstream": True, "request_timeout": "2m"})
    created = server.ok("POST", SERVICES, private_body(gid, targets=[t]))
    assert created["targets"][0]["options"]["request_timeout"] == "2m0s"


def test_unknown_access_group_rejected(server):
    assert_error(server.post(SERVICES, private_body("no-such-group")), 422)


def test_domain_without_cluster_is_412(server):
    gid = group(server)["id"]
    assert_error(server.post(SERVICES, private_body(gid, domain="x.nowhere.example")), 412,
                 "could not derive cluster from domain")


def test_duplicate_domain_is_409(server):
    gid = group(server)["id"]
    body = private_body(gid)
    server.ok("POST", SERVICES, body)
    assert_error(server.post(SERVICES, dict(body, name=uniq())), 409, "domain already taken")


# --- services: public, PUT, DELETE --------------------------------------------------------


def test_public_service_has_private_false_and_no_access_groups(server):
    body = {"name": uniq(), "domain": f"{uniq()}.apps.test", "enabled": True,
            "targets": [cluster_target()]}
    created = server.ok("POST", SERVICES, body)
    fetched = server.ok("GET", f"{SERVICES}/{created['id']}")
    assert fetched["private"] is False
    assert "access_groups" not in fetched


def test_put_is_full_replace(server):
    g1, g2 = group(server)["id"], group(server)["id"]
    created = server.ok("POST", SERVICES, private_body(g1))
    sid = created["id"]
    body = {"name": created["name"], "domain": created["domain"], "enabled": True,
            "private": True, "access_groups": [g2, g1], "targets": [cluster_target()]}
    assert server.ok("PUT", f"{SERVICES}/{sid}", body)["access_groups"] == [g2, g1]
    assert server.ok("GET", f"{SERVICES}/{sid}")["access_groups"] == [g2, g1]
    body.pop("private")
    body.pop("access_groups")
    updated = server.ok("PUT", f"{SERVICES}/{sid}", body)
    assert updated["private"] is False and "access_groups" not in updated
    fetched = server.ok("GET", f"{SERVICES}/{sid}")
    assert fetched["private"] is False and "access_groups" not in fetched
    assert fetched["meta"]["created_at"] == created["meta"]["created_at"]


def test_put_keeps_session_keys(server):
    gid = group(server)["id"]
    created = server.ok("POST", SERVICES, private_body(gid))
    store = server.open_store()
    try:
        acct = store.accounts.list()[0].id
        before = store.services.get(acct, created["id"])
        body = private_body(gid, name="renamed", domain=created["domain"])
        server.ok("PUT", f"{SERVICES}/{created['id']}", body)
        after = store.services.get(acct, created["id"])
    finally:
        store.close()
    assert after.name == "renamed"
    assert before.session_public_key and after.session_public_key == before.session_public_key
    assert after.session_private_key == before.session_private_key
    assert after.meta.created_at == before.meta.created_at


def test_put_invalid_leaves_stored_service_unchanged(server):
    gid = group(server)["id"]
    created = server.ok("POST", SERVICES, private_body(gid))
    bad = private_body(gid, domain=created["domain"], access_groups=[])
    assert_error(server.put(f"{SERVICES}/{created['id']}", bad), 422)
    assert server.ok("GET", f"{SERVICES}/{created['id']}") == created


def test_unknown_service_ids_are_404(server):
    gid = group(server)["id"]
    for method, body in (("GET", None), ("PUT", private_body(gid)), ("DELETE", None)):
        assert_error(server.request(method, f"{SERVICES}/does-not-exist", body), 404)


def test_delete_service(server):
    gid = group(server)["id"]
    created = server.ok("POST", SERVICES, private_body(gid))
    assert server.ok("DELETE", f"{SERVICES}/{created['id']}") == {}
    assert_error(server.get(f"{SERVICES}/{created['id']}"), 404)
    assert created["id"] not in {s["id"] for s in server.ok("GET", SERVICES)}


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"NaN",
                                 b'{"name": Infinity}', b"[" * 100000])
def test_malformed_json_is_400(server, raw):
    before = service_count(server)
    resp = server.request("POST", SERVICES, raw=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 400)
    assert resp.json["message"].startswith("couldn't parse JSON request")
    assert service_count(server) == before


@pytest.mark.parametrize("body,fragment", [
    ({"name": 1, "domain": "a.apps.test", "enabled": True}, "name: expected string"),
    ({"name": "a", "domain": "a.apps.test", "enabled": "yes"}, "enabled: expected boolean"),
    ({"name": "a", "domain": "a.apps.test", "enabled": True, "targets": [
        {"port": "80"}]}, "targets[0].port: expected integer"),
    ({"name": "a", "domain": "a.apps.test", "enabled": True, "listen_port": 99999999},
     "out of range"),
    ([1, 2], "expected object"),
])
def test_wrong_types_are_400_naming_the_field(server, body, fragment):
    before = service_count(server)
    assert_error(server.post(SERVICES, body), 400, fragment)
    assert service_count(server) == before


def test_oversized_body_is_413(server):
    before = service_count(server)
    gid = group(server)["id"]
    body = private_body(gid, name="x" * (1024 * 1024 + 10))
    resp = server.post(SERVICES, body)
    assert_error(resp, 413, "exceeds the limit of 1048576 bytes")
    assert service_count(server) == before
    # the server is still healthy afterwards
    assert server.get(SERVICES).status == 200


@pytest.mark.parametrize("evil", ["x'; DROP TABLE services; --", 'a" OR "1"="1', "%_\\",
                                  "名前 ü", "robert'); --"])
def test_sql_metacharacters_are_plain_data(server, evil):
    g = server.ok("POST", "/api/groups", {"name": evil + uniq()})
    assert g["name"].startswith(evil)
    assert server.ok("GET", f"/api/groups/{g['id']}")["name"] == g["name"]
    created = server.ok("POST", SERVICES, private_body(g["id"], name=evil))
    assert server.ok("GET", f"{SERVICES}/{created['id']}")["name"] == evil
    assert_error(server.get(f"{SERVICES}/{quote(evil, safe='')}"), 404)
    assert_error(server.get("/api/groups/x'%20OR%20'1'='1"), 404)
    assert service_count(server) >= 1


# --- groups -----------------------------------------------------------------------------


def test_group_crud_and_membership(server):
    p1 = server.ok("POST", "/api/peers", {"name": uniq("p")})
    g = server.ok("POST", "/api/groups", {"name": uniq("g"), "peers": [p1["id"]]})
    assert g["peers_count"] == 1 and g["peers"] == [{"id": p1["id"], "name": p1["name"]}]
    assert g["id"] in {x["id"] for x in server.ok("GET", "/api/groups")}
    renamed = server.ok("PUT", f"/api/groups/{g['id']}", {"name": g["name"] + "-r"})
    assert renamed["peers_count"] == 1  # peers kept when omitted
    emptied = server.ok("PUT", f"/api/groups/{g['id']}", {"name": renamed["name"], "peers": []})
    assert emptied["peers_count"] == 0
    assert server.ok("DELETE", f"/api/groups/{g['id']}") == {}
    assert_error(server.get(f"/api/groups/{g['id']}"), 404)


def test_group_bad_input(server):
    assert_error(server.post("/api/groups", {"name": ""}), 422)
    assert_error(server.post("/api/groups", {"name": uniq(), "peers": ["nope"]}), 422)
    name = uniq()
    server.ok("POST", "/api/groups", {"name": name})
    assert_error(server.post("/api/groups", {"name": name}), 409)
    assert_error(server.put("/api/groups/nope", {"name": "x"}), 404)
    assert_error(server.delete("/api/groups/nope"), 404)


def test_group_used_by_private_service_cannot_be_deleted(server):
    g = group(server)
    svc = server.ok("POST", SERVICES, private_body(g["id"]))
    assert_error(server.delete(f"/api/groups/{g['id']}"), 400,
                 f"group has been linked to reverse proxy service: {svc['domain']}")
    assert server.ok("GET", f"/api/groups/{g['id']}")["id"] == g["id"]


# --- users and personal access tokens --------------------------------------------------------


def test_user_crud(server):
    g = group(server)
    u = server.ok("POST", "/api/users", {"email": f"{uniq()}@example.com", "name": "Bob",
                                         "role": "user", "auto_groups": [g["id"]],
                                         "is_service_user": False})
    assert u["status"] == "active" and u["auto_groups"] == [g["id"]]
    assert server.ok("GET", f"/api/users/{u['id']}") == u
    blocked = server.ok("PUT", f"/api/users/{u['id']}",
                        {"role": "user", "auto_groups": [], "is_blocked": True})
    assert blocked["status"] == "blocked" and blocked["is_blocked"] is True
    assert u["id"] in {x["id"] for x in server.ok("GET", "/api/users")}
    assert server.ok("DELETE", f"/api/users/{u['id']}") == {}
    assert_error(server.get(f"/api/users/{u['id']}"), 404)


def test_user_bad_input(server):
    assert_error(server.post("/api/users", {"role": "emperor", "auto_groups": [],
                                            "is_service_user": False}), 422)
    assert_error(server.post("/api/users", {"role": "user", "auto_groups": ["nope"],
                                            "is_service_user": False}), 422)
    assert_error(server.put("/api/users/nope", {"role": "user", "auto_groups": [],
                                                "is_blocked": False}), 404)


def test_personal_access_tokens_and_roles(server):
    u = server.ok("POST", "/api/users", {"email": f"{uniq()}@example.com", "role": "user",
                                         "auto_groups": [], "is_service_user": True})
    gen = server.ok("POST", f"/api/users/{u['id']}/tokens", {"name": "ci", "expires_in": 30})
    plain = gen["plain_token"]
    pat = gen["personal_access_token"]
    assert plain.startswith("nbp_") and pat["name"] == "ci" and "expiration_date" in pat
    listed = server.ok("GET", f"/api/users/{u['id']}/tokens")
    assert [t["id"] for t in listed] == [pat["id"]]
    # a plain user reads its own things only, and writes nothing (issue 11 item 9)
    as_user = f"Token {plain}"
    assert server.get("/api/peers", auth=as_user).status == 200
    assert_error(server.get(SERVICES, auth=as_user), 403)
    assert_error(server.post("/api/groups", {"name": uniq()}, auth=as_user), 403)
    # blocking the user locks the token out
    server.ok("PUT", f"/api/users/{u['id']}", {"role": "user", "auto_groups": [],
                                               "is_blocked": True})
    assert_error(server.get(SERVICES, auth=as_user), 401)
    server.ok("PUT", f"/api/users/{u['id']}", {"role": "user", "auto_groups": [],
                                               "is_blocked": False})
    assert server.get("/api/peers", auth=as_user).status == 200
    assert server.ok("DELETE", f"/api/users/{u['id']}/tokens/{pat['id']}") == {}
    assert_error(server.get(SERVICES, auth=as_user), 401)
    assert_error(server.post(f"/api/users/{u['id']}/tokens", {"name": "x", "expires_in": 0}),
                 422)


# --- peers and wg-quick config ----------------------------------------------------------------


def test_peer_create_server_generated_key(server):
    p = server.ok("POST", "/api/peers", {"name": uniq("laptop")})
    assert len(base64.b64decode(p["private_key"])) == 32
    assert len(base64.b64decode(p["public_key"])) == 32
    assert p["ip"].startswith("100.")
    fetched = server.ok("GET", f"/api/peers/{p['id']}")
    assert "private_key" not in fetched  # shown once
    assert fetched["public_key"] == p["public_key"]


def test_peer_create_client_key_and_bad_keys(server):
    key = wg_key()
    p = server.ok("POST", "/api/peers", {"name": uniq(), "public_key": key})
    assert p["public_key"] == key and "private_key" not in p
    assert_error(server.post("/api/peers", {"name": uniq(), "public_key": key}), 409)
    assert_error(server.post("/api/peers", {"name": uniq(), "public_key": "short"}), 422,
                 "invalid wireguard public key")
    assert_error(server.post("/api/peers", {"name": ""}), 422)
    assert_error(server.post("/api/peers", {"name": uniq(), "endpoint": "h:1\nx"}), 422)
    assert_error(server.post("/api/peers", {"name": uniq(), "groups": ["nope"]}), 422)


def test_peer_update_delete(server):
    g = group(server)
    p = server.ok("POST", "/api/peers", {"name": uniq()})
    # (a stock peer's endpoint may not be loopback: tests/management/test_tenant_isolation_4.py)
    up = server.ok("PUT", f"/api/peers/{p['id']}", {"name": "renamed", "groups": [g["id"]],
                                                    "endpoint": "203.0.113.5:51820"})
    assert up["name"] == "renamed" and up["endpoint"] == "203.0.113.5:51820"
    assert g["id"] in {x["id"] for x in up["groups"]}
    assert up["ip"] == p["ip"] and up["public_key"] == p["public_key"]
    assert server.ok("DELETE", f"/api/peers/{p['id']}") == {}
    assert_error(server.get(f"/api/peers/{p['id']}"), 404)
    assert_error(server.get(f"/api/peers/{p['id']}/wireguard-config"), 404)


def test_wireguard_config_lists_proxy_peers(server):
    proxy = server.ok("POST", "/api/peers", {"name": uniq("gw"), "public_key": wg_key(),
                                             "endpoint": "127.0.0.1:51820",
                                             "proxy_cluster": CLUSTER})
    assert proxy["proxy_embedded"] is True
    g = group(server)
    server.ok("POST", SERVICES, private_body(g["id"]))
    p = server.ok("POST", "/api/peers", {"name": uniq("laptop"), "groups": [g["id"]]})
    conf = server.ok("GET", f"/api/peers/{p['id']}/wireguard-config").decode()
    assert f"PrivateKey = {p['private_key']}" in conf
    assert f"Address = {p['ip']}/32" in conf
    assert f"PublicKey = {proxy['public_key']}\nEndpoint = 127.0.0.1:51820\n" in conf
    assert f"AllowedIPs = {proxy['ip']}/32" in conf
    assert "PersistentKeepalive = 25" in conf
    assert f"DNS = {proxy['ip']}" in conf
    resp = server.get(f"/api/peers/{p['id']}/wireguard-config?format=qr")
    assert resp.status == 200 and resp.headers["content-type"] == "image/png"
    assert resp.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert_error(server.get(f"/api/peers/{p['id']}/wireguard-config?format=svg"), 422)
    # a client-keyed peer gets a placeholder, never someone else's key
    c = server.ok("POST", "/api/peers", {"name": uniq(), "public_key": wg_key()})
    conf = server.ok("GET", f"/api/peers/{c['id']}/wireguard-config").decode()
    assert "\nPrivateKey" not in conf and "# PrivateKey" in conf


def test_wireguard_config_leaves_out_a_gateway_the_peer_may_not_reach(server):
    """A peer in none of the gateway's access groups would have its handshakes
    dropped: its config does not list the gateway and says which groups would."""
    cluster = f"{uniq('c')}.proxy.test"
    proxy = server.ok("POST", "/api/peers", {"name": uniq("gw"), "public_key": wg_key(),
                                             "endpoint": "127.0.0.1:51820",
                                             "proxy_cluster": cluster})
    apex = f"{uniq('d')}.test"
    server.ok("POST", "/api/reverse-proxies/domains", {"domain": apex, "target_cluster": cluster})
    g = group(server, uniq("staff"))
    server.ok("POST", SERVICES, private_body(
        g["id"], domain=f"app.{apex}", targets=[cluster_target(target_id=cluster)]))
    outsider = server.ok("POST", "/api/peers", {"name": uniq("outsider")})
    conf = server.ok("GET", f"/api/peers/{outsider['id']}/wireguard-config").decode()
    assert proxy["public_key"] not in conf
    assert "DNS" not in conf
    assert f"# The gateway {cluster} is left out of this config" in conf
    assert f"# Add this peer to one of: {g['name']};" in conf
    # in the group: the gateway is a [Peer] again
    server.ok("PUT", f"/api/groups/{g['id']}", {"name": g["name"], "peers": [outsider["id"]]})
    conf = server.ok("GET", f"/api/peers/{outsider['id']}/wireguard-config").decode()
    assert f"PublicKey = {proxy['public_key']}" in conf
    assert f"# The gateway {cluster} is left out" not in conf


# --- clusters, domains, proxy tokens -----------------------------------------------------------


def test_clusters_and_domains_reflect_proxy_private_flag(server):
    store = server.open_store()
    addr = f"{uniq('c')}.proxy.test"
    try:
        acct = store.accounts.list()[0].id
        store.proxies.register(ProxyRecord(id=uniq("px"), session_id=str(uuid.uuid4()),
                                         cluster_address=addr, ip_address="127.0.0.1",
                                         capabilities=ProxyCapabilities(private=True)))
        store.proxies.register(ProxyRecord(id=uniq("py"), session_id=str(uuid.uuid4()),
                                         cluster_address=addr, ip_address="127.0.0.1",
                                         account_id=acct,
                                         capabilities=ProxyCapabilities(private=False)))
    finally:
        store.close()
    clusters = {c["address"]: c for c in server.ok("GET", "/api/reverse-proxies/clusters")}
    assert clusters[addr]["private"] is True
    assert clusters[addr]["online"] is True and clusters[addr]["connected_proxies"] == 2
    assert clusters[addr]["type"] == "account"
    domains = {d["domain"]: d for d in server.ok("GET", "/api/reverse-proxies/domains")}
    assert domains[addr]["type"] == "free" and domains[addr]["supports_private"] is True
    assert domains["apps.test"]["type"] == "custom"
    assert domains["apps.test"]["target_cluster"] == CLUSTER
    unknown = f"{uniq('n')}.proxy.test"
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(id=uniq("pz"), session_id=str(uuid.uuid4()),
                                         cluster_address=unknown, ip_address="127.0.0.1"))
    finally:
        store.close()
    clusters = {c["address"]: c for c in server.ok("GET", "/api/reverse-proxies/clusters")}
    assert "private" not in clusters[unknown]  # only NULL rows: absent
    assert clusters[unknown]["type"] == "shared"
    domains = {d["domain"]: d for d in server.ok("GET", "/api/reverse-proxies/domains")}
    assert "supports_private" not in domains[unknown]
    # DELETE removes the account's own (BYOP) rows only; a second delete is 404
    assert server.ok("DELETE", f"/api/reverse-proxies/clusters/{addr}") == {}
    assert_error(server.delete(f"/api/reverse-proxies/clusters/{addr}"), 404,
                 "cluster not found")


def test_custom_domain_crud(server):
    name = f"{uniq()}.example.org"
    d = server.ok("POST", "/api/reverse-proxies/domains",
                  {"domain": name, "target_cluster": CLUSTER})
    assert d["type"] == "custom" and d["validated"] is False
    assert_error(server.post("/api/reverse-proxies/domains",
                             {"domain": name, "target_cluster": CLUSTER}), 409)
    assert_error(server.post("/api/reverse-proxies/domains",
                             {"domain": "", "target_cluster": CLUSTER}), 422)
    assert server.ok("GET", f"/api/reverse-proxies/domains/{d['id']}/validate", status=202) == {}
    assert server.ok("DELETE", f"/api/reverse-proxies/domains/{d['id']}") == {}
    assert_error(server.delete(f"/api/reverse-proxies/domains/{d['id']}"), 404)
    assert_error(server.get(f"/api/reverse-proxies/domains/{d['id']}/validate"), 404)


def test_proxy_tokens(server):
    created = server.ok("POST", "/api/reverse-proxies/proxy-tokens", {"name": "t"})
    plain = created["plain_token"]
    assert len(plain) == 40 and plain.startswith("nbx_")
    assert created["revoked"] is False
    listed = server.ok("GET", "/api/reverse-proxies/proxy-tokens")
    assert created["id"] in {t["id"] for t in listed}
    assert all("plain_token" not in t and "hashed_token" not in t for t in listed)
    store = server.open_store()
    try:
        acct = store.accounts.list()[0].id
        row = store.proxies.verify_token(plain)
        assert row.account_id == acct and row.hashed_token != plain
        other_row, _ = store.proxies.create_token("global", account_id=None)
        acct_b = store.accounts.create(Account(domain="b.test"))
        foreign_row, _ = store.proxies.create_token("foreign", account_id=acct_b.id)
    finally:
        store.close()
    assert server.ok("DELETE", f"/api/reverse-proxies/proxy-tokens/{created['id']}") == {}
    listed = {t["id"]: t for t in server.ok("GET", "/api/reverse-proxies/proxy-tokens")}
    assert listed[created["id"]]["revoked"] is True
    for row in (other_row, foreign_row):  # a global or another account's token
        assert_error(server.delete(f"/api/reverse-proxies/proxy-tokens/{row.id}"), 404,
                     "token not found")
    assert foreign_row.id not in listed
    assert_error(server.post("/api/reverse-proxies/proxy-tokens", {"name": ""}), 400)
    assert_error(server.post("/api/reverse-proxies/proxy-tokens",
                             {"name": "t", "expires_in": -1}), 400)
    exp = server.ok("POST", "/api/reverse-proxies/proxy-tokens",
                    {"name": "t2", "expires_in": 3600})
    assert "expires_at" in exp


# --- access logs ------------------------------------------------------------------------------


def test_access_logs_paginated_filtered_with_user_groups(server):
    g = group(server, uniq("admins"))
    u = server.ok("POST", "/api/users", {"email": f"{uniq()}@example.com", "role": "user",
                                         "auto_groups": [g["id"]], "is_service_user": False})
    host = f"{uniq()}.apps.test"
    store = server.open_store()
    try:
        acct = store.accounts.list()[0].id
        base = datetime.now(UTC) - timedelta(hours=1)
        for i in range(7):
            store.access_logs.append(AccessLogEntry(
                account_id=acct, service_id="svc-x", timestamp=base + timedelta(seconds=i),
                method="GET", host=host, path=f"/p{i}", duration=(i + 1) * 1_000_000,
                status_code=200 if i % 2 == 0 else 403, user_id=u["id"],
                auth_method_used="oidc", source_ip="100.64.0.10", protocol="http"))
    finally:
        store.close()
    page = server.ok("GET", f"/api/events/proxy?host={host}&page_size=3&page=1")
    assert page["total_records"] == 7 and page["total_pages"] == 3
    assert page["page"] == 1 and page["page_size"] == 3 and len(page["data"]) == 3
    first = page["data"][0]
    assert first["path"] == "/p6"  # default sort: timestamp desc
    assert first["user_groups"] == [g["name"]]
    assert first["duration_ms"] == 7
    last = server.ok("GET", f"/api/events/proxy?host={host}&page_size=3&page=3")
    assert len(last["data"]) == 1
    failed = server.ok("GET", f"/api/events/proxy?host={host}&status=failed")
    assert failed["total_records"] == 3
    assert {e["status_code"] for e in failed["data"]} == {403}
    asc = server.ok("GET", f"/api/events/proxy?host={host}&sort_by=path&sort_order=asc")
    assert [e["path"] for e in asc["data"]] == [f"/p{i}" for i in range(7)]
    assert server.ok("GET", f"/api/events/proxy?host={host}&status_code=403")[
        "total_records"] == 3
    for bad in ("page=0", "page_size=1000", "sort_by=nope", "sort_order=up", "page=x",
                "status=meh", "start_date=yesterday"):
        assert_error(server.get(f"/api/events/proxy?{bad}"), 422)


def test_oversized_chunked_body_is_413(server):
    import http.client

    before = service_count(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunks = (b"x" * 65536 for _ in range(20))  # 1.25 MiB, no Content-Length
        conn.request("POST", SERVICES, body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Token {server.token}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"exceeds the limit" in resp.read()
    finally:
        conn.close()
    assert service_count(server) == before


def test_absurd_content_length_drops_connection(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /api/groups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Token " + server.token.encode() + b"\r\n"
                  b"Content-Length: 134217728\r\n\r\n{")
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
    assert data == b""  # aborted without reading 128 MiB
    assert server.get(SERVICES).status == 200


def test_rejected_writes_store_nothing(server):
    peers = len(server.ok("GET", "/api/peers"))
    groups = len(server.ok("GET", "/api/groups"))
    users = len(server.ok("GET", "/api/users"))
    assert_error(server.post("/api/peers", {"name": uniq(), "groups": ["nope"]}), 422)
    assert_error(server.post("/api/peers", {"name": uniq(), "user_id": "nope"}), 422)
    assert_error(server.post("/api/groups", {"name": uniq(), "peers": ["nope"]}), 422)
    assert_error(server.post("/api/users", {"role": "user", "auto_groups": ["nope"],
                                            "is_service_user": False}), 422)
    assert len(server.ok("GET", "/api/peers")) == peers
    assert len(server.ok("GET", "/api/groups")) == groups
    assert len(server.ok("GET", "/api/users")) == users
