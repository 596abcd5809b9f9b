"""Benchmark: the TLS layer of the gateway's listeners alone (issue 20), in
process, no root.

The server is the listeners' own stack: :class:`~nbgateway.tls.dispatch.
TLSOrPlainFactory` with the real SNI connection creator
(:class:`~nbgateway.tls.contexts.SNIServerCreator`: servername callback,
ALPN, a P-256 leaf), on an in-memory transport; behind it a trivial HTTP
responder that answers every request with a 512-byte body in one write
(what the fast path does for a ``Content-Length`` response) -- so the
figure is the TLS layer's own cost plus a constant.  The client is a
pyOpenSSL connection on memory BIOs (TLS 1.3, SNI, ALPN ``http/1.1``); only
the server side's CPU time is counted (``time.thread_time`` around each
call into the server).

Runs:

* ``keepalive``: one connection, ``--requests`` request/response exchanges;
  server CPU microseconds per request, and the transport writes (TLS
  flushes) per response;
* ``chunked``: the same with a chunked response in two writes (head + first
  chunk, then the ``0\\r\\n\\r\\n`` terminator: what the fast path does when
  the upstream's terminator arrives in a later read; in the same read it is
  one write, ``bench/http_path.py --tls --chunked``): transport writes per
  response;
* ``h2``: the keep-alive run on a connection that negotiated ALPN ``h2``
  (the TLS protocol keeps Twisted's write aggregator there), the responder
  answering in three writes (a frame header, the head, the body: the shape
  of HTTP/2 frames, not HTTP/2 itself), flushed on the next reactor turn:
  server CPU microseconds per request and transport writes per response;
* ``plain``: the keep-alive run without TLS (the same responder through the
  factory's plain branch): the TLS layer's share is keepalive - plain;
* ``handshake``: ``--connections`` new connections, each a full handshake,
  one request answered in a later reactor turn (as the upstream's answer
  arrives) and a close by the server (as ``Connection: close``; the client
  answers the close_notify); server CPU microseconds and transport writes
  (TCP segments at least) per connection.  ``--no-tickets`` sets
  ``SSL_OP_NO_TICKET`` on the server contexts (nginx's ``ssl_session_tickets
  off`` in ``bench/gateway.py``).

Variants, alternated in every round: ``records`` (this tree's record path,
:mod:`nbgateway.tls.records`, and TLS 1.3 session tickets sent with the
first write) and ``twisted`` (both switched off on the factory, as
``NBGW_TLS_RECORDS=0`` does: Twisted's ``TLSMemoryBIOProtocol`` calls).  ``--against DIR``
also runs DIR's package (e.g. a ``git worktree`` of an earlier commit) in
alternate subprocesses, so a change that has no switch (the cached
interface declaration) is measured too.  Medians over ``--rounds``.

``--store`` replaces the fixed certificate source with a real
:class:`~nbgateway.tls.certstore.CertificateStore` (no certificate files: the
default name's leaf from its local CA, as a gateway without configured
certificates serves), so the store's lookups per connection are counted;
``--baseline-variant records`` runs DIR with its record path on (a DIR that
has one) instead of Twisted's.

``--tls-version 1.2`` (or ``1.3``) limits the client to that version and
``--cipher`` sets its TLS 1.2 cipher list (e.g. ``ECDHE-ECDSA-CHACHA20-POLY1305``;
the default server context picks ECDHE-ECDSA-AES256-GCM-SHA384).  Each
server step runs inside ``operator.call``, so one run under callgrind
counts the server side alone, for example the keep-alive run over TLS 1.2
(diff two ``--requests`` counts for instructions per request)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=_operator_call \
      .venv/bin/python bench/tls_path.py --child records --only keepalive \
      --tls-version 1.2 --requests 2500

Use the collected *costs* only: callgrind also counts the *calls* made while
collection is off (the ``calls=`` lines), so the in-process client's show
up in a per-request call-count diff.  bench/http_path.py ``--tls`` diffed
that way showed 33 ``slot_tp_getattr_hook`` calls (unspecialised attribute
reads through ``ProtocolWrapper.__getattr__``) and two ``SSL_write`` per
request, while their collected cost was that of one read (~300
instructions: the channel's ``transport.write``) and one ``SSL_write``; the
other 32 were reads on the client's pyOpenSSL ``Connection`` (a
``__getattribute__`` probe on the server's protocol, or
tests/tls/test_tls_hot_path.py, counts the server's own).

Run:  .venv/bin/python bench/tls_path.py [--requests 20000] [--connections 2000]
      [--rounds 5] [--no-tickets] [--store] [--tls-version 1.2|1.3] [--cipher LIST]
      [--against DIR [--baseline-variant twisted|records]] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import operator
import os
import statistics
import subprocess
import sys
import time
from typing import Any

BODY = b"x" * 512
HEAD = (b"HTTP/1.1 200 OK\r\nServer: nbgateway\r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n"
        b"Content-Type: text/html\r\nContent-Length: 512\r\n\r\n")
CHUNKED_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nbgateway\r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n"
                b"Content-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
REQUEST = b"GET / HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
NAME = "app.example"


def _certified_key() -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from nbgateway.tls.certstore import CertifiedKey

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    return CertifiedKey(cert=cert, key=key, names=(NAME,))


class _Source:
    def __init__(self, ck: Any) -> None:
        self.ck = ck

    def certificate_for(self, server_name: str | None) -> Any:
        return self.ck


#: a real CertificateStore's data directory (``--store``), else None
STORE_DIR: list[str | None] = [None]
#: the SNIServerCreator of the last ``build``
CREATOR: list[Any] = [None]
#: the client's protocol version (``--tls-version``: "1.2" or "1.3"; None:
#: the highest both offer, TLS 1.3) and TLS 1.2 cipher list (``--cipher``)
CLIENT: dict[str, str | None] = {"version": None, "cipher": None}


def build(records_on: bool, no_tickets: bool, responder: str,
          alpn: bytes = b"http/1.1") -> Any:
    """The listener factory, its clock and a client context (offering
    ``alpn``)."""
    from OpenSSL import SSL
    from twisted.internet import task
    from twisted.internet.protocol import Factory, Protocol

    from nbgateway.tls.contexts import SNIServerCreator, context_for
    from nbgateway.tls.dispatch import TLSOrPlainFactory

    if STORE_DIR[0] is not None:
        from nbgateway.tls.certstore import CertificateStore

        store = CertificateStore(None, None, STORE_DIR[0], default_name=NAME)
        ck = store.certificate_for(NAME)
        creator = SNIServerCreator(store, NAME)
    else:
        ck = _certified_key()
        creator = SNIServerCreator(_Source(ck), NAME)
    CREATOR[0] = creator
    if no_tickets:
        creator._base_context().set_options(SSL.OP_NO_TICKET)
        context_for(ck).set_options(SSL.OP_NO_TICKET)

    class Responder(Protocol):
        """Answers each complete request head; ``close`` ends the connection."""

        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                if responder == "later":  # as the upstream's answer: a later turn
                    clock.callLater(0, self.answer, head)
                else:
                    self.answer(head)

        def answer(self, head: bytes) -> None:
            if responder == "chunked":
                self.transport.write(b"%s%x\r\n%s\r\n" % (CHUNKED_HEAD, len(BODY), BODY))
                self.transport.write(b"0\r\n\r\n")
            elif responder == "frames":  # as HTTP/2: a frame header, HEADERS, DATA
                self.transport.write(HEAD[:9])
                self.transport.write(HEAD[9:])
                self.transport.write(BODY)
            else:
                self.transport.write(HEAD + BODY)
            if b"Connection: close" in head:
                self.transport.loseConnection()

    clock = task.Clock()
    factory = TLSOrPlainFactory(creator, Factory.forProtocol(Responder), clock=clock)
    factory.tls_factory._clock = clock
    if hasattr(factory.tls_factory, "records"):
        factory.tls_factory.records = records_on
        factory.tls_factory.coalesce_tickets = records_on
    elif records_on:
        raise SystemExit("this tree has no TLS record path")
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_alpn_protos([alpn])
    if CLIENT["version"] is not None:
        version = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[CLIENT["version"]]
        cctx.set_min_proto_version(version)
        cctx.set_max_proto_version(version)
    if CLIENT["cipher"] is not None:
        cctx.set_cipher_list(CLIENT["cipher"].encode())
    return factory, clock, cctx


class _Wire:
    """The server's transport (a netstack connection's place): keeps writes."""

    disconnecting = False

    def __init__(self) -> None:
        from twisted.internet.address import IPv4Address

        self.peer = IPv4Address("TCP", "100.64.0.10", 40000)
        self.host = IPv4Address("TCP", "100.64.0.1", 443)
        self.out: list[bytes] = []
        self.writes = 0
        self.closed = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.out.append(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.host

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        """The FIN goes out; the loss is reported later (:meth:`finish`),
        when the peer's FIN arrives, as on a netstack connection."""
        self.closed = True

    abortConnection = loseConnection

    def finish(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))


