"""The remembered heads of the request path: a request head seen twice in a
row on a fast-path connection (``FastHTTPChannel._remember``) and a whole
upstream response from one read (``UpstreamConnection._remember``) are
reused for byte-identical bytes instead of llhttp's callbacks.

Checked against the general path (both memos off) byte for byte: the
upstream request, the client's bytes and the access-log entries over a run
of repeated, varied, refused, bodied, closing, pipelined and odd requests and
responses (every golden case of ``test_lean_path`` three times in a row);
that the memos are actually taken; and that a request's header lists are its
own (a resource mutating them changes nothing for the next request)."""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource

from nbgateway.dial.http11_conn import UpstreamConnection
from nbgateway.proxy import fast
from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.streaming import ProxySite
from tests.proxy.test_lean_path import CASES, GET, Path, _date_free

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: up\r\n\r\nok"
POST = (b"POST /form HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n\r\nabc")
CLOSE = GET.replace(b"Accept: */*\r\n", b"Accept: */*\r\nConnection: close\r\n")
UNDERSCORE = GET.replace(b"Accept: */*\r\n", b"Accept: */*\r\nX_Under: 1\r\n")
DUPS = GET.replace(b"Accept: */*\r\n", b"Accept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\nX-Dup: 3\r\n")
OTHER = GET.replace(b"/index.html", b"/other")
#: GET with a bare LF in a header line: llhttp refuses it (twisted.web answers)
BAD = GET.replace(b"User-Agent: t\r\n", b"User-Agent: t\n")

#: (request, upstream answer, connection closes after) in order, on one path
#: until a closing exchange starts a new one
RUN: list[tuple[bytes, bytes, bool]] = []
for _name, (_request, _answer) in CASES.items():
    _close = _name == "no_type_no_length_close"
    RUN += [(_request, _answer, _close)] * (1 if _close else 3)
RUN += [(GET, OK, False)] * 4 + [
    (GET, OK.replace(b"ok", b"no"), False),  # the same head, another body
    (GET, OK + b"EXTRA", False),  # stray bytes after the response
    (GET, OK, False), (GET, OK, False),
    (OTHER, OK, False), (GET, OK, False), (OTHER, OK, False), (OTHER, OK, False),
    (DUPS, OK, False), (DUPS, OK, False), (DUPS, OK, False),
    (UNDERSCORE, OK, False), (UNDERSCORE, OK, False), (UNDERSCORE, OK, False),
    (POST, OK, False), (POST, OK, False), (GET, OK, False), (GET, OK, False),
    (GET, OK.replace(b"Server: up", b"Server: uq"), False), (GET, OK, False), (GET, OK, False),
    (CLOSE, OK, True), (GET, OK, False), (GET, OK, False), (GET, OK, False),
    (BAD, OK, False),
]


class _CountingParser:
    """httptools' request parser, counting the heads fed to it."""

    fed = 0

    def __init__(self, head: Any) -> None:
        self._p = httptools.HttpRequestParser(head)

    def feed_data(self, data: bytes) -> None:
        _CountingParser.fed += 1
        self._p.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)


class _Httptools:
    HttpRequestParser = _CountingParser
    HttpParserError = httptools.HttpParserError
    HttpParserUpgrade = httptools.HttpParserUpgrade


def _entry(e: Any) -> tuple:
    return (e.service_id, e.host, e.path, e.method, e.response_code, e.source_ip,
            e.auth_mechanism, e.user_id, e.bytes_upload, e.bytes_download)


def _run(memo: bool) -> tuple[list[tuple[bytes, bytes]], list[tuple], int, int]:
    """The run through fresh paths; (upstream request, client bytes) per
    exchange, the log entries, heads fed to llhttp, upstream replays."""
    out: list[tuple[bytes, bytes]] = []
    entries: list[tuple] = []
    replays = [0]
    real_replay = UpstreamConnection._replay

    def counting_replay(conn: UpstreamConnection, *a: Any) -> None:
        replays[0] += 1
        real_replay(conn, *a)

    patches: list[tuple[Any, str, Any]] = [(fast, "httptools", _Httptools),
                                           (UpstreamConnection, "_replay", counting_replay)]
    if not memo:
        patches += [(FastHTTPChannel, "_remember", lambda *a: None),
                    (UpstreamConnection, "_remember", lambda *a: None)]
    saved = [(obj, name, obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name))
             for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    _CountingParser.fed = 0
    try:
        path = Path()
        for request, answer, close in RUN:
            path.client.clear()
            path.channel.dataReceived(request)
            wire, proto = path.up.upstreams[-1]
            sent = wire.value()
            wire.clear()
            if sent:
                proto.dataReceived(answer)
                if close:
                    proto.connectionLost(Failure(Exception("closed")))
            out.append((sent, _date_free(path.client.value())))
            if close or path.client.disconnecting or not path.channel.fast:
                entries += [_entry(e) for e in path.log.entries]
                path = Path()
        # two identical requests in one write (pipelined)
        path.client.clear()
        path.channel.dataReceived(GET + GET)
        for _ in range(2):
            wire, proto = path.up.upstreams[-1]
            sent = wire.value()
            wire.clear()
            proto.dataReceived(OK)
            out.append((sent, b""))
        out.append((b"", _date_free(path.client.value())))
        entries += [_entry(e) for e in path.log.entries]
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    return out, entries, _CountingParser.fed, replays[0]


