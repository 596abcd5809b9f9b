"""The TCP layer of a netstack: demultiplexing, LISTEN handling, SYN-flood
defence, TIME-WAIT bound and the deadline heap.

The :class:`~nbgateway.netstack.stack.Stack` builds ``TCPLayer(stack)`` and
feeds it checksum-verified, filtered segments (:meth:`TCPLayer.segment_received`,
or :meth:`TCPLayer.segments_received` for a run of coalesced in-order ones);
it owns one re-armed ``IDelayedCall`` driven by :meth:`next_deadline` /
:meth:`on_deadline`.  Connections (:mod:`nbgateway.netstack.tcp_conn`) emit
through :meth:`TCPLayer.output` -> ``stack.send_transport``.

SYN-flood resistance: each :class:`Listener` holds at most ``max_half_open``
SYN-RECEIVED connections; beyond that it answers SYNs statelessly with SYN
cookies (:mod:`nbgateway.netstack.syncookies`) and accepts cookie ACKs for two
cookie slots after the last overflow.  Completed connections wait in an accept
queue bounded by ``backlog`` (only non-empty while the listener is paused);
when it is full new SYNs are dropped and completing handshakes are reset.
TIME-WAIT connections are bounded by ``max_time_wait`` (oldest evicted first).
Out-of-order text held by all connections together is bounded by
``max_ooo_bytes`` (``ooo_bytes``): each connection may hold up to its receive
window, so without a stack-wide bound one peer's connections, each sent a
window after a hole it never fills, made the shared heap hold
``max_connections`` windows; beyond the bound an out-of-order segment is
dropped (``tcp_ooo_budget_drops``, the peer retransmits it), in-order text is
always taken.

Connection bound: the layer holds at most ``max_connections`` connections
that are not in TIME-WAIT (half-open, established, closing, accept-queued and
outgoing alike).  A stack is one account's, so this bounds what one tenant's
peers can make the gateway's shared heap hold.  At the bound a SYN to a
listener, and a valid SYN-cookie ACK that would complete a connection, are
answered with RST (``drop_tcp_conn_limit``: the client sees a refusal, not a
retry timeout), and :meth:`TCPLayer.connect` raises ``ConnectError``
(``tcp_connect_limit``).  TIME-WAIT entries are bounded on their own (and
evicted oldest first), so they do not count: a busy server's closed
connections never refuse new ones.  The check is one length comparison per
SYN, none per segment.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.logger import Logger

from nbgateway.netstack.checksum import IPAddress
from nbgateway.netstack.syncookies import (
    COOKIE_SLOT,
    SequenceSecrets,
    decode_ts_options,
    encode_ts_options,
)
from nbgateway.netstack.tcp_conn import Connection, TCPUser
from nbgateway.netstack.tcp_const import (
    CLOSED,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    MASK,
    RCV_WSCALE,
    TIME_WAIT,
)
from nbgateway.netstack.tcp_fast import FastPath
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    RST,
    SYN,
    Segment,
    build_segment,
    parse_segment,
    syn_options,
)

#: one OS-randomness source for every instance: SystemRandom draws from
#: os.urandom and keeps no state, but each instance allocates an unused
#: Mersenne Twister state (~2.5 KiB per idle account)
_SYSTEM_RANDOM = random.SystemRandom()

PROTO_TCP = 6
EPHEMERAL_PORTS = (49152, 65535)
MAX_TIME_WAIT = 4096
CHALLENGE_ACKS_PER_SECOND = 1000  # RFC 5961 7: a system-wide limit
DEFAULT_BACKLOG = 128
DEFAULT_MAX_HALF_OPEN = 256
#: connections (not in TIME-WAIT) one stack, i.e. one account, may hold
DEFAULT_MAX_CONNECTIONS = 16384
#: out-of-order bytes one stack (account) holds over all its connections
DEFAULT_MAX_OOO_BYTES = 16 * 1024 * 1024
LIMIT_LOG_INTERVAL = 60.0

log = Logger()

ConnKey = tuple[IPAddress, int, IPAddress, int]


class Listener:
    """A LISTEN port.  ``accept(conn)`` is called for each established
    connection and returns its :class:`TCPUser` (or None to refuse it).

    Slots, and the half-open connections as dict keys (an empty dict is
    64 B, an empty set 216 B): every idle account has several listeners
    (HTTP, HTTPS, DNS, private L4), each with nothing half open."""

    __slots__ = ("accept", "accept_queue", "address", "backlog", "closed", "half_open",
                 "last_overflow", "layer", "max_half_open", "paused", "port")

    def __init__(self, layer: TCPLayer, address: IPAddress | None, port: int,
                 accept: Callable[[Connection], TCPUser | None], backlog: int,
                 max_half_open: int) -> None:
        self.layer = layer
        self.address = address
        self.port = port
        self.accept = accept
        self.backlog = max(1, backlog)
        self.max_half_open = max(1, max_half_open)
        #: SYN-RECEIVED connections (keys; values None), at most ``max_half_open``
        self.half_open: dict[Connection, None] = {}
        # a list (56 B), not a deque (760 B even empty): every idle account has
        # several listeners; at most ``backlog`` entries, so pop(0) is cheap
        self.accept_queue: list[Connection] = []
        self.paused = False
        self.closed = False
        self.last_overflow: float | None = None

    def cookies_active(self, now: float) -> bool:
        return self.last_overflow is not None and now - self.last_overflow < 2 * COOKIE_SLOT

    def pause(self) -> None:
        """Stop handing out connections; they queue up to ``backlog``."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.drain()

    def drain(self) -> None:
        while self.accept_queue and not self.paused and not self.closed:
            conn = self.accept_queue.pop(0)
            if conn.state == CLOSED:
                continue
            user = self.accept(conn)
            if user is None:
                conn.abort(self.layer.clock.seconds())
            elif conn.state != CLOSED:
                if conn.user is None:
                    conn.user = user
                if conn.rcv_queue or conn.eof_pending:
                    # data (or FIN) that arrived while the connection waited
                    conn.flush_received(self.layer.clock.seconds())

    def close(self) -> None:
        """Stop listening; abort half-open and not yet accepted connections."""
        if self.closed:
            return
        self.closed = True
        self.layer.listeners.pop((self.address, self.port), None)
        now = self.layer.clock.seconds()
        for conn in list(self.half_open) + list(self.accept_queue):
            conn.abort(now)
        self.half_open.clear()
        self.accept_queue.clear()


