"""Benchmark: the gateway's HTTP/1.1 server path alone, fast path vs. the
twisted.web path, alternated in one run (no network, no root needed).

One keep-alive connection on an in-memory transport carries requests for a
private service to a :class:`~nbgateway.http.site.GatewayResource` on a
tunnel listener: the real front door, private gate (a cached
ValidateTunnelPeer answer), access restrictions, reverse proxy (path routing,
header preparation with identity stamping, deadline, response relay), the
request stats and the access-log entry (built and handed to a counting
sink).  Only the upstream
is replaced: an agent that answers every request at once with a 512-byte
response (so the figure is the server side's own cost, not the netstack's,
WireGuard's or the upstream client's).

For each variant (``ProxySite(fast=True)`` and ``fast=False``) the script
measures the process CPU time per request over ``--requests`` requests,
``--rounds`` times alternately, and prints the medians and their ratio.
Every response is checked (status 200, identity stamped upstream, one
access-log entry per request).

``--upstream lean`` replaces the answering agent with the gateway's own
upstream HTTP/1.1 client (:mod:`nbgateway.dial.http11`: request head, pooled
keep-alive connection, llhttp parser, response relay) behind production's
pools (:class:`~nbgateway.dial.pool.UpstreamPools`: the agent looked up per
request, the request deadlines on the pools' timer) and the account's one
dialer, over in-memory connections; the upstream's answers arrive after the
client's write (as in a later reactor turn).

``--inflight N`` keeps N requests in flight at once (N keep-alive
connections each send a request, then the upstream answers all N), which is
where per-request timers and their cancellation cost most.

``--tls`` serves the requests over one TLS connection through the tunnel
listener's TLS-or-plain factory (the gateway's TLS protocol on pyOpenSSL
memory BIOs, a self-signed P-256 certificate) with the lean upstream client;
only the server side's CPU time is counted.  The server side of each client
write runs inside ``operator.call``, so ``valgrind --tool=callgrind
--collect-atstart=no --toggle-collect=_operator_call`` counts its
instructions alone (not the in-process pyOpenSSL client's encryption,
decryption and its ``WantReadError`` exceptions); with ``--collect-atstart=yes`` (the
default) the whole process is counted as before.

``--chunked`` (with the lean upstream client) makes the upstream answer
with ``Transfer-Encoding: chunked`` (the 512 bytes as one chunk, then the
``0\r\n\r\n`` terminator, in one read); the client transport writes per
response are printed too (HTTPS: TLS records).

``--vary`` makes every request head and every upstream response head of a
run differ from the one before (the target's query ``?q=<n>``, an ``ETag:
"<n>"`` response header), as browsers' different paths and upstream
responses with a changing ``Date`` do; without it a connection repeats one
request, and the upstream one response, byte for byte (as wrk does).

``--vary-lines`` (with ``--vary``) makes a request header line differ from
one request to the next as well (the ``Referer``, or the minimal head's
``User-Agent``, carries the request's number): a connection's header
section then never repeats (the fast path's per-connection memo of the
last header section always misses).

``--browser`` makes the heads a browser's and a web server's: a
Chrome-like navigation request (16 header lines, ``Connection:
keep-alive``, cookies with the gateway's session cookie among them, as a
browser sends them back) and an nginx-like response head (12 lines), instead
of the minimal 3-line request and 4-line response (with ``--chunked`` the
response's ``Content-Length`` becomes ``Transfer-Encoding: chunked``).

``--against DIR`` compares this tree with another checkout of the project
(e.g. ``git worktree add /tmp/base <commit>``): each round runs this script
once with DIR's package and once with this tree's, alternating the order,
in subprocesses, and prints both medians and current / baseline per variant.

Run:  .venv/bin/python bench/http_path.py [--requests 20000] [--rounds 5]
      [--pipeline 1]   (requests per client write: 1 = request/response)
      [--inflight 1] [--upstream answer|lean] [--tls] [--chunked] [--vary] [--vary-lines]
      [--browser]
      [--against DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import operator
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.http.site import GatewayResource
from nbgateway.observe.metrics import RequestStats
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from nbgateway.routes.table import ServiceTable

BODY = b"x" * 512
PEER = "100.64.0.10"
REQUEST = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bench\r\n"
           b"Accept: */*\r\n\r\n")
#: ``--browser``: a Chrome-like navigation request (replaces REQUEST)
BROWSER_REQUEST = (
    b"GET /app/index.html?q=1 HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
    b'sec-ch-ua-platform: "Linux"\r\nUpgrade-Insecure-Requests: 1\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/131.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b"Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\nReferer: http://app.example/app/\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: theme=dark; _pk_id.1.1fff=2b3c4d5e6f708192.1733558400.; "
    b"nb_session=3q2-7wEAAABkAAAAAQAAAHNlc3Npb24tdG9rZW4\r\n\r\n")


class Mgmt:
    def __init__(self) -> None:
        self.answer = pb.ValidateTunnelPeerResponse(
            valid=True, user_id="u1", user_email="alice@example.com", session_token="TOKEN",
            peer_group_ids=["g1"], peer_group_names=["devs"])

    def validate_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> defer.Deferred:
        return defer.succeed(self.answer)


class Sink:
    """The access log: counts entries.  A tree whose site hands the access
    log a tuple of fields (``record``) gets its entry built here, in the
    measured time, as the real shipper builds it when the batch forms."""

    def __init__(self) -> None:
        self.entries = 0
        #: imported once, not per entry (an import statement run per request
        #: cost ~6.4k instructions, 2.4 % of the lean fast path's figure)
        self._build: Any = None

    def log(self, entry: Any) -> None:
        self.entries += 1

    def record(self, fields: tuple[Any, ...]) -> None:
        build = self._build
        if build is None:
            from nbgateway.observe.accesslog import entry_from_fields

            build = self._build = entry_from_fields
        build(fields)
        self.entries += 1


class _UpstreamTransport:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Response:
    code = 200
    phrase = b"OK"
    length = len(BODY)

    def __init__(self) -> None:
        self.headers = Headers({b"content-type": [b"text/html"],
                                b"content-length": [b"%d" % len(BODY)],
                                b"server": [b"nginx"], b"date": [b"Sun, 06 Dec 2026 08:00:00 GMT"]})

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(_UpstreamTransport())
        protocol.dataReceived(BODY)
        protocol.connectionLost(Failure(ResponseDone()))


class Agent:
    """Answers at once (or, holding, when :meth:`release` is called); records
    the identity header of the last request."""

    def __init__(self) -> None:
        self.user: list[bytes] | None = None
        self.hold = False
        self.held: list[defer.Deferred[Any]] = []

    def request(self, method: bytes, url: bytes, headers: Headers, body: Any) -> Any:
        self.user = headers.getRawHeaders(b"x-netbird-user")
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(Response())

    def release(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(Response())


class Pools:
    def __init__(self) -> None:
        self.the_agent = Agent()

    def agent(self, *_a: Any, **_kw: Any) -> Agent:
        return self.the_agent


UPSTREAM_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                     b"Server: nginx\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n\r\n"
                     % len(BODY)) + BODY
UPSTREAM_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n"
                    b"Server: nginx\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n\r\n"
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
_BROWSER_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 08:00:00 GMT\r\n"
                 b"Content-Type: text/html; charset=utf-8\r\n%s"
                 b"Last-Modified: Sat, 05 Dec 2026 07:00:00 GMT\r\nConnection: keep-alive\r\n"
                 b"Vary: Accept-Encoding\r\nCache-Control: no-cache\r\n"
                 b"X-Content-Type-Options: nosniff\r\nX-Frame-Options: SAMEORIGIN\r\n"
                 b"Accept-Ranges: bytes\r\n\r\n")
#: ``--browser``: an nginx-like response head (``--chunked``: the second)
UPSTREAM_BROWSER = (_BROWSER_HEAD % (b"Content-Length: %d\r\n" % len(BODY))) + BODY
UPSTREAM_BROWSER_CHUNKED = ((_BROWSER_HEAD % b"Transfer-Encoding: chunked\r\n")
                            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
#: what the in-memory upstream answers (``--chunked``: UPSTREAM_CHUNKED)
ANSWER = [UPSTREAM_RESPONSE]
#: ``--vary``: no request or upstream response head repeats (see :func:`heads`)
VARY = [False]
#: ``--vary-lines``: a header line differs too (see ``heads``)
VARY_LINES = [False]
#: client transport writes per response of the last lean/TLS run, per variant
WRITES: dict[bool, float] = {}


def heads(n: int) -> tuple[list[bytes], list[bytes] | None]:
    """``n`` requests and, with ``--vary``, ``n`` upstream answers, made
    before the timed loop: the same REQUEST each (answers None: ANSWER[0]
    each), or with ``--vary`` each with its own query and ETag."""
    if not VARY[0]:
        return [REQUEST] * n, None
    reqs = [REQUEST.replace(b"?q=1 ", b"?q=%d " % i) for i in range(n)]
    if VARY_LINES[0]:  # a header line in the middle differs from the request before
        line, fmt = ((b"\r\nReferer: http://app.example/app/\r\n",
                      b"\r\nReferer: http://app.example/app/?from=%d\r\n")
                     if b"\r\nReferer: " in REQUEST
                     else (b"\r\nUser-Agent: bench\r\n", b"\r\nUser-Agent: bench/%d\r\n"))
        reqs = [r.replace(line, fmt % i) for i, r in enumerate(reqs)]
    return (reqs,
            [ANSWER[0].replace(b"\r\nServer: nginx\r\n", b'\r\nETag: "%d"\r\nServer: nginx\r\n' % i)
             for i in range(n)])


class _UpstreamWire(StringTransport):
    """The client side of an in-memory upstream connection: each complete
    request head queues one response for the lean pools' ``flush``."""

    def __init__(self, pools: Any) -> None:
        super().__init__()
        self.pools = pools
        self.protocol: Any = None
        self.pending = b""

    def write(self, data: bytes) -> None:
        # find(), not "in": a bytes needle in bytes.__contains__ first fails
        # as an int, a TypeError made and cleared (~1.8k instructions each,
        # three per request counted in every figure before round 13)
        self.pending += data
        while self.pending.find(b"\r\n\r\n") >= 0:
            head, _, self.pending = self.pending.partition(b"\r\n\r\n")
            if head.lower().find(b"\r\nx-netbird-user: alice@example.com") < 0:
                raise SystemExit("identity not stamped upstream")
            self.pools.queue.append(self.protocol)


