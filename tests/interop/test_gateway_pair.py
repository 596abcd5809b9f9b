"""Two gateways serving one cluster domain, with real processes:

    netns G: twistd nbmanagement; twistd nbgateway x2 (same --domain, WireGuard
             on UDP 51820 and 51821, each its own data directory and local CA);
             upstream HTTP server 127.0.0.1:8081
    netns A: wireguard-go configured from the management's wg-quick config, curl

The account gets one proxy peer per gateway and the peer's config lists both
(each its own tunnel address and endpoint). With both up the private service
answers through either address; with one gateway stopped a stock client that
is given both addresses (curl with two addresses for the name) still gets its
answer through the other.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import (
    APP,
    DOMAIN,
    GW_HOST,
    VENV_BIN,
    World,
    gateway_cas,
    service_body,
    wait_for,
)
from tests.interop.testbed import Testbed

pytestmark = pytest.mark.interop

#: every A answer of a query, in order (one line each); exit 1 on an error
DNS_QUERY_ALL = textwrap.dedent('''
    import socket, struct, sys
    name, server = sys.argv[1], sys.argv[2]
    q = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    q += struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (server, 53)); r = s.recv(4096)
    rcode = r[3] & 15; qd, an = struct.unpack("!HH", r[4:8])
    if rcode or not an:
        print("RCODE", rcode); sys.exit(1)
    def skip_name(i):
        while True:
            n = r[i]
            if n >= 0xC0:
                return i + 2
            if n == 0:
                return i + 1
            i += n + 1
    i = 12
    for _ in range(qd):
        i = skip_name(i) + 4
    for _ in range(an):
        i = skip_name(i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", r[i:i + 10]); i += 10
        if rtype == 1:
            print(socket.inet_ntoa(r[i:i + rdlen]))
        i += rdlen
''')


class Pair(World):
    """World with two gateways of the same cluster (gateway 1 on UDP 51820 in
    World's data directory, gateway 2 on 51821 in its own)."""

    def __init__(self, tb: Testbed) -> None:
        super().__init__(tb)
        self.gw2_dir = os.path.join(self.tmp, "gw2")
        self.gateways: dict[int, subprocess.Popen] = {}

    def start_pair_gateway(self, n: int, token: str) -> None:
        datadir = self.gw_dir if n == 1 else self.gw2_dir
        env = dict(os.environ, NB_PROXY_TOKEN=token,
                   NB_PROXY_DIRECT_UPSTREAM_ALLOW=self.direct_upstream_allow)
        port = 51819 + n
        self.gateways[n] = self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbgateway",
             "--mgmt", "http://127.0.0.1:33073", "--domain", DOMAIN, "--private",
             "--wg-port", str(port), "--wg-endpoint", f"{GW_HOST}:{port}",
             "--addr", f"127.0.0.1:{8442 + n}", "--health-addr", f"127.0.0.1:{8089 + n}",
             "--datadir", datadir, "--cert-dir", os.path.join(datadir, "certs")],
            stdout=self.log(f"gateway{n}"), stderr=subprocess.STDOUT, cwd=self.tmp, env=env)


@pytest.fixture(scope="module")
def pair():
    with world_on_testbed(Pair, "curl", "wg-quick",
                          logs=("gateway1", "gateway2", "management")) as w:
        w.start_upstream()
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_pair_gateway(1, token)
        w.start_pair_gateway(2, token)
        wait_for(lambda: DOMAIN in json.dumps(w.rest("GET", "/reverse-proxies/clusters")),
                 45, "the gateways to connect to management")
        yield w


