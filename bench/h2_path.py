"""Benchmark: the gateway's HTTP/2 server path alone (no network, no root).

Browsers reach the TLS listeners with ALPN ``h2`` (offered first), so their
requests go through :class:`~nbgateway.proxy.h2trailers.TrailersH2Connection`
(Twisted's ``H2Connection``, the ``h2`` and ``hpack`` packages) and
twisted.web's ``Request`` path, not the HTTP/1.1 fast path that
``bench/http_path.py`` (and wrk) measure.

One HTTP/2 connection (h2c with prior knowledge on the tunnel listener's
plain site, the same hand-off as ALPN ``h2``; TLS's own cost per record is
``bench/tls_path.py``'s) carries requests for a private service to the same
site as ``bench/http_path.py --upstream lean``: front door, private gate,
reverse proxy with identity stamping, the gateway's upstream HTTP/1.1
client behind production's pools over in-memory connections, request stats
and one access-log entry per request (checked).  The client is the ``h2``
package in the same process, behaving as a browser: a Chrome-like request
head (16 fields), large windows (6 MiB per stream, 15 MiB for the
connection) with WINDOW_UPDATEs as it consumes data, and ``--streams``
requests sent in one write and in flight at once (default 6; each round the
upstream answers all of them, then the reactor turn runs).  Every response
is checked (status 200, the 512-byte body, end of stream).

``--vary`` (default on; ``--no-vary`` repeats one head) gives every request
its own path and query (``/p<n>/index.html?q=<n>``) and every upstream answer
its own ``ETag``, as a browser's requests and an upstream's changing
headers do (no HPACK header-table or cache hit a real page would not get).

Only the server side is counted: each client write is handed to the server
(its ``dataReceived``, the upstream's answers, the reactor turn) inside
``operator.call``, a C function nothing else calls, so

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=_operator_call \\
        .venv/bin/python bench/h2_path.py --requests N

counts the server's instructions alone.  Take the difference of two runs
(e.g. N=240 and N=1440) divided by the difference of requests: the
per-request figure without the connection set-up and warm-up.  Without
valgrind the script prints the server's CPU microseconds per request (noisy
on a shared machine; prefer the instruction counts).  ``--profile`` prints
the server side's cProfile (calls and own time per function).

Figures (callgrind, N=240 and N=840, Python 3.11, h2 4.4.1, hpack 4.2.0):
2.358M instructions per request with 6 streams in flight, 2.261M with one,
before the one-pass header checks of :mod:`nbgateway.proxy.h2trailers`;
2.042M and 1.953M after (the HTTP/1.1 fast path: ~257k, bench/http_path.py
--tls); 1.897M with the round robin of ``LazyPriority`` (6 streams).  With
``--chrome-priority`` (the tree kept): 2.328M before, 2.025M after.

Round h2perf11 (same-commit worktrees differing only in the h2 modules):
1,898k -> 1,108k with 6 streams (-41.6 %), 1,918k -> 1,160k with one,
1,595k -> 1,033k with ``--no-vary``, 2,024k -> 1,164k with
``--chrome-priority``; Python calls per request 1,532 -> 940.  Steps:
HPACK in one loop per block with an indexed table search
(:mod:`nbgateway.proxy.h2_hpack`, -26 %), the request head into ``Headers``
in one loop (:mod:`nbgateway.proxy.h2_stream`, -7 %), Huffman decoding a
byte per step (-3 %), response blocks sent in one pass (-2 %), the send loop
at the end of the reactor turn with END_STREAM on the last DATA frame
(-8 %), decoded fields handed out ready (-2 %).  What is left is mostly
twisted.web's ``Request`` path and the gateway code shared with HTTP/1.1.

Round h2perf13: the lean per-stream route (:mod:`nbgateway.proxy.h2_lean`:
a bodiless GET/HEAD the HTTP/1.1 fast path's resource takes is served by a
``FastRequest``-like request written to its stream, no ``Request.process``)
and frame-level shortcuts of the h2 state machine
(:mod:`nbgateway.proxy.h2_frames`: frames serialised at once, HEADERS
frames parsed from their header, a new stream's request block received in
one step).  Worktree of 785792e vs the same plus the three h2 modules
(N=240 and N=840): 1,108k -> 749k with 6 streams (-32.4 %), 1,161k -> 809k
with one (-30.3 %), 1,029k -> 673k with ``--no-vary`` (-34.6 %), 1,162k ->
801k with ``--chrome-priority`` (-31.1 %); Python calls per request 940 ->
655; 6 responses answered in one turn leave in one transport write.
``--twisted-route`` (the site's
``fast=False``) serves every stream through twisted.web's ``Request`` as
before, for comparison.

Round h2perf18 (worktree of a5b5d92 vs the same plus the round's files, A
and B run at the same time): 749.9k -> 648.8k with 6 streams (-13.5 %),
801.7k -> 700.4k with ``--chrome-priority`` (-12.6 %); mostly ``h2``'s
own Python around the lean route (state-machine transitions hashing enums
through ``Enum.__hash__``, configuration descriptors, validation flags) and
per-name memos in the header checks.  The figures move by up to ~3k with
the machine's load (the bench's per-second ``Date`` and timers): compare
runs made at the same time, and import the tree under test through an
absolute ``PYTHONPATH``.

``--chrome-priority`` sends every request's HEADERS with a priority as
Chrome does (weight 256, an exclusive dependency on the one before in the
round, still open; the first on stream 0):
the server then schedules with the ``priority`` package's tree.

``H2_TREE=/path/to/checkout`` imports the ``nbgateway`` package from another
checkout (a worktree of an older revision) for a same-session A/B.

Run:  .venv/bin/python bench/h2_path.py [--requests 1200] [--streams 6]
      [--no-vary] [--chrome-priority] [--twisted-route] [--profile]
"""

