"""The state every request reads is each per-request object's own attribute
from its constructor, never a class attribute read through the instance:
CPython 3.11 does not specialise such a read (a generic attribute lookup,
about 200 instructions, on every request; docs/performance.md, round 10).
Each default is the constructor's alone (no class attribute of the name
left to drift from it)."""

from __future__ import annotations

import types
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.web.http_headers import Headers

from nbgateway.dial.http11 import LeanAgent, _Attempt
from nbgateway.proxy.exchange import _Exchange
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.routes.context import RequestContext
from tests.proxy.test_fast_values import _channel, _Recording
from tests.proxy.test_lean_path import GET, Path

_FAST_REQUEST = {
    "finished": False, "_disconnected": False, "startedWriting": False, "chunked": False,
    "sentLength": 0, "body_stream": None, "content": None, "producer": None, "_held": None,
    "finish_hooks": (), "lost_hooks": (), "notifications": (),
}
_EXCHANGE = {"client_gone": False, "done": False, "response_bytes": 0, "_sends": 0}
_ATTEMPT = {"cancelled": False, "told": False}


def _slot(cls: type, name: str) -> bool:
    """Is ``name`` a slot of ``cls`` (its value the instance's own)?"""
    return any(isinstance(vars(c).get(name), types.MemberDescriptorType) for c in cls.__mro__)


def _own_names(obj: Any) -> set[str]:
    """The attribute names ``obj`` has values of its own for: its dict's
    (if it has one) and its set slots."""
    names = set(vars(obj)) if hasattr(obj, "__dict__") else set()
    for cls in type(obj).__mro__:
        for name, member in vars(cls).items():
            if isinstance(member, types.MemberDescriptorType) and hasattr(obj, name):
                names.add(name)
    return names


def _own(obj: Any, expected: dict[str, Any]) -> None:
    own = _own_names(obj)
    for name, value in expected.items():
        assert name in own, f"{type(obj).__name__}.{name} is read from the class"
        assert getattr(obj, name) == value, name
        # one default: the constructor's (a slot's descriptor is no default)
        assert name not in vars(type(obj)) or _slot(type(obj), name), (
            f"{type(obj).__name__}.{name}: two defaults")


def test_fast_request_state_is_its_own():
    channel, _client = _channel(_Recording(), IPv4Address("TCP", "100.64.0.10", 1))
    for close in (False, True):
        _own(FastRequest(channel, b"GET", b"/a?b=1", Headers(), close), _FAST_REQUEST)


def test_exchange_and_attempt_state_is_their_own():
    ctx = RequestContext()
    exchange = _Exchange(object(), object(), ctx, object(), object(), object())
    _own(exchange, _EXCHANGE)
    for sink in (None, exchange):
        attempt = _Attempt(LeanAgent(object(), lambda *a: None), (b"http", b"h", 80), b"GET",
                           b"GET / HTTP/1.1\r\n\r\n", None, True, sink)
        _own(attempt, _ATTEMPT)


def test_the_channel_flags_are_its_own_and_its_attributes_few():
    """``fast`` and ``_closing`` (read several times per request) are the
    channel's own; after keep-alive requests the channel has fewer than 30
    attributes of its own (CPython 3.11's shared-keys limit: with 30 every
    attribute read on the channel measured ~60 % slower)."""
    path = Path()
    for i in range(3):
        path.exchange(GET.replace(b"?q=1", b"?q=%d" % i),
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    channel = path.channel
    assert channel.fast_requests == 3
    assert {"fast", "_closing"} <= _own_names(channel)
    assert len(vars(channel)) < 30, sorted(vars(channel))


def test_requests_still_served_and_observed_as_before():
    """The moved defaults change nothing a request does: the fast path
    serves keep-alive requests, the access log gets one entry each."""
    path = Path()
    for i in range(3):
        _sent, got = path.exchange(GET.replace(b"?q=1", b"?q=%d" % i),
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
    assert len(path.log.entries) == 3


def test_the_body_framing_state_is_the_channels_own_under_the_limit():
    """``_body_left`` and ``_waiting`` (read several times per request) are
    the channel's own from connectionMade; the parser and its head are one
    attribute and the clock is in the connection tuple, so the channel still
    has fewer than 30 attributes of its own; a buffered body and a streamed
    one are framed as before on the same connection."""
    path = Path()
    path.exchange(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    channel = path.channel
    assert {"_body_left", "_waiting", "_parsing"} <= _own_names(channel)
    assert not {"_parser", "_parse_head", "_seconds"} & _own_names(channel)
    parser, _head = channel._parsing
    assert channel._parser is parser
    assert channel._conn_info[4] == path.clock.seconds  # the site reactor's clock
    post = b"POST /f HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n\r\nabc"
    sent, got = path.exchange(post, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sent.endswith(b"\r\n\r\nabc") and got.endswith(b"\r\n\r\nok")
    assert channel._parsing is None  # llhttp would wait for the body: a fresh one next
    assert channel._waiting is None and channel._body_left == 0
    path.exchange(GET.replace(b"?q=1", b"?q=2"), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert channel.fast_requests == 3 and channel._parsing is not None
    assert len(vars(channel)) < 30, sorted(vars(channel))
