"""Private L4 end to end (issue 13, our extension), with stock wireguard-go peers.

    netns G: management, gateway (--private), TCP echo on 127.0.0.1:9100 that
             counts its accepted connections, UDP echo on 127.0.0.1:9053
    netns A: alice (in the access group), wireguard-go configured from
             management's wg-quick config
    netns B: bob (not in the group), given alice's [Peer] section anyway

A private ``tcp`` service listens on the gateway's tunnel address at port
2222 and a private ``udp`` one at 5300 (never on host ports).  Every new
connection / UDP session passes the private gate: roster, then
ValidateTunnelPeer through the validation cache.
"""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_l4_public import make_certs
from tests.interop.test_private_e2e import DNS_QUERY, DOMAIN, World, counter, wait_for
from tests.interop.testbed import inside_netns

pytestmark = pytest.mark.interop

SERVERS = os.path.join(os.path.dirname(__file__), "l4_servers.py")
SSH_NAME = f"ssh.{DOMAIN}"
TCP_PORT, UDP_PORT, TLS_PORT = 2222, 5300, 8444


def accepted(world) -> int:
    try:
        with open(world.count_file) as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def echo_once(ns_name: str, host: str, port: int, payload: bytes, timeout: float = 10):
    with inside_netns(ns_name):
        s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    finally:
        s.close()


def private_l4(world, name: str, mode: str, listen_port: int, port: int) -> dict:
    return world.rest("POST", "/reverse-proxies/services", {
        "name": name, "domain": f"{name}.{DOMAIN}", "enabled": True, "private": True,
        "access_groups": [world.devs["id"]], "mode": mode, "listen_port": listen_port,
        "targets": [{"target_id": DOMAIN, "target_type": "cluster",
                     "protocol": "udp" if mode == "udp" else "tcp",
                     "host": "127.0.0.1", "port": port, "enabled": True,
                     "options": {"direct_upstream": True}}]})


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "wg-quick", logs=("gateway", "management"), tail=6000) as w:
        w.count_file = os.path.join(w.tmp, "accepted.txt")
        logf = w.log("l4-upstreams")
        w.g.popen([sys.executable, SERVERS, "conn-count", "127.0.0.1", "9100", w.count_file],
                  stdout=logf, stderr=logf)
        w.g.popen([sys.executable, SERVERS, "udp-echo", "127.0.0.1", "9053"],
                  stdout=logf, stderr=logf)
        w.l4_ca = make_certs(w.tmp)
        w.g.popen([sys.executable, SERVERS, "tls-name", "127.0.0.1", "9445",
                   os.path.join(w.tmp, "p.gw.test.crt"), os.path.join(w.tmp, "p.gw.test.key"),
                   "p.gw.test"], stdout=logf, stderr=logf)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: any(DOMAIN in str(c) for c in w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        w.devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [w.devs["id"]])
        w.add_peer("bob", [])
        w.tcp = private_l4(w, "ssh", "tcp", TCP_PORT, 9100)
        w.udp = private_l4(w, "dnsrelay", "udp", UDP_PORT, 9053)
        w.tls = private_l4(w, "p", "tls", TLS_PORT, 9445)
        ns, gw_ip, conf = w.connect_peer("alice")
        w.alice = (ns, gw_ip, conf)
        yield w


def test_in_group_peer_reaches_private_tcp_by_name(world):
    ns, gw_ip, conf = world.alice
    dns_server = re.search(r"^DNS\s*=\s*([0-9.]+)", conf, re.M)
    assert dns_server, conf
    script = world.tb.write_file("dnsq.py", DNS_QUERY)
    answer = wait_for(lambda: ns.run([sys.executable, script, SSH_NAME, dns_server.group(1)],
                                     check=False).stdout.strip() or None, 20, "DNS answer")
    assert answer == gw_ip

    def try_echo():
        try:
            return echo_once(ns.name, answer, TCP_PORT, b"SSH-2.0-hello\r\n", timeout=5)
        except OSError:
            return None

    reply = wait_for(try_echo, 30, "an echo through the private TCP service")
    assert reply == b"SSH-2.0-hello\r\nBYE\n"
    payload = os.urandom(2 << 20)  # a bigger transfer through the tunnel, both ways
    assert echo_once(ns.name, gw_ip, TCP_PORT, payload, timeout=30) == payload + b"BYE\n"


def test_hundred_connections_one_validation(world):
    ns, gw_ip, _ = world.alice
    echo_once(ns.name, gw_ip, TCP_PORT, b"warm")  # the cache holds alice now
    before = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                     result="miss")
    for i in range(100):
        assert echo_once(ns.name, gw_ip, TCP_PORT, b"n%d" % i) == b"n%dBYE\n" % i
    after = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                    result="miss")
    assert after == before  # 101 connections, at most the first one asked management


def test_private_udp_session(world):
    ns, gw_ip, _ = world.alice
    with inside_netns(ns.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        def ask():
            s.sendto(b"ping-udp", (gw_ip, UDP_PORT))
            try:
                return s.recv(2048)
            except OSError:
                return None

        assert wait_for(ask, 20, "a UDP echo through the private service") == b"ping-udp"
        for i in range(200):
            s.sendto(b"d%d" % i, (gw_ip, UDP_PORT))
            assert s.recv(2048) == b"d%d" % i
    finally:
        s.close()


def test_private_tls_passthrough_verifies_the_upstream(world):
    ns, gw_ip, _ = world.alice

    def get():
        r = ns.run(["curl", "-sS", "-m", "10", "--cacert", world.l4_ca, "--resolve",
                    f"p.gw.test:{TLS_PORT}:{gw_ip}", f"https://p.gw.test:{TLS_PORT}/"],
                   check=False)
        return r.stdout if r.returncode == 0 else None

    assert wait_for(get, 30, "the private TLS passthrough service") == "p.gw.test"


def test_out_of_group_peer_refused_without_upstream_connection(world):
    _ns, _gw_ip, alice_conf = world.alice
    bob = world.peers["bob"]
    conf = world.rest("GET", f"/peers/{bob['id']}/wireguard-config")
    assert "[Peer]" not in conf
    ns, gw_ip, _ = world.connect_peer("bob", conf + "\n" + alice_conf[alice_conf.index("[Peer]"):])
    before = accepted(world)
    for _ in range(3):
        try:
            reply = echo_once(ns.name, gw_ip, TCP_PORT, b"let me in", timeout=5)
        except OSError:
            reply = b""
        assert reply == b""
    assert accepted(world) == before  # no upstream connection was ever made for bob


def test_access_log_entry_per_connection_with_user(world):
    """Each private L4 connection is one access-log entry: protocol tcp, the
    peer's tunnel address, bytes each way, the close reason, the user."""
    ns, gw_ip, _ = world.alice
    assert echo_once(ns.name, gw_ip, TCP_PORT, b"logged-bytes") == b"logged-bytesBYE\n"

    def entry():
        raw = world.rest("GET", "/events/proxy")
        rows = raw.get("data", raw) if isinstance(raw, dict) else raw
        for e in rows:
            if (e.get("service_id") == world.tcp["id"] and e.get("protocol") == "tcp"
                    and e.get("bytes_upload") == len(b"logged-bytes")):
                return e
        return None

    e = wait_for(entry, 30, "the L4 access-log entry")
    assert e["bytes_download"] == len(b"logged-bytesBYE\n")
    assert e["status_code"] == 200
    assert e["metadata"]["close_reason"] in ("client_closed", "upstream_closed")
    assert "devs" in e["metadata"]["groups"].split(",")
    assert e["source_ip"].startswith("100.")
    assert e.get("user_id")