class _MemoryDialer:
    """The account's dialer (``IUpstreamDialer``): in-memory connections."""

    def __init__(self, pools: Any) -> None:
        self.pools = pools

    def endpoint(self, host: str, port: int, timeout: float) -> Any:
        pools = self.pools

        class Endpoint:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                pools.dials += 1
                proto = factory.buildProtocol(None)
                wire = _UpstreamWire(pools)
                wire.protocol = proto
                proto.makeConnection(wire)
                return defer.succeed(proto)

        return Endpoint()


def _lean_pools(clock: Any) -> Any:
    """The gateway's own upstream pools (:class:`~nbgateway.dial.pool.UpstreamPools`:
    the agent per account and dial mode, the proxy's request deadlines on
    the pools' timer, as in production) over in-memory connections (the
    dialer's endpoints)."""
    from nbgateway.dial.pool import UpstreamPools

    class LeanPools(UpstreamPools):
        def __init__(self) -> None:
            super().__init__(clock, max_idle_per_host=64)
            self.queue: list[Any] = []
            self.dials = 0
            #: the answers in turn (``--vary``); None: ANSWER[0] each
            self.answers: Any = None
            #: the account's dialer (the proxy's dialer_for answers it)
            self.dialer = _MemoryDialer(self)

        def flush(self) -> None:
            queue, self.queue = self.queue, []
            answers = self.answers
            for proto in queue:
                proto.dataReceived(ANSWER[0] if answers is None else next(answers))

    return LeanPools()