class Conn:
    """One client connection to the factory; ``cpu`` accumulates the server
    side's thread CPU seconds."""

    def __init__(self, factory: Any, clock: Any, cctx: Any, tls: bool = True) -> None:
        from OpenSSL import SSL
        from twisted.internet.address import IPv4Address

        self.clock = clock
        self.tls = tls
        self.cpu = 0.0
        self.wire = _Wire()
        t0 = time.thread_time()
        self.server = factory.buildProtocol(IPv4Address("TCP", "100.64.0.10", 40000))
        self.wire.protocol = self.server
        self.server.makeConnection(self.wire)
        self.cpu += time.thread_time() - t0
        if tls:
            self.client = SSL.Connection(cctx, None)
            self.client.set_tlsext_host_name(NAME.encode())
            self.client.set_connect_state()
            for _ in range(10):
                try:
                    self.client.do_handshake()
                    break
                except SSL.WantReadError:
                    self.pump()

    def serve(self, data: bytes) -> None:
        """The server side of one client write (the measured part)."""
        self.server.dataReceived(data)
        self.clock.advance(0)

    def to_server(self, data: bytes) -> None:
        t0 = time.thread_time()
        # through operator.call (a C function nothing else calls): callgrind
        # --collect-atstart=no --toggle-collect=_operator_call counts the
        # server side only (see the module docstring)
        operator.call(self.serve, data)
        self.cpu += time.thread_time() - t0

    def pump(self) -> None:
        from OpenSSL import SSL

        for _ in range(20):
            try:
                out = self.client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                self.to_server(out)
            back = self.wire.take()
            if back:
                self.client.bio_write(back)
            if not out and not back:
                return

    def close(self) -> None:
        """The client answers the server's close_notify with its own (the
        server then closes the transport), as wrk's OpenSSL does."""
        from OpenSSL import SSL

        with contextlib.suppress(SSL.Error):
            self.client.shutdown()
        self.pump()
        t0 = time.thread_time()
        self.wire.finish()
        self.cpu += time.thread_time() - t0

    def exchange(self, request: bytes = REQUEST) -> bytes:
        from OpenSSL import SSL

        if not self.tls:
            self.to_server(request)
            return self.wire.take()
        self.client.send(request)
        self.pump()
        got = b""
        while True:
            try:
                got += self.client.recv(1 << 20)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return got


