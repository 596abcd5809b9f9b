"""Key squatting with real processes (tenant isolation):

    netns G: twistd nbmanagement, twistd nbgateway (a management-wide proxy
             token, --private), account A's upstream 127.0.0.1:8081
    netns P: stock wireguard-go peer "alice" of account A

Before the gateway starts, account B's admin registers, through
``POST /api/peers``, the public key the gateway holds for account A (its key
file in the gateway's data directory) as B's own peer.  The management
refuses that key to the gateway's CreateProxyPeer (ALREADY_EXISTS); the
gateway rotates A's key (a new key file), registers it, and alice, configured
from the management's wg-quick config, reaches A's private service.  B's peer
keeps the old key; the rotation is counted and logged.
"""

from __future__ import annotations

import base64
import os

import pytest

from nbgateway.service._accounts import account_key
from nbgateway.wireguard.keys import public_key
from tests.interop.conftest import world_on_testbed
from tests.interop.multiaccount import global_proxy_token, tenant
from tests.interop.test_private_e2e import APP, DOMAIN, World, counter, service_body, wait_for

pytestmark = pytest.mark.interop


def pub(key: bytes) -> str:
    return base64.b64encode(public_key(key)).decode()


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick",
                          logs=("gateway", "management"), tail=6000) as w:
        w.start_upstream()
        w.start_management()
        w.a, w.b = tenant(w, "tenant-a"), tenant(w, "tenant-b")
        w.squatted = account_key(w.gw_dir, w.a.account_id)  # what the gateway will load
        w.squat = w.b.rest("POST", "/peers", {"name": "squat", "public_key": pub(w.squatted)})
        w.start_gateway(global_proxy_token(w), "--direct-upstream-allow",
                        f"127.0.0.1/32@{w.a.account_id}")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        group = w.a.rest("POST", "/groups", {"name": "devs"})
        w.a.add_peer("alice", [group["id"]])
        w.a.rest("POST", "/reverse-proxies/services",
                 service_body("app", APP, private=True, groups=[group["id"]]))
        w.ns, w.gw_ip, w.conf = w.a.connect_peer("alice")
        yield w


def test_the_gateway_rotates_a_squatted_key_and_the_service_is_reached(world):
    w = world
    code, body, err = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        w.curl(w.ns, f"https://{APP}/after-rotation", gw_ip=w.gw_ip)), 30,
        "A's private service from alice")
    assert '"/after-rotation"' in body, (code, body, err)
    rotated = account_key(w.gw_dir, w.a.account_id)  # the file the gateway rewrote
    assert rotated != w.squatted
    assert f"PublicKey = {pub(rotated)}" in w.conf
    assert pub(w.squatted) not in w.conf
    # B's peer is as B registered it; A's gateway peer has the new key
    assert w.b.rest("GET", f"/peers/{w.squat['id']}")["public_key"] == pub(w.squatted)
    a_keys = {p["public_key"] for p in w.a.rest("GET", "/peers")}
    assert pub(rotated) in a_keys and pub(w.squatted) not in a_keys
    assert counter(w.metrics(), "nbgateway_account_key_rotations_total") == 1
    with open(os.path.join(w.tmp, "gateway.log")) as f:
        log = f.read()
    assert f"account {w.a.account_id}: CreateProxyPeer refused the tunnel key" in log
