"""WireGuardProtocol's end-of-turn output hold (``batch_sends``) on real
sockets: datagrams sent during one reactor turn are queued per address and
leave together after it (equal sizes in one GSO ``sendmsg``), in order per
address; the hold is bounded, flushed on stop, and can be switched off.
With ``send_first`` (the gateway's default) the first send of a turn leaves at
once and only the later sends of that turn are held."""

from __future__ import annotations

import socket
from collections import Counter

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from nbgateway.wireguard import udp


class Recorder:
    def __init__(self) -> None:
        self.link = None
        self.events: Counter[str] = Counter()

    def datagramsReceived(self, batch) -> None:
        pass


def _receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.enlarge_buffers(s)  # HOLD_MAX small datagrams at once
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(70000))
        except BlockingIOError:
            return out


def _turn():
    return task.deferLater(reactor, 0, lambda: None)


class HoldTests(unittest.TestCase):
    def _port(self, batch_sends: bool | None = True, send_first: bool | None = False):
        device = Recorder()
        port = udp.listen(reactor, device, 0, interface="127.0.0.1", batch_sends=batch_sends,
                          send_first=send_first)
        self.addCleanup(port.stopListening)
        return port.protocol

    def _rx(self) -> tuple[socket.socket, tuple[str, int]]:
        s = _receiver()
        self.addCleanup(s.close)
        return s, s.getsockname()

    @inlineCallbacks
    def test_one_turn_leaves_together_in_order(self):
        proto = self._port()
        rx, addr = self._rx()
        gso0 = proto.gso_sends
        sent = [b"%04d" % i + b"x" * 96 for i in range(12)]
        for i in range(0, 12, 3):  # four writers in one turn, three datagrams each
            proto.sendDatagrams(sent[i:i + 3], addr)
        proto.sendDatagram(sent[0][:10], addr)  # a different size ends the GSO run
        self.assertEqual(_drain(rx), [])  # nothing left during the turn
        yield _turn()
        self.assertEqual(_drain(rx), [*sent, sent[0][:10]])
        self.assertEqual(proto.held_flushes, 1)
        if proto.gso:  # Linux with UDP_SEGMENT: the twelve equal datagrams in one sendmsg
            self.assertEqual(proto.gso_sends - gso0, 1)

    @inlineCallbacks
    def test_order_per_address(self):
        proto = self._port()
        rx1, a1 = self._rx()
        rx2, a2 = self._rx()
        proto.sendDatagrams([b"a1", b"a2"], a1)
        proto.sendDatagrams([b"b1"], a2)
        proto.sendDatagrams([b"a3"], a1)
        proto.sendDatagrams([b"b2", b"b3"], a2)
        yield _turn()
        self.assertEqual(_drain(rx1), [b"a1", b"a2", b"a3"])
        self.assertEqual(_drain(rx2), [b"b1", b"b2", b"b3"])

    @inlineCallbacks
    def test_hold_is_bounded(self):
        proto = self._port()
        rx, addr = self._rx()
        proto.sendDatagrams([b"y" * 20] * (udp.HOLD_MAX - 1), addr)
        self.assertEqual(_drain(rx), [])
        proto.sendDatagrams([b"z" * 20], addr)  # reaches HOLD_MAX: flushed at once
        got = []
        for _ in range(100):
            got += _drain(rx)
            if len(got) >= udp.HOLD_MAX:
                break
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(len(got), udp.HOLD_MAX)
        self.assertEqual(got[-1], b"z" * 20)
        self.assertEqual(proto._held, {})
        yield _turn()  # the pending end-of-turn call finds nothing held
        self.assertEqual(_drain(rx), [])

    @inlineCallbacks
    def test_stop_flushes(self):
        proto = self._port()
        rx, addr = self._rx()
        proto.sendDatagrams([b"last words"], addr)
        proto.sendDatagrams([b"x" * 70_000], addr)  # EMSGSIZE when it leaves: counted
        proto.transport.connectionLost()  # the port closes now, before the turn ends
        self.assertEqual(proto.send_errors, 1)
        self.assertEqual(proto.device.events["udp_send_error"], 1)
        self.assertIsNone(proto._flush_call)
        got = []
        for _ in range(50):
            got += _drain(rx)
            if got:
                break
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(got, [b"last words"])

    def test_off_sends_at_once(self):
        proto = self._port(batch_sends=False)
        rx, addr = self._rx()
        proto.sendDatagrams([b"now"], addr)
        rx.setblocking(True)
        rx.settimeout(5)
        self.assertEqual(rx.recv(100), b"now")

    def test_environment_switch(self):
        import os
        old = os.environ.get("NBGW_WG_TX_BATCH")
        try:
            os.environ["NBGW_WG_TX_BATCH"] = "0"
            self.assertFalse(self._port(batch_sends=None).batch_sends)
            del os.environ["NBGW_WG_TX_BATCH"]
            self.assertTrue(self._port(batch_sends=None).batch_sends)
        finally:
            if old is not None:
                os.environ["NBGW_WG_TX_BATCH"] = old


