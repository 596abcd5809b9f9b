"""The live view's server-sent events: the sans-IO hub (bounds, coalescing,
heartbeats, lifetime, which account sees which change) and a real management
process whose store changes reach an open ``/ui/live/events`` stream."""

from __future__ import annotations

import http.client
import select
import socket
import time

import pytest

from nbgateway.management.model import ChangeKind
from nbgateway.management.ui.live import LiveHub, LiveStreams
from tests.ui.harness import Management, UiClient


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _frames(stream) -> list[bytes]:
    out, stream.out = stream.out, []
    return out


def test_hub_bounds_streams_in_total_and_per_session():
    hub = LiveHub(Clock(), max_streams=3, max_per_session=2)
    a1, a2 = hub.open("a", "acct"), hub.open("a", "acct")
    assert a1 and a2 and hub.open("a", "acct") is None  # per session
    assert hub.open("b", "acct") is not None and hub.open("c", "acct") is None  # in total
    assert hub.refused == 2
    hub.close(a1)
    assert hub.open("c", "acct") is not None


def test_hub_coalesces_changes_and_filters_by_account():
    clock = Clock()
    hub = LiveHub(clock, min_gap=0.5)
    mine, other, admin = hub.open("s1", "acct"), hub.open("s2", "other"), hub.open(
        "s3", "x", everything=True)
    for s in (mine, other, admin):
        assert _frames(s)[0].startswith(b"retry: ")
    clock.now += 1
    for _ in range(50):  # a burst is one event
        hub.changed(ChangeKind.SERVICE_UPDATED, "acct")
    hub.changed(ChangeKind.GROUP, "other")  # not shown by the live view
    hub.tick()
    assert _frames(mine) == [b"event: change\ndata: live\n\n"]
    assert _frames(other) == []
    assert _frames(admin) == [b"event: change\ndata: live\n\n"]
    hub.changed(ChangeKind.PROXY, "")  # a management-wide gateway: everyone
    clock.now += 0.1
    hub.tick()
    assert _frames(mine) == []  # too soon after the last event: held, not lost
    clock.now += 0.5
    hub.tick()
    assert _frames(mine) == _frames(other) == [b"event: change\ndata: live\n\n"]


def test_hub_heartbeat_and_lifetime():
    clock = Clock()
    hub = LiveHub(clock, heartbeat=15, lifetime=300)
    s = hub.open("s", "acct")
    _frames(s)
    clock.now += 14
    hub.tick()
    assert _frames(s) == []
    clock.now += 1
    hub.tick()
    assert _frames(s) == [b": heartbeat\n\n"]
    clock.now += 300
    assert hub.tick() == [s] and hub.streams == []


class _FromThread:
    """Records callFromThread calls (the store listener's only reactor use)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def callFromThread(self, f, *args) -> None:
        self.calls.append((f, args))


def test_store_listener_wakes_the_reactor_only_for_a_change_a_stream_shows():
    clock = Clock()
    hub = LiveHub(clock)
    reactor = _FromThread()
    live = LiveStreams(hub, reactor)
    # no stream open: no reactor wake-up for any change (every REST write passes here)
    live.store_listener(ChangeKind.SERVICE_CREATED, "acct", ("svc",))
    live.store_listener(ChangeKind.PEER, "acct", ("p",))
    assert reactor.calls == []
    s = hub.open("s", "acct")
    _frames(s)
    # a stream open: a kind the live view ignores still costs nothing
    live.store_listener(ChangeKind.PEER, "acct", ("p",))
    assert reactor.calls == []
    live.store_listener(ChangeKind.SERVICE_CREATED, "acct", ("svc",))
    assert reactor.calls == [(hub.changed, ("service.created", "acct"))]
    f, args = reactor.calls[0]
    f(*args)
    clock.now += 1
    hub.tick()
    assert _frames(s) == [b"event: change\ndata: live\n\n"]


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    try:
        yield m
    finally:
        m.stop()


def _open_stream(mgmt, client: UiClient):
    cookie = next(c for c in client.jar if c.name == "nbgw_ui")
    conn = http.client.HTTPConnection("127.0.0.1", mgmt.port, timeout=10)
    conn.request("GET", "/ui/live/events", headers={"Cookie": f"nbgw_ui={cookie.value}",
                                                    "Accept": "text/event-stream"})
    return conn, conn.getresponse()


def _open_raw(mgmt, client: UiClient) -> socket.socket:
    """The event stream on a plain socket: a timed-out read on http.client's
    socket file poisons it, and the stream is read with waits in between."""
    cookie = next(c for c in client.jar if c.name == "nbgw_ui")
    sock = socket.create_connection(("127.0.0.1", mgmt.port), timeout=10)
    sock.sendall(b"GET /ui/live/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Accept: text/event-stream\r\n"
                 + f"Cookie: nbgw_ui={cookie.value}\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, got: bytes, needle: bytes, timeout: float) -> bytes:
    """Everything read so far (``got`` included) once ``needle`` is in it or
    ``timeout`` has passed; chunked framing is left in (needles sit in one chunk)."""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_store_changes_reach_an_open_stream(mgmt):
    c = UiClient(mgmt.base)
    c.sign_in(mgmt.admin)
    status, _h, text = c.get("/ui/live")
    assert status == 200 and 'data-events="/ui/live/events"' in text
    sock = _open_raw(mgmt, c)
    try:
        got = _read_until(sock, b"", b"connected", 5)
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split(" ")[1] == "200"
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers["content-type"].startswith("text/event-stream")
        assert headers.get("content-security-policy")
        assert b"retry: 3000" in body
        mgmt.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "live-test"})
        assert b"event: change" in _read_until(sock, body, b"event: change", 5)
        # a fourth stream of the same session is refused; the page then polls
        extra = [_open_stream(mgmt, c) for _ in range(2)]
        conn4, resp4 = _open_stream(mgmt, c)
        assert resp4.status == 503 and resp4.getheader("Retry-After") == "30"
        for cn, _r in [*extra, (conn4, resp4)]:
            cn.close()
    finally:
        sock.close()


def test_events_need_a_session(mgmt):
    status, headers, _ = UiClient(mgmt.base).get("/ui/live/events")
    assert status == 303 and headers["Location"] == "/ui/login"
