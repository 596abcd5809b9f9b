"""The private-service request path end to end in memory: the fast-path
channel, the gateway resource (private gate with a cached validation,
identity stamping), the reverse proxy and the lean upstream client over
in-memory connections (``StringTransport``), on a ``task.Clock``.

What is checked here is the per-request plumbing the hot-path work changed:
no reference cycles are left per request (everything a request allocates is
freed by reference counting, not by the cyclic GC), the bytes the client gets
for odd upstream responses (duplicates, ``Set-Cookie``, hop-by-hop and
``Connection``-named headers, 1xx, HEAD, 204/304, chunked, close-delimited),
the upstream request head, and one access-log entry per request."""

from __future__ import annotations

import gc
import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.http.site import GatewayResource
from nbgateway.observe.metrics import RequestStats
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from tests.lean_upstreams import InMemoryPools

PEER = "100.64.0.10"
GET = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: app.example\r\nUser-Agent: t\r\n"
       b"X-NetBird-User: mallory\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n")


class _Mgmt:
    answer = pb.ValidateTunnelPeerResponse(
        valid=True, user_id="u1", user_email="alice@example.com", session_token="TOKEN",
        peer_group_ids=["g1", "g2"], peer_group_names=["devs", ""])

    def validate_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> defer.Deferred:
        return defer.succeed(self.answer)


class _Log:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    def log(self, entry: Any) -> None:
        self.entries.append(entry)


class Path:
    """One keep-alive client connection to a private service."""

    def __init__(self, *, rewrite_redirects: bool = False) -> None:
        self.clock = task.Clock()
        m = pb.ProxyMapping(
            id="svc-app", account_id="acct", domain="app.example", private=True,
            rewrite_redirects=rewrite_redirects,
            path=[pb.PathMapping(path="/", target="http://127.0.0.1:8081/",
                                 options=pb.PathTargetOptions(direct_upstream=True))])
        entries = {m.domain: entry_from_mapping(m)}
        gate = PrivateGate(TunnelValidationCache(_Mgmt(), self.clock), lambda a, ip: True)
        self.up = pools = InMemoryPools(self.clock)
        proxy = ReverseProxy(self.clock, pools, lambda a, d: object(), clock=self.clock)
        self.log = _Log()
        res = GatewayResource(lookup=entries.get, proxy=proxy, gate=gate,
                              listener_account="acct", access_log=self.log, clock=self.clock,
                              request_stats=RequestStats())
        site = ProxySite(res, reactor=self.clock, fast=True)
        self.channel = site.buildProtocol(IPv4Address("TCP", PEER, 40000))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", PEER, 40000),
                                      hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.channel.makeConnection(self.client)

    def exchange(self, request: bytes, answer: bytes, *, close: bool = False) -> tuple[bytes,
                                                                                     bytes]:
        """Send ``request``, answer it upstream with ``answer``; returns
        (the upstream request as sent, the client's bytes)."""
        self.client.clear()
        self.channel.dataReceived(request)
        wire, proto = self.up.upstreams[-1]
        sent = wire.value()
        wire.clear()
        proto.dataReceived(answer)
        if close:
            proto.connectionLost(Failure(Exception("closed")))
        return sent, self.client.value()


def _date_free(data: bytes) -> bytes:
    """The client's bytes without the Date header's value (it is the clock's)."""
    lines = [b"Date: -" if line.startswith(b"Date: ") else line
             for line in data.split(b"\r\n")]
    return b"\r\n".join(lines)


class NoCyclesTests(unittest.TestCase):
    def test_a_proxied_request_leaves_no_garbage_cycle(self):
        path = Path()
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: up\r\n\r\nok")
        path.exchange(GET, answer)  # warm: the gate's cache, the pool
        gc.collect()
        was = gc.isenabled()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                _sent, got = path.exchange(GET, answer)
                self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"))
            gc.collect()
            mine = [o for o in gc.garbage
                    if type(o).__module__.startswith(("nbgateway", "twisted.web"))]
            self.assertEqual(mine, [])
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if was:
                gc.enable()
        self.assertEqual(len(path.log.entries), 21)


HEAD = GET.replace(b"GET ", b"HEAD ", 1)
#: upstream answers with odd heads; the bytes both sides get were recorded
#: from the tree before the hot-path work (lean_path_golden.json, f676c77)
CASES = {
    "dups_cookies": (GET, b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Dup: 1\r\n"
                          b"Content-Length: 2\r\nx-dup: 2\r\nSet-Cookie: b=2\r\n"
                          b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\nok"),
    "hop_by_hop": (GET, b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\n"
                        b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: x\r\n"
                        b"Trailer: y\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok"),
    "interim_1xx": (GET, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "head": (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n"
                   b"Content-Type: text/plain\r\n\r\n"),
    "no_content": (GET, b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
    "not_modified": (GET, b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
    "chunked": (GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/plain\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    "no_type_no_length_close": (GET, b"HTTP/1.1 200 OK\r\nX-B: 1\r\n\r\nclose-delimited"),
    "odd_status": (GET, b"HTTP/1.1 299 Whatever Reason\r\nContent-Length: 0\r\n\r\n"),
    "lowercase_names": (GET, b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n"
                             b"x-lower-case: v\r\ncontent-length: 2\r\nserver: up\r\n\r\nok"),
}


class GoldenBytesTests(unittest.TestCase):
    def test_upstream_request_and_client_response_bytes_are_unchanged(self):
        with open(os.path.join(os.path.dirname(__file__), "lean_path_golden.json")) as f:
            golden = json.load(f)
        self.assertEqual(sorted(golden), sorted(CASES))
        for name, (request, answer) in CASES.items():
            path = Path()
            path.exchange(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # warm
            sent, got = path.exchange(request, answer, close=(name == "no_type_no_length_close"))
            want_sent, want_got, want_entries = golden[name]
            self.assertEqual(sent.decode("latin-1"), want_sent, name)
            self.assertEqual(_date_free(got).decode("latin-1"), want_got, name)
            self.assertEqual(len(path.log.entries), want_entries, name)

