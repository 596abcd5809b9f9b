"""The fast path's request is read with plain attribute reads, not
``getattr()`` calls: the front resource, the reverse proxy and the exchange
check ``type(request) is FastRequest`` (the site ``type(gate) is
PrivateGate``, the proxy and exchange ``type(agent) is LeanAgent``; the fast
channel takes the resource's ``fast_route`` once per connection) and read
what they need directly (a builtin ``getattr`` call costs several times a
specialised attribute read; docs/performance.md, round 11).  Other requests
(twisted.web's) still go through ``getattr`` with the same defaults, and
both serve and log the same."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from nbgateway.http import site as site_module
from nbgateway.proxy import exchange as exchange_module
from nbgateway.proxy import fast as fast_module
from nbgateway.proxy import reverse as reverse_module
from tests.proxy.test_lean_path import GET, Path

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def getattr_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every ``getattr()`` call the four modules make: (module, name)."""
    calls: list[tuple[str, str]] = []
    for module in (site_module, reverse_module, exchange_module, fast_module):
        def counting(obj: Any, name: str, *default: Any, _m: str = module.__name__) -> Any:
            calls.append((_m, name))
            return getattr(obj, name, *default)
        monkeypatch.setattr(module, "getattr", counting, raising=False)
    return calls


def test_fast_requests_make_no_getattr_call(getattr_calls):
    path = Path()
    path.exchange(GET, _ANSWER)  # warm: the gate's cache, the pool, the plan
    getattr_calls.clear()
    for i in range(2, 6):  # varied heads
        _sent, got = path.exchange(GET.replace(b"?q=1", b"?q=%d" % i), _ANSWER)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
    # nor for the gateway's LeanAgent (send_head, request_into)
    assert getattr_calls == []
    assert path.channel.fast_requests == 5
    # the channel's fast_route: the site resource's, taken once per connection
    assert path.channel._conn_info[5] == path.channel.site.resource.fast_route
    assert len(path.log.entries) == 5


def test_fast_request_log_fields_read_plainly():
    """A bodiless request and a buffered-body POST: the access log's upload
    and download byte counts as before (no getattr defaults involved)."""
    path = Path()
    path.exchange(GET, _ANSWER)
    post = (b"POST /form HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhello")
    sent, got = path.exchange(post, _ANSWER)
    assert sent.endswith(b"\r\n\r\nhello"), sent
    assert got.endswith(b"\r\n\r\nok"), got
    first, second = path.log.entries
    assert first.bytes_upload == 0 and first.bytes_download == 2
    assert second.bytes_upload == 5 and second.bytes_download == 2
    assert second.method == "POST" and second.path == "/form"


def test_client_gone_before_the_answer_cancels_the_upstream_wait():
    """The exchange registers its lost-client callback on the fast request
    directly (``on_lost``): a client that goes away mid-request still
    cancels the upstream request and logs nothing it never sent."""
    path = Path()
    path.exchange(GET, _ANSWER)
    path.client.clear()
    path.channel.dataReceived(GET.replace(b"?q=1", b"?q=7"))
    wire, _proto = path.up.upstreams[-1]
    assert b"?q=7" in wire.value()
    path.channel.connectionLost(Failure(ConnectionLost()))
    # the upstream connection of the abandoned request is dropped
    assert wire.disconnecting or getattr(wire, "aborted", False), vars(wire)