from __future__ import annotations

import argparse
import operator
import os
import sys
import time
from typing import Any

if os.environ.get("H2_TREE"):
    sys.path.insert(0, os.environ["H2_TREE"])

import h2.config
import h2.connection
import h2.events
import h2.settings
from http_path import ANSWER, _Wire, build_site
from twisted.internet.address import IPv4Address

PEER = "100.64.0.10"
CHROME_UA = (b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             b"Chrome/131.0.0.0 Safari/537.36")


def request_head(i: int, vary: bool) -> list[tuple[bytes, bytes]]:
    """A Chrome-like navigation request head (pseudo-headers first)."""
    path = b"/p%d/index.html?q=%d" % (i, i) if vary else b"/index.html?q=1"
    return [
        (b":method", b"GET"), (b":authority", b"app.example"), (b":scheme", b"http"),
        (b":path", path),
        (b"sec-ch-ua", b'"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'),
        (b"sec-ch-ua-mobile", b"?0"), (b"sec-ch-ua-platform", b'"Linux"'),
        (b"upgrade-insecure-requests", b"1"), (b"user-agent", CHROME_UA),
        (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                    b"image/webp,image/apng,*/*;q=0.8"),
        (b"sec-fetch-site", b"same-origin"), (b"sec-fetch-mode", b"navigate"),
        (b"sec-fetch-dest", b"document"), (b"accept-encoding", b"gzip, deflate, br, zstd"),
        (b"accept-language", b"en-US,en;q=0.9"), (b"priority", b"u=0, i"),
    ]


