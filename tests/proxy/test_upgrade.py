"""WebSocket / Upgrade pass-through: a tiny RFC 6455 echo upstream, raw frames."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from nbgateway.proxy.upgrade import parse_response_head
from nbgateway.routes.identity import Identity

from ._harness import ProxyHarness, listen_protocol, wait_for

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = _xor(payload, key)
        head += key
    return head + payload


def _xor(data: bytes, key: bytes) -> bytes:
    k = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def parse_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    out = []
    while len(buf) >= 2:
        opcode, b1 = buf[0] & 0x0F, buf[1]
        masked, n, off = b1 & 0x80, b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        key = b""
        if masked:
            key, off = buf[off : off + 4], off + 4
        if len(buf) < off + n:
            break
        payload = buf[off : off + n]
        if masked:
            payload = _xor(payload, key)
        out.append((opcode, payload))
        buf = buf[off + n :]
    return out, buf


class WsEcho(Protocol):
    """Upstream: answers the handshake (or 403 for /deny), then echoes frames."""

    instances: list[WsEcho] = []

    def __init__(self) -> None:
        self.buf = b""
        self.head: bytes | None = None
        WsEcho.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buf:
                return
            self.head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = self.head.split(b"\r\n")
            self.headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                self.headers[k.strip().lower()] = v.strip()
            if lines[0].startswith(b"GET /chunked"):
                self.transport.write(b"HTTP/1.1 426 Upgrade Required\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                return
            if lines[0].startswith(b"GET /deny"):
                self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n"
                                     b"Content-Type: text/plain\r\n\r\nno way")
                return
            key = self.headers.get(b"sec-websocket-key", b"")
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")
        frames, self.buf = parse_frames(self.buf)
        for opcode, payload in frames:
            self.transport.write(frame(opcode, payload, mask=False))
            if opcode == 8:
                self.transport.loseConnection()


class WsClient(Protocol):
    def __init__(self, host: str, path: str = "/ws", extra: bytes = b"") -> None:
        self.host, self.path, self.extra = host, path, extra
        self.key = base64.b64encode(os.urandom(16))
        self.buf = b""
        self.head: bytes | None = None
        self.frames: list[tuple[int, bytes]] = []
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n".encode()
            + b"Sec-WebSocket-Key: " + self.key + b"\r\n" + self.extra + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buf:
                return
            self.head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if self.head.startswith(b"HTTP/1.1 101"):
            frames, self.buf = parse_frames(self.buf)
            self.frames.extend(frames)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class UpgradeTests(unittest.TestCase):
    def setUp(self) -> None:
        WsEcho.instances = []
        self.up = listen_protocol(WsEcho)
        self.addCleanup(self.up.stopListening)
        self.h = ProxyHarness()
        self.port = self.h.listen()
        self.addCleanup(self.h.close)
        self.h.add("ws.example", {"/": f"http://127.0.0.1:{self.up.getHost().port}/"})

    def connect(self, client: WsClient):
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)

    @defer.inlineCallbacks
    def test_websocket_echo_through_proxy(self):
        self.h.identity = Identity("u1", "alice@x", ("g1",), ("eng",), "oidc")
        client = WsClient("ws.example", extra=b"X-NetBird-User: mallory\r\n")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 101"), client.head)
        accept = b"sec-websocket-accept: " + accept_for(client.key).lower()
        self.assertIn(accept, client.head.lower())
        self.assertIn(b"Upgrade: websocket", client.head)
        big = os.urandom(1024 * 1024)
        client.transport.write(frame(1, b"hello", mask=True))
        client.transport.write(frame(2, big, mask=True))
        yield wait_for(lambda: len(client.frames) >= 2)
        self.assertEqual(client.frames[0], (1, b"hello"))
        self.assertEqual(client.frames[1], (2, big))
        seen = WsEcho.instances[0].headers
        self.assertEqual(seen[b"x-netbird-user"], b"alice@x")
        self.assertEqual(seen[b"x-forwarded-for"], b"127.0.0.1")
        self.assertEqual(seen[b"upgrade"], b"websocket")
        self.assertEqual(self.h.proxy.upgrades.active("ws.example"), 1)
        client.transport.write(frame(8, b"", mask=True))
        yield client.closed
        yield wait_for(lambda: self.h.proxy.upgrades.active() == 0)
        self.assertEqual(self.h.requests[0].code, 101)

    @defer.inlineCallbacks
    def test_non_101_answer_is_relayed(self):
        client = WsClient("ws.example", path="/deny")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None and b"no way" in client.buf)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 403"), client.head)
        client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_non_101_chunked_answer_is_decoded_and_rechunked(self):
        client = WsClient("ws.example", path="/chunked")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None and client.buf.endswith(b"0\r\n\r\n"))
        self.assertTrue(client.head.startswith(b"HTTP/1.1 426"), client.head)
        body = b"".join(client.buf.split(b"\r\n")[1::2])
        self.assertEqual(body, b"hello world")
        client.transport.loseConnection()

    @given(st.binary(max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_response_head_parser_only_raises_valueerror(self, head):
        try:
            code, _reason, _headers = parse_response_head(head)
        except ValueError:
            return
        self.assertTrue(code >= 0)

    @defer.inlineCallbacks
    def test_close_domain_closes_spliced_connections(self):
        client = WsClient("ws.example")
        yield self.connect(client)
        yield wait_for(lambda: self.h.proxy.upgrades.active("ws.example") == 1)
        self.assertEqual(self.h.proxy.upgrades.close_domain("ws.example"), 1)
        yield client.closed
        yield wait_for(lambda: self.h.proxy.upgrades.active() == 0)

    @defer.inlineCallbacks
    def test_close_all_on_shutdown(self):
        clients = [WsClient("ws.example"), WsClient("ws.example")]
        for c in clients:
            yield self.connect(c)
        yield wait_for(lambda: self.h.proxy.upgrades.active() == 2)
        self.assertEqual(self.h.proxy.upgrades.close_all(), 2)
        for c in clients:
            yield c.closed

    @defer.inlineCallbacks
    def test_upgrade_to_refused_port_is_502(self):
        gone = listen_protocol(WsEcho)
        port = gone.getHost().port
        yield gone.stopListening()
        self.h.add("ws2.example", {"/": f"http://127.0.0.1:{port}/"})
        client = WsClient("ws2.example")
        yield self.connect(client)
        yield wait_for(lambda: client.head is not None)
        self.assertTrue(client.head.startswith(b"HTTP/1.1 502"), client.head)
        client.transport.loseConnection()