class SendFirstTests(unittest.TestCase):
    """``send_first``: the turn's first send is not held."""

    def _port(self, send_first: bool | None = True):
        return HoldTests._port(self, batch_sends=True, send_first=send_first)

    _rx = HoldTests._rx

    @inlineCallbacks
    def test_first_send_leaves_at_once_rest_of_turn_held(self):
        proto = self._port()
        rx, addr = self._rx()
        gso0 = proto.gso_sends
        proto.sendDatagrams([b"first", b"first2"], addr)  # the turn's first send: all of it
        self.assertEqual(_drain(rx), [b"first", b"first2"])
        later = [b"%04d" % i + b"y" * 60 for i in range(6)]
        for i in range(0, 6, 2):
            proto.sendDatagrams(later[i:i + 2], addr)
        self.assertEqual(_drain(rx), [])  # held to the end of the turn
        self.assertEqual(proto.held_flushes, 0)
        yield _turn()
        self.assertEqual(_drain(rx), later)  # in order, after the first
        self.assertEqual(proto.held_flushes, 1)
        if proto.gso:
            self.assertEqual(proto.gso_sends - gso0, 1)
        # the next turn starts over: its first send leaves at once again
        proto.sendDatagram(b"next turn", addr)
        self.assertEqual(_drain(rx), [b"next turn"])
        yield _turn()
        self.assertEqual(_drain(rx), [])
        self.assertIsNone(proto._flush_call)

    @inlineCallbacks
    def test_order_across_addresses(self):
        proto = self._port()
        rx1, a1 = self._rx()
        rx2, a2 = self._rx()
        proto.sendDatagrams([b"a1"], a1)  # out now
        proto.sendDatagrams([b"b1"], a2)  # held
        proto.sendDatagrams([b"a2", b"a3"], a1)  # held behind a1
        self.assertEqual(_drain(rx1), [b"a1"])
        self.assertEqual(_drain(rx2), [])
        yield _turn()
        self.assertEqual(_drain(rx1), [b"a2", b"a3"])
        self.assertEqual(_drain(rx2), [b"b1"])

    @inlineCallbacks
    def test_stop_after_first_send_flushes_the_rest(self):
        proto = self._port()
        rx, addr = self._rx()
        proto.sendDatagrams([b"one"], addr)
        proto.sendDatagrams([b"two"], addr)
        proto.transport.connectionLost()
        self.assertIsNone(proto._flush_call)
        got = []
        for _ in range(50):
            got += _drain(rx)
            if len(got) >= 2:
                break
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(got, [b"one", b"two"])

    def test_environment_switch(self):
        import os
        old = os.environ.get("NBGW_WG_TX_FIRST")
        try:
            os.environ["NBGW_WG_TX_FIRST"] = "0"
            self.assertFalse(self._port(send_first=None).send_first)
            del os.environ["NBGW_WG_TX_FIRST"]
            self.assertTrue(self._port(send_first=None).send_first)
        finally:
            if old is not None:
                os.environ["NBGW_WG_TX_FIRST"] = old
            else:
                os.environ.pop("NBGW_WG_TX_FIRST", None)