class TCPLayer:
    """All TCP state of one stack."""

    def __init__(self, stack: Any, secret: bytes | None = None,
                 max_time_wait: int = MAX_TIME_WAIT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_ooo_bytes: int = DEFAULT_MAX_OOO_BYTES) -> None:
        self.stack = stack
        self.clock = stack.clock
        self.counters = stack.counters
        self.secrets = SequenceSecrets(secret)
        self.conns: dict[ConnKey, Connection] = {}
        self.fast = FastPath(self)  # the stack's fused input; same connections as conns
        self.listeners: dict[tuple[IPAddress | None, int], Listener] = {}
        self.time_wait: OrderedDict[ConnKey, Connection] = OrderedDict()
        self.max_time_wait = max_time_wait
        self.max_connections = max(1, max_connections)
        #: out-of-order bytes held by every connection's Assembler, and their bound
        self.ooo_bytes = 0
        self.max_ooo_bytes = max_ooo_bytes
        self._limit_logged: float | None = None  # when the bound was last logged
        self._heap: list[tuple[float, int, Connection]] = []
        self._tiebreak = itertools.count()
        self._in_input = False
        self._challenge_second = -1
        self._challenge_count = 0
        self._rng = _SYSTEM_RANDOM

    # ------------------------------------------------------------------ helpers

    def mss_for(self, remote: IPAddress) -> int:
        """MSS clamped to the tunnel MTU (RFC 9293 3.7.1, RFC 6691)."""
        return self.stack.mtu - (40 if remote.version == 4 else 60)

    def output(self, conn: Connection, segment: bytearray) -> None:
        self.counters["tcp_segments_out"] += 1
        src, dst = conn.raw_addrs
        self.stack.send_transport(src, dst, PROTO_TCP, segment)

    def send_rst_for(self, local: IPAddress, remote: IPAddress, seg: Segment) -> None:
        """RFC 9293 3.10.7.1 reset generation for an unacceptable segment."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            rst = build_segment(seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            rst = build_segment(seg.dport, seg.sport, 0, seg.seq + seg.seg_len, RST | ACK, 0)
        self.counters["tcp_rst_sent"] += 1
        self.stack.send_transport(local, remote, PROTO_TCP, rst)

    def at_connection_limit(self) -> bool:
        """True when the layer holds ``max_connections`` connections not in
        TIME-WAIT (every TIME-WAIT connection is also in ``conns``)."""
        return len(self.conns) - len(self.time_wait) >= self.max_connections

    def challenge_allowed(self, now: float) -> bool:
        second = int(now)
        if second != self._challenge_second:
            self._challenge_second = second
            self._challenge_count = 0
        self._challenge_count += 1
        return self._challenge_count <= CHALLENGE_ACKS_PER_SECOND

    # ------------------------------------------------------------------ user API

    def listen(self, port: int, accept: Callable[[Connection], TCPUser | None],
               address: IPAddress | None = None, backlog: int = DEFAULT_BACKLOG,
               max_half_open: int = DEFAULT_MAX_HALF_OPEN) -> Listener:
        """Open a LISTEN port on ``address`` (None: every stack address);
        port 0 picks a free ephemeral port."""
        if port == 0:
            used = {p for _, p in self.listeners} | {c.lport for c in self.conns.values()}
            free = [p for p in range(EPHEMERAL_PORTS[0], EPHEMERAL_PORTS[1] + 1)
                    if p not in used]
            if not free:
                raise error.CannotListenError(address, port, OSError("no free port"))
            port = self._rng.choice(free)
        if not 0 < port < 65536:
            raise error.CannotListenError(address, port, ValueError("bad port"))
        if address is not None and address not in self.stack.addresses:
            raise error.CannotListenError(address, port, ValueError("not a stack address"))
        if (address, port) in self.listeners or (None, port) in self.listeners or (
            address is None and any(p == port for _, p in self.listeners)
        ):
            raise error.CannotListenError(address, port, OSError("address already in use"))
        listener = Listener(self, address, port, accept, backlog, max_half_open)
        self.listeners[(address, port)] = listener
        return listener

    def connect(self, remote: IPAddress, rport: int, user: TCPUser,
                local: IPAddress | None = None) -> Connection:
        """Active OPEN from an ephemeral port; ``user`` gets the events.
        Raises ``ConnectError`` at the layer's connection bound."""
        if self.at_connection_limit():
            self.counters["tcp_connect_limit"] += 1
            self._log_limit()
            raise error.ConnectError(
                string=f"tunnel connection limit reached ({self.max_connections})")
        if local is None:
            for addr in self.stack.addresses:
                if addr.version == remote.version:
                    local = addr
                    break
            else:
                raise error.ConnectError(string=f"no IPv{remote.version} address on the stack")
        else:  # the stack's own object for an equal address: the fused input compares identity
            local = next((a for a in self.stack.addresses if a == local), local)
        lo, hi = EPHEMERAL_PORTS
        for _ in range(64):
            lport = self._rng.randint(lo, hi)
            key = (local, lport, remote, rport)
            if key not in self.conns and (local, lport) not in self.listeners \
                    and (None, lport) not in self.listeners:
                break
        else:
            raise error.ConnectError(string="no free ephemeral port")
        now = self.clock.seconds()
        conn = Connection(self, local, lport, remote, rport,
                          self.secrets.isn(local, lport, remote, rport, now), now)
        conn.user = user
        self.conns[key] = conn
        self.fast.add(conn)
        conn.open_active(now)
        return conn

    def close(self) -> None:
        """Shut the layer down: close every listener and reset every
        connection (users see ``ConnectionLost``).  For stack teardown."""
        for listener in list(self.listeners.values()):
            listener.close()
        now = self.clock.seconds()
        for conn in list(self.conns.values()):
            user = conn.user
            conn.abort(now)
            if user is not None:
                user.tcp_closed(error.ConnectionLost("netstack closed"))
        self.conns.clear()
        self.fast.table.clear()
        self.time_wait.clear()
        self._heap = []

    # ------------------------------------------------------------------ connection callbacks

    def remove(self, conn: Connection) -> None:
        key = (conn.local, conn.lport, conn.remote, conn.rport)
        if self.conns.get(key) is conn:
            del self.conns[key]
        self.fast.discard(conn)
        self.time_wait.pop(key, None)
        if conn.listener is not None:
            conn.listener.half_open.pop(conn, None)

    def entered_time_wait(self, conn: Connection) -> None:
        key = (conn.local, conn.lport, conn.remote, conn.rport)
        self.time_wait[key] = conn
        while len(self.time_wait) > self.max_time_wait:
            _, old = self.time_wait.popitem(last=False)
            self.counters["tcp_time_wait_evicted"] += 1
            old._terminate(None)

    def passive_established(self, conn: Connection) -> None:
        listener = conn.listener
        assert listener is not None
        listener.half_open.pop(conn, None)
        if listener.closed or len(listener.accept_queue) >= listener.backlog:
            self.counters["tcp_accept_overflow"] += 1
            conn.abort(self.clock.seconds())
            return
        self.counters["tcp_passive_opens"] += 1
        listener.accept_queue.append(conn)
        listener.drain()

    # ------------------------------------------------------------------ deadlines

    def schedule(self, conn: Connection) -> None:
        t = conn.timer_at
        assert t is not None
        conn.heap_at = t
        heap = self._heap
        heapq.heappush(heap, (t, next(self._tiebreak), conn))
        if len(heap) > 4 * len(self.conns) + 256:
            live = [(c.heap_at, next(self._tiebreak), c) for c in self.conns.values()
                    if c.heap_at is not None]
            heapq.heapify(live)
            self._heap = live
        if not self._in_input:
            self.stack.wakeup()

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            t, _, conn = heap[0]
            if conn.heap_at == t and conn.state != CLOSED:
                return t
            heapq.heappop(heap)
        return None

    def on_deadline(self, now: float) -> None:
        self._in_input = True
        try:
            budget = 4 * len(self.conns) + 64
            heap = self._heap
            while heap and heap[0][0] <= now and budget > 0:
                budget -= 1
                t, _, conn = heapq.heappop(heap)
                if conn.heap_at != t or conn.state == CLOSED:
                    continue
                conn.heap_at = None
                self._guarded(conn, conn.on_timer, now)
                heap = self._heap
        finally:
            self._in_input = False

    def _guarded(self, conn: Connection, fn: Callable[..., None], *args: Any) -> None:
        """A bug in one connection resets that connection, never the reactor."""
        try:
            fn(*args)
        except Exception as e:
            self.counters["tcp_internal_errors"] += 1
            log.failure("TCP connection {conn!r} failed; resetting it", conn=conn)
            try:
                conn._terminate(e)
            except Exception:
                log.failure("while resetting {conn!r}", conn=conn)
                self.remove(conn)

    # ------------------------------------------------------------------ input

    def segment_received(self, src: IPAddress, dst: IPAddress, segment: Any,
                         now: float) -> None:
        seg = parse_segment(segment)
        if seg is None:
            self.counters["tcp_bad_header"] += 1
            return
        self.counters["tcp_segments_in"] += 1
        self._dispatch(src, dst, seg, now)

    def segments_received(self, src: IPAddress, dst: IPAddress, header: Any, payload: bytes,
                          count: int, now: float) -> None:
        """``count`` consecutive in-order segments of one connection coalesced
        by the stack (``coalesce.py``): the first one's ``header`` (ACK only,
        no SACK) and all their payloads; handled as one segment that counts
        as ``count`` toward the ACK policy."""
        seg = parse_segment(header)
        if seg is None:
            self.counters["tcp_bad_header"] += 1
            return
        seg.payload = payload
        seg.segs = count
        self.counters["tcp_segments_in"] += count
        self._dispatch(src, dst, seg, now)

    def _dispatch(self, src: IPAddress, dst: IPAddress, seg: Segment, now: float) -> None:
        key = (dst, seg.dport, src, seg.sport)
        self._in_input = True
        try:
            conn = self.conns.get(key)
            if conn is not None and conn.state == TIME_WAIT and seg.flags & SYN \
                    and not seg.flags & ACK and self._reopen_time_wait(conn, seg):
                conn = None
            if conn is not None:
                self._guarded(conn, conn.segment_arrives, seg, now)
            else:
                self._no_connection(src, dst, seg, now)
        finally:
            self._in_input = False

    def icmp_error(self, local: IPAddress, remote: IPAddress, inner: Any, kind: str,
                   mtu: int | None, now: float) -> None:
        """An ICMP error quoting one of our segments (called by the ICMP
        layer).  Only errors whose quoted sequence number is in flight count
        (RFC 5927 4.1).  ``frag_needed``/packet too big lowers the MSS (path
        MTU discovery, RFC 1191/8201) and resends; unreachable errors are
        hard only for a connection still in SYN-SENT (RFC 5461), soft
        otherwise."""
        if len(inner) < 8:
            return
        sport, dport, seq = struct.unpack_from("!HHI", inner)
        conn = self.conns.get((local, sport, remote, dport))
        if conn is None or conn.state == CLOSED:
            return
        seq_u = conn.snd_una + ((seq - conn.iss - conn.snd_una) & MASK)
        if not conn.snd_una <= seq_u < max(conn.snd_max, conn.snd_una + 1):
            self.counters["tcp_icmp_ignored"] += 1
            return
        self.counters["tcp_icmp_errors"] += 1
        self._guarded(conn, conn.icmp_error, kind, mtu, now)

    def _reopen_time_wait(self, conn: Connection, seg: Segment) -> bool:
        """RFC 9293 3.6.1 / RFC 6191: a new SYN above RCV.NXT ends TIME-WAIT."""
        d = (seg.seq - conn.irs - conn.rcv_nxt) & MASK
        if not 0 < d < 0x80000000:
            return False
        conn._terminate(None)
        return True

    def _find_listener(self, dst: IPAddress, port: int) -> Listener | None:
        return self.listeners.get((dst, port)) or self.listeners.get((None, port))

    def _no_connection(self, src: IPAddress, dst: IPAddress, seg: Segment, now: float) -> None:
        flags = seg.flags
        listener = self._find_listener(dst, seg.dport)
        if listener is None:
            if not flags & RST:
                self.counters["tcp_closed_port"] += 1
                self.send_rst_for(dst, src, seg)
            return
        if flags & RST:
            return
        if flags & ACK:
            if not flags & SYN and listener.cookies_active(now):
                self._cookie_ack(listener, src, dst, seg, now)
            else:
                self.send_rst_for(dst, src, seg)
            return
        if not flags & SYN:
            return
        if self.at_connection_limit():
            self._refuse_at_limit(dst, src, seg)
            return
        if len(listener.accept_queue) >= listener.backlog:
            self.counters["tcp_listen_drops"] += 1
            return
        if len(listener.half_open) < listener.max_half_open:
            iss = self.secrets.isn(dst, seg.dport, src, seg.sport, now)
            conn = Connection(self, dst, seg.dport, src, seg.sport, iss, now)
            self.conns[(dst, seg.dport, src, seg.sport)] = conn
            self.fast.add(conn)
            listener.half_open[conn] = None
            self._guarded(conn, conn.open_passive, listener, seg, now)
            return
        listener.last_overflow = now
        self._send_cookie(src, dst, seg, now)

    def _refuse_at_limit(self, local: IPAddress, remote: IPAddress, seg: Segment) -> None:
        """Reset a SYN (or completing cookie ACK) at the connection bound.

        RST rather than a silent drop (what a full accept queue gets): the
        bound is held by live connections, not drained in milliseconds, so a
        dropped SYN would only be retransmitted for minutes; the client is
        refused at once, as by a closed port (or Linux's
        ``tcp_abort_on_overflow`` for the cookie ACK)."""
        self.counters["drop_tcp_conn_limit"] += 1
        self._log_limit()
        self.send_rst_for(local, remote, seg)

    def _log_limit(self) -> None:
        """A warning at most once a minute while the bound refuses connections."""
        now = self.clock.seconds()
        if self._limit_logged is not None and now - self._limit_logged < LIMIT_LOG_INTERVAL:
            return
        self._limit_logged = now
        log.warn("netstack {addresses}: {limit} TCP connections held; refusing new ones "
                 "(--max-tunnel-connections), {refused} refused so far",
                 addresses=" ".join(map(str, self.stack.addresses)), limit=self.max_connections,
                 refused=self.counters["drop_tcp_conn_limit"] + self.counters["tcp_connect_limit"])

    def _send_cookie(self, src: IPAddress, dst: IPAddress, seg: Segment, now: float) -> None:
        self.counters["tcp_syncookies_sent"] += 1
        peer_mss = seg.mss or (DEFAULT_MSS_V4 if src.version == 4 else DEFAULT_MSS_V6)
        cookie, _ = self.secrets.make_cookie(dst, seg.dport, src, seg.sport, seg.seq,
                                             min(peer_mss, self.mss_for(src)), now)
        ts = None
        if seg.ts_val is not None:
            ts_now = (int(now * 1000) + self.secrets.ts_offset(dst, seg.dport, src, seg.sport))
            ts = (encode_ts_options(ts_now & MASK, seg.wscale, seg.sack_perm), seg.ts_val)
        opts = syn_options(self.mss_for(src),
                           RCV_WSCALE if ts is not None and seg.wscale is not None else None,
                           ts is not None and seg.sack_perm, ts)
        self.stack.send_transport(dst, src, PROTO_TCP, build_segment(
            seg.dport, seg.sport, cookie, seg.seq + 1, SYN | ACK, 0xFFFF, opts))

    def _cookie_ack(self, listener: Listener, src: IPAddress, dst: IPAddress, seg: Segment,
                    now: float) -> None:
        cookie = (seg.ack - 1) & MASK
        mss = self.secrets.check_cookie(dst, seg.dport, src, seg.sport, (seg.seq - 1) & MASK,
                                        cookie, now)
        if mss is None:
            self.counters["tcp_syncookies_failed"] += 1
            self.send_rst_for(dst, src, seg)
            return
        if self.at_connection_limit():
            self._refuse_at_limit(dst, src, seg)
            return
        if len(listener.accept_queue) >= listener.backlog:
            self.counters["tcp_listen_drops"] += 1
            return
        self.counters["tcp_syncookies_ok"] += 1
        wscale, sack_ok, ts_ok = None, False, False
        if seg.ts_val is not None and seg.ts_ecr:
            wscale, sack_ok = decode_ts_options(seg.ts_ecr)
            ts_ok = True
        conn = Connection(self, dst, seg.dport, src, seg.sport, cookie, now)
        self.conns[(dst, seg.dport, src, seg.sport)] = conn
        self.fast.add(conn)
        conn.open_from_cookie(listener, seg, mss, wscale, sack_ok, ts_ok, now)
        self.passive_established(conn)
        if conn.state != CLOSED and (seg.payload or seg.flags & FIN):
            self._guarded(conn, conn.segment_arrives, seg, now)
