"""Tenant isolation, round 4, over real HTTP against ``twistd nbmanagement``
(SQLite and PostgreSQL), as hostile accounts.

* **Gateway keys.** A gateway's per-account WireGuard key is in no other
  account's REST answer (peer lists, a peer by id, network maps, wg-quick
  configs, the gateway and cluster lists), and another account cannot
  register it as its own peer (409).  (A squatted key is rotated by the
  gateway: tests/test_accounts_key_squat.py.)
* **Peer endpoints.** A stock peer's endpoint, where gateways send their
  handshakes, is never a loopback, link-local, unspecified, multicast or
  reserved address nor ``localhost`` (422); a gateway (proxy) peer's
  endpoint, where stock peers send, may be loopback.
* **BYOP clusters.** A custom domain cannot target another account's own
  (BYOP) cluster (422); shared and known clusters and the account's own stay
  usable.
"""

from __future__ import annotations

import base64
import uuid

import pytest
from nacl.public import PrivateKey

from nbgateway.management.model import Peer, ProxyRecord

from .apiserver import BACKENDS, account_id, new_account, running_server, uniq

CLUSTER = "cl.isolation4.test"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def wg_key() -> str:
    return base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()


def register_gateway(server, owner: str | None, address: str) -> None:
    """A gateway row for ``address``: management-wide (``owner`` None) or an
    account's own (BYOP)."""
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(
            id=uniq("px"), session_id=str(uuid.uuid4()), cluster_address=address,
            ip_address="127.0.0.1", account_id=owner))
    finally:
        store.close()


# -- gateway keys ----------------------------------------------------------------------


def test_a_gateways_key_is_neither_visible_to_nor_registrable_by_another_account(server):
    a, b = new_account(server), new_account(server)
    key = wg_key()
    store = server.open_store()
    try:  # the key a gateway registered for account A (CreateProxyPeer)
        gw = store.peers.create(Peer(account_id=account_id(server, a), name=uniq("proxy"),
                                     key=key, proxy=True, proxy_cluster=CLUSTER,
                                     endpoint="198.51.100.1:51820", ephemeral=True))
    finally:
        store.close()
    assert key in server.get("/api/peers", auth=a).data.decode()
    mine = server.post("/api/peers", {"name": uniq("laptop")}, auth=b)
    assert mine.status == 200, mine
    answers = [server.get(path, auth=b) for path in (
        "/api/peers", f"/api/peers/{mine.json['id']}",
        f"/api/peers/{mine.json['id']}/network-map",
        f"/api/peers/{mine.json['id']}/wireguard-config",
        "/api/reverse-proxies/proxies", "/api/reverse-proxies/clusters",
        "/api/reverse-proxies/private-services")]
    assert all(r.status == 200 for r in answers), answers
    assert not any(key in r.data.decode("utf-8", "replace") for r in answers)
    assert server.get(f"/api/peers/{gw.id}", auth=b).status == 404
    assert server.get(f"/api/peers/{gw.id}/wireguard-config", auth=b).status == 404
    # B cannot take the key as its own peer, whatever kind
    for body in ({"name": uniq("squat"), "public_key": key},
                 {"name": uniq("squat"), "public_key": key, "proxy_cluster": CLUSTER}):
        resp = server.post("/api/peers", body, auth=b)
        assert resp.status == 409, resp
    assert key not in server.get("/api/peers", auth=b).data.decode()


