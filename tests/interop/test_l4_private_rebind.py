"""Private L4 after the account's tunnel is re-created (issue 13), with a
stock wireguard-go peer.

The account's only services (a private ``tcp`` on 2222 and a private ``udp``
on 5300) are deleted, so its tunnel goes (new WireGuard key, new netstack),
and created again on the same ports within the 30 s the TCP port lingers.
The lingering router is reused; its listener must move to the new tunnel or
the peer would reach nothing.
"""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest

from tests.interop.conftest import require_testbed
from tests.interop.test_l4_private import SERVERS, echo_once, private_l4
from tests.interop.test_private_e2e import DOMAIN, World, wait_for
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

TCP_PORT, UDP_PORT = 2222, 5300


def _gateway_key(conf: str) -> str:
    return re.search(r"^PublicKey\s*=\s*(\S+)", conf.split("[Peer]", 1)[1], re.M).group(1)


def _reachable(ns, gw_ip: str) -> tuple[bytes | None, bytes | None]:
    def tcp():
        try:
            return echo_once(ns.name, gw_ip, TCP_PORT, b"SSH-2.0-again\r\n", timeout=5)
        except OSError:
            return None

    def udp():
        with inside_netns(ns.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            s.sendto(b"ping-udp", (gw_ip, UDP_PORT))
            return s.recv(2048)
        except OSError:
            return None
        finally:
            s.close()

    return (wait_for(tcp, 20, "a TCP echo through the private service"),
            wait_for(udp, 20, "a UDP echo through the private service"))


def test_private_l4_reachable_after_the_tunnel_is_recreated():
    require_testbed("wg-quick")
    tb = Testbed()
    try:
        w = World(tb)
        logf = w.log("l4-upstreams")
        w.g.popen([sys.executable, SERVERS, "conn-count", "127.0.0.1", "9100",
                   os.path.join(w.tmp, "accepted.txt")], stdout=logf, stderr=logf)
        w.g.popen([sys.executable, SERVERS, "udp-echo", "127.0.0.1", "9053"],
                  stdout=logf, stderr=logf)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: any(DOMAIN in str(c) for c in w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        w.devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [w.devs["id"]])
        tcp = private_l4(w, "ssh", "tcp", TCP_PORT, 9100)
        udp = private_l4(w, "dnsrelay", "udp", UDP_PORT, 9053)
        ns, gw_ip, conf = w.connect_peer("alice")
        assert _reachable(ns, gw_ip) == (b"SSH-2.0-again\r\nBYE\n", b"ping-udp")

        # the account's last services go: its tunnel is torn down; then back
        for svc in (tcp, udp):
            w.rest("DELETE", f"/reverse-proxies/services/{svc['id']}")
        wait_for(lambda: w._config_with_proxy(w.peers["alice"]["id"]) is None, 20,
                 "the gateway's proxy peer to leave alice's config")
        private_l4(w, "ssh", "tcp", TCP_PORT, 9100)  # within the port's 30 s linger
        private_l4(w, "dnsrelay", "udp", UDP_PORT, 9053)
        conf2 = wait_for(lambda: w._config_with_proxy(w.peers["alice"]["id"]), 20,
                         "the new tunnel's [Peer] in alice's config")
        assert _gateway_key(conf2) == _gateway_key(conf)  # the gateway keeps its account key
        # alice's wireguard-go re-reads its config: a fresh handshake with the new tunnel
        ifname = ns.run(["wg", "show", "interfaces"]).stdout.split()[0]
        stripped = ns.run(["wg-quick", "strip", tb.write_file("alice2.conf", conf2)]).stdout
        ns.run(["wg", "setconf", ifname, "/dev/stdin"], input=stripped)
        ns2, gw_ip2 = ns, gw_ip
        assert _reachable(ns2, gw_ip2) == (b"SSH-2.0-again\r\nBYE\n", b"ping-udp")
    finally:
        path = os.path.join(tb.tmpdir, "gateway.log")
        if os.path.exists(path):
            with open(path, "rb") as f:
                print("--- gateway log tail ---\n" + f.read()[-6000:].decode(errors="replace"))
        left = tb.close()
    assert not left, left
