"""Adversarial heads end to end: the gateway's resource (front door, private
gate, reverse proxy, route plan) behind the fast HTTP/1.1 channel and behind
twisted.web's channel (``fast=False``, the NBGW_HTTP_FAST=0 path), on
``StringTransport`` connections, the upstream in memory (tests/lean_upstreams).

Per seeded case: one client head (tests/proxy/test_h1_adversarial_head's
generator: identity/forwarding/hop-by-hop names in every spelling, one or two
Connection lines, up to 105 headers) and one upstream answer
(test_h1_adversarial_response's: hop-by-hop names, Connection naming
Set-Cookie or others, many values).  Checked: the upstream gets one head
with the gateway's identity and forwarding lines only (check_upstream), the
same head (trailing OWS aside) on both channels when both send one, and the
client the same response on both (Date masked)."""

from __future__ import annotations

import random
import re

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import entry_from_mapping
from nbgateway.routes.table import ServiceTable
from tests.lean_upstreams import InMemoryPools
from tests.proxy import test_h1_adversarial_response as resp
from tests.proxy.test_h1_adversarial_head import (
    EVIL,
    check_upstream,
    fast_parse,
    ows,
    random_head,
)
from tests.proxy.test_plan import _mapping, _Mgmt

ALICE_GATE = Identity("u1", "alice@example.com")
CUSTOM = [None, {"X-Env": "prod"}, {"X-Private": "ours", "X-Other": "1"}]


