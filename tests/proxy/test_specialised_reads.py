"""Per request, the fast path through the lean client makes no bound
method through a generic attribute lookup where a plain method call does
(CPython 3.11 specialises ``obj.method(...)`` but not reading a method as an
attribute, nor reading or writing a class's attribute): the exchange hands
the body to the connection's ``deliver`` directly (no bound method stored on
the response), the site calls ``PrivateGate.decide_now`` as a method and
binds its finish observer once, the exchange is the fast request's
lost-client observer itself, and the direct-write counters are an
instance's.  Other responses, gates and agents keep their general path."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from nbgateway.auth.tunnel import PrivateGate
from nbgateway.dial import sockwrite
from nbgateway.dial.http11_conn import LeanResponse, UpstreamConnection
from tests.proxy.test_lean_path import GET, Path

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _count(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    calls = [0]
    real = getattr(cls, name)

    def counting(self: Any, *a: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, name, counting)
    return calls


def test_the_lean_response_body_goes_to_deliver_directly(monkeypatch):
    path = Path()
    path.exchange(GET, _ANSWER)  # warm
    deliver = _count(monkeypatch, UpstreamConnection, "deliver")
    deliver_body = _count(monkeypatch, LeanResponse, "deliverBody")
    decide = _count(monkeypatch, PrivateGate, "decide_now")
    for i in range(2, 6):
        _sent, got = path.exchange(GET.replace(b"?q=1", b"?q=%d" % i), _ANSWER)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
    assert (deliver[0], deliver_body[0], decide[0]) == (4, 0, 4)
    assert len(path.log.entries) == 5  # the finish observer, bound once, logs each
    res = path.channel.site.resource
    assert res._finished_hook == res._finished


def test_a_lean_response_still_delivers_through_deliver_body():
    """Others' callers (tests, the health checker) use the IResponse method."""
    from nbgateway.dial.http11 import ConnectionPool, LeanAgent
    from tests.proxy.test_upstream_client import URL, Collect, FakeEndpoints

    eps = FakeEndpoints()
    agent = LeanAgent(ConnectionPool(task.Clock(), 4, 90.0), eps.endpoint_for)
    d: defer.Deferred = agent.request(b"GET", URL, Headers(), None)
    eps.conns[-1][1].dataReceived(_ANSWER)
    resp = d.result if d.called else None
    # no deliverBody of the instance's own (LeanResponse has slots, no dict)
    assert isinstance(resp, LeanResponse) and "deliverBody" not in getattr(resp, "__dict__", {})
    assert "deliverBody" not in LeanResponse.__slots__
    sink = Collect()
    resp.deliverBody(sink)
    assert sink.data == b"ok"


def test_direct_write_counters_are_an_instances_own():
    assert set(vars(sockwrite.DirectWriteStats)) == {"direct", "partial", "fallback"}
    before = sockwrite.DirectWriteStats.fallback
    sockwrite.write_fallback(_Sink(), b"x")
    assert sockwrite.DirectWriteStats.fallback == before + 1


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_the_exchange_is_its_own_lost_client_observer():
    """No bound method per request for the lost-client callback: the fast
    request's observer is the exchange, and calling it is the client going
    away (the upstream wait is cancelled)."""
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    from nbgateway.proxy.exchange import _Exchange

    path = Path()
    path.exchange(GET, _ANSWER)  # warm
    path.channel.dataReceived(GET.replace(b"?q=1", b"?q=9"))
    request = path.channel._current
    (observer,) = request.lost_hooks
    assert type(observer) is _Exchange and observer.request is request
    wire, _proto = path.up.upstreams[-1]
    path.channel.connectionLost(Failure(ConnectionLost()))
    assert observer.client_gone and (wire.disconnecting or getattr(wire, "aborted", False))
    assert request.lost_hooks == ()
