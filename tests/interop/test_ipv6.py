"""IPv6 over the tunnel, end to end from stock peers (issue 11 item 7).

Same world as ``test_private_e2e``: management, gateway (``--private``) and a
logging upstream in namespace G; stock wireguard-go peers in their own
namespaces, each configured only from management's wg-quick config (both
``Address`` lines, the proxy peer's ``/32`` and ``/128`` AllowedIPs, its v4
and v6 DNS addresses).  The peers then talk to the gateway over IPv6 only:

* ``ping -6`` the gateway's tunnel IPv6 address;
* DNS: an AAAA query for the private service name, sent to the gateway's v6
  DNS address (and over v4 transport), answers with the gateway's v6 address;
* ``curl -6`` HTTPS to the private service: 200 with the identity headers of
  the same peer as over IPv4 for a peer in the access group (ValidateTunnelPeer
  maps the v6 source to that peer), 403 for a peer that the gateway knows (it
  is in the access group of another private service) but that is not in this
  service's group;
* a 3 MB download over IPv6 arrives intact (bulk TCP at the tunnel MTU).

Addresses: only the namespaces' own (198.18.0.0/15 underlay, the account's
ULA /64 and 100.64.0.0/10 inside the tunnel).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import (
    APP,
    DOMAIN,
    World,
    gateway_cas,
    upstream_requests,
    upstream_target,
    wait_for,
)

pytestmark = pytest.mark.interop

OPS = f"ops.{DOMAIN}"
BIG = f"big.{DOMAIN}"
BIG_SIZE = 3 * 1024 * 1024 + 17

# an upstream that answers every GET with BIG_SIZE deterministic bytes
BIG_UPSTREAM = textwrap.dedent('''
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    SIZE = int(sys.argv[2])
    BODY = bytes(i * 7 % 251 for i in range(SIZE))
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            self.wfile.write(BODY)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')

# qtype 28 (AAAA) or 1 (A) for a name, to a server (v4 or v6 literal); prints the address
DNS_QUERY = textwrap.dedent('''
    import ipaddress, socket, struct, sys
    name, server, qtype = sys.argv[1], sys.argv[2], int(sys.argv[3])
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    q += struct.pack("!HH", qtype, 1)
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (server, 53)); r = s.recv(4096)
    rcode = r[3] & 15; an = struct.unpack("!H", r[6:8])[0]
    if rcode or not an:
        print("RCODE", rcode, "AN", an); sys.exit(1)
    size = 16 if qtype == 28 else 4
    print(ipaddress.ip_address(r[-size:]))
''')


class World6(World):
    def connect_peer6(self, name: str):
        """``connect_peer`` plus what wg-quick would do for the IPv6 half of
        the config: the route to the proxy peer's ``/128``."""
        ns, gw_ip, conf = self.connect_peer(name)
        allowed = re.search(r"^AllowedIPs\s*=\s*(.+)$", conf, re.M).group(1)
        gw6 = next(a.strip()[: -len("/128")] for a in allowed.split(",")
                   if a.strip().endswith("/128"))
        wg = self.tb.interfaces[-1]  # the wireguard-go that connect_peer just started
        assert wg.ns is ns
        ns.add_route(wg.ifname, f"{gw6}/128")
        return ns, gw_ip, gw6, conf


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World6, "curl", "wg-quick", "ping",
                          logs=("gateway", "management"), tail=6000) as w:
        w.start_upstream()
        big = w.tb.write_file("big_upstream.py", BIG_UPSTREAM)
        w.g.popen([sys.executable, big, "8082", str(BIG_SIZE)], stdout=w.log("big"),
                  stderr=subprocess.STDOUT)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: any(DOMAIN in json.dumps(c)
                             for c in w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        devs = w.rest("POST", "/groups", {"name": "devs"})
        ops = w.rest("POST", "/groups", {"name": "ops"})
        w.add_peer("alice", [devs["id"]])
        w.add_peer("bob", [ops["id"]])
        for name, domain, group, port in (("app", APP, devs, 8081), ("ops", OPS, ops, 8081),
                                          ("big", BIG, devs, 8082)):
            w.rest("POST", "/reverse-proxies/services", {
                "name": name, "domain": domain, "enabled": True, "private": True,
                "access_groups": [group["id"]], "targets": [upstream_target(port)]})
        w.alice = w.connect_peer6("alice")
        w.bob = w.connect_peer6("bob")
        yield w


def curl6(world, ns, host: str, path: str, gw6: str, *extra: str):
    args = ["curl", "-6", "-sS", "-m", "10", "--resolve", f"{host}:443:[{gw6}]",
            "--cacert", gateway_cas(world.gw_dir),
            "-o", "-", "-w", "\n%{http_code}\n%{remote_ip}", *extra, f"https://{host}{path}"]
    r = ns.run(args, check=False, timeout=20)
    body, _, tail = r.stdout.rpartition("\n")
    body, _, code = body.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body, tail, r.stderr


def test_config_hands_out_ipv6(world):
    _ns, _gw_ip, gw6, conf = world.alice
    address = re.search(r"^Address\s*=\s*(.+)$", conf, re.M).group(1)
    assert any(a.strip().endswith("/128") for a in address.split(","))
    assert gw6 in re.search(r"^DNS\s*=\s*(.+)$", conf, re.M).group(1)


def test_ping6_the_gateway_tunnel_address(world):
    ns, _gw_ip, gw6, _ = world.alice
    out = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
        ns.run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", gw6], check=False)),
        20, f"an ICMPv6 echo reply from {gw6}")
    assert f"from {gw6}" in out.stdout


