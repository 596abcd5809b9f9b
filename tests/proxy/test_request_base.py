"""The lean requests of both routes share one base (nbgateway.proxy.request_base):
the HTTP/1.1 fast path's ``FastRequest`` and the HTTP/2 lean route's
``LeanH2Request`` are ``LeanRequest``s with slots only, the base imports
neither the body stream nor the HTTP/2 modules, and the shared observer and
error-page code keeps each route's behaviour: its log namespace and prefix,
its own abort (the connection's transport, or the stream's reset)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from nbgateway.proxy import request_base
from nbgateway.proxy.fast_request import FastRequest
from nbgateway.proxy.h2_lean import LeanH2Request
from nbgateway.proxy.request_base import LeanRequest

_INFO = (IPv4Address("TCP", "100.64.0.10", 4000), "100.64.0.10",
         IPv4Address("TCP", "10.0.0.1", 80), False, None, None)


class _FastChannel:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.aborted = 0
        self.transport.abortConnection = self._abort  # type: ignore[method-assign]
        self.done: list[Any] = []

    def _abort(self) -> None:
        self.aborted += 1

    def fast_done(self, req: Any) -> None:
        self.done.append(req)


class _Stream:
    transport = None  # as LeanH2Stream's (an HTTP/2 stream has none)

    def __init__(self) -> None:
        self.aborted = 0

    def abortConnection(self) -> None:
        self.aborted += 1


def _fast() -> tuple[FastRequest, _FastChannel]:
    channel = _FastChannel()
    req = FastRequest(channel, b"GET", b"/a?b", Headers({b"host": [b"x"]}),  # type: ignore[arg-type]
                      True, False, _INFO)
    return req, channel


def _lean() -> tuple[LeanH2Request, _Stream]:
    stream = _Stream()
    req = LeanH2Request(stream, b"GET", b"/a?b", Headers({b"host": [b"x"]}), False, False,
                        _INFO, ("routed",))
    return req, stream


def test_both_requests_are_the_shared_base_with_slots_only() -> None:
    for cls in (FastRequest, LeanH2Request):
        assert issubclass(cls, LeanRequest)
        assert "__dict__" not in dir(cls)
    fast, _ = _fast()
    lean, _ = _lean()
    for req in (fast, lean):
        assert not hasattr(req, "__dict__")
        assert req.path == b"/a"
        assert req.getHeader(b"host") == b"x"
        assert req.getClientAddress() is _INFO[0] and req.getHost() is _INFO[2]
        assert req.isSecure() is False and req.underscore_names is False
    # twisted.web's defaults in its order: Connection: close only on the
    # HTTP/1.1 request that asked for it
    assert list(fast.responseHeaders._rawHeaders) == [b"Connection", b"Server", b"Date"]
    assert list(lean.responseHeaders._rawHeaders) == [b"Server", b"Date"]
    assert lean.routed == ("routed",) and fast.routed is None
    assert fast.clientproto == b"HTTP/1.1" and lean.clientproto == b"HTTP/2"
    assert lean.transport is None and lean.body_stream is None and lean.content is None
    assert lean.upstream_copy is None and fast.transport is not None


def test_the_base_imports_neither_the_body_stream_nor_http2() -> None:
    tree = ast.parse(Path(request_base.__file__).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {n for n in names if "streaming" in n or "h2" in n or "_http2" in n}, names


@pytest.mark.parametrize("route", ["fast", "lean"])
def test_observers_and_the_error_page_keep_each_routes_log_and_abort(route: str) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        req, channel = _fast() if route == "fast" else _lean()
        namespace, prefix = (("nbgateway.proxy.fast", "fast path") if route == "fast"
                             else ("nbgateway.proxy.h2", "h2 lean route"))
        seen: list[Any] = []

        def broken(result: Any) -> None:
            seen.append(result)
            raise ValueError("observer")

        req.on_finish(broken)
        req.on_lost(seen.append)
        reason = Failure(ConnectionError("gone"))
        req.connectionLost(reason)
        assert seen == [reason, reason]  # finish observer first, then the lost one
        failed = [e for e in events if e.get("log_failure") is not None]
        assert [e["log_namespace"] for e in failed] == [namespace]
        assert failed[0]["log_format"].format(**failed[0]) == (
            f"{prefix}: a finish observer failed")
        for e in failed:  # the test's own: the logged failures are expected
            e["log_failure"].cleanFailure()
        # a second request, its response started: processing_failed aborts
        # the connection (HTTP/1.1) or resets the stream (HTTP/2)
        req, channel = _fast() if route == "fast" else _lean()
        req.startedWriting = True
        req.processing_failed(Failure(RuntimeError("resource")))
        assert channel.aborted == 1
        assert events[-1]["log_namespace"] == namespace
        assert events[-1]["log_format"].format(**events[-1]) == f"{prefix}: processing failed"
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_finish_runs_the_observers_once_and_the_lost_ones_never() -> None:
    req, channel = _fast()
    ended: list[Any] = []
    lost: list[Any] = []
    req.on_finish(ended.append)
    req.on_lost(lost.append)
    d = req.notifyFinish()
    results: list[Any] = []
    d.addCallback(results.append)
    req.finish()
    assert ended == [None] and lost == [] and results == [None]
    assert channel.done == [req]
    assert channel.transport.value().startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n")


def test_each_route_has_its_own_code_for_the_shared_methods() -> None:
    """CPython specialises attribute access per bytecode site for one exact
    type: the base's methods are copied into each route's class (one source,
    one code object per class), so a gateway serving both HTTP/1.1 and
    HTTP/2 keeps each route's reads and writes specialised."""
    shared = [name for name, fn in vars(LeanRequest).items()
              if callable(fn) and not name.startswith("__init_subclass__")]
    assert "__init__" in shared and "on_finish" in shared and "processing_failed" in shared
    for name in shared:
        fast, lean = getattr(FastRequest, name), getattr(LeanH2Request, name)
        base = getattr(LeanRequest, name)
        if name in vars(FastRequest) and fast.__module__ == FastRequest.__module__:
            continue  # the route's own (e.g. FastRequest.registerProducer)
        assert fast.__code__ is not base.__code__, name
        assert lean.__code__ is not base.__code__, name
        assert fast.__code__ is not lean.__code__, name
        assert fast.__doc__ == base.__doc__ and fast.__defaults__ == base.__defaults__
    # the copies behave as the base's: a request made by each is whole
    fast_req, _ = _fast()
    lean_req, _ = _lean()
    assert fast_req.sentLength == lean_req.sentLength == 0
    assert fast_req.defaultContentType == lean_req.defaultContentType == b"text/html"
