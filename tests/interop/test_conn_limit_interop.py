"""The per-account tunnel connection bound against the Linux kernel's TCP
through a real wireguard-go peer (``netstack_gateway.start_gateway``).

With the gateway stack's bound at 3, a kernel client in the namespace holds
three connections to a twisted.web site on the tunnel address; the fourth
connect fails at once with ECONNREFUSED (the RST of the bound, not a SYN
retransmit timeout), the three keep serving requests, and once one of them
is closed a new connection is accepted.
"""

from __future__ import annotations

import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.web import resource, server

from nbgateway.netstack.endpoints import TunnelServerEndpoint
from tests.interop.conftest import require_testbed
from tests.interop.netstack_gateway import GW4, start_gateway

pytestmark = pytest.mark.interop

LIMIT = 3

#: the kernel-side client (run with the namespace's python)
CLIENT = r"""
import socket, sys, time
gw, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def request(s, tag):
    s.sendall(b"GET /conn/" + tag + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    data = b""
    while b"reply " + tag + b"\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("EOF before the reply")
        data += chunk

held = [socket.create_connection((gw, port), timeout=10) for _ in range(limit)]
t0 = time.monotonic()
try:
    socket.create_connection((gw, port), timeout=10).close()
    print("OVER accepted")
except ConnectionRefusedError:
    print("OVER refused %.3f" % (time.monotonic() - t0))
for i, s in enumerate(held):
    request(s, b"held%d" % i)
print("HELD served", len(held))
held[0].shutdown(socket.SHUT_WR)
while held[0].recv(4096):
    pass
held[0].close()
for attempt in range(1, 51):
    try:
        s = socket.create_connection((gw, port), timeout=10)
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
else:
    raise SystemExit("never accepted again")
request(s, b"new")
print("AFTER served", attempt)
"""


class Reply(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"reply " + request.path.rsplit(b"/", 1)[1] + b"\n"


@pytest.fixture
def gateway(testbed):
    require_testbed()
    gw = start_gateway(testbed, reactor)
    gw.stack.tcp.max_connections = LIMIT
    yield gw
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None).addCallback(
        lambda _: gw.close()))
    assert gw.stack.counters["error_internal"] == 0
    assert gw.stack.counters["tcp_internal_errors"] == 0


@pytest_twisted.ensureDeferred
async def test_kernel_client_refused_beyond_the_bound_and_held_ones_keep_working(gateway):
    port = await TunnelServerEndpoint(gateway.stack, 80).listen(server.Site(Reply()))
    try:
        res = await threads.deferToThread(
            gateway.ns.run, [sys.executable, "-c", CLIENT, GW4, "80", str(LIMIT)],
            check=False, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
        verdict, _, seconds = lines["OVER"].partition(" ")
        assert verdict == "refused" and float(seconds) < 1.0, res.stdout  # no SYN retries
        assert lines["HELD"] == f"served {LIMIT}"
        assert lines["AFTER"].startswith("served ")
        c = gateway.stack.counters
        assert c["drop_tcp_conn_limit"] >= 1 and c["tcp_passive_opens"] == LIMIT + 1
    finally:
        await port.stopListening()