def run_keepalive(records_on: bool, requests: int, responder: str, tls: bool,
                  alpn: bytes = b"http/1.1") -> dict:
    factory, clock, cctx = build(records_on, False, responder, alpn)
    c = Conn(factory, clock, cctx, tls)
    if tls and c.client.get_alpn_proto_negotiated() != alpn:
        raise SystemExit(f"ALPN {alpn!r} not negotiated")
    for _ in range(50):  # warm
        c.exchange()
    c.cpu, w0 = 0.0, c.wire.writes
    for _ in range(requests):
        got = c.exchange()
        if not got.startswith(b"HTTP/1.1 200 OK\r\n"):
            raise SystemExit(f"bad response {got[:40]!r}")
    return {"us_per_req": c.cpu * 1e6 / requests,
            "writes_per_resp": (c.wire.writes - w0) / requests}


def run_creator(connections: int) -> dict:
    """``SNIServerCreator.serverConnectionForTLS`` alone (the default
    certificate's lookup and the ``SSL.Connection``), CPU us per call."""
    build(True, False, "length")
    creator = CREATOR[0]
    for _ in range(100):
        creator.serverConnectionForTLS(None)
    t0 = time.thread_time()
    for _ in range(connections * 10):
        creator.serverConnectionForTLS(None)
    return {"us_per_conn": (time.thread_time() - t0) * 1e6 / (connections * 10)}


def run_handshakes(records_on: bool, connections: int, no_tickets: bool) -> dict:
    factory, clock, cctx = build(records_on, no_tickets, "later")
    close = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    total, writes = 0.0, 0
    for i in range(connections + 20):
        c = Conn(factory, clock, cctx)
        got = c.exchange(close)
        c.close()
        if not got.startswith(b"HTTP/1.1 200 OK\r\n") or not c.wire.closed:
            raise SystemExit(f"bad handshake exchange {got[:40]!r}")
        if i >= 20:  # warm
            total += c.cpu
            writes += c.wire.writes
    return {"us_per_conn": total * 1e6 / connections, "writes_per_conn": writes / connections}


