"""``--l4-public-ports`` end to end, with real processes: the operator of this
gateway lets public L4 services bind 25, 53 and 7000-7999 only.

    netns G: twistd nbmanagement, twistd nbgateway (--addr 0.0.0.0:8443
             --l4-public-ports 25,53,7000-7999), a TCP and a UDP echo on 127.0.0.1

A public TCP service on 25 and a UDP service on 53 (below 1024, allowed here
explicitly) relay; a TCP service on 8000 (in the default range, not in this
one) is refused by management (422 naming the range: the gateway advertises
it, nbgw_l4_public_ports) and binds nothing; a TLS service on the main port
8443 (outside the range) shares the gateway's own listener and is served.
tests/interop/test_l4_public.py covers the default range (1024-65535: 25 and
53 refused).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_l4_public import can_connect, l4_service
from tests.interop.test_private_e2e import World, counter, wait_for
from tests.interop.testbed import inside_netns

pytestmark = pytest.mark.interop

SERVERS = os.path.join(os.path.dirname(__file__), "l4_servers.py")
RANGE = "25,53,7000-7999"


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, logs=("gateway", "management")) as w:
        logf = w.log("l4-upstreams")
        w.g.popen([sys.executable, SERVERS, "tcp-echo", "127.0.0.1", "9100"],
                  stdout=logf, stderr=logf)
        w.g.popen([sys.executable, SERVERS, "udp-echo", "127.0.0.1", "9053"],
                  stdout=logf, stderr=logf)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--addr", "0.0.0.0:8443", "--l4-public-ports", RANGE)
        wait_for(lambda: can_connect(w.g.name, "127.0.0.1", 8443), 30, "the gateway")
        yield w


def status_of(world, svc: dict, want: str) -> dict:
    def status():
        meta = world.rest("GET", f"/reverse-proxies/services/{svc['id']}").get("meta", {})
        return meta if meta.get("status") == want else None
    return wait_for(status, 30, f"status {want} of {svc['name']}")


def tcp_echo(ns_name: str, port: int, payload: bytes) -> bytes:
    with inside_netns(ns_name):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    with s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_operator_range_allows_low_ports_and_refuses_the_rest(world):
    smtp = l4_service(world, "smtp", "tcp", 25, 9100)
    dns53 = l4_service(world, "dns53", "udp", 53, 9053)
    with pytest.raises(urllib.error.HTTPError) as refused:
        l4_service(world, "other", "tcp", 8000, 9100)
    assert refused.value.code == 422
    assert f"(allowed: {RANGE})" in json.loads(refused.value.read())["message"]
    passthrough = l4_service(world, "p", "tls", 8443, 9445, domain="p.gw.test")

    status_of(world, smtp, "active")
    assert tcp_echo(world.g.name, 25, b"EHLO x\r\n") == b"EHLO x\r\nBYE\n"
    status_of(world, dns53, "active")
    with inside_netns(world.g.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(1)

        def udp_echo():
            s.sendto(b"q53", ("127.0.0.1", 53))
            try:
                return s.recvfrom(2048)[0]
            except OSError:
                return None
        assert wait_for(udp_echo, 20, "the UDP relay on 53") == b"q53"

    assert not can_connect(world.g.name, "127.0.0.1", 8000)
    status_of(world, passthrough, "active")  # the main port: SNI routes share its listener
    assert counter(world.metrics(), "nbgateway_l4_port_refused") == 0  # never sent to it
    (gw,) = world.rest("GET", "/reverse-proxies/proxies")
    assert (gw["l4_public_ports"], gw["l4_tls_port"]) == (RANGE, 8443)
