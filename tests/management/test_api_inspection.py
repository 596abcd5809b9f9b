"""REST inspection of the synthetic private-service DNS and ACL (issue 5) and of
a peer's network map, through real HTTP against ``twistd nbmanagement``."""

from __future__ import annotations

import json

import pytest

from .apiserver import running_server

CLUSTER = "inspect.proxy.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        srv.add_domain("apps.test", CLUSTER)
        yield srv


def test_private_service_zone_and_policy_visible_to_group_members_only(server):
    devs = server.ok("POST", "/api/groups", {"name": "devs"})
    alice = server.ok("POST", "/api/peers", {"name": "alice", "groups": [devs["id"]]})
    bob = server.ok("POST", "/api/peers", {"name": "bob"})
    proxy = server.ok("POST", "/api/peers", {"name": "gw", "proxy_cluster": CLUSTER})
    server.ok("POST", "/api/reverse-proxies/services", {
        "name": "app", "domain": "app.apps.test", "enabled": True, "private": True,
        "access_groups": [devs["id"]],
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.9", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]})
    view = server.ok("GET", "/api/reverse-proxies/private-services")
    [policy] = [p for p in view["policies"] if p["name"] == "Private Access to app"]
    assert devs["id"] in json.dumps(policy)
    assert "443" in json.dumps(policy) and "80" in json.dumps(policy)
    # zones carry A records only for *connected* proxy peers; this
    # proxy peer never connected, so every peer's synthetic zone list is empty
    assert set(view["zones"]) >= {alice["id"], bob["id"]}
    assert all(z == [] for z in view["zones"].values())
    alice_map = json.dumps(server.ok("GET", f"/api/peers/{alice['id']}/network-map"))
    bob_map = json.dumps(server.ok("GET", f"/api/peers/{bob['id']}/network-map"))
    # the synthetic ACL lets alice (in the access group) reach the proxy peer; bob not
    assert proxy["ip"] in alice_map
    assert proxy["ip"] not in bob_map


def test_unknown_peer_is_404(server):
    resp = server.get("/api/peers/nope/network-map")
    assert resp.status == 404
