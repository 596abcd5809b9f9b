"""The WireGuard UDP adapter on real sockets: BatchingPort hands one readiness
event's datagrams over in one datagramsReceived call, WireGuardProtocol sends
runs with sendDatagrams."""

from __future__ import annotations

import socket

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from nbgateway.wireguard import udp


class Recorder:
    """Stands in for the device (or mux) behind the protocol."""

    def __init__(self) -> None:
        self.link = None
        self.batches: list[list[tuple[bytes, tuple]]] = []
        self.events: dict[str, int] = {}

    def datagramReceived(self, data, addr) -> None:
        self.batches.append([(data, addr)])

    def datagramsReceived(self, batch) -> None:
        self.batches.append(list(batch))

    def received(self) -> list[tuple[bytes, tuple]]:
        return [item for batch in self.batches for item in batch]


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class BatchingPortTests(unittest.TestCase):
    @inlineCallbacks
    def _burst(self, family: int, host: str):
        device = Recorder()
        port = udp.listen(reactor, device, 0, interface=host)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, udp.BatchingPort)
        client = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind((host, 0))
        target = port.getHost()
        sent = [b"datagram %03d " % i + bytes(i) for i in range(200)]
        for data in sent:  # all queued before the reactor gets to read
            client.sendto(data, (target.host, target.port))
        for _ in range(200):
            if len(device.received()) >= len(sent):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        got = device.received()
        self.assertEqual([d for d, _ in got], sent)
        client_addr = client.getsockname()[:2]
        self.assertEqual({addr for _, addr in got}, {client_addr})
        self.assertTrue(all(len(addr) == 2 for _, addr in got))
        sizes = [len(b) for b in device.batches]
        self.assertLessEqual(max(sizes), udp.READ_BATCH)
        self.assertGreater(max(sizes), 1)
        # the other direction: a run of datagrams in one sendDatagrams call
        protocol = port.protocol
        self.assertIs(device.link, protocol)
        replies = [b"reply %d" % i for i in range(10)]
        protocol.sendDatagrams(replies, client_addr)
        # (held until the end of the reactor turn: batch_sends is on by default)
        yield task.deferLater(reactor, 0, lambda: None)
        client.settimeout(5)
        self.assertEqual([client.recv(100) for _ in replies], replies)

    def test_ipv4_burst_arrives_in_batches(self):
        return self._burst(socket.AF_INET, "127.0.0.1")

    def test_ipv6_burst_arrives_in_batches_with_host_port_addresses(self):
        if not _has_ipv6():
            raise unittest.SkipTest("no IPv6 loopback here")
        return self._burst(socket.AF_INET6, "::1")