class Gateway:
    """One gateway (fast or twisted.web channels) on in-memory upstreams."""

    def __init__(self, fast: bool, custom: dict[str, str] | None) -> None:
        self.clock = task.Clock()
        table = ServiceTable()
        table.entries["app.example"] = entry_from_mapping(_mapping(custom=custom))
        self.pools = InMemoryPools(self.clock)
        proxy = ReverseProxy(self.clock, self.pools, lambda a, d: object(), clock=self.clock)
        gate = PrivateGate(TunnelValidationCache(_Mgmt(), self.clock), lambda a, ip: True)
        res = GatewayResource(lookup=table.lookup, proxy=proxy, gate=gate,
                              listener_account="acct", clock=self.clock)
        self.site = ProxySite(res, reactor=self.clock, fast=fast)
        #: requests the fast path served itself
        self.fast_served = 0

    def exchange(self, head: bytes, answer: bytes) -> tuple[bytes | None, bytes]:
        """(what the upstream got, or None; what the client got)."""
        channel = self.site.buildProtocol(None)
        client = StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 40000),
                                 hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        channel.makeConnection(client)
        before = len(self.pools.upstreams)
        channel.dataReceived(head)
        sent = None
        if len(self.pools.upstreams) > before or (
                self.pools.upstreams and self.pools.upstreams[-1][0].value()):
            wire, proto = self.pools.upstreams[-1]
            sent = wire.value()
            wire.clear()
            if sent:
                proto.dataReceived(answer)
        out = client.value()
        self.fast_served += getattr(channel, "fast_requests", 0)
        channel.connectionLost(None)  # type: ignore[arg-type]
        return sent or None, out


    def keep_alive(self, heads: list[bytes], answer: bytes) -> list[tuple[bytes | None, bytes]]:
        """Every head in turn on ONE client connection, each answered before
        the next is sent: (what the upstream got, what the client got) per head."""
        channel = self.site.buildProtocol(None)
        client = StringTransport(peerAddress=IPv4Address("TCP", "100.64.0.10", 40000),
                                 hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        channel.makeConnection(client)
        out = []
        for head in heads:
            seen = [len(wire.value()) for wire, _p in self.pools.upstreams]
            channel.dataReceived(head)
            sent = None
            for i, (wire, proto) in enumerate(self.pools.upstreams):
                if len(wire.value()) > (seen[i] if i < len(seen) else 0):
                    sent = wire.value()[seen[i] if i < len(seen) else 0:]
                    proto.dataReceived(answer)
                    break
            out.append((sent, client.value()))
            client.clear()
        self.fast_served += getattr(channel, "fast_requests", 0)
        channel.connectionLost(None)  # type: ignore[arg-type]
        return out


def masked(raw: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", raw)


def test_fast_and_twisted_web_channels_send_and_relay_the_same():
    rng = random.Random(1414)
    both = 0
    gateways = {(fast, i): Gateway(fast, custom) for fast in (True, False)
                for i, custom in enumerate(CUSTOM)}
    for _ in range(400):
        head, sent_lines = random_head(rng)
        if any(n.lower() == b"upgrade" for n, _v in sent_lines):
            continue  # the upgrade relay dials through real pools (tests/proxy/test_upgrade)
        answer, pairs = resp.random_head(rng)
        answer = answer.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 2\r\n\r\nok")
        which = rng.randrange(len(CUSTOM))
        custom = CUSTOM[which] or {}
        got_fast, out_fast = gateways[(True, which)].exchange(head, answer)
        got_slow, out_slow = gateways[(False, which)].exchange(head, answer)
        for got in (got_fast, got_slow):
            if got is not None:
                check_upstream(got, sent_lines, ALICE_GATE, custom)
        if got_fast is not None and got_slow is not None:
            assert ows(got_fast) == ows(got_slow), head
            both += 1
        else:
            assert got_fast is None and got_slow is None, (head, got_fast, got_slow)
        assert masked(out_fast) == masked(out_slow), (head, answer)
        if got_fast is not None:
            assert out_fast.startswith(b"HTTP/1.1 200 OK\r\n"), out_fast
            named = {t.strip().lower() for n, v in pairs if n.lower() == "connection"
                     for t in v.split(",") if t.strip()}
            for line in out_fast.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
                name = line.split(b":", 1)[0].decode().lower()
                assert name not in ("keep-alive", "te", "trailer", "upgrade",
                                    "proxy-authenticate", "proxy-connection"), out_fast
                if name == "set-cookie" and "set-cookie" in named:
                    assert line.startswith(b"Set-Cookie: nb_session="), out_fast  # the gate's
                elif name in named and name not in ("date", "server", "content-length",
                                                    "connection", "content-type"):
                    raise AssertionError((name, out_fast))
    fast_served = sum(g.fast_served for (fast, _i), g in gateways.items() if fast)
    assert both > 150 and fast_served > 100, (both, fast_served)
    assert not any(g.fast_served for (fast, _i), g in gateways.items() if not fast)


def test_keep_alive_connections_send_each_request_its_own_head():
    """The fast channel reuses its head parse state between the requests of
    a connection (FastHTTPChannel._next_request): each request's upstream
    head is its own, as on twisted.web's channel."""
    rng = random.Random(1515)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    compared = fast_served = 0
    for _ in range(40):
        heads, lines = [], []
        while len(heads) < 6:
            head, sent_lines = random_head(rng)
            if (any(n.lower() == b"upgrade" or b"close" in v.lower() for n, v in sent_lines)
                    or fast_parse(head) is None):
                continue  # heads the fast path serves itself (else it hands over)
            heads.append(head)
            lines.append(sent_lines)
        which = rng.randrange(len(CUSTOM))
        gateway = Gateway(True, CUSTOM[which])
        fast = gateway.keep_alive(heads, answer)
        fast_served += gateway.fast_served
        slow = Gateway(False, CUSTOM[which]).keep_alive(heads, answer)
        for head, sent_lines, (got_fast, out_fast), (got_slow, out_slow) in zip(
                heads, lines, fast, slow, strict=True):
            assert (got_fast is None) == (got_slow is None), head
            if got_fast is not None:
                check_upstream(got_fast, sent_lines, ALICE_GATE, CUSTOM[which] or {})
                assert ows(got_fast) == ows(got_slow), head
                compared += 1
            assert masked(out_fast) == masked(out_slow), head
    assert compared > 200 and fast_served > 200, (compared, fast_served)


def test_repeated_header_sections_on_a_keep_alive_connection():
    """The fast channel's memo of the connection's last header section
    (ae4a4b0: a repeated section is parsed target-only and the request gets a
    copy of the kept parse): sections repeated two to five times in a row,
    with other request lines (method, path), bodies, identity spoofs, names
    the front door drops from the request's copy, Connection naming a
    header, then another section and back.  Every upstream head and client
    response is twisted.web's for the same bytes on one connection."""
    rng = random.Random(1616)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    compared = fast_served = 0
    for _ in range(25):
        # one section a front door changes (drops its "_" name from the request's headers)
        fixed = [(b"Host", b"app.example"), (b"X_Custom", b"u"), (b"Accept", b"a"),
                 (b"x-netbird-user", EVIL), (b"Connection", b"X-Private"), (b"X-Private", b"p")]
        sections = [(b"".join(n + b": " + v + b"\r\n" for n, v in fixed[:rng.randint(4, 6)])
                     + b"\r\n", fixed)]
        # its twin of the same length, one byte apart
        sections.append((sections[0][0].replace(b"Accept: a", b"Accept: b"),
                         [(n, b"b" if n == b"Accept" else v) for n, v in fixed]))
        while len(sections) < 5:
            head, sent_lines = random_head(rng)
            if (any(n.lower() == b"upgrade" or b"close" in v.lower() for n, v in sent_lines)
                    or fast_parse(head) is None):
                continue
            sections.append((head[head.index(b"\n") + 1:], sent_lines))
        requests, lines = [], []
        for _ in range(5):
            section, sent_lines = rng.choice(sections)
            for _ in range(rng.randint(2, 6)):
                method = rng.choice((b"GET", b"GET", b"HEAD", b"DELETE", b"OPTIONS"))
                requests.append(b"%s /p/%d?r=%d HTTP/1.1\r\n" % (
                    method, rng.randrange(9), rng.randrange(99)) + section)
                lines.append(sent_lines)
        if rng.random() < 0.5:  # a section with a body, repeated
            body_section = b"Host: app.example\r\nContent-Length: 3\r\nX-NetBird-User: x\r\n\r\n"
            for _ in range(3):
                requests.append(b"POST /p HTTP/1.1\r\n" + body_section + b"abc")
                lines.append([(b"Host", b"app.example"), (b"X-NetBird-User", b"x")])
        which = rng.randrange(len(CUSTOM))
        gateway = Gateway(True, CUSTOM[which])
        fast = gateway.keep_alive(requests, answer)
        fast_served += gateway.fast_served
        slow = Gateway(False, CUSTOM[which]).keep_alive(requests, answer)
        for request, sent_lines, (got_fast, out_fast), (got_slow, out_slow) in zip(
                requests, lines, fast, slow, strict=True):
            assert (got_fast is None) == (got_slow is None), request
            if got_fast is not None:
                head = got_fast.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                check_upstream(head, sent_lines, ALICE_GATE, CUSTOM[which] or {})
                assert ows(got_fast) == ows(got_slow), request
                compared += 1
            assert masked(out_fast) == masked(out_slow), request
    assert compared > 250 and fast_served > 250, (compared, fast_served)


UPSTREAM_FRAMING = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Content-Length\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Content-Length, Transfer-Encoding\r\n"
    b"\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n X-NetBird-User: u\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n"
    b"Trailer: X-T\r\nProxy-Connection: keep-alive\r\n\r\nok",
]


def test_upstream_framing_is_refused_or_relayed_unambiguously():
    """An upstream's conflicting framing (CL + TE, two lengths, Connection
    naming its framing, obs-fold, space before colon): a 502, or one framing
    of the gateway's own, the same on both channels; no hop-by-hop line."""
    request = b"GET /p HTTP/1.1\r\nHost: app.example\r\n\r\n"
    for answer in UPSTREAM_FRAMING:
        _sent, out_fast = Gateway(True, None).exchange(request, answer)
        _sent, out_slow = Gateway(False, None).exchange(request, answer)
        assert masked(out_fast) == masked(out_slow), answer
        head = out_fast.split(b"\r\n\r\n", 1)[0].lower()
        assert out_fast.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 502 ")), out_fast
        assert (b"\r\ncontent-length:" in head) != (b"\r\ntransfer-encoding:" in head), out_fast
        assert head.count(b"\r\ncontent-length:") <= 1, out_fast
        for hop in (b"keep-alive", b"upgrade", b"trailer", b"proxy-connection", b"x-netbird"):
            assert b"\r\n" + hop not in head, out_fast
