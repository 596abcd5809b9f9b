"""Two accounts on one management and one gateway, with real processes (issue 11
acceptance: the multi-account suite):

    netns G: twistd nbmanagement (REST 127.0.0.1:33071, gRPC 127.0.0.1:33073)
             twistd nbgateway --mgmt ... --private, a management-wide proxy token
                 (one netstack per account), --direct-upstream-allow scoped per account
             upstream of account A 127.0.0.1:8081, of account B 127.0.0.2:8082
                 (each logs every request path)
    netns PA: stock wireguard-go peer "alice" of account A (group devs-a)
    netns PB: stock wireguard-go peer "bob" of account B (group devs-b)

Both accounts are created through ``POST /api/accounts`` by the instance admin,
and their peers get the same tunnel address (each account allocates from its
own 100.64.0.0/10). Checked across the account boundary:

* routes: bob's own tunnel listener does not serve A's private service, by name
  (SNI + Host) or by Host header alone, on HTTPS or HTTP; A's upstream sees
  nothing;
* DNS: B's tunnel DNS does not answer A's names (and does answer B's);
* certificates: B's tunnel listener, asked for SNI ``app-a...``, does not return
  a certificate naming it;
* REST: B's admin cannot read, change or delete A's services, peers, groups,
  users or access log; the lists B gets contain only B's objects;
* logs: A's access log holds A's requests only, B's holds B's only;
* refusals: B's service pointing at A's upstream is refused by the gateway
  (502, A's upstream sees nothing) and the instance admin reads which service
  was refused and why in ``GET /api/reverse-proxies/service-status``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.multiaccount import (
    Tenant,
    global_proxy_token,
    rest_as,
    rest_status,
    tenant,
)
from tests.interop.test_private_e2e import DNS_QUERY, DOMAIN, UPSTREAM, World, gateway_cas, wait_for

pytestmark = pytest.mark.interop

APP_A = f"app-a.{DOMAIN}"
APP_B = f"app-b.{DOMAIN}"
B_UPSTREAM = ("127.0.0.2", 8082)


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _private(name: str, domain: str, group_id: str, host: str, port: int) -> dict:
    return {"name": name, "domain": domain, "enabled": True, "private": True,
            "access_groups": [group_id],
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": host, "port": port, "enabled": True,
                         "options": {"direct_upstream": True}}]}


class Side:
    """One account's view: tenant REST client, its peer's namespace and addresses."""

    def __init__(self, t: Tenant, app: str, upstream_log: str) -> None:
        self.t = t
        self.app = app
        self.upstream_log = upstream_log
        self.ns = None
        self.gw_ip = ""
        self.dns = ""
        self.peer: dict = {}
        self.service: dict = {}
        self.group: dict = {}

    def curl(self, world: World, url: str, *extra: str, resolve: str | None = None):
        name = resolve or self.app
        args = ["curl", "-sS", "-m", "8", "--connect-timeout", "4",
                "--resolve", f"{name}:443:{self.gw_ip}", "--resolve", f"{name}:80:{self.gw_ip}",
                "--cacert", gateway_cas(world.gw_dir),
                "-o", "-", "-w", "\n%{http_code}", *extra, url]
        r = self.ns.run(args, check=False, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body, r.stderr

    def dns_answer(self, world: World, name: str) -> str | None:
        script = world.tb.write_file("dnsq.py", DNS_QUERY)
        r = self.ns.run([sys.executable, script, name, self.dns], check=False, timeout=15)
        return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick", "openssl",
                          logs=("gateway", "management"), tail=6000) as w:
        w.g.ip("addr", "add", "127.0.0.2/8", "dev", "lo")
        w.start_upstream()  # A's upstream 127.0.0.1:8081 -> w.upstream_log
        script = os.path.join(w.tmp, "upstream-b.py")
        with open(script, "w") as f:
            f.write(UPSTREAM)
        b_log = os.path.join(w.tmp, "upstream-b.log")
        w.g.popen([sys.executable, script, str(B_UPSTREAM[1]), b_log, B_UPSTREAM[0]],
                  stdout=w.log("upstream-b"), stderr=subprocess.STDOUT)
        w.start_management()
        w.a = Side(tenant(w, "tenant-a"), APP_A, w.upstream_log)
        w.b = Side(tenant(w, "tenant-b"), APP_B, b_log)
        w.start_gateway(global_proxy_token(w), "--direct-upstream-allow",
                        f"127.0.0.1/32@{w.a.t.account_id},127.0.0.2/32@{w.b.t.account_id}")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        for side, peer_name, upstream in ((w.a, "alice", ("127.0.0.1", 8081)),
                                          (w.b, "bob", B_UPSTREAM)):
            side.group = side.t.rest("POST", "/groups", {"name": f"devs-{peer_name}"})
            side.peer = side.t.add_peer(peer_name, [side.group["id"]])
            side.service = side.t.rest("POST", "/reverse-proxies/services", _private(
                side.app.split(".")[0], side.app, side.group["id"], *upstream))
        for side, peer_name in ((w.a, "alice"), (w.b, "bob")):
            side.ns, side.gw_ip, conf = side.t.connect_peer(peer_name)
            side.dns = re.search(r"^DNS\s*=\s*([0-9.]+)", conf, re.M).group(1)
        yield w


def test_two_accounts_with_overlapping_addresses_each_reach_their_own(world):
    a, b = world.a, world.b
    assert a.t.account_id != b.t.account_id
    # the same tunnel address in both accounts, and the same gateway address too
    assert a.peer["ip"] == b.peer["ip"], (a.peer["ip"], b.peer["ip"])
    for side, path in ((a, "/from-alice"), (b, "/from-bob")):
        _code, body, _err = wait_for(lambda s=side, p=path: (lambda r: r if r[0] == 200 else None)(
            s.curl(world, f"https://{s.app}{p}")), 30, f"{side.app} from its own peer")
        assert f'"{path}"' in body
    assert _lines(a.upstream_log) == ["/from-alice"]
    assert _lines(b.upstream_log) == ["/from-bob"]


def test_b_cannot_reach_a_service_on_its_own_tunnel_listener(world):
    a, b = world.a, world.b
    before = _lines(a.upstream_log)
    attempts = [
        # A's name as SNI and Host (as if B's DNS had answered it)
        b.curl(world, f"https://{APP_A}/steal-sni", resolve=APP_A),
        b.curl(world, f"https://{APP_A}/steal-sni-k", "-k", resolve=APP_A),
        # B's own name in SNI, A's in the Host header
        b.curl(world, f"https://{APP_B}/steal-host", "-H", f"Host: {APP_A}"),
        # plain HTTP on the tunnel listener
        b.curl(world, f"http://{APP_A}/steal-http", resolve=APP_A),
        b.curl(world, f"http://{b.gw_ip}/steal-ip", "-H", f"Host: {APP_A}"),
    ]
    for code, body, err in attempts:
        assert code != 200, (code, body, err)
        assert "steal" not in body, body
    assert _lines(a.upstream_log) == before
    # and B's own service still works on the same listener
    assert b.curl(world, f"https://{APP_B}/still-mine")[0] == 200


def test_b_tunnel_dns_does_not_answer_a_names(world):
    a, b = world.a, world.b
    assert wait_for(lambda: b.dns_answer(world, APP_B), 20, "B's own name") == b.gw_ip
    assert wait_for(lambda: a.dns_answer(world, APP_A), 20, "A's own name") == a.gw_ip
    assert b.dns_answer(world, APP_A) is None
    assert a.dns_answer(world, APP_B) is None


def _served_cert(side: Side, sni: str) -> str:
    r = side.ns.run(["openssl", "s_client", "-connect", f"{side.gw_ip}:443",
                     "-servername", sni], input="", check=False, timeout=20)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S)
    if pem is None:
        return ""  # no certificate at all: the handshake was refused
    text = side.ns.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"],
                       input=pem.group(0), check=False, timeout=10)
    return text.stdout


def test_b_tunnel_listener_does_not_hand_out_a_certificate_naming_a(world):
    a, b = world.a, world.b
    assert APP_A in _served_cert(a, APP_A)  # sanity: A's own listener names it
    assert APP_B in _served_cert(b, APP_B)
    assert APP_A not in _served_cert(b, APP_A)
    assert APP_B not in _served_cert(a, APP_B)


def test_b_admin_cannot_touch_a_objects_through_rest(world):
    a, b = world.a, world.b
    tok = b.t.admin
    svc, peer, grp = a.service, a.peer, a.group
    users_a = a.t.rest("GET", "/users")
    for method, path, body in (
        ("GET", f"/reverse-proxies/services/{svc['id']}", None),
        ("PUT", f"/reverse-proxies/services/{svc['id']}",
         _private("x", APP_A, grp["id"], "127.0.0.2", 8082)),
        ("DELETE", f"/reverse-proxies/services/{svc['id']}", None),
        ("GET", f"/peers/{peer['id']}", None),
        ("PUT", f"/peers/{peer['id']}", {"name": "stolen"}),
        ("DELETE", f"/peers/{peer['id']}", None),
        ("GET", f"/peers/{peer['id']}/wireguard-config", None),
        ("GET", f"/peers/{peer['id']}/network-map", None),
        ("GET", f"/groups/{grp['id']}", None),
        ("PUT", f"/groups/{grp['id']}", {"name": "stolen", "peers": []}),
        ("GET", f"/users/{users_a[0]['id']}", None),
        ("GET", f"/users/{users_a[0]['id']}/tokens", None),
        ("GET", f"/accounts/{a.t.account_id}", None),
        ("DELETE", f"/accounts/{a.t.account_id}", None),
        ("POST", "/accounts", {"name": "mine-now"}),
    ):
        status, answer = rest_status(world, tok, method, path, body)
        assert status in (403, 404), (method, path, status, answer)
    # B's lists hold B's objects only
    assert {s["id"] for s in rest_as(world, tok, "GET", "/reverse-proxies/services")} == {
        b.service["id"]}
    peers_b = rest_as(world, tok, "GET", "/peers")
    assert {p["id"] for p in peers_b if not p.get("proxy_embedded")} == {b.peer["id"]}
    assert peer["id"] not in {p["id"] for p in peers_b}
    assert svc["id"] not in str(rest_as(world, tok, "GET", f"/events/proxy?service_id={svc['id']}"
                                                           "&page_size=100"))
    # A's objects are unchanged
    assert a.t.rest("GET", f"/reverse-proxies/services/{svc['id']}")["domain"] == APP_A
    assert a.t.rest("GET", f"/peers/{peer['id']}")["name"] == "alice"


def test_instance_admin_sees_which_service_the_gateway_refused_and_why(world):
    """B points a service at A's upstream (not in B's allow-list entry): the
    gateway refuses the dial (502), reports ERROR with its reason, and the
    instance admin (and B's admin, on the service) can read why."""
    a, b = world.a, world.b
    steal = f"b-steal.{DOMAIN}"
    svc = b.t.rest("POST", "/reverse-proxies/services", _private(
        "b-steal", steal, b.group["id"], "127.0.0.1", 8081))
    before = _lines(a.upstream_log)
    code, body, err = wait_for(lambda: (lambda r: r if r[0] not in (0, 404) else None)(
        b.curl(world, f"https://{steal}/steal-upstream", resolve=steal)), 30,
        "the gateway to route b-steal")
    assert code == 502, (code, body, err)
    assert _lines(a.upstream_log) == before

    def refused():
        rows = world.rest("GET", "/reverse-proxies/service-status?status=error")
        return next((r for r in rows if r["id"] == svc["id"]), None)

    row = wait_for(refused, 15, "the refusal in the instance admin's listing")
    assert row["account_id"] == b.t.account_id and row["domain"] == steal
    assert "127.0.0.1:8081" in row["status_message"], row
    assert "refused" in row["status_message"], row
    meta = b.t.rest("GET", f"/reverse-proxies/services/{svc['id']}")["meta"]
    assert meta["status"] == "error" and meta["status_message"] == row["status_message"]
    # A's admin sees none of B's services in its own listing
    assert svc["id"] not in {r["id"] for r in a.t.rest("GET", "/reverse-proxies/service-status")}
    b.t.rest("DELETE", f"/reverse-proxies/services/{svc['id']}")


def _entries(side: Side) -> list[dict]:
    return side.t.rest("GET", "/events/proxy?page_size=100")["data"]


def test_each_access_log_holds_its_own_account_only(world):
    a, b = world.a, world.b
    # the requests of the tests above arrive in batches: wait for both sides
    wait_for(lambda: any(e["path"] == "/from-alice" for e in _entries(a)), 20, "A's entries")
    wait_for(lambda: any(e["path"] == "/from-bob" for e in _entries(b)), 20, "B's entries")
    log_a, log_b = _entries(a), _entries(b)
    assert {e["service_id"] for e in log_a} <= {a.service["id"]}, log_a
    assert a.service["id"] not in {e["service_id"] for e in log_b}, log_b
    assert not any("alice" in e["path"] for e in log_b), log_b
    assert not any(e["host"] == APP_A for e in log_b), log_b
    assert not any(e["path"] in ("/from-bob", "/still-mine") for e in log_a), log_a


def test_b_requests_for_a_names_are_not_in_a_access_log(world):
    a = world.a
    wait_for(lambda: any(e["path"] == "/from-alice" for e in _entries(a)), 20, "A's entries")
    leaked = [(e["path"], e["status_code"], e.get("source_ip")) for e in _entries(a)
              if "steal" in e["path"]]
    assert leaked == []
