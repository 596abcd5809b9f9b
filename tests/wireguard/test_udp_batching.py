"""The WireGuard UDP adapter on real sockets: BatchingPort hands one readiness
event's datagrams over in one datagramsReceived call, WireGuardProtocol sends
runs with sendDatagrams."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time

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


class _CountingSocket:
    """The port's socket with its ``recvfrom`` calls counted (and failures)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.calls = 0
        self.failed = 0

    def recvfrom(self, size: int):
        self.calls += 1
        try:
            return self._sock.recvfrom(size)
        except OSError:
            self.failed += 1
            raise

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class QueuePeekTests(unittest.TestCase):
    """The read after a lone datagram ends on a FIONREAD, not on EAGAIN."""

    def _port(self, peek: bool = True):
        device = Recorder()
        port = udp.listen(reactor, device, 0, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.stopReading()  # this test calls doRead itself
        counting = _CountingSocket(port.socket)
        port.socket = counting
        port.peek_queue = peek
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind(("127.0.0.1", 0))
        target = ("127.0.0.1", port.getHost().port)
        return device, port, counting, client, target

    def _wait_queued(self, port, n: int) -> None:
        for _ in range(200):
            if n == 0 or struct.unpack("i", fcntl.ioctl(port.socket.fileno(), termios.FIONREAD,
                                                        b"\0\0\0\0"))[0]:
                return
            time.sleep(0.005)

    def test_a_lone_datagram_is_read_with_one_recvfrom(self):
        device, port, counting, client, target = self._port()
        client.sendto(b"one", target)
        self._wait_queued(port, 1)
        port.doRead()
        self.assertEqual(device.batches, [[(b"one", client.getsockname())]])
        self.assertEqual((counting.calls, counting.failed), (1, 0))

    def test_without_the_peek_the_read_ends_on_eagain(self):
        device, port, counting, client, target = self._port(peek=False)
        client.sendto(b"one", target)
        self._wait_queued(port, 1)
        port.doRead()
        self.assertEqual(len(device.received()), 1)
        self.assertEqual((counting.calls, counting.failed), (2, 1))

    def test_queued_datagrams_still_come_in_one_batch(self):
        device, port, counting, client, target = self._port()
        sent = [b"a", b"bb", b"ccc", b"dddd"]
        for d in sent:
            client.sendto(d, target)
        time.sleep(0.05)
        port.doRead()
        self.assertEqual([[d for d, _ in b] for b in device.batches], [sent])
        self.assertEqual((counting.calls, counting.failed), (5, 1))

    def test_a_queued_empty_datagram_is_taken_by_the_next_read(self):
        device, port, _counting, client, target = self._port()
        for d in (b"first", b"", b"last"):
            client.sendto(d, target)
        time.sleep(0.05)
        port.doRead()  # stops after "first": the next datagram's length reads as 0
        self.assertEqual(device.received()[0][0], b"first")
        port.doRead()
        self.assertEqual([d for d, _ in device.received()], [b"first", b"", b"last"])

    def test_a_failing_peek_reads_on_until_eagain(self):
        device, port, counting, client, target = self._port()

        class FailingIoctl:
            @staticmethod
            def ioctl(*args):
                raise OSError(9, "scripted EBADF")

        self.patch(udp, "fcntl", FailingIoctl)
        client.sendto(b"one", target)
        self._wait_queued(port, 1)
        port.doRead()
        self.assertEqual(len(device.received()), 1)
        self.assertEqual((counting.calls, counting.failed), (2, 1))  # as without the peek

    def test_the_peek_writes_into_a_buffer_of_the_port(self):
        """FIONREAD fills the port's own bytearray (a read-only argument makes
        ``fcntl.ioctl`` format an error message before it tries again): the
        same reads as before, one datagram and then more than one."""
        device, port, counting, client, target = self._port()
        args = []
        real = fcntl.ioctl

        class Recording:
            @staticmethod
            def ioctl(fd, request, arg, *rest):
                args.append(arg)
                return real(fd, request, arg, *rest)

        self.patch(udp, "fcntl", Recording)
        client.sendto(b"one", target)
        self._wait_queued(port, 1)
        port.doRead()
        self.assertEqual((counting.calls, counting.failed), (1, 0))
        self.assertIsInstance(args[0], bytearray)
        self.assertIs(args[0], port._fionread)
        for d in (b"a", b"bb"):
            client.sendto(d, target)
        time.sleep(0.05)
        port.doRead()
        self.assertEqual([d for d, _ in device.received()], [b"one", b"a", b"bb"])
        self.assertEqual((counting.calls, counting.failed), (4, 1))
        self.assertNotEqual(bytes(port._fionread), b"\0\0\0\0")  # "bb" was queued then
