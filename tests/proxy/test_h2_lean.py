"""The lean route of HTTP/2 streams (nbgateway.proxy.h2_lean) against
twisted.web's route: the gateway's resource (front door, private gate,
reverse proxy, route plan, access log) behind ``ProxySite(fast=True)`` (a
bodiless GET/HEAD the fast path's resource takes goes the lean route) and
``ProxySite(fast=False)`` (every stream through Twisted's ``H2Stream`` and
``server.Request``), h2c connections from an ``h2`` client in memory, the
upstreams in memory (tests/lean_upstreams).

Per seeded request (method, path, query, identity/forwarding/hop-by-hop and
"_" names, cookies, Host beside :authority, unknown hosts and ports) and
upstream answer (status, hop-by-hop and Connection-named headers, many
values, Set-Cookie, bodies with and without length, HEAD/204/304): the
upstream gets the same bytes, the client the same frames' content (status,
headers in order with Date masked, body, end or reset), and the access log
the same entry (its id and time masked), exactly one per request."""

from __future__ import annotations

import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.h2_lean import LeanH2Request, LeanH2Stream
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import H2C_PREFACE, ProxySite
from nbgateway.routes.service import entry_from_mapping
from nbgateway.routes.table import ServiceTable
from tests.lean_upstreams import InMemoryPools
from tests.proxy.test_plan import _mapping, _Mgmt

PEER = "100.64.0.10"


class _Sink:
    """The access log's tuple intake."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    def record(self, fields: tuple[Any, ...]) -> None:
        self.entries.append(fields)


class _Wire(StringTransport):
    """The client's connection; counts the gateway's transport writes."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Gateway:
    """One tunnel listener's site (lean route on or off) with one h2c
    connection from an ``h2`` client."""

    def __init__(self, fast: bool, custom: dict[str, str] | None = None,
                 window: int = 1 << 20) -> None:
        self.clock = task.Clock()
        table = ServiceTable()
        table.entries["app.example"] = entry_from_mapping(_mapping(custom=custom))
        other = _mapping()
        other.id, other.account_id, other.domain = "svc2", "acct2", "other.example"
        table.entries["other.example"] = entry_from_mapping(other)
        self.pools = InMemoryPools(self.clock)
        proxy = ReverseProxy(self.clock, self.pools, lambda a, d: object(), clock=self.clock)
        gate = PrivateGate(TunnelValidationCache(_Mgmt(), self.clock), lambda a, ip: True)
        self.sink = _Sink()
        res = GatewayResource(lookup=table.lookup, proxy=proxy, gate=gate,
                              listener_account="acct", access_log=self.sink, clock=self.clock)
        self.site = ProxySite(res, reactor=self.clock, fast=fast)
        self.wire = _Wire(peerAddress=IPv4Address("TCP", PEER, 40000),
                          hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.channel = self.site.buildProtocol(IPv4Address("TCP", PEER, 40000))
        self.channel.makeConnection(self.wire)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.client.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.client.initiate_connection()
        self.events: list[Any] = []
        self.channel.dataReceived(H2C_PREFACE)
        self.pump()
        #: upstream bytes seen per connection
        self.seen: list[int] = []

    @property
    def h2(self) -> Any:
        return self.channel.h2

    def pump(self, ack: bool = True) -> None:
        for _ in range(100):
            out = self.client.data_to_send()
            if out:
                if out.startswith(H2C_PREFACE):
                    out = out[len(H2C_PREFACE):]
                self.channel.dataReceived(out)
            self.clock.advance(0)
            back = self.wire.value()
            self.wire.clear()
            if back:
                for event in self.client.receive_data(back):
                    self.events.append(event)
                    if ack and isinstance(event, h2.events.DataReceived):
                        self.client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id)
            if not out and not back:
                return
        raise AssertionError("did not settle")

    def upstream_news(self) -> list[tuple[int, bytes]]:
        """(connection index, new bytes) of the upstream connections."""
        got = []
        for i, (wire, _proto) in enumerate(self.pools.upstreams):
            if i >= len(self.seen):
                self.seen.append(0)
            value = wire.value()
            if len(value) > self.seen[i]:
                got.append((i, value[self.seen[i]:]))
                self.seen[i] = len(value)
        return got

    def answer(self, index: int, data: bytes) -> None:
        self.pools.upstreams[index][1].dataReceived(data)
        self.pump()

    def outcome(self, sid: int) -> list[Any]:
        """The client's view of stream ``sid`` (Date masked)."""
        got: list[Any] = []
        for event in self.events:
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                got.append(("head", [(n, b"-" if n == b"date" else v) for n, v in event.headers]))
            elif isinstance(event, h2.events.DataReceived):
                if got and got[-1][0] == "data":
                    got[-1] = ("data", got[-1][1] + event.data)
                else:
                    got.append(("data", event.data))
            elif isinstance(event, h2.events.TrailersReceived):
                got.append(("trailers", event.headers))
            else:
                got.append((type(event).__name__, getattr(event, "error_code", None)))
        return got

    def terminated(self) -> bool:
        return any(isinstance(e, h2.events.ConnectionTerminated) for e in self.events)

    def log(self) -> list[tuple[Any, ...]]:
        return [(f[2:8] + f[9:]) for f in self.sink.entries]