class HeadMemoParityTests(unittest.TestCase):
    def test_the_remembered_heads_give_the_general_paths_bytes(self):
        general, general_entries, general_fed, general_replays = _run(memo=False)
        memo, memo_entries, memo_fed, memo_replays = _run(memo=True)
        self.assertEqual(len(memo), len(general))
        for i, (got, want) in enumerate(zip(memo, general, strict=True)):
            self.assertEqual(got, want, f"exchange {i}: {RUN[i][0][:40]!r}"
                             if i < len(RUN) else "pipelined")
        self.assertEqual(memo_entries, general_entries)
        self.assertGreater(len(memo_entries), len(RUN) - 5)
        # the memos were taken: fewer heads fed to llhttp, upstream replays
        self.assertEqual(general_replays, 0)
        self.assertGreater(general_fed - memo_fed, 20)
        self.assertGreater(memo_replays, 20)


class _Recording(resource.Resource):
    """A fast-path resource that keeps its requests and mutates their headers."""

    isLeaf = True
    fast_protocol = FastHTTPChannel

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[bytes, list[bytes]]] = []
        self.peers: list[tuple[Any, str]] = []

    def fast_route(self, host: bytes) -> Any:
        return ("x", None)

    def render(self, request: Any) -> bytes:
        self.peers.append((request.peer_ip, str(request.getClientAddress().host)))
        raw = request.requestHeaders._rawHeaders
        self.seen.append({k: list(v) for k, v in raw.items()})
        for values in raw.values():
            values.append(b"evil")
        raw[b"X-Added"] = [b"1"]
        return b"ok"


class HeadMemoIsolationTests(unittest.TestCase):
    def test_each_request_gets_its_own_header_lists(self):
        res = _Recording()
        site = ProxySite(res, reactor=task.Clock(), fast=True)
        channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 1))
        client = StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 1))
        channel.makeConnection(client)
        head = (b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n")
        for _ in range(5):
            channel.dataReceived(head)
        self.assertIsNotNone(channel._memo)
        self.assertEqual(channel.fast_requests, 5)
        want = {b"Host": [b"x"], b"Accept": [b"*/*"], b"X-Dup": [b"1", b"2"]}
        self.assertEqual(res.seen, [want] * 5)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK\r\n"), 5)
        # the client address the front resource logs, made once per connection
        self.assertEqual(res.peers, [("100.64.0.10", "100.64.0.10")] * 5)

    def test_a_long_head_is_not_remembered(self):
        res = _Recording()
        site = ProxySite(res, reactor=task.Clock(), fast=True)
        channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 1))
        channel.makeConnection(StringTransport())
        head = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Long: %s\r\n\r\n" % (b"v" * fast.MAX_MEMO_HEAD)
        for _ in range(3):
            channel.dataReceived(head)
        self.assertIsNone(channel._memo)
        self.assertIsNone(channel._seen)
        self.assertEqual(channel.fast_requests, 3)


def test_new_request_is_the_constructors_request():
    """fast_request.new_request (a remembered head's request) has the state
    ``FastRequest(channel, method, uri, headers, close=False)`` gives."""
    from twisted.web.http_headers import Headers

    from nbgateway.proxy.fast_request import FastRequest, new_request

    site = ProxySite(_Recording(), reactor=task.Clock(), fast=True)
    channel = site.buildProtocol(IPv4Address("TCP", "100.64.0.10", 1))
    channel.makeConnection(StringTransport())
    for uri in (b"/a", b"/a?b=1", b"/?", b"/x?y?z"):
        headers = Headers({b"Accept": [b"*/*"]})
        made = FastRequest(channel, b"GET", uri, headers, False)
        remembered = new_request(channel, b"GET", uri, uri.split(b"?", 1)[0], headers)
        want = dict(vars(made), responseHeaders=made.responseHeaders._rawHeaders)
        got = dict(vars(remembered), responseHeaders=remembered.responseHeaders._rawHeaders)
        assert got == want
        assert type(remembered) is FastRequest


