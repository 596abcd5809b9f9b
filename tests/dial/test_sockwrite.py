"""The upstream request's direct socket write (nbgateway.dial.sockwrite) on
real Twisted TCP transports over real sockets: full write (no writability
watch), partial write into a small send buffer, EAGAIN, ordering behind
bytes Twisted already queued, a reset connection ending through Twisted's
connection-lost path, the switch, and the Twisted internals it reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.internet import defer, reactor, task, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from nbgateway.dial import sockwrite
from nbgateway.dial.http11 import ConnectionPool, LeanAgent


class FakeReactor:
    """Records which descriptors Twisted asks to watch."""

    def __init__(self) -> None:
        self.writers: set[object] = set()
        self.add_writer_calls = 0

    def addWriter(self, fd: object) -> None:
        self.add_writer_calls += 1
        self.writers.add(fd)

    def removeWriter(self, fd: object) -> None:
        self.writers.discard(fd)

    def addReader(self, fd: object) -> None:
        pass

    def removeReader(self, fd: object) -> None:
        pass


def transport_on(sock: socket.socket) -> tuple[tcp.Connection, FakeReactor]:
    fake = FakeReactor()
    t = tcp.Connection(sock, Protocol(), reactor=fake)
    t.connected = 1
    return t, fake


def drain(t: tcp.Connection, peer: socket.socket) -> bytes:
    """Read everything while letting Twisted flush its queue (doWrite)."""
    peer.setblocking(False)
    got = bytearray()
    for _ in range(100000):
        if t._tempDataBuffer or len(t.dataBuffer) > t.offset:
            assert t.doWrite() is None
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            if not (t._tempDataBuffer or len(t.dataBuffer) > t.offset):
                break
            continue
        got += chunk
    return bytes(got)


def small_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


class DirectWriteTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(sockwrite, "ENABLED", True)

    def pair(self, small: bool = False) -> tuple[tcp.Connection, FakeReactor, socket.socket]:
        a, b = small_pair() if small else socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t, fake = transport_on(a)
        return t, fake, b

    def test_full_write_goes_to_the_socket_without_a_writability_watch(self) -> None:
        t, fake, peer = self.pair()
        before = sockwrite.DirectWriteStats.direct
        sockwrite.write(t, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(peer.recv(100), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(fake.add_writer_calls, 0)
        self.assertEqual(sockwrite.DirectWriteStats.direct, before + 1)
        self.assertIs(sockwrite.idle_socket(t), t.socket)

    def test_partial_write_hands_the_rest_to_twisted_in_order(self) -> None:
        t, fake, peer = self.pair(small=True)
        data = bytes(range(256)) * 200  # 51200 B: more than the small buffers hold
        before = sockwrite.DirectWriteStats.partial
        sockwrite.write(t, data)
        self.assertEqual(sockwrite.DirectWriteStats.partial, before + 1)
        queued = b"".join(t._tempDataBuffer)
        self.assertTrue(0 < len(queued) < len(data))
        self.assertEqual(data[-len(queued):], queued)
        self.assertEqual(fake.add_writer_calls, 1)  # Twisted watches for the rest
        sockwrite.write(t, b"tail")  # queued behind, never sent ahead
        self.assertEqual(b"".join(t._tempDataBuffer), queued + b"tail")
        self.assertEqual(drain(t, peer), data + b"tail")
        self.assertEqual(fake.writers, set())

    def test_eagain_queues_everything_with_twisted(self) -> None:
        t, fake, peer = self.pair(small=True)
        t.socket.setblocking(False)
        filler = bytearray()
        while True:  # fill the socket buffers until the kernel says EAGAIN
            try:
                filler += b"f" * t.socket.send(b"f" * 1024)
            except BlockingIOError:
                break
        before = sockwrite.DirectWriteStats.partial
        sockwrite.write(t, b"request head")
        self.assertEqual(sockwrite.DirectWriteStats.partial, before + 1)
        self.assertEqual(t._tempDataBuffer, [b"request head"])
        self.assertEqual(fake.add_writer_calls, 1)
        self.assertEqual(drain(t, peer), bytes(filler) + b"request head")

    def test_bytes_queued_by_twisted_keep_their_place(self) -> None:
        t, _fake, peer = self.pair()
        t.write(b"first ")  # Twisted queues it for the next writable turn
        self.assertIsNone(sockwrite.idle_socket(t))
        sockwrite.write(t, b"second")
        peer.setblocking(False)
        self.assertRaises(BlockingIOError, peer.recv, 100)  # nothing jumped the queue
        self.assertEqual(drain(t, peer), b"first second")
        self.assertIs(sockwrite.idle_socket(t), t.socket)  # idle again after the flush

    def test_reset_connection_ends_through_twisteds_connection_lost_path(self) -> None:
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        linger0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # l_onoff=1, l_linger=0
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        accepted.close()  # RST (on loopback it has arrived when close returns)
        t, _fake = transport_on(client)
        before = sockwrite.DirectWriteStats.fallback
        sockwrite.write(t, b"GET / HTTP/1.1\r\n\r\n")
        # the bytes went to Twisted, which meets the error on its own write
        self.assertEqual(sockwrite.DirectWriteStats.fallback, before + 1)
        self.assertEqual(t._tempDataBuffer, [b"GET / HTTP/1.1\r\n\r\n"])
        why = t.doWrite()
        self.assertIsInstance(why, Exception)  # the reactor calls connectionLost with it

    def test_aborted_connection_sends_nothing(self) -> None:
        t, _fake, peer = self.pair()
        t.reactor.callLater = lambda *a, **kw: None  # connectionLost would follow
        t.abortConnection()
        self.assertIsNone(sockwrite.idle_socket(t))
        sockwrite.write(t, b"late")
        peer.setblocking(False)
        self.assertRaises(BlockingIOError, peer.recv, 100)

    def test_switch_off_uses_twisteds_write(self) -> None:
        t, fake, peer = self.pair()
        self.patch(sockwrite, "ENABLED", False)
        sockwrite.write(t, b"abc")
        self.assertEqual(t._tempDataBuffer, [b"abc"])
        self.assertEqual(fake.add_writer_calls, 1)
        self.assertEqual(drain(t, peer), b"abc")

    def test_environment_variable_turns_it_off(self) -> None:
        code = "from nbgateway.dial import sockwrite; print(sockwrite.ENABLED)"
        for value, expected in (("0", "False"), ("1", "True")):
            env = dict(os.environ, NBGW_UPSTREAM_DIRECT_WRITE=value)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout.strip()
            self.assertEqual(out, expected)

    def test_other_transports_keep_their_own_write(self) -> None:
        st = StringTransport()
        sockwrite.write(st, b"in-process")
        self.assertEqual(st.value(), b"in-process")
        t, _fake, peer = self.pair()
        t.TLS = True  # startTLS'd: the bytes must be encrypted by Twisted
        self.assertIsNone(sockwrite.idle_socket(t))
        t.TLS = False
        t.disconnecting = True
        self.assertIsNone(sockwrite.idle_socket(t))
        t.disconnecting = False
        for flag in ("_writeDisconnecting", "_writeDisconnected"):  # half-closed
            setattr(t, flag, True)
            self.assertIsNone(sockwrite.idle_socket(t))
            setattr(t, flag, False)
        big = b"x" * (sockwrite.MAX_DIRECT + 1)  # large writes: Twisted's own chunking
        sockwrite.write(t, big)
        self.assertEqual(t._tempDataBuffer, [big])
        self.assertEqual(drain(t, peer), big)

    def test_twisted_internals_read_by_idle_socket(self) -> None:
        """Fails if Twisted renames or changes the write-buffer state read by
        ``idle_socket`` (then fix it or run with the switch off)."""
        t, _fake, peer = self.pair()
        for name in ("dataBuffer", "offset", "_tempDataBuffer", "TLS", "connected",
                     "disconnecting", "disconnected", "_aborting", "_writeDisconnected",
                     "_writeDisconnecting", "socket"):
            self.assertTrue(hasattr(t, name), name)
        self.assertEqual((t.dataBuffer, t.offset, t._tempDataBuffer), (b"", 0, []))
        t.write(b"x")
        self.assertEqual(t._tempDataBuffer, [b"x"])
        self.assertIsNone(sockwrite.idle_socket(t))
        self.assertIsNone(t.doWrite())
        self.assertEqual((t.dataBuffer, t.offset, t._tempDataBuffer), (b"", 0, []))
        self.assertIs(sockwrite.idle_socket(t), t.socket)
        self.assertEqual(peer.recv(10), b"x")


class Answer(Protocol):
    lost: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        self.gone: defer.Deferred[None] = defer.Deferred()
        Answer.lost.append(self.gone)

    def connectionLost(self, reason: object = None) -> None:
        self.gone.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.buf = getattr(self, "buf", b"") + data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class Body(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.data)


class LeanAgentOverTCPTests(unittest.TestCase):
    """The upstream client sends its requests with the direct write over a
    real TCP connection and reads every answer."""

    def setUp(self) -> None:
        self.patch(sockwrite, "ENABLED", True)
        self.port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_requests_on_a_pooled_connection_are_written_directly(self):  # type: ignore[no-untyped-def]
        pool = ConnectionPool(reactor, 4, 0)  # no idle timer: nothing left behind
        Answer.lost = []
        port = self.port.getHost().port
        agent = LeanAgent(pool, lambda host, p, tls: TCP4ClientEndpoint(reactor, host, p))
        url = b"http://127.0.0.1:%d/x" % port
        before = sockwrite.DirectWriteStats.direct
        for _ in range(5):
            response = yield agent.request(b"GET", url, Headers(), None)
            body = Body()
            response.deliverBody(body)
            self.assertEqual((response.code, (yield body.done)), (200, b"ok"))
            # the connection is pooled once the read that ended it is parsed
            yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(sockwrite.DirectWriteStats.direct - before, 5)
        self.assertEqual(pool.idle(), 1)
        self.assertEqual(len(Answer.lost), 1)  # one keep-alive connection carried them all
        yield pool.closeCachedConnections()
        yield defer.gatherResults(Answer.lost)
