"""Smoke test of the testbed harness itself: two wireguard-go peers, no nbgateway code.

Proves the recipe (namespaces, veth, wireguard-go, ``wg set``, addresses, routes,
dump parsing, ``setns``) on this machine, and that teardown leaves nothing behind.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.interop.testbed import (
    NETNS_DIR,
    Testbed,
    current_netns_inode,
    inside_netns,
    parse_dump,
    pid_alive,
    ping_loss,
    tunnel_pair,
    unavailable_reason,
)

pytestmark = pytest.mark.interop


def test_two_wireguard_go_peers_ping_through_the_tunnel_and_teardown_is_clean():
    reason = unavailable_reason(need=("ping",))
    if reason is not None:
        pytest.skip(reason)
    tb = Testbed()
    try:
        ns_a, wg_a, ns_b, wg_b = tunnel_pair(tb)
        before = wg_a.peer(wg_b.keys.public)
        assert before.latest_handshake == 0
        assert before.endpoint == "198.18.0.2:51820"

        v4 = ns_a.ping("100.64.0.2", count=3, interval=0.2)
        assert v4.returncode == 0, v4.stdout + v4.stderr
        assert ping_loss(v4.stdout) == 0.0
        v6 = ns_b.ping("fd00:64::1", count=3, interval=0.2)
        assert v6.returncode == 0, v6.stdout + v6.stderr
        assert ping_loss(v6.stdout) == 0.0

        after = wg_a.peer(wg_b.keys.public)
        assert after.latest_handshake > 0
        assert after.rx_bytes > 0 and after.tx_bytes > 0
        other = wg_b.peer(wg_a.keys.public)
        assert other.latest_handshake > 0
        assert wg_a.dump().public_key == wg_a.keys.public_b64
        assert wg_a.listen_port == 51820

        # Roaming knob used by the gateway tests: the new port shows in the dump.
        wg_b.set_listen_port(51821)
        assert wg_b.listen_port == 51821

        pids = [p.pid for p in tb.processes]
        sockets = [wg.socket_path for wg in (wg_a, wg_b)]
        names = [ns_a.name, ns_b.name]
        assert all(pid_alive(p) for p in pids)
        assert all(os.path.exists(s) for s in sockets)
    finally:
        left = tb.close()
    assert left == []
    assert not any(pid_alive(p) for p in pids)
    assert not any(os.path.exists(s) for s in sockets)
    assert not any(os.path.exists(os.path.join(NETNS_DIR, n)) for n in names)


def test_inside_netns_binds_sockets_in_the_namespace_and_switches_back(testbed):
    ns = testbed.netns()
    home = current_netns_inode()
    with inside_netns(ns.name):
        assert current_netns_inode() != home
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    assert current_netns_inode() == home
    try:
        port = sock.getsockname()[1]
        # A datagram sent from inside the namespace reaches the socket ...
        ns.run(["python3", "-c",
                "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                f"s.sendto(b'hello', ('127.0.0.1', {port}))"])
        sock.settimeout(5)
        data, _ = sock.recvfrom(100)
        assert data == b"hello"
    finally:
        sock.close()


def test_parse_dump():
    text = ("priv\tpub\t51820\toff\n"
            "PEER\t(none)\t127.0.0.1:5000\t100.64.0.1/32,fd00:64::1/128\t1700000000\t10\t20\t25\n"
            "PEER2\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    d = parse_dump(text)
    assert d.listen_port == 51820 and d.public_key == "pub"
    p = d.peers["PEER"]
    assert p.endpoint == "127.0.0.1:5000"
    assert p.allowed_ips == ("100.64.0.1/32", "fd00:64::1/128")
    assert (p.latest_handshake, p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (
        1700000000, 10, 20, 25)
    q = d.peers["PEER2"]
    assert q.endpoint is None and q.allowed_ips == () and q.persistent_keepalive is None
