"""Restart after idle against a Linux TCP client through a real wireguard-go
peer (the ``tests/interop`` testbed: root, namespaces, TUN, wireguard-go).

A kernel client on one keep-alive connection asks the netstack for a 1 MiB
response, waits well over an RTO (1 s, the RTO being 200 ms on this link),
asks again, and a third time without a pause: both idle-separated responses
arrive intact, the grown window is restarted exactly once (the third
request follows within an RTO of the last data sent)."""

from __future__ import annotations

import hashlib
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from nbgateway.netstack.endpoints import TunnelServerEndpoint
from tests.interop.conftest import require_testbed, testbed  # noqa: F401 (fixture)
from tests.interop.netstack_gateway import GW4, start_gateway

pytestmark = pytest.mark.interop

PORT = 5013
SIZE = 1 << 20

CLIENT = r"""
import hashlib, socket, sys, time
host, port, size, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=30)
for i, wait in enumerate((0.0, pause, 0.0)):
    time.sleep(wait)
    s.sendall(b"%d %d\n" % (i, size))
    h, got = hashlib.sha256(), 0
    while got < size:
        b = s.recv(min(65536, size - got))
        if not b:
            sys.exit("eof after %d" % got)
        h.update(b)
        got += len(b)
    print("RECV", i, h.hexdigest(), got, flush=True)
s.close()
"""


def body(i: int, size: int) -> bytes:
    return hashlib.shake_256(b"idle-restart-%d" % i).digest(size)


class Responder(Protocol):
    """Answers each ``<i> <size>`` line with ``body(i, size)``, recording the
    connection's cwnd before each response."""

    def __init__(self, cwnds: list) -> None:
        self.buf = b""
        self.cwnds = cwnds

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            i, size = map(int, line.split())
            self.cwnds.append(self.transport.conn.cc.cwnd)
            self.transport.write(body(i, size))
            self.cwnds.append(self.transport.conn.cc.cwnd)


@pytest.fixture
def gateway(testbed):  # noqa: F811 (the fixture above)
    require_testbed()
    gw = start_gateway(testbed, reactor)
    yield gw
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None).addCallback(
        lambda _: gw.close()))
    assert gw.stack.counters["tcp_internal_errors"] == 0


@pytest_twisted.ensureDeferred
async def test_kernel_client_keep_alive_with_a_pause_gets_a_restarted_window(gateway):
    cwnds: list = []
    factory = Factory.forProtocol(lambda: Responder(cwnds))
    port = await TunnelServerEndpoint(gateway.stack, PORT).listen(factory)
    try:
        res = await threads.deferToThread(
            gateway.ns.run, [sys.executable, "-c", CLIENT, GW4, str(PORT), str(SIZE), "1.0"],
            check=False, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        got = [line.split() for line in res.stdout.splitlines() if line.startswith("RECV")]
        assert got == [["RECV", str(i), hashlib.sha256(body(i, SIZE)).hexdigest(), str(SIZE)]
                       for i in range(3)]
        c = gateway.stack.counters
        assert c["tcp_idle_restarts"] == 1, dict(c)
        # before each response: IW, the grown window, then (no pause) what the
        # second response grew it to again -- and the restart shrank it in
        # the second write (cwnds[3] < cwnds[2])
        iw = cwnds[0]
        assert cwnds[2] > iw and cwnds[3] < cwnds[2]
    finally:
        await port.stopListening()