def test_one_gateway_stopped_the_other_serves(pair):
    w = pair
    devs = w.rest("POST", "/groups", {"name": "devs"})
    w.add_peer("alice", [devs["id"]])
    w.rest("POST", "/reverse-proxies/services",
           service_body("app", APP, private=True, groups=[devs["id"]]))
    peer_id = w.peers["alice"]["id"]
    conf = wait_for(lambda: (lambda c: c if c.count("[Peer]") == 2 else None)(
        w.rest("GET", f"/peers/{peer_id}/wireguard-config")), 45,
        "both gateways' proxy peers in alice's config")
    proxies = [p for p in w.rest("GET", "/peers") if p.get("proxy_cluster") == DOMAIN]
    assert len(proxies) == 2
    endpoints = re.findall(r"^Endpoint\s*=\s*(\S+)$", conf, re.M)
    assert sorted(endpoints) == [f"{GW_HOST}:51820", f"{GW_HOST}:51821"], conf
    tunnel_ips = re.findall(r"^AllowedIPs\s*=\s*([0-9.]+)/32", conf, re.M)
    assert len(set(tunnel_ips)) == 2, conf
    # both gateways are the peer's name servers (a stock resolver tries the next)
    dns = re.search(r"^DNS\s*=\s*(.+)$", conf, re.M)
    assert dns and sorted(x.strip() for x in dns.group(1).split(",")
                          if "." in x) == sorted(tunnel_ips), conf
    ns, first_ip, _ = w.connect_peer("alice", conf)
    other_ip = next(ip for ip in tunnel_ips if ip != first_ip)
    # the tunnel device is the one routing to the first gateway (wireguard-go's
    # control sockets are shared between namespaces, so `wg show` lists others too)
    wg_if = re.search(r"\bdev (\S+)", ns.run(["ip", "route", "get", first_ip]).stdout).group(1)
    ns.add_route(wg_if, f"{other_ip}/32")
    bundle = w.tb.write_file("cas.pem", "".join(
        pathlib.Path(gateway_cas(d)).read_text() for d in (w.gw_dir, w.gw2_dir)))

    def curl(ips: list[str]) -> tuple[int, str]:
        r = ns.run(["curl", "-sS", "-m", "15", "--connect-timeout", "8",
                    "--resolve", f"{APP}:443:{','.join(ips)}", "--cacert", bundle,
                    "-o", "/dev/null", "-w", "%{http_code}", f"https://{APP}/pair"],
                   check=False, timeout=30)
        return (int(r.stdout) if r.stdout.isdigit() else 0), r.stderr

    for ip in tunnel_ips:  # each gateway serves on its own tunnel address
        wait_for(lambda ip=ip: curl([ip])[0] == 200, 45, f"the service through {ip}")
    script = w.tb.write_file("dnsq.py", DNS_QUERY_ALL)

    def resolve(server: str) -> list[str]:
        return ns.run([sys.executable, script, APP, server], check=False).stdout.split()

    # each gateway answers the private name with both gateways, its own first
    for ip in tunnel_ips:
        answer = wait_for(lambda ip=ip: (lambda a: a if len(a) == 2 else None)(resolve(ip)),
                          45, f"both gateways in {ip}'s answer")
        assert answer[0] == ip and sorted(answer) == sorted(tunnel_ips), answer
    # which gateway owns which tunnel address: the first [Peer] block is 51820's
    blocks = conf.split("[Peer]")[1:]
    ip_51820 = next(re.search(r"AllowedIPs\s*=\s*([0-9.]+)/32", b).group(1)
                    for b in blocks if f"{GW_HOST}:51820" in b)
    # stop the first gateway (the one on 51820); the stock client given both
    # addresses still gets its answer through the second
    w.gateways[1].send_signal(signal.SIGTERM)
    w.gateways[1].wait(timeout=20)
    assert curl([ip_51820])[0] == 0  # the stopped one is gone
    survivor = next(ip for ip in tunnel_ips if ip != ip_51820)
    code, err = curl([ip_51820, survivor])
    assert code == 200, err
    # the surviving gateway still answers the private name, its own address
    # first, and drops the stopped one once management sees it gone
    assert resolve(survivor)[0] == survivor
    wait_for(lambda: resolve(survivor) == [survivor], 45, "the stopped gateway dropped")
