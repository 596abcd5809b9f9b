"""The tunnel dialer through two in-memory netstacks: the proxy reaches a
twisted.web upstream listening on the peer's stack (100.64.0.2:8080), with the
real reactor as the stacks' clock."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest

from nbgateway.dial.tunnel import TunnelDialer, stack_endpoint_factory
from nbgateway.netstack.endpoints import TunnelServerEndpoint
from nbgateway.netstack.testing import make_stack_pair

from ._harness import EchoUpstream, ProxyHarness, RecordingSite, curl

PEER = "100.64.0.2"


class TunnelDialerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.gw, self.peer, self.link = make_stack_pair(
            reactor, ("100.64.0.1",), (PEER,), latency=0.0, jitter=0.0)
        self.upstream = EchoUpstream()
        self.up_site = RecordingSite(self.upstream)
        self.listening = yield TunnelServerEndpoint(self.peer, 8080).listen(self.up_site)
        self.h = ProxyHarness()
        self.h.tunnel = TunnelDialer(stack_endpoint_factory(self.gw))
        self.port = self.h.listen()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.h.close()
        yield self.listening.stopListening()
        for ch in self.up_site.channels:
            if ch.transport is not None:
                ch.transport.abortConnection()
        self.gw.close()
        self.peer.close()
        self.link.close()

    @defer.inlineCallbacks
    def test_request_reaches_peer_through_tunnel(self):
        self.h.add("t.example", {"/": f"http://{PEER}:8080/"})
        self.h.overlay = True  # source 127.0.0.1 is not the target: no loop
        payload = bytes(range(256)) * 1024  # 256 KiB through the tunnel TCP
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(payload)
        status, _, body = yield curl("-H", "Host: t.example", "--data-binary", "@" + path,
                                     f"http://127.0.0.1:{self.port}/p?q=1")
        self.assertEqual(status, 200)
        seen = json.loads(body)
        self.assertEqual(seen["uri"], "/p?q=1")
        self.assertEqual(seen["body_len"], len(payload))
        self.assertEqual(seen["headers"]["host"], [f"{PEER}:8080"])
        # the upstream saw the gateway's tunnel address as its client
        self.assertEqual(seen["client_host"], "100.64.0.1")

    @defer.inlineCallbacks
    def test_closed_tunnel_port_is_502(self):
        self.h.add("t.example", {"/": f"http://{PEER}:9999/"})
        status, _, body = yield curl("-H", "Host: t.example", f"http://127.0.0.1:{self.port}/")
        self.assertEqual(status, 502)
        self.assertIn(b"Service Unavailable", body)
