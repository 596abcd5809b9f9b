"""A ``user``-role token reads only its own things (issue 11 item 9), over real HTTP.

As NetBird does for regular users: their own peers (list, get, network map),
themselves in the user list, their own tokens, their own access-log entries;
every other read (services, clusters, domains, proxy tokens, groups, the
private-service inspection, service status, other users) and every write is
403, and another user's peer does not exist (404). Every route of the table is
classified below, so a new route cannot slip in unclassified.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management.api.routes import Handlers, build_routes
from nbgateway.management.model import AccessLogEntry

from .apiserver import BACKENDS, running_server, uniq

CLUSTER = "cl.user-role.test"

#: what a regular user gets from each route: "admin" (403), "own" (200, its own
#: data only, checked in detail below) or "own-or-admin" (200 for its own id)
CLASSES: dict[tuple[str, str], str] = {
    ("GET", "/accounts"): "own",
    ("POST", "/accounts"): "admin",
    ("GET", "/accounts/{accountId}"): "own",
    ("DELETE", "/accounts/{accountId}"): "admin",
    ("GET", "/reverse-proxies/service-status"): "admin",
    ("GET", "/reverse-proxies/services"): "admin",
    ("POST", "/reverse-proxies/services"): "admin",
    ("GET", "/reverse-proxies/services/{serviceId}"): "admin",
    ("PUT", "/reverse-proxies/services/{serviceId}"): "admin",
    ("DELETE", "/reverse-proxies/services/{serviceId}"): "admin",
    ("GET", "/reverse-proxies/clusters"): "admin",
    ("DELETE", "/reverse-proxies/clusters/{clusterAddress}"): "admin",
    ("GET", "/reverse-proxies/proxies"): "admin",
    ("GET", "/reverse-proxies/domains"): "admin",
    ("POST", "/reverse-proxies/domains"): "admin",
    ("DELETE", "/reverse-proxies/domains/{domainId}"): "admin",
    ("GET", "/reverse-proxies/domains/{domainId}/validate"): "admin",
    ("GET", "/reverse-proxies/proxy-tokens"): "admin",
    ("POST", "/reverse-proxies/proxy-tokens"): "admin",
    ("DELETE", "/reverse-proxies/proxy-tokens/{tokenId}"): "admin",
    ("GET", "/reverse-proxies/private-services"): "admin",
    ("GET", "/reverse-proxies/services/{serviceId}/client-ca"): "admin",
    ("PUT", "/reverse-proxies/services/{serviceId}/client-ca"): "admin",
    ("DELETE", "/reverse-proxies/services/{serviceId}/client-ca"): "admin",
    ("GET", "/reverse-proxies/services/{serviceId}/tokens"): "admin",
    ("POST", "/reverse-proxies/services/{serviceId}/tokens"): "admin",
    ("DELETE", "/reverse-proxies/services/{serviceId}/tokens/{tokenId}"): "admin",
    ("POST", "/reverse-proxies/services/{serviceId}/assertion-key/rotate"): "admin",
    ("GET", "/reverse-proxies/certificates"): "admin",
    ("GET", "/reverse-proxies/services/{serviceId}/certificate"): "admin",
    # the account's private CA certificate is what every peer must trust:
    # any user of the account may fetch it (nothing secret in it)
    ("GET", "/reverse-proxies/ca-certificate"): "own",
    ("GET", "/events/proxy"): "own",
    ("GET", "/users"): "own",
    ("POST", "/users"): "admin",
    ("GET", "/users/{userId}"): "own-or-admin",
    ("PUT", "/users/{userId}"): "admin",
    ("DELETE", "/users/{userId}"): "admin",
    ("GET", "/users/{userId}/tokens"): "own-or-admin",
    ("POST", "/users/{userId}/tokens"): "own-or-admin",
    ("DELETE", "/users/{userId}/tokens/{tokenId}"): "own-or-admin",
    ("GET", "/groups"): "admin",
    ("POST", "/groups"): "admin",
    ("GET", "/groups/{groupId}"): "admin",
    ("PUT", "/groups/{groupId}"): "admin",
    ("DELETE", "/groups/{groupId}"): "admin",
    ("GET", "/peers"): "own",
    ("POST", "/peers"): "admin",
    ("GET", "/peers/{peerId}"): "own",
    ("PUT", "/peers/{peerId}"): "admin",
    ("DELETE", "/peers/{peerId}"): "admin",
    ("GET", "/peers/{peerId}/network-map"): "own",
    ("GET", "/peers/{peerId}/wireguard-config"): "admin",
}


def test_every_route_is_classified():
    routes = {(r.method, r.template) for r in build_routes(Handlers(store=None))}
    missing = routes - set(CLASSES)
    assert not missing, f"classify these routes for regular users: {sorted(missing)}"


class World:
    """One account with an admin, two regular users (alice, bob) and their things."""

    def __init__(self, server):
        self.server = server
        ok = server.ok
        self.group = ok("POST", "/api/groups", {"name": uniq("devs")})
        apex = f"{uniq('d')}.test"
        self.domain = ok("POST", "/api/reverse-proxies/domains",
                         {"domain": apex, "target_cluster": CLUSTER})
        self.service = ok("POST", "/api/reverse-proxies/services", {
            "name": "app", "domain": f"app.{apex}", "enabled": True, "private": True,
            "access_groups": [self.group["id"]],
            "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                         "host": "10.0.0.5", "port": 80, "enabled": True,
                         "options": {"direct_upstream": True}}]})
        self.proxy_token = ok("POST", "/api/reverse-proxies/proxy-tokens", {"name": "gw"})
        self.users = {}
        self.tokens = {}
        self.pats = {}
        self.peers = {}
        for name in ("alice", "bob"):
            u = ok("POST", "/api/users", {"email": f"{name}-{uniq()}@example.com",
                                          "name": name, "role": "user",
                                          "is_service_user": False})
            self.users[name] = u
            gen = ok("POST", f"/api/users/{u['id']}/tokens", {"name": "t", "expires_in": 1})
            self.tokens[name] = f"Token {gen['plain_token']}"
            self.pats[name] = gen["personal_access_token"]["id"]
            self.peers[name] = ok("POST", "/api/peers", {"name": uniq(name), "user_id": u["id"],
                                                         "groups": [self.group["id"]]})
        self.machine = ok("POST", "/api/peers", {"name": uniq("machine")})
        store = server.open_store()
        try:
            acct = store.accounts.list()[0].id
            now = datetime.now(UTC)
            for i, name in enumerate(("alice", "bob", "alice", "bob", "")):
                uid = self.users[name]["id"] if name else ""
                store.access_logs.append(AccessLogEntry(
                    account_id=acct, service_id=self.service["id"],
                    timestamp=now - timedelta(seconds=10 - i), method="GET",
                    host=self.service["domain"], path=f"/{name or 'anon'}/{i}",
                    duration=1_000_000, status_code=200, user_id=uid,
                    source_ip="100.64.0.9", protocol="http"))
        finally:
            store.close()

    def params(self, own: bool) -> dict[str, str]:
        who = "alice" if own else "bob"
        return {"accountId": "default", "serviceId": self.service["id"],
                "clusterAddress": CLUSTER, "domainId": self.domain["id"],
                "tokenId": self.pats[who] if own else self.proxy_token["id"],
                "userId": self.users[who]["id"], "groupId": self.group["id"],
                "peerId": self.peers[who]["id"]}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield World(srv)


def _path(template: str, params: dict[str, str]) -> str:
    out = "/api" + template
    for k, v in params.items():
        out = out.replace("{" + k + "}", v)
    return out


def _body(method: str) -> dict | None:
    return {} if method in ("POST", "PUT") else None


def test_admin_only_routes_are_403_for_a_user(world):
    alice = world.tokens["alice"]
    for (method, template), kind in sorted(CLASSES.items()):
        if kind != "admin":
            continue
        path = _path(template, world.params(own=False))
        resp = world.server.request(method, path, _body(method), auth=alice)
        assert resp.status == 403, (method, template, resp)
        assert resp.json["code"] == 403
    # nothing was changed by those attempts
    assert world.server.ok("GET", f"/api/reverse-proxies/services/{world.service['id']}")
    assert world.server.ok("GET", f"/api/groups/{world.group['id']}")


def test_other_users_things_are_refused(world):
    alice = world.tokens["alice"]
    bob = world.params(own=False)
    for (method, template), kind in sorted(CLASSES.items()):
        if kind != "own-or-admin":
            continue
        resp = world.server.request(method, _path(template, bob), _body(method), auth=alice)
        assert resp.status == 403, (method, template, resp)
    for template in ("/peers/{peerId}", "/peers/{peerId}/network-map"):
        for peer in (world.peers["bob"], world.machine):
            resp = world.server.get(_path(template, {"peerId": peer["id"]}), auth=alice)
            assert resp.status == 404, (template, resp)


def test_own_things_are_readable(world):
    alice, own = world.tokens["alice"], world.params(own=True)
    get = world.server.get
    peers = get("/api/peers", auth=alice).json
    assert [p["id"] for p in peers] == [world.peers["alice"]["id"]]
    assert get(_path("/peers/{peerId}", own), auth=alice).json["id"] == own["peerId"]
    assert get(_path("/peers/{peerId}/network-map", own), auth=alice).status == 200
    assert [u["id"] for u in get("/api/users", auth=alice).json] == [own["userId"]]
    assert get(_path("/users/{userId}", own), auth=alice).json["id"] == own["userId"]
    tokens = get(_path("/users/{userId}/tokens", own), auth=alice).json
    assert [t["id"] for t in tokens] == [own["tokenId"]]
    assert [a["id"] for a in get("/api/accounts", auth=alice).json] == ["default"]
    assert get("/api/accounts/default", auth=alice).status == 200


def test_access_log_shows_only_the_users_own_requests(world):
    alice, alice_id = world.tokens["alice"], world.users["alice"]["id"]
    # a user_id filter naming someone else is replaced by the caller's own id
    for query in ("", f"?user_id={world.users['bob']['id']}", "?page_size=100"):
        page = world.server.get("/api/events/proxy" + query, auth=alice).json
        assert {e.get("user_id") for e in page["data"]} == {alice_id}, (query, page)
        assert page["total_records"] == 2, (query, page)
    page = world.server.get("/api/events/proxy?search=/bob/", auth=alice).json
    assert page["total_records"] == 0, page
    # the admin still reads everything
    assert world.server.ok("GET", "/api/events/proxy?page_size=100")["total_records"] >= 5
