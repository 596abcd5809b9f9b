"""The front resource routes a fast-path request once: the fast path's
``fast_route`` answer is handed to ``render`` (``request.routed``) when the
request is dispatched in the same turn, with the routing decisions of a
second lookup; a request that waits for its body is looked up again."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import server

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from nbgateway.routes.table import ServiceTable


class _Proxy:
    """Stands in for the reverse proxy: records the service it was handed."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.served: list[Any] = []

    def render(self, request: Any, ctx: Any) -> Any:
        self.served.append(ctx.service)
        request.write(b"ok")
        request.finish()
        return server.NOT_DONE_YET


def _mapping(domain: str, **kw: Any) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        id=f"svc-{domain}", account_id="acct", domain=domain,
        path=[pb.PathMapping(path="/", target="http://127.0.0.1:8081/")], **kw)


class RouteOnceTests(unittest.TestCase):
    def make(self, fast: bool) -> tuple[Any, Any, list[str], _Proxy]:
        clock = task.Clock()
        table = ServiceTable()
        for m in (_mapping("app.example"), _mapping("other.example")):
            table.entries[m.domain] = entry_from_mapping(m)
        asked: list[str] = []

        def lookup(domain: str) -> Any:
            asked.append(domain)
            return table.lookup(domain)

        proxy = _Proxy(clock)
        res = GatewayResource(lookup=lookup, proxy=proxy, gate=None, clock=clock)  # type: ignore[arg-type]
        site = ProxySite(res, reactor=clock, fast=fast)
        channel = site.buildProtocol(IPv4Address("TCP", "203.0.113.9", 40000))
        channel.makeConnection(StringTransport())
        return table, channel, asked, proxy

    def test_fast_path_looks_up_once(self) -> None:
        table, channel, asked, proxy = self.make(fast=True)
        for host, want in ((b"app.example", "app.example"), (b"APP.Example.:80", "app.example"),
                           (b"other.example", "other.example"), (b"nowhere.example", None)):
            del asked[:]
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertEqual(len(asked), 1, host)
            served = proxy.served[-1]
            self.assertEqual(served.domain if served is not None else None, want)
        self.assertEqual(channel.fast_requests, 4)
        self.assertTrue(channel.fast)
        # a body sent along with the head: dispatched at once, one lookup
        del asked[:]
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example\r\n"
                             b"Content-Length: 0\r\n\r\n")
        self.assertEqual(len(asked), 1)
        self.assertEqual(proxy.served[-1], table.entries["app.example"].service)

    def test_request_waiting_for_its_body_is_routed_again(self) -> None:
        """The table may change while the body arrives: render decides on
        the table it sees then (as it did with its own lookup)."""
        table, channel, asked, proxy = self.make(fast=True)
        del asked[:]
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example\r\n"
                             b"Content-Length: 3\r\n\r\n")
        self.assertEqual(len(asked), 1)  # fast_route
        self.assertEqual(proxy.served, [])
        del table.entries["app.example"]
        channel.dataReceived(b"abc")
        self.assertEqual(len(asked), 2)
        self.assertEqual(proxy.served, [None])  # gone: not found

    def test_twisted_web_path_looks_up_once(self) -> None:
        _table, channel, asked, proxy = self.make(fast=False)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.assertEqual(asked, ["app.example"])
        self.assertEqual(proxy.served[-1].domain, "app.example")

    def test_service_table_lookup_folds_spellings(self) -> None:
        table, _channel, _asked, _proxy = self.make(fast=True)
        entry = table.entries["app.example"]
        for name in ("app.example", "APP.example", "app.example.", " app.example "):
            self.assertIs(table.lookup(name), entry)
        self.assertIsNone(table.lookup("app.example.org"))
        self.assertIsNone(table.lookup(""))