class Client:
    """The browser side: an ``h2`` client connection in memory."""

    def __init__(self, requests: int, streams: int, vary: bool,
                 chrome_priority: bool = False, twisted_route: bool = False) -> None:
        # fast=False: the site's HTTP/1.1 fast path off, and with it the
        # lean HTTP/2 route (every stream through twisted.web's Request)
        self.site, self.sink, self.pools, self.clock = build_site(not twisted_route, True)
        self.wire = _Wire()
        self.server = self.site.buildProtocol(IPv4Address("TCP", PEER, 40000))
        self.server.makeConnection(self.wire)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 6 * 1024 * 1024,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(15 * 1024 * 1024 - 65535)
        self.streams = streams
        self.vary = vary
        self.chrome_priority = chrome_priority
        self.last_sid = 0
        self.next = 0
        self.server_cpu = 0.0
        self.profile: Any = None
        self.answers = [ANSWER[0].replace(b"\r\nServer: nginx\r\n",
                                          b'\r\nETag: "%d"\r\nServer: nginx\r\n' % i)
                        for i in range(requests + 64)] if vary else None
        if self.answers is not None:
            self.pools.answers = iter(self.answers)
        self.pump()

    def serve(self, data: bytes) -> None:
        """The server side of one client write (the measured part)."""
        self.server.dataReceived(data)
        self.pools.flush()
        self.clock.advance(0)

    def pump(self) -> list[Any]:
        """Move bytes both ways until neither side has more; the client's
        events."""
        events: list[Any] = []
        for _ in range(50):
            out = self.conn.data_to_send()
            if out:
                t0 = time.process_time()
                if self.profile is not None:
                    self.profile.enable()
                operator.call(self.serve, out)
                if self.profile is not None:
                    self.profile.disable()
                self.server_cpu += time.process_time() - t0
            back = self.wire.value()
            self.wire.clear()
            if back:
                got = self.conn.receive_data(back)
                for event in got:
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id)
                events.extend(got)
            if not out and not back:
                return events
        raise SystemExit("the exchange did not settle")

    def round(self) -> int:
        """``streams`` requests in one write; returns responses checked."""
        sids: list[int] = []
        self.last_sid = 0  # Chrome depends on a stream still open, else on 0
        for _ in range(self.streams):
            sid = self.conn.get_next_available_stream_id()
            if self.chrome_priority:  # weight 256, exclusively on the previous stream
                self.conn.send_headers(sid, request_head(self.next, self.vary), end_stream=True,
                                       priority_weight=256, priority_depends_on=self.last_sid,
                                       priority_exclusive=True)
            else:
                self.conn.send_headers(sid, request_head(self.next, self.vary), end_stream=True)
            self.last_sid = sid
            self.next += 1
            sids.append(sid)
        events = self.pump()
        status: dict[int, bytes] = {}
        body: dict[int, int] = {}
        ended = set()
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                body[event.stream_id] = body.get(event.stream_id, 0) + len(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        for sid in sids:
            if status.get(sid) != b"200" or body.get(sid) != 512 or sid not in ended:
                raise SystemExit(f"stream {sid}: {status.get(sid)} {body.get(sid)}")
        return len(sids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--no-vary", dest="vary", action="store_false")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--chrome-priority", action="store_true",
                        help="HEADERS carry priorities as Chrome's do")
    parser.add_argument("--twisted-route", action="store_true",
                        help="every stream through twisted.web's Request (no lean route)")
    args = parser.parse_args(argv)
    client = Client(args.requests, args.streams, args.vary, args.chrome_priority,
                    args.twisted_route)
    done = client.round()  # warm: connection set-up, first dial
    client.server_cpu = 0.0
    if args.profile:
        import cProfile

        client.profile = cProfile.Profile()
    served = 0
    while served < args.requests:
        served += client.round()
    done += served
    if client.sink.entries != done:
        raise SystemExit(f"{client.sink.entries} log entries for {done} requests")
    if getattr(client.server, "h2", None) is None:
        raise SystemExit("not served over HTTP/2")
    lean = getattr(client.server.h2, "lean_streams", 0)
    if args.twisted_route == bool(lean):
        raise SystemExit(f"{lean} streams on the lean route")
    print(f"h2 {served} requests, {args.streams} streams in flight, vary={args.vary}, "
          f"lean route: {bool(lean)}: "
          f"{client.server_cpu * 1e6 / served:.1f} us server CPU per request, "
          f"{client.pools.dials} upstream dials")
    if client.profile is not None:
        import pstats

        pstats.Stats(client.profile).sort_stats("tottime").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