NAMES = [b"accept", b"user-agent", b"x-netbird-user", b"x-netbird-groups", b"x_netbird_user",
         b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded",
         b"x-real-ip", b"x_custom", b"keep-alive-ish", b"referer", b"cookie", b"cookie",
         b"authorization", b"if-none-match", b"x-env", b"x-private", b"content-type",
         b"accept-language", b"sec-fetch-mode", b"priority", b"x-many"]
VALUES = [b"mallory", b"v1", b"a, b", b"nb_session=s; x=1", b"x=1", b"", b"\x7f\x80\xff",
          b"text/html,application/xhtml+xml", b"spaced  inside"]
PATHS = [b"/", b"/p", b"/p/index.html", b"/a%20b", b"//double", b"/p?q=1", b"/x?session_token=T",
         b"/__netbird__/x", b"/.well-known/jwks.json", b"/p?" + b"q" * 300]
AUTHORITIES = [b"app.example"] * 8 + [b"app.example:80", b"app.example:8443", b"App.Example",
                                       b"nowhere.example", b"other.example", b"app.example."]
METHODS = [b"GET"] * 6 + [b"HEAD"] * 2 + [b"POST", b"DELETE", b"OPTIONS"]
UP_NAMES = ["Content-Type", "Set-Cookie", "Set-Cookie", "ETag", "Cache-Control", "Connection",
            "Keep-Alive", "Transfer-Encoding-Not", "X-Upstream", "Vary", "Location",
            "Proxy-Connection", "Upgrade", "Server", "Date-Ish", "X-NetBird-User"]


def random_request(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], bool]:
    """A request head (pseudo-header fields first) and END_STREAM."""
    method = rng.choice(METHODS)
    authority = rng.choice(AUTHORITIES)
    head = [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
            (b":path", rng.choice(PATHS) + (b"&v=%d" % rng.randint(0, 99) if rng.random() < .3
                                              else b""))]
    rng.shuffle(head)
    fields = []
    for _ in range(rng.choice((0, 2, 5, 12, 16))):
        name = rng.choice(NAMES)
        fields.append((name, rng.choice(VALUES)))
    if rng.random() < 0.05:
        fields += [(b"x-many", b"m%d" % i) for i in range(60)]
    if rng.random() < 0.1:
        fields.append((b"host", authority))
    if rng.random() < 0.05:
        fields.append((b"content-length", b"0"))
    if rng.random() < 0.05:
        fields.append((b"te", b"trailers"))
    end = method in (b"GET", b"HEAD") or rng.random() < 0.5
    return head + fields, end


def random_answer(rng: random.Random, head_request: bool) -> bytes:
    status = rng.choice((200, 200, 200, 201, 204, 304, 404, 500, 302))
    lines = []
    for _ in range(rng.randint(0, 10)):
        name = rng.choice(UP_NAMES)
        if name == "Connection":
            value = rng.choice(["keep-alive", "X-Upstream", "close", "Vary, x-upstream"])
        elif name == "Location":
            value = rng.choice(["/next", "http://127.0.0.1:8081/x", "https://elsewhere/"])
        else:
            value = rng.choice(["1", "a, b", f"c={rng.randint(0, 9)}; Path=/", "text/plain"])
        lines.append(f"{name}: {value}\r\n")
    if rng.random() < 0.05:
        lines += [f"X-Many: m{i}\r\n" for i in range(40)]
    body = b"" if status in (204, 304) else rng.choice((b"", b"ok", b"x" * 3000))
    chunked = status not in (204, 304) and rng.random() < 0.3
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:]) if p)
        payload += b"0\r\n\r\n"
    else:
        if status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}\r\n")
        payload = body
    if head_request:
        payload = b""
    return (f"HTTP/1.1 {status} X\r\n" + "".join(lines) + "\r\n").encode("latin-1") + payload


