"""The request path's per-request attribute reads stay specialised however
many connections and requests are open at once.

CPython 3.11 keeps an instance's attributes as inline values in its class's
shared keys only for the first names the class's instances set: at most
30, and one fewer for every instance made while the first ones still add
names.  An instance that then sets a name not among them gets a dict of its
own, and every attribute read on it is a hash lookup (~60 % slower).  With
16 connections opened before their first requests (wrk's 16), or a
connection handed to twisted.web or HTTP/2 first, every fast channel went
that way; with 4 or more requests in flight every ``FastRequest`` did (the
names set late: the status, the upstream status).  Now the fast channel's
per-request state is in slots and ``FastRequest`` has slots only (no dict).
The inline-values check reads CPython 3.11's object layout (the values
pointer before the GC header) and runs there only."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.fast_request import FastRequest
from tests.proxy.test_lean_path import GET, Path

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_CPYTHON_311 = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
#: the channel's names the fast path reads or writes per request
_CHANNEL_HOT = {"fast", "fast_requests", "_buf", "_current", "_waiting", "_body_left",
                "_pumping", "_closing", "_read_paused", "_idle_from", "_conn_info", "_parsing",
                "_head_deadline", "_protocol_checked", "transport", "site", "persistent",
                "_handlingRequest", "_requestProducer", "_requestProducerStreaming"}


def _inline(obj: Any) -> bool:
    """CPython 3.11: are ``obj``'s dict attributes still inline values (not a
    dict of its own)?  (Never call vars() on ``obj`` before: that makes one.)"""
    return bool(ctypes.c_void_p.from_address(id(obj) - 4 * ctypes.sizeof(ctypes.c_void_p)).value)


def test_the_channels_per_request_state_is_in_slots():
    slots = set(FastHTTPChannel.__slots__)
    assert slots >= _CHANNEL_HOT, sorted(_CHANNEL_HOT - slots)
    channel = FastHTTPChannel()  # every slot set by the constructor, defaults as before
    for name in slots:
        getattr(channel, name)
    assert (channel.fast, channel.fast_requests, channel._buf, channel._current,
            channel._read_paused, channel._head_deadline, channel._linger_left,
            channel.persistent, channel.transport) == (True, 0, b"", None, False, None, 0, 1,
                                                       None)


def test_the_fast_request_has_no_dict():
    channel = FastHTTPChannel()
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
    req = FastRequest(channel, b"GET", b"/a?b", Headers(), False, True, channel._conn_info)
    assert not hasattr(req, "__dict__")
    for name in FastRequest.__slots__:  # every slot set by the constructor
        getattr(req, name)
    assert (req.code, req.code_message, req.defaultContentType, req.upstream_status,
            req.proxy_error, req.routed, req.underscore_names, req.peer_ip) == (
        200, b"OK", b"text/html", None, None, None, True, "10.0.0.1")


def test_head_and_bodiless_responses_drop_later_writes():
    """HEAD (and 204/304): the head goes out, later writes are dropped and
    not counted (the request has no dict to put a write override in)."""
    path = Path()
    head = GET.replace(b"GET ", b"HEAD ")
    _sent, got = path.exchange(head, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n"), got
    _sent, got = path.exchange(GET, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 204 No Content\r\n") and got.endswith(b"\r\n\r\n"), got
    _sent, got = path.exchange(GET, OK)  # the connection serves on
    assert got.endswith(b"\r\n\r\nok"), got
    assert [e.bytes_download for e in path.log.entries] == [0, 0, 2]


@pytest.mark.skipif(not _CPYTHON_311, reason="reads CPython 3.11's object layout")
@pytest.mark.parametrize("first", ["none", "h2c", "http/1.0"])
def test_channels_keep_inline_attributes_with_many_connections_open(first):
    """16 connections made before their first requests (and, first, a
    connection handed over): every channel's remaining dict attributes stay
    inline after keep-alive requests (before the slots none did)."""
    path = Path()
    site = path.channel.factory
    if first == "h2c":
        ch = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 40001))
        ch.makeConnection(StringTransport())
        ch.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    elif first == "http/1.0":
        ch = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 40001))
        ch.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 1)))
        ch.dataReceived(GET.replace(b"HTTP/1.1", b"HTTP/1.0"))
    clients = []
    for i in range(16):
        channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 41000 + i))
        client = StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 41000 + i))
        channel.makeConnection(client)
        clients.append((channel, client))
    for _ in range(3):
        for channel, _client in clients:
            channel.dataReceived(GET)
        for wire, proto in path.up.upstreams:
            if wire.value():
                wire.clear()
                proto.dataReceived(OK)
    for channel, client in clients:
        assert client.value().count(b"HTTP/1.1 200 OK\r\n") == 3
        assert _inline(channel)


def test_the_exchange_has_no_dict():
    """The proxy's exchange sets some names late or on some paths only (the
    body's transport, the pending attempt, a balanced path's ``_busy``, a
    timeout's): slots only, every one set by the constructor."""
    from nbgateway.proxy.exchange import _Exchange
    from nbgateway.routes.context import RequestContext

    exchange = _Exchange(object(), object(), RequestContext(), object(), object(), object())
    assert not hasattr(exchange, "__dict__")
    for name in _Exchange.__slots__:
        getattr(exchange, name)
    assert exchange.tried == () and exchange.due is None and exchange.head is None


@pytest.mark.skipif(not _CPYTHON_311, reason="reads CPython 3.11's object layout")
def test_attempts_keep_inline_attributes_with_requests_in_flight():
    """16 requests in flight at once, three rounds: the upstream client's
    attempts (few names, all set early) stay inline."""
    from nbgateway.dial.http11 import _Attempt

    made: list[Any] = []
    orig = _Attempt.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        orig(self, *a, **kw)
        made.append(self)

    _Attempt.__init__ = init  # type: ignore[method-assign]
    try:
        path = Path()
        site = path.channel.factory
        clients = []
        for i in range(16):
            channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 42000 + i))
            channel.makeConnection(StringTransport(
                peerAddress=IPv4Address("TCP", "100.64.0.10", 42000 + i)))
            clients.append(channel)
        for _ in range(3):
            for channel in clients:
                channel.dataReceived(GET)
            for wire, proto in path.up.upstreams:
                if wire.value():
                    wire.clear()
                    proto.dataReceived(OK)
    finally:
        _Attempt.__init__ = orig  # type: ignore[method-assign]
    assert len(made) == 48
    assert all(_inline(obj) for obj in made)


def test_finish_and_lost_observers_are_called_in_order_once():
    """Several observers of each kind, in the order added; finish calls
    the finish observers with None and never the lost ones; a lost client
    calls both kinds with the failure."""
    from twisted.python.failure import Failure

    def made() -> FastRequest:
        channel = FastHTTPChannel()
        channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
        return FastRequest(channel, b"GET", b"/", Headers(), False, True, channel._conn_info)

    calls: list[tuple[str, Any]] = []
    req = made()
    for name in ("f1", "f2"):
        req.on_finish(lambda r, n=name: calls.append((n, r)))
    req.on_lost(lambda r: calls.append(("lost", r)))
    req.on_lost(lambda r: calls.append(("l2", r)))
    req.finish()
    assert calls == [("f1", None), ("f2", None)]
    assert req.finish_hooks == () and req.lost_hooks == ()
    calls.clear()
    req = made()
    req.on_finish(lambda r: calls.append(("f1", r)))
    req.on_lost(lambda r: calls.append(("l1", r)))
    reason = Failure(Exception("gone"))
    req.connectionLost(reason)
    assert calls == [("f1", reason), ("l1", reason)]
