"""The 1,024-session bound of a UDP service, with real sockets (issue 13).

A public ``udp`` service relays to a UDP echo on the gateway host.  1,100
client sockets (each its own source port, so each its own session) open
sessions at the new-session rate the gateway admits (burst 100, then 50/s:
about 19 s to reach the bound); a socket knows its session exists when its
datagram is echoed.  Exactly 1,024 get sessions; the other 76 get nothing
however often they try (``nbgateway_l4_udp_session_limit_hits`` counts them);
a session opened earlier keeps working at the bound.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

import pytest

from tests.interop.conftest import require_testbed
from tests.interop.test_l4_private import SERVERS
from tests.interop.test_l4_public import can_connect, l4_service
from tests.interop.test_private_e2e import World, counter, wait_for
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

UDP_PORT, ECHO_PORT, BOUND, CLIENTS = 7353, 9055, 1024, 1100


def test_udp_session_bound_holds_with_real_sockets():
    require_testbed()
    tb = Testbed()
    socks: list[socket.socket] = []
    try:
        w = World(tb)
        logf = w.log("l4-upstreams")
        w.g.popen([sys.executable, SERVERS, "udp-echo", "127.0.0.1", str(ECHO_PORT)],
                  stdout=logf, stderr=logf)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--addr", "127.0.0.1:8443")
        wait_for(lambda: can_connect(w.g.name, "127.0.0.1", 8443), 30, "the gateway")
        l4_service(w, "bound", "udp", UDP_PORT, ECHO_PORT)
        with inside_netns(w.g.name):
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CLIENTS)]
        for s in socks:
            s.setblocking(False)
        first = socks[0]
        first.settimeout(2)

        def echoed_first():
            first.sendto(b"first", ("127.0.0.1", UDP_PORT))
            try:
                return first.recv(100)
            except OSError:
                return None

        assert wait_for(echoed_first, 20, "the UDP service") == b"first"
        first.setblocking(False)
        answered = {first}
        by_fd = {s.fileno(): s for s in socks}
        poller = select.poll()
        for s in socks:
            poller.register(s, select.POLLIN)
        deadline = time.monotonic() + 40
        cursor = 1
        # 5 tries every 0.1 s (50/s, the admitted rate) from sockets without a session
        while len(answered) < BOUND and time.monotonic() < deadline:
            for _ in range(5):
                for _step in range(CLIENTS):
                    s = socks[cursor]
                    cursor = cursor % (CLIENTS - 1) + 1
                    if s not in answered:
                        break
                s.sendto(b"x", ("127.0.0.1", UDP_PORT))
            for fd, _ev in poller.poll(100):
                s = by_fd[fd]
                while True:
                    try:
                        s.recv(100)
                    except BlockingIOError:
                        break
                answered.add(s)
        assert len(answered) == BOUND, len(answered)
        metrics = w.metrics()
        assert counter(metrics, "nbgateway_l4_udp_sessions") == BOUND
        # the rest get nothing: the bound holds, and says so in the metrics
        time.sleep(2.5)  # the rate bucket refills: refusals now are the bound's
        hits = counter(metrics, "nbgateway_l4_udp_session_limit_hits")
        for s in socks:
            if s not in answered:
                s.sendto(b"late", ("127.0.0.1", UDP_PORT))
        assert not poller.poll(1000)
        assert counter(w.metrics(), "nbgateway_l4_udp_session_limit_hits") >= \
            hits + CLIENTS - BOUND
        assert counter(w.metrics(), "nbgateway_l4_udp_sessions") == BOUND
        first.sendto(b"still", ("127.0.0.1", UDP_PORT))  # an existing session works
        assert select.select([first], [], [], 5)[0] and first.recv(100) == b"still"
    finally:
        for s in socks:
            s.close()
        path = os.path.join(tb.tmpdir, "gateway.log")
        if os.path.exists(path):
            with open(path, "rb") as f:
                print("--- gateway log tail ---\n" + f.read()[-3000:].decode(errors="replace"))
        left = tb.close()
    assert not left, left