def serve(gw: Gateway, head: list[tuple[bytes, bytes]], end: bool, answer: bytes) -> tuple[
        list[bytes], list[Any]]:
    """One request on ``gw``'s connection: (what the upstream got, the
    client's view of the stream)."""
    sid = gw.client.get_next_available_stream_id()
    gw.client.send_headers(sid, head, end_stream=end)
    if not end:
        gw.client.send_data(sid, b"body", end_stream=True)
    gw.pump()
    sent = []
    for index, data in gw.upstream_news():
        sent.append(data)
        gw.answer(index, answer)
    return sent, gw.outcome(sid)


@pytest.mark.parametrize("seed", range(6))
def test_lean_and_twisted_routes_send_relay_and_log_the_same(seed: int) -> None:
    rng = random.Random(2026 + seed)
    customs = [None, {"X-Env": "prod"}]
    custom = customs[seed % 2]
    lean, slow = Gateway(True, custom), Gateway(False, custom)
    served = entries = 0
    for _ in range(150):
        head, end = random_request(rng)
        method = dict(head)[b":method"]
        answer = random_answer(rng, method == b"HEAD")
        got_lean = serve(lean, head, end, answer)
        got_slow = serve(slow, head, end, answer)
        assert got_lean == got_slow, (head, answer)
        assert lean.log() == slow.log(), head
        assert lean.terminated() == slow.terminated()
        if lean.terminated():  # a malformed request ended the connection (GOAWAY)
            assert slow.h2.lean_streams == 0
            served += lean.h2.lean_streams
            entries += len(lean.sink.entries)
            lean, slow = Gateway(True, custom), Gateway(False, custom)
    assert slow.h2.lean_streams == 0
    served += lean.h2.lean_streams
    entries += len(lean.sink.entries)
    assert served > 50 and entries > 50


def test_a_lean_stream_serves_the_common_request() -> None:
    gw = Gateway(True)
    sent, got = serve(gw, [(b":method", b"GET"), (b":scheme", b"https"),
                           (b":authority", b"app.example"), (b":path", b"/x?y=1"),
                           (b"x-netbird-user", b"mallory"), (b"accept", b"*/*")], True,
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"1\"\r\n\r\nhi")
    assert gw.h2.lean_streams == 1
    assert len(sent) == 1 and sent[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")
    assert b"mallory" not in sent[0] and b"x-netbird-user: alice@example.com" in sent[0].lower()
    assert got[0][0] == "head" and dict(got[0][1])[b":status"] == b"200"
    assert got[1] == ("data", b"hi") and got[-1][0] == "StreamEnded"
    assert len(gw.sink.entries) == 1 and gw.sink.entries[0][7] == 200


@pytest.mark.parametrize("head", [
    [(b":method", b"POST"), (b":authority", b"app.example"), (b":path", b"/")],
    [(b":method", b"GET"), (b":authority", b"app.example"), (b":path", b"/"),
     (b"content-length", b"0")],
    [(b":method", b"GET"), (b":authority", b"app.example"), (b":path", b"/"),
     (b"expect", b"100-continue")],
])
def test_other_streams_take_twisted_route(head: list[tuple[bytes, bytes]]) -> None:
    gw = Gateway(True)
    serve(gw, [(b":scheme", b"http"), *head], True, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert gw.h2.lean_streams == 0
    assert len(gw.sink.entries) == 1


def _reset_case(fast: bool, when: str) -> tuple[list[Any], list[Any], int]:
    gw = Gateway(fast)
    sid = gw.client.get_next_available_stream_id()
    gw.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                 (b":authority", b"app.example"), (b":path", b"/slow")],
                           end_stream=True)
    gw.pump()
    news = gw.upstream_news()
    assert len(news) == 1
    index = news[0][0]
    wire = gw.pools.upstreams[index][0]
    if when == "mid-body":
        gw.answer(index, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
    gw.client.reset_stream(sid)
    gw.pump()
    if when == "before-head":
        gw.answer(index, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    return gw.outcome(sid), gw.log(), int(wire.disconnecting)


@pytest.mark.parametrize("when", ["before-head", "mid-body"])
def test_a_reset_stream_ends_the_same_way(when: str) -> None:
    """RST_STREAM from the client: the same upstream fate, the same one
    access-log entry."""
    lean = _reset_case(True, when)
    assert lean == _reset_case(False, when)
    assert len(lean[1]) == 1


def _window_case(fast: bool) -> tuple[list[Any], list[Any], int, int]:
    """A client window of 1,000 bytes and a 100 kB response: the upstream's
    transport is paused until the client opens the window."""
    gw = Gateway(fast, window=1000)
    sid = gw.client.get_next_available_stream_id()
    gw.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                 (b":authority", b"app.example"), (b":path", b"/big")],
                           end_stream=True)
    gw.pump()
    index = gw.upstream_news()[0][0]
    wire = gw.pools.upstreams[index][0]
    body = bytes(range(256)) * 400
    gw.pools.upstreams[index][1].dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:60000])
    gw.pump(ack=False)
    paused = wire.producerState
    received = sum(len(e.data) for e in gw.events if isinstance(e, h2.events.DataReceived))
    for event in list(gw.events):
        if isinstance(event, h2.events.DataReceived):
            gw.client.acknowledge_received_data(event.flow_controlled_length, sid)
    gw.client.increment_flow_control_window(1 << 20, sid)
    gw.client.increment_flow_control_window(1 << 20)
    gw.pump()
    gw.pools.upstreams[index][1].dataReceived(body[60000:])
    gw.pump()
    out = gw.outcome(sid)
    assert b"".join(e[1] for e in out if e[0] == "data") == body
    return out, gw.log(), received, paused == "paused"