def test_dns_aaaa_over_v6_and_v4_transport(world):
    ns, gw_ip, gw6, _ = world.alice
    script = world.tb.write_file("dnsq6.py", DNS_QUERY)

    def ask(server: str, qtype: int):
        r = ns.run([sys.executable, script, APP, server, str(qtype)], check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    assert wait_for(lambda: ask(gw6, 28), 20, "an AAAA answer over IPv6") == gw6
    assert ask(gw_ip, 28) == gw6  # AAAA over the v4 transport
    assert ask(gw6, 1) == gw_ip  # and A over the v6 transport


def test_https_over_ipv6_in_group_gets_identity(world):
    ns, gw_ip, gw6, _ = world.alice
    _code, body, remote, err = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(
            curl6(world, ns, APP, "/v6", gw6, "-H", "X-NetBird-User: mallory")),
        30, "a 200 from the private service over IPv6")
    assert remote == gw6, (remote, err)
    seen6 = json.loads(body)
    assert seen6["path"] == "/v6"
    user6 = seen6["headers"]["x-netbird-user"]
    assert user6 and user6 != "mallory"
    assert "devs" in seen6["headers"]["x-netbird-groups"].split(",")
    # the same peer over IPv4: the same identity
    code4, body4, _ = world.curl(ns, f"https://{APP}/v4", gw_ip=gw_ip)
    assert code4 == 200
    assert json.loads(body4)["headers"]["x-netbird-user"] == user6


def test_https_over_ipv6_out_of_group_is_403(world):
    ns, _gw_ip, gw6, _ = world.bob
    # bob is a roster peer (his own service works over IPv6) ...
    code, _body, _remote, err = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(curl6(world, ns, OPS, "/ops", gw6)),
        30, "bob's own private service over IPv6")
    assert code == 200, err
    # ... but not in app's access group
    before = upstream_requests(world)
    code, body, _remote, err = curl6(world, ns, APP, "/bob", gw6)
    assert code == 403, (code, body, err)
    assert upstream_requests(world) == before


def test_large_download_over_ipv6(world):
    """Bulk TCP over the v6 tunnel: segmentation at the tunnel MTU, windows,
    retransmissions if any; every byte arrives intact."""
    ns, _gw_ip, gw6, _ = world.alice
    out = world.tb.write_file("big.out", "")
    args = ["curl", "-6", "-sS", "-m", "25", "--resolve", f"{BIG}:443:[{gw6}]",
            "--cacert", gateway_cas(world.gw_dir), "-o", out,
            "-w", "%{http_code}", f"https://{BIG}/blob"]
    r = wait_for(lambda: (lambda r: r if r.stdout == "200" else None)(
        ns.run(args, check=False, timeout=30)), 40, "the large download over IPv6")
    assert r.stdout == "200"
    with open(out, "rb") as f:
        got = f.read()
    want = bytes(i * 7 % 251 for i in range(BIG_SIZE))
    assert len(got) == BIG_SIZE
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