def test_the_status_line_is_what_set_response_code_makes():
    """The exchange sets a fast-path request's status inline: the client's
    status line is FastRequest.setResponseCode's (an empty or missing reason
    phrase becomes twisted.web's, or "Unknown Status")."""
    from nbgateway.proxy.fast_request import FastRequest

    for status_line in (b"HTTP/1.1 404 \r\n", b"HTTP/1.1 599 \r\n", b"HTTP/1.1 201 Made\r\n",
                        b"HTTP/1.1 200 OK\r\n"):
        code = int(status_line.split()[1])
        phrase = status_line[13:-2]
        path = Path()
        _sent, got = path.exchange(GET, status_line + b"Content-Length: 2\r\n\r\nok")
        reference = FastRequest.__new__(FastRequest)
        reference.setResponseCode(code, phrase or None)
        assert got.startswith(b"HTTP/1.1 %d %s\r\n" % (code, reference.code_message)), got


def test_new_exchange_and_send_heads_attempt_are_the_constructors():
    """exchange.new_exchange and LeanAgent.send_head's attempt have the
    instance state their constructors give."""
    from twisted.internet.defer import Deferred

    from nbgateway.dial.http11 import ConnectionPool, LeanAgent, _Attempt
    from nbgateway.proxy.exchange import _BytesProducer, _Exchange, new_exchange
    from nbgateway.routes.context import RequestContext

    ctx = RequestContext(identity=object())
    args = (object(), object(), ctx, object(), object(), object(), None, None, ("/p", "q=1"))
    assert vars(new_exchange(*args)) == vars(_Exchange(*args))

    agent = LeanAgent(ConnectionPool(task.Clock(), 4, 90.0), lambda *a: None)
    agent.pool.take = lambda key: None  # nothing pooled: the attempt dials
    key = (b"http", b"127.0.0.1", 8081)
    for method, body, sink in ((b"GET", None, object()), (b"POST", _BytesProducer(b"x"), object()),
                               (b"POST", object(), object()), (b"GET", None, None)):
        made: list[Any] = []
        real_dial = _Attempt._dial
        def fake_dial(self: Any, _made: list[Any] = made) -> None:
            _made.append(self)

        _Attempt._dial = fake_dial  # type: ignore[method-assign]
        try:
            agent.send_head(method, key, b"HEAD\r\n\r\n", body, sink)
        finally:
            _Attempt._dial = real_dial  # type: ignore[method-assign]
        want = _Attempt(agent, key, method, b"HEAD\r\n\r\n", body,
                        body is None or isinstance(getattr(body, "body", None), bytes), sink)
        got = vars(made[0])
        expected = vars(want)
        if sink is None:  # a Deferred of its own each
            assert isinstance(got.pop("result"), Deferred)
            expected = {k: v for k, v in expected.items() if k != "result"}
        assert got == expected, method


class _Body:
    """A response body's protocol; ``fail`` makes its dataReceived raise."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.data = b""
        self.reason: Any = None

    def makeConnection(self, producer: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self.fail:
            raise KeyError("boom")
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason


def _upstream_failure(memo: bool) -> tuple:
    """Three identical responses on one upstream connection, the third
    body's protocol raising: what the connection reports (types, message)."""
    from twisted.internet import defer

    from nbgateway.dial.http11 import ConnectionPool

    saved = UpstreamConnection.__dict__["_remember"]
    if not memo:
        UpstreamConnection._remember = lambda *a: None  # type: ignore[method-assign]
    try:
        pool = ConnectionPool(task.Clock(), 4, 90.0)
        conn = UpstreamConnection(pool, (b"http", b"127.0.0.1", 80))
        conn.makeConnection(StringTransport())
        bodies = [_Body(False), _Body(False), _Body(True)]
        for body in bodies:
            d: defer.Deferred[Any] = defer.Deferred()
            d.addCallback(lambda r, b=body: r.deliverBody(b))
            conn.send(b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, d)
            conn.dataReceived(OK)
    finally:
        UpstreamConnection._remember = saved  # type: ignore[method-assign]
    inner = bodies[2].reason.value.reasons[0].value
    return (conn._memo is not None, [b.data for b in bodies[:2]],
            type(bodies[2].reason.value), type(inner), str(inner), repr(inner.__context__),
            conn.transport.disconnecting)


def test_a_failing_body_protocol_fails_as_through_llhttp():
    general = _upstream_failure(memo=False)
    remembered = _upstream_failure(memo=True)
    assert remembered[0] and not general[0]
    assert remembered[1:] == general[1:]
    assert general[3] is httptools.HttpParserCallbackError