class Sent(StringTransport):
    """Counts response bytes and responses instead of keeping them."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", PEER, 40000),
                         hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.bytes = 0
        self.ok = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1
        if data.startswith(b"HTTP/1.1 200 OK\r\n"):
            self.ok += 1

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


def build(fast: bool, inflight: int = 1, lean: bool = False) -> tuple[list[Any], list[Sent],
                                                                      Sink, Any]:
    site, sink, pools, _clock = build_site(fast, lean)
    channels, transports = [], []
    for _ in range(inflight):
        channel = site.buildProtocol(IPv4Address("TCP", PEER, 40000))
        transport = Sent()
        channel.makeConnection(transport)
        channels.append(channel)
        transports.append(transport)
    return channels, transports, sink, pools


def build_site(fast: bool, lean: bool) -> tuple[Any, Sink, Any, Any]:
    """The tunnel listener's site, its access-log sink, upstream and clock."""
    clock = task.Clock()
    # its time read as production reads the reactor's (a C function, here
    # one returning the clock's constant 0.0): task.Clock.seconds is a Python
    # method reading a class attribute (a generic lookup), six per request
    # (~3k instructions counted in every figure before round 13)
    clock.seconds = itertools.repeat(clock.rightNow).__next__  # type: ignore[method-assign]
    m = pb.ProxyMapping(
        id="svc-app", account_id="acct", domain="app.example", private=True,
        path=[pb.PathMapping(path="/", target="http://127.0.0.1:8081/",
                             options=pb.PathTargetOptions(direct_upstream=True))])
    # the production lookup (a bound ServiceTable.lookup), not a plain dict.get
    table = ServiceTable()
    table.entries[m.domain] = entry_from_mapping(m)
    gate = PrivateGate(TunnelValidationCache(Mgmt(), clock), lambda a, ip: True)
    pools: Any = _lean_pools(clock) if lean else Pools()
    dialer = pools.dialer if lean else object()  # the account's (one object)
    proxy = ReverseProxy(clock, pools, lambda a, d: dialer, clock=clock)
    sink = Sink()
    res = GatewayResource(lookup=table.lookup, proxy=proxy, gate=gate,
                          listener_account="acct", access_log=sink, clock=clock,
                          request_stats=RequestStats())
    site = ProxySite(res, reactor=clock, fast=fast)
    return site, sink, pools, clock