# -- peer endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [
    "127.0.0.1:51820", "127.1:22", "[::1]:51820", "[::ffff:127.0.0.1]:51820",
    "[64:ff9b::7f00:1]:51820", "169.254.169.254:80", "[fe80::1]:51820", "0.0.0.0:51820",
    "[::]:51820", "224.0.0.1:51820", "[ff02::1]:51820", "255.255.255.255:51820",
    "localhost:51820", "a.localhost:51820",
])
def test_a_stock_peers_endpoint_may_not_point_at_the_gateway_host(server, endpoint):
    a = new_account(server)
    resp = server.post("/api/peers", {"name": uniq("p"), "endpoint": endpoint}, auth=a)
    assert resp.status == 422, resp
    assert "invalid endpoint" in resp.json["message"]
    assert "gateways would send their handshakes to their own host" in resp.json["message"]
    ok = server.post("/api/peers", {"name": uniq("p"), "endpoint": "203.0.113.5:51820"}, auth=a)
    assert ok.status == 200, ok
    resp = server.put(f"/api/peers/{ok.json['id']}", {"name": "p", "endpoint": endpoint}, auth=a)
    assert resp.status == 422, resp
    assert server.get(f"/api/peers/{ok.json['id']}", auth=a).json["endpoint"] == \
        "203.0.113.5:51820"


def test_lan_and_public_endpoints_and_gateway_peers_on_loopback_stay_allowed(server):
    a = new_account(server)
    for endpoint in ("10.0.0.7:51820", "192.168.1.20:51820", "[2001:db8::7]:51820",
                     "peer.example.com:51820"):
        resp = server.post("/api/peers", {"name": uniq("p"), "endpoint": endpoint}, auth=a)
        assert resp.status == 200 and resp.json["endpoint"] == endpoint, resp
    # a gateway peer's endpoint is where stock peers send (a gateway on their host)
    gw = server.post("/api/peers", {"name": uniq("gw"), "public_key": wg_key(),
                                    "endpoint": "127.0.0.1:51820", "proxy_cluster": CLUSTER},
                     auth=a)
    assert gw.status == 200 and gw.json["endpoint"] == "127.0.0.1:51820", gw


def test_a_stored_loopback_endpoint_does_not_block_other_changes(server):
    """A peer stored with such an endpoint before the check: renaming it
    keeps its endpoint (the gateways refuse it anyway); changing it is checked."""
    a = new_account(server)
    store = server.open_store()
    try:
        old = store.peers.create(Peer(account_id=account_id(server, a), name="old",
                                      key=wg_key(), endpoint="127.0.0.1:51820"))
    finally:
        store.close()
    resp = server.put(f"/api/peers/{old.id}", {"name": "renamed"}, auth=a)
    assert resp.status == 200 and resp.json["endpoint"] == "127.0.0.1:51820", resp
    resp = server.put(f"/api/peers/{old.id}", {"name": "renamed", "endpoint": "[::1]:1"},
                      auth=a)
    assert resp.status == 422, resp


# -- BYOP clusters ------------------------------------------------------------------------


def domain(server, auth: str, name: str, cluster: str):
    return server.post("/api/reverse-proxies/domains",
                       {"domain": name, "target_cluster": cluster}, auth=auth)


def test_a_custom_domain_cannot_target_another_accounts_own_cluster(server):
    a, b = new_account(server), new_account(server)
    byop = f"{uniq('byop')}.a.test"
    register_gateway(server, account_id(server, a), byop)  # A's own gateway
    resp = domain(server, b, f"{uniq('d')}.b.test", byop)
    assert resp.status == 422, resp
    assert "another account's own cluster" in resp.json["message"]
    assert not [d for d in server.get("/api/reverse-proxies/domains", auth=b).json
                if d["type"] == "custom"]
    # A itself may point its own domains at it
    assert domain(server, a, f"{uniq('d')}.a.test", byop).status == 200