RUNS = ("keepalive", "chunked", "h2", "plain", "handshake", "creator")


def one(args: argparse.Namespace, variant: str) -> dict:
    on = variant == "records"
    CLIENT["version"], CLIENT["cipher"] = args.tls_version, args.cipher
    runs = {
        "keepalive": lambda: run_keepalive(on, args.requests, "length", True),
        "chunked": lambda: run_keepalive(on, args.requests // 4, "chunked", True),
        "h2": lambda: run_keepalive(on, args.requests // 4, "frames", True, b"h2"),
        "plain": lambda: run_keepalive(on, args.requests, "length", False),
        "handshake": lambda: run_handshakes(on, args.connections, args.no_tickets),
        "creator": lambda: run_creator(args.connections),
    }
    only = args.only.split(",") if args.only else RUNS
    return {name: runs[name]() for name in only}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-tickets", action="store_true")
    ap.add_argument("--store", action="store_true",
                    help="a real CertificateStore (local-CA default leaf) as the source")
    ap.add_argument("--baseline-variant", choices=("twisted", "records"), default="twisted")
    ap.add_argument("--against", help="another checkout: its package is run too, alternated")
    ap.add_argument("--tls-version", choices=("1.2", "1.3"), default=None,
                    help="the client's only protocol version (default: TLS 1.3 by negotiation)")
    ap.add_argument("--cipher", default=None,
                    help="the client's TLS 1.2 cipher list (e.g. ECDHE-ECDSA-CHACHA20-POLY1305)")
    ap.add_argument("--only", default=None,
                    help="with --child: these runs only (comma-separated: "
                    + ",".join(RUNS) + ")")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.store:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                STORE_DIR[0] = tmp
                print(json.dumps(one(args, args.child)))
            return
        print(json.dumps(one(args, args.child)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    variants = [("records", here, "records"), ("twisted", here, "twisted")]
    if args.against:
        variants.append(("baseline", os.path.abspath(args.against), args.baseline_variant))
    results: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for label, tree, child in order:
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", child,
                   "--requests", str(args.requests), "--connections", str(args.connections)]
            if args.no_tickets:
                cmd.append("--no-tickets")
            if args.store:
                cmd.append("--store")
            if args.tls_version:
                cmd += ["--tls-version", args.tls_version]
            if args.cipher:
                cmd += ["--cipher", args.cipher]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                                 cwd=tree)
            results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def med(label: str, run: str, key: str) -> float:
        return statistics.median(x[run][key] for x in results[label])

    rows = [("keep-alive, server CPU us/request", "keepalive", "us_per_req"),
            ("keep-alive, TLS writes per response", "keepalive", "writes_per_resp"),
            ("chunked response, TLS writes per response", "chunked", "writes_per_resp"),
            ("ALPN h2, 3 writes per response, server CPU us/request", "h2", "us_per_req"),
            ("ALPN h2, TLS writes per response", "h2", "writes_per_resp"),
            ("same without TLS, CPU us/request", "plain", "us_per_req"),
            ("new connection (handshake, 1 request, close), CPU us", "handshake",
             "us_per_conn"),
            ("new connection, transport writes", "handshake", "writes_per_conn"),
            ("serverConnectionForTLS alone, CPU us", "creator", "us_per_conn")]
    labels = [v[0] for v in variants]
    print(f"{'medians of ' + str(args.rounds) + ' alternated rounds':58}"
          + "".join(f"{x:>11}" for x in labels))
    for title, run, key in rows:
        print(f"{title:58}" + "".join(f"{med(x, run, key):11.2f}" for x in labels))
    ka = {x: med(x, "keepalive", "us_per_req") - med(x, "plain", "us_per_req") for x in labels}
    print(f"{'TLS layer per keep-alive request (keepalive - plain), us':58}"
          + "".join(f"{ka[x]:11.2f}" for x in labels))
    base = "baseline" if args.against else "twisted"
    for x in labels:
        if x != base:
            keep = med(x, "keepalive", "us_per_req") / med(base, "keepalive", "us_per_req")
            conn = med(x, "handshake", "us_per_conn") / med(base, "handshake", "us_per_conn")
            print(f"{x} / {base}: keep-alive CPU {keep:.3f}, TLS layer "
                  f"{ka[x] / ka[base]:.3f}, new connection {conn:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
