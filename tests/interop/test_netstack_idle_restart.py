"""Restart after idle against a Linux TCP client through a real wireguard-go
peer (the ``tests/interop`` testbed: root, namespaces, TUN, wireguard-go).

A kernel client on one keep-alive connection asks the netstack for 256 KiB
responses, three times after a pause of 0.7 s (3.5 RTOs, the RTO being
200 ms on this link), each time after an unpaused one: every response
arrives intact, and before each paused response the connection's window is
what :meth:`NewReno.restart_after_idle` makes of the state it had (grown by
the previous responses, or already small after a loss in the tunnel, which
happens on this testbed under bursts), while the unpaused ones are never
restarted.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from nbgateway.netstack.congestion import NewReno
from nbgateway.netstack.endpoints import TunnelServerEndpoint
from tests.interop.conftest import require_testbed
from tests.interop.netstack_gateway import GW4, start_gateway

pytestmark = pytest.mark.interop

PORT = 5013
SIZE = 256 * 1024
PAUSES = (0.0, 0.7, 0.0, 0.7, 0.0, 0.7)

CLIENT = r"""
import hashlib, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
for i, wait in enumerate(map(float, sys.argv[4:])):
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
    congestion state before and the window after each response's write."""

    def __init__(self, seen: list) -> None:
        self.buf = b""
        self.seen = seen

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            i, size = map(int, line.split())
            conn = self.transport.conn
            cc = conn.cc
            before = (cc.cwnd, cc.ssthresh, cc.in_recovery, conn.rto.current(),
                      reactor.seconds() - conn.last_send, conn.snd_max - conn.snd_una)
            self.transport.write(body(i, size))
            self.seen.append((before, cc.cwnd, cc.ssthresh, conn.mss))


@pytest.fixture
def gateway(testbed):
    require_testbed()
    gw = start_gateway(testbed, reactor)
    yield gw
    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None).addCallback(
        lambda _: gw.close()))
    assert gw.stack.counters["tcp_internal_errors"] == 0


@pytest_twisted.ensureDeferred
async def test_kernel_client_keep_alive_with_pauses_gets_restarted_windows(gateway):
    seen: list = []
    factory = Factory.forProtocol(lambda: Responder(seen))
    port = await TunnelServerEndpoint(gateway.stack, PORT).listen(factory)
    try:
        res = await threads.deferToThread(
            gateway.ns.run,
            [sys.executable, "-c", CLIENT, GW4, str(PORT), str(SIZE), *map(str, PAUSES)],
            check=False, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        got = [line.split() for line in res.stdout.splitlines() if line.startswith("RECV")]
        assert got == [["RECV", str(i), hashlib.sha256(body(i, SIZE)).hexdigest(), str(SIZE)]
                       for i in range(len(PAUSES))]
        assert len(seen) == len(PAUSES)
        shrunk = 0
        for pause, (before, cwnd, ssthresh, mss) in zip(PAUSES, seen, strict=True):
            cwnd0, ssthresh0, in_recovery, rto, idle, flight = before
            assert flight == 0  # each request follows the whole previous response
            if not pause:
                if idle < rto:  # (the first response: idle since the handshake)
                    assert (cwnd, ssthresh) == (cwnd0, ssthresh0)
                continue
            assert idle > rto
            model = NewReno(mss, iss=0)
            model.cwnd, model.ssthresh, model.in_recovery = cwnd0, ssthresh0, in_recovery
            assert model.restart_after_idle(idle, rto)
            assert (cwnd, ssthresh) == (model.cwnd, model.ssthresh), (before, cwnd, ssthresh)
            shrunk += cwnd < cwnd0
        assert gateway.stack.counters["tcp_idle_restarts"] == shrunk
        # the first response grows the window well past IW, so the first
        # pause (at the least) restarts it unless the tunnel lost a segment
        assert shrunk >= 1, seen
    finally:
        await port.stopListening()