def test_a_domain_whose_cluster_became_another_accounts_derives_no_service(server):
    """B targeted an address no gateway announced yet; then A's own gateway
    announces it: B's services under that domain are refused (412) rather
    than derived to A's cluster."""
    a, b = new_account(server), new_account(server)
    later = f"{uniq('later')}.a.test"
    apex = f"{uniq('d')}.b.test"
    assert domain(server, b, apex, later).status == 200
    register_gateway(server, account_id(server, a), later)
    resp = server.post("/api/reverse-proxies/services", {
        "name": "s", "domain": f"app.{apex}", "enabled": True,
        "targets": [{"target_id": later, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]}, auth=b)
    assert resp.status == 412, resp
    assert "another account's own cluster" in resp.json["message"]


def test_shared_known_and_own_clusters_stay_usable(server):
    a, b = new_account(server), new_account(server)
    shared = f"{uniq('shared')}.proxy.test"
    register_gateway(server, None, shared)  # a management-wide gateway
    for who in (a, b):
        assert domain(server, who, f"{uniq('d')}.test", shared).status == 200
    # an address both a shared gateway and A's own announce is shared
    both = f"{uniq('both')}.proxy.test"
    register_gateway(server, account_id(server, a), both)
    register_gateway(server, None, both)
    assert domain(server, b, f"{uniq('d')}.test", both).status == 200
    # an address two accounts' own gateways announce: each may use it for itself
    twice = f"{uniq('twice')}.proxy.test"
    register_gateway(server, account_id(server, a), twice)
    register_gateway(server, account_id(server, b), twice)
    assert domain(server, b, f"{uniq('d')}.test", twice).status == 200
    # a cluster no gateway announced yet (upstream accepts any target)
    assert domain(server, b, f"{uniq('d')}.test", f"{uniq('later')}.proxy.test").status == 200


# -- L4 listen ports ----------------------------------------------------------------------


def l4_body(mode: str, port, *, private: bool = False, group: str = "") -> dict:
    body = {"name": uniq("l4"), "domain": f"{uniq('l4')}.{CLUSTER}", "mode": mode,
            "enabled": True, "listen_port": port,
            "targets": [{"target_id": CLUSTER, "target_type": "cluster",
                         "protocol": "tcp" if mode == "tls" else mode,
                         "host": "10.0.0.5", "port": 5432, "enabled": True,
                         "options": {"direct_upstream": True}}]}
    if private:
        body.update(private=True, access_groups=[group])
    return body


def test_l4_listen_ports_are_checked_at_create_and_update(server):
    a = new_account(server)
    register_gateway(server, None, CLUSTER)
    group = server.post("/api/groups", {"name": uniq("g")}, auth=a).json["id"]
    services = "/api/reverse-proxies/services"
    # a value that is no port at all fails parsing (400, as upstream's uint16 does) ...
    for port in (70000, -1, 65536, True, "8080", 1.5):
        resp = server.post(services, l4_body("tcp", port), auth=a)
        assert resp.status == 400, (port, resp)
        assert "listen_port" in resp.json["message"], resp
    # ... a mode that needs a port refuses 0 (422)
    for mode, private in (("tls", False), ("tcp", True), ("udp", True)):
        resp = server.post(services, l4_body(mode, 0, private=private, group=group), auth=a)
        assert resp.status == 422, (mode, private, resp)
        assert "listen_port is required" in resp.json["message"], resp
    # valid input keeps upstream's shape: an explicit port as given, 0 auto-assigned
    fixed = server.post(services, l4_body("tcp", 15432), auth=a)
    assert fixed.status == 200 and fixed.json["listen_port"] == 15432, fixed
    auto = server.post(services, l4_body("udp", 0), auth=a)
    assert auto.status == 200 and 10000 <= auto.json["listen_port"] <= 65535, auto
    tls = server.post(services, l4_body("tls", 8443), auth=a)
    assert tls.status == 200 and tls.json["listen_port"] == 8443, tls
    # the same checks on update
    body = {**l4_body("tcp", 70000), "name": fixed.json["name"], "domain": fixed.json["domain"]}
    resp = server.put(f"{services}/{fixed.json['id']}", body, auth=a)
    assert resp.status == 400 and "listen_port" in resp.json["message"], resp
    body = {**l4_body("tls", 0), "name": tls.json["name"], "domain": tls.json["domain"]}
    resp = server.put(f"{services}/{tls.json['id']}", body, auth=a)
    assert resp.status == 422 and "listen_port" in resp.json["message"], resp