def test_flow_control_and_backpressure_the_same() -> None:
    lean = _window_case(True)
    assert lean == _window_case(False)
    assert lean[2] == 1000 and lean[3]


def test_an_exception_in_the_resource_is_a_500_page() -> None:
    gw = Gateway(True)

    def boom(request: Any) -> Any:
        raise ValueError("boom")

    gw.site.resource.render = boom
    sent, got = serve(gw, [(b":method", b"GET"), (b":scheme", b"http"),
                           (b":authority", b"app.example"), (b":path", b"/")], True, b"")
    assert sent == []
    assert dict(got[0][1])[b":status"] == b"500"
    assert got[1][1].startswith(b"<html><head><title>Processing Failed")


def test_request_and_stream_shapes() -> None:
    """Slots only: no per-instance dict on either."""
    assert not hasattr(LeanH2Stream(1, None), "__dict__")
    assert "__dict__" not in dir(LeanH2Request)


def test_responses_ending_in_one_turn_leave_in_one_write() -> None:
    """Six lean streams answered in the same reactor turn: their HEADERS,
    DATA and ends go out in one transport write (one TLS record), not one
    write per HEADERS frame and per stream end."""
    gw = Gateway(True)
    wire = gw.wire
    sids = []
    for i in range(6):
        sid = gw.client.get_next_available_stream_id()
        gw.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"app.example"),
                                     (b":path", b"/p%d" % i)], end_stream=True)
        sids.append(sid)
    gw.channel.dataReceived(gw.client.data_to_send())
    gw.clock.advance(0)
    for index, _data in gw.upstream_news():
        gw.pools.upstreams[index][1].dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    before = wire.writes
    gw.clock.advance(0)
    assert wire.writes - before == 1
    for event in gw.client.receive_data(wire.value()):
        gw.events.append(event)
    for sid in sids:
        got = gw.outcome(sid)
        assert got[1] == ("data", b"ok") and got[-1][0] == "StreamEnded"
    assert gw.h2.lean_streams == 6 and len(gw.sink.entries) == 6


def test_lean_head_names_cold_and_warm() -> None:
    """The lean head's memo of plain names (``h2_lean._PLAIN``): each head
    gives the same request headers, host, underscore flag and route
    decision with the memo empty and holding every name seen; declined,
    ``host``, ``_`` and pseudo-header names are never remembered."""
    from types import SimpleNamespace

    from nbgateway.proxy import h2_lean

    rng = random.Random(18)
    names = [b"accept", b"user-agent", b"x_under", b"host", b"content-length", b"expect",
             b"cookie", b"x-a", b"sec-fetch-mode", b":protocol"]
    info = (None, "", None, False, None, lambda host: ("k", None) if host else None)

    def head(fields: list[tuple[bytes, bytes]]) -> Any:
        stream = h2_lean.lean_stream(None, SimpleNamespace(stream_id=1, headers=fields), info)
        if stream is None:
            return None
        req = stream._request
        return (dict(req.requestHeaders._rawHeaders), req.underscore_names, req.routed,
                req.method, req.uri)

    for _ in range(400):
        fields = [(b":method", rng.choice([b"GET", b"HEAD", b"POST"])),
                  (b":authority", rng.choice([b"app.example", b""])), (b":path", b"/x")]
        fields += [(rng.choice(names), rng.choice([b"1", b"a b"]))
                   for _ in range(rng.randrange(0, 6))]
        h2_lean._PLAIN.clear()
        cold = head(fields)
        assert head(fields) == cold, fields  # warm
    for name in names:
        head([(b":method", b"GET"), (b":authority", b"a"), (b":path", b"/"), (name, b"1")])
    assert h2_lean._PLAIN[b"accept"] == b"Accept"
    for name in (b"x_under", b"host", b"content-length", b"expect", b":protocol", b":path"):
        assert name not in h2_lean._PLAIN, name