class _Wire(StringTransport):
    """The TLS listener's connection: keeps the ciphertext it is given."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", PEER, 40000),
                         hostAddress=IPv4Address("TCP", "100.64.0.1", 443))
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def run_tls(fast: bool, requests: int) -> tuple[float, float]:
    """HTTPS: one keep-alive TLS connection to the tunnel listener's
    TLS-or-plain factory (the gateway's own TLS protocol, pyOpenSSL memory
    BIOs) in front of the same site and the lean upstream client; the client
    side is a pyOpenSSL connection in memory.  Returns the server side's CPU
    microseconds per request (the client's encryption and decryption are
    not counted) and its transport writes per response."""
    from OpenSSL import SSL
    from twisted.internet import ssl

    from nbgateway.tls.dispatch import TLSOrPlainFactory

    site, sink, pools, clock = build_site(fast, True)
    cert = ssl.PrivateCertificate.loadPEM(_self_signed())
    factory = TLSOrPlainFactory(cert.options(), site, clock=clock)
    factory.tls_factory._clock = clock  # the write aggregator's flush timer
    wire = _Wire()
    proto = factory.buildProtocol(IPv4Address("TCP", PEER, 40000))
    proto.makeConnection(wire)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"http/1.1"])
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    server_cpu = 0.0

    def serve(out: bytes) -> None:
        """The server side of one client write (the measured part)."""
        proto.dataReceived(out)
        pools.flush()
        clock.advance(0)

    def pump() -> None:
        """Move ciphertext both ways until neither side has more."""
        nonlocal server_cpu
        for _ in range(20):
            try:
                out = client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                t0 = time.process_time()
                # through operator.call (a C function nothing else calls):
                # callgrind --collect-atstart=no --toggle-collect=_operator_call
                # counts the server side only (see the module docstring)
                operator.call(serve, out)
                server_cpu += time.process_time() - t0
            back = wire.value()
            wire.clear()
            if back:
                client.bio_write(back)
            if not out and not back:
                return

    def exchange(request: bytes = REQUEST) -> bytes:
        client.send(request)
        pump()
        got = b""
        while True:
            try:
                got += client.recv(1 << 20)
            except SSL.WantReadError:
                return got

    for _ in range(10):  # the handshake
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            pump()
    if not exchange().startswith(b"HTTP/1.1 200 OK\r\n"):  # warm
        raise SystemExit("no 200 over TLS")
    reqs, answers = heads(requests)
    if answers is not None:
        pools.answers = iter(answers)
    server_cpu, writes0 = 0.0, wire.writes
    for request in reqs:
        if not exchange(request).startswith(b"HTTP/1.1 200 OK\r\n"):
            raise SystemExit("no 200 over TLS")
    if sink.entries != requests + 1:
        raise SystemExit(f"{sink.entries} log entries for {requests + 1} requests")
    return server_cpu * 1e6 / requests, (wire.writes - writes0) / requests


def _self_signed() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def run(fast: bool, requests: int, pipeline: int, inflight: int = 1,
        lean: bool = False) -> float:
    channels, transports, sink, pools = build(fast, inflight, lean)
    if lean:
        return _run_lean(channels, transports, sink, pools, requests, inflight)
    agent = pools.the_agent
    data = REQUEST * pipeline
    for channel in channels:
        channel.dataReceived(REQUEST)  # warm: the gate's cache, the routes
    agent.hold = inflight > 1
    writes = max(1, requests // (pipeline * inflight))
    if VARY[0]:
        reqs = heads(writes * pipeline)[0]
        datas = [b"".join(reqs[i:i + pipeline]) for i in range(0, len(reqs), pipeline)]
    else:
        datas = [data] * writes
    t0 = time.process_time()
    if inflight > 1:
        for data in datas:
            for channel in channels:
                channel.dataReceived(data)
            agent.release()
    else:
        channel = channels[0]
        for data in datas:
            channel.dataReceived(data)
    cpu = time.process_time() - t0
    served = writes * pipeline + 1
    for channel, transport in zip(channels, transports, strict=True):
        if transport.ok != served or agent.user != [b"alice@example.com"]:
            raise SystemExit(f"check failed: {transport.ok} responses for {served} requests; "
                             f"identity {agent.user}")
        if fast and channel.fast_requests != served:
            raise SystemExit(f"the fast path served {channel.fast_requests} of {served}")
        channel.connectionLost(Failure(Exception("done")))
    if sink.entries != served * inflight:
        raise SystemExit(f"{sink.entries} log entries for {served * inflight} requests")
    return cpu * 1e6 / (writes * pipeline * inflight)


def _run_lean(channels: list[Any], transports: list[Sent], sink: Sink, pools: Any,
              requests: int, inflight: int) -> float:
    """Requests through the real upstream client (one request per write)."""
    for channel in channels:
        channel.dataReceived(REQUEST)  # warm: the gate's cache, the routes, the pool
    pools.flush()
    writes = max(1, requests // inflight)
    reqs, answers = heads(writes * inflight)
    if answers is not None:
        pools.answers = iter(answers)
    writes0 = sum(t.writes for t in transports)
    t0 = time.process_time()
    for i in range(0, len(reqs), inflight):
        for j, channel in enumerate(channels):
            channel.dataReceived(reqs[i + j])
        pools.flush()
    cpu = time.process_time() - t0
    served = writes + 1
    sent = sum(t.writes for t in transports) - writes0
    WRITES[getattr(channels[0], "fast", False)] = sent / (writes * inflight)
    for channel, transport in zip(channels, transports, strict=True):
        if transport.ok != served:
            raise SystemExit(f"check failed: {transport.ok} responses for {served} requests")
        channel.connectionLost(Failure(Exception("done")))
    if sink.entries != served * inflight or pools.dials != inflight:
        raise SystemExit(f"{sink.entries} log entries for {served * inflight} requests, "
                         f"{pools.dials} upstream dials")
    return cpu * 1e6 / (writes * inflight)


def against(args: argparse.Namespace) -> int:
    """Alternate rounds of this tree and ``args.against`` in subprocesses."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"baseline": os.path.abspath(args.against), "current": here}
    results: dict[str, dict[str, list[float]]] = {t: {"fast": [], "twisted.web": []}
                                                   for t in trees}
    writes: dict[str, dict[str, float]] = {t: {} for t in trees}
    for i in range(args.rounds):
        for name in (("baseline", "current") if i % 2 == 0 else ("current", "baseline")):
            env = dict(os.environ, PYTHONPATH=trees[name])
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--json", "--rounds", "1",
                 "--requests", str(args.requests), "--pipeline", str(args.pipeline),
                 "--inflight", str(args.inflight), "--upstream", args.upstream]
                + (["--tls"] if args.tls else []) + (["--chunked"] if args.chunked else [])
                + (["--vary"] if args.vary else [])
                + (["--vary-lines"] if args.vary_lines else [])
                + (["--browser"] if args.browser else []),
                env=env, cwd="/", check=True, capture_output=True, text=True).stdout
            one = json.loads(out.strip().splitlines()[-1])
            if one["tree"] != os.path.join(trees[name], "nbgateway"):
                raise SystemExit(f"round ran {one['tree']}, not {trees[name]}")
            for variant in ("fast", "twisted.web"):
                results[name][variant].append(one[variant])
                if variant in one.get("writes", {}):
                    writes[name][variant] = one["writes"][variant]
    print(f"{args.requests} requests x {args.rounds} alternated rounds, {args.pipeline} "
          f"request(s) per write, {args.inflight} in flight, upstream "
          f"{'lean' if args.tls else args.upstream}"
          f"{', HTTPS' if args.tls else ''}{', varied heads' if args.vary else ''}, CPU "
          f"microseconds per request (median), baseline = {trees['baseline']}:")
    for variant in ("fast", "twisted.web"):
        base = statistics.median(results["baseline"][variant])
        cur = statistics.median(results["current"][variant])
        print(f"  {variant:12s} baseline {base:7.1f}  current {cur:7.1f}  current / baseline "
              f"{cur / base:.3f}")
        for name in trees:
            print(f"      {name:9s} rounds: " + " ".join(f"{x:.1f}"
                                                       for x in results[name][variant]))
        if variant in writes["current"]:
            print(f"      client transport writes per response: baseline "
                  f"{writes['baseline'].get(variant, float('nan')):.2f}  current "
                  f"{writes['current'][variant]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--against", metavar="DIR", default="")
    parser.add_argument("--upstream", choices=("answer", "lean"), default="answer")
    parser.add_argument("--tls", action="store_true",
                        help="HTTPS: one TLS connection through the listener's TLS protocol, "
                             "lean upstream client (server-side CPU only)")
    parser.add_argument("--chunked", action="store_true",
                        help="the lean upstream answers chunked (one read, one chunk)")
    parser.add_argument("--vary", action="store_true",
                        help="no request head or upstream response head repeats (each its own "
                             "query and ETag), instead of one repeated byte for byte")
    parser.add_argument("--vary-lines", action="store_true",
                        help="with --vary: a request header line (Referer, or User-Agent in "
                             "the minimal head) differs from one request to the next too")
    parser.add_argument("--browser", action="store_true",
                        help="a Chrome-like request head and an nginx-like response head "
                             "instead of the minimal ones")
    parser.add_argument("--variant", choices=("both", "fast", "twisted.web"), default="both",
                        help="run only one server path (e.g. under perf stat)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunked:
        ANSWER[0] = UPSTREAM_CHUNKED
    if args.browser:
        global REQUEST
        REQUEST = BROWSER_REQUEST
        ANSWER[0] = UPSTREAM_BROWSER_CHUNKED if args.chunked else UPSTREAM_BROWSER
    VARY[0] = args.vary
    VARY_LINES[0] = args.vary_lines
    if args.against:
        return against(args)
    results: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.rounds):
        for fast in ((True, False) if i % 2 == 0 else (False, True)):
            if args.variant != "both" and fast != (args.variant == "fast"):
                results[fast].append(float("nan"))
                continue
            if args.tls:
                cpu, writes = run_tls(fast, args.requests)
                WRITES[fast] = writes
                if not args.json:
                    print(f"  {'fast' if fast else 'twisted.web'}: {cpu:.1f} us, "
                          f"{writes:.2f} TLS transport writes per response", file=sys.stderr)
                results[fast].append(cpu)
                continue
            results[fast].append(run(fast, args.requests, args.pipeline, args.inflight,
                                     args.upstream == "lean"))
    fast, slow = statistics.median(results[True]), statistics.median(results[False])
    if args.json:
        import nbgateway

        print(json.dumps({"fast": fast, "twisted.web": slow,
                          "writes": {("fast" if k else "twisted.web"): v
                                     for k, v in WRITES.items()},
                          "tree": os.path.dirname(os.path.abspath(nbgateway.__file__))}))
        return 0
    print(f"{args.requests} requests x {args.rounds} alternated rounds, "
          f"{args.pipeline} request(s) per write, {args.inflight} in flight, "
          f"upstream {args.upstream}{', varied heads' if args.vary else ''}, CPU microseconds "
          f"per request (median):")
    print(f"  fast path     {fast:8.1f}   rounds: "
          + " ".join(f"{x:.1f}" for x in results[True]))
    print(f"  twisted.web   {slow:8.1f}   rounds: "
          + " ".join(f"{x:.1f}" for x in results[False]))
    print(f"  fast / twisted.web: {fast / slow:.3f}")
    for k, v in WRITES.items():
        print(f"  {'fast path' if k else 'twisted.web'} client transport writes per response: "
              f"{v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
