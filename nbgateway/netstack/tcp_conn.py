"""One TCP connection (the TCB of RFC 9293) as a sans-IO state machine.

The :class:`Connection` is fed parsed segments and ``now`` by
:class:`~nbgateway.netstack.tcp.TCPLayer` and emits segments through the layer.
It never touches the reactor: its timers (retransmission, persist, delayed ACK,
keepalive, TIME-WAIT/FIN-WAIT-2 linger) are deadlines summarised in
``timer_at``, which the layer keeps in one heap behind the stack's single
re-armed ``IDelayedCall``.

Sequence numbers inside the TCB are *relative* and *unwrapped*: the send
side counts from ISS (``iss`` holds the wire ISS; SND.UNA is 0 on the SYN), the
receive side from IRS (``irs``, the wire IRS; RCV.NXT is 1 after the SYN), both
plain Python ints that grow past 2**32 instead of wrapping, so comparisons are
plain ``<`` and the numbers stay small ints (one 30-bit digit for the first
GiB: the interpreter's fast int paths).  Incoming values are converted at the
wire boundary (``_unwrap(wire - iss, SND.UNA)``, ``_unwrap(wire - irs,
RCV.NXT)``), outgoing ones as ``(x + iss) & MASK`` / ``(x + irs) & MASK``;
SND.WL1/SND.WL2 stay wire values.

What the user (the Twisted transport) sees is the small :class:`TCPUser`
callback surface; the connection calls back *after* its own state is
consistent, and checks for re-entrant aborts afterwards.

Documented choices: TIME-WAIT lasts ``TIME_WAIT_TIMEOUT`` (2*MSL with a short
MSL of 15 s) and incoming RSTs are ignored in TIME-WAIT (RFC 1337); a fully
closed (orphaned) connection lingers in FIN-WAIT-2 for at most
``FIN_WAIT_2_TIMEOUT`` and answers new data with RST; data on a SYN is not
queued (the peer retransmits it); the urgent pointer is ignored (urgent data
is delivered inline, RFC 6093); Nagle is off by default (``nodelay``, like
Go's net package; ``setTcpNoDelay(False)`` turns it on).

Receive side: in-order data is delivered at once (or queued while the user is
paused, closing the window); out-of-order segments wait in a bounded
:class:`~nbgateway.netstack.buffers.Assembler` and are reported in SACK
blocks; ACKs for every second segment are sent at the end of the reactor turn
(deadline "now"), at once every ``ACK_EVERY`` segments, after 40 ms for a
lone segment; the receive window autotunes between ``RCV_BUF`` and
``RCV_BUF_MAX`` (see ``_tune_window``).  Send side: NewReno with RFC 6675-style
hole filling from the peer's SACK blocks, RFC 5827 early retransmit and
RFC 3042 limited transmit; the scoreboard is dropped on RTO (RFC 2018 8).

This module holds the TCB (:class:`Connection`'s slots), the user calls,
the passive opens and teardown; the methods of the rest live in method-only
mixins beside it: segment arrival and ACK processing in ``tcp_input.py``,
text acceptance, delivery and the receive window in ``tcp_receive.py``,
output, retransmission and the timers in ``tcp_output.py``.
"""

from __future__ import annotations

from math import floor as _floor
from typing import TYPE_CHECKING, Protocol

from nbgateway.netstack.buffers import Assembler, SendBuffer
from nbgateway.netstack.congestion import NewReno, RTOEstimator
from nbgateway.netstack.tcp_const import (
    _SEND_STATES,
    CLOSE_WAIT,
    CLOSED,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    FIN_WAIT_2_TIMEOUT,
    LAST_ACK,
    MASK,
    RCV_BUF,
    RCV_WSCALE,
    STATE_NAMES,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    TIME_WAIT_TIMEOUT,
)
from nbgateway.netstack.tcp_fast import (
    _IP4_HDR_WORDS,
    _O4TS,
    _TS_WORD,
    _TS_WORDS,
    SPLIT_SUM_ABOVE,
    emit,
)
from nbgateway.netstack.tcp_input import ConnectionInput
from nbgateway.netstack.tcp_output import ConnectionOutput
from nbgateway.netstack.tcp_receive import ConnectionReceive
from nbgateway.netstack.tcp_wire import (
    ACK,
    PSH,
    RST,
    TS_OPTION_LEN,
    Segment,
)

if TYPE_CHECKING:
    from nbgateway.netstack.checksum import IPAddress
    from nbgateway.netstack.tcp import Listener, TCPLayer

_from_bytes = int.from_bytes
_O4TS_PACK = _O4TS.pack
#: the constant words of the inline emit's checksums (``Connection.send``):
#: the IP header's (plus the 32 TCP header bytes of its total length) and the
#: TCP checksum's data offset, option words, ACK|PSH and the 32 header bytes
#: of the pseudo-header's length
_IP4_TS_HDR_WORDS = _IP4_HDR_WORDS + 32
_TS_PSH_WORDS = _TS_WORDS + 0x18 + 32


class TCPUser(Protocol):
    """What a connection reports to its user (the Twisted transport)."""

    def tcp_established(self) -> None: ...
    def tcp_data(self, data: bytes) -> None: ...
    def tcp_eof(self) -> None: ...
    def tcp_fin_acked(self) -> None: ...
    def tcp_writable(self) -> None: ...
    def tcp_closed(self, reason: Exception | None) -> None: ...


class Connection(ConnectionInput, ConnectionReceive, ConnectionOutput):
    """Transmission control block plus the RFC 9293 3.10 event processing."""

    __slots__ = (
        "ack_now",
        "ack_pending",
        "cc",
        "delack_at",
        "eof_pending",
        "fast_out",
        "fin_queued",
        "heap_at",
        "irs",
        "iss",
        "keep_at",
        "keep_probes",
        "keepalive",
        "last_ack_sent",
        "last_oow_ack",
        "last_rcv",
        "last_send",
        "layer",
        "linger_at",
        "listener",
        "local",
        "lport",
        "max_snd_wnd",
        "mss",
        "nodelay",
        "ooo",
        "ooo_fin",
        "orphan",
        "persist_at",
        "persist_backoff",
        "raw_addrs",
        "rcv_adv",
        "rcv_buf",
        "rcv_calm",
        "rcv_loss",
        "rcv_mark_seq",
        "rcv_mark_time",
        "rcv_nxt",
        "rcv_paused",
        "rcv_queue",
        "rcv_queued",
        "rcv_wscale",
        "remote",
        "rexmit_high",
        "rport",
        "rto",
        "rtt_seq",
        "rtt_time",
        "rtx_at",
        "rtx_count",
        "sack_ok",
        "sacked",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "sndbuf",
        "state",
        "timer_at",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "user",
        "want_writable",
        "writable_low",
    )

    def __init__(self, layer: TCPLayer, local: IPAddress, lport: int, remote: IPAddress,
                 rport: int, iss: int, now: float) -> None:
        self.layer = layer
        self.local, self.lport, self.remote, self.rport = local, lport, remote, rport
        self.raw_addrs = (local.packed, remote.packed)  # for the IP layer, per segment
        self.fast_out: tuple[int, int, bool] | None = None  # tcp_fast.emit's constants
        self.state = CLOSED
        self.user: TCPUser | None = None
        self.listener: Listener | None = None
        self.iss = iss  # the wire ISS: the send side's base (relative ISS 0)
        self.snd_una = self.snd_nxt = self.snd_max = 0
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.sndbuf = SendBuffer(1)
        self.fin_queued = False
        self.irs = 0  # the wire IRS once the SYN is seen: the receive side's base
        self.rcv_nxt = self.rcv_adv = 0
        self.rcv_wscale = 0
        self.ooo: Assembler | None = None
        self.ooo_fin: int | None = None
        self.rcv_paused = False
        self.rcv_queue: list[bytes] | None = None
        self.rcv_queued = 0
        self.ack_now = False
        self.ack_pending = 0
        self.last_ack_sent = 0
        self.ts_ok = False
        self.ts_recent = 0
        self.ts_offset = layer.secrets.ts_offset(local, lport, remote, rport)
        self.sack_ok = False
        self.mss = layer.mss_for(remote)
        self.rto = RTOEstimator()
        self.cc = NewReno(self.mss, 0)
        self.rtt_seq: int | None = None
        self.rtt_time = 0.0
        self.rtx_count = 0
        self.rtx_at: float | None = None
        self.persist_at: float | None = None
        self.persist_backoff = 0
        self.delack_at: float | None = None
        self.keep_at: float | None = None
        self.keep_probes = 0
        self.linger_at: float | None = None
        self.timer_at: float | None = None
        self.heap_at: float | None = None
        self.last_rcv = now
        self.last_send = now  # the last data segment sent (restart after idle)
        self.nodelay = True
        self.keepalive = False
        self.want_writable = False
        self.writable_low = 0
        self.eof_pending = False
        self.orphan = False
        self.last_oow_ack = -1.0
        self.rcv_buf = RCV_BUF
        self.rcv_calm = 0
        self.sacked: list[list[int]] | None = None
        self.rexmit_high = 0
        self.rcv_loss = False
        self.rcv_mark_seq = 0
        self.rcv_mark_time = now

    def __repr__(self) -> str:
        return (f"<Connection {self.local}:{self.lport} <-> {self.remote}:{self.rport} "
                f"{STATE_NAMES[self.state]}>")

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    # ------------------------------------------------------------------ user API

    def open_active(self, now: float) -> None:
        """Active OPEN: send SYN, enter SYN-SENT."""
        self.state = SYN_SENT
        self.rtt_time = now
        self._send_syn(now, with_ack=False)
        self.rtx_at = now + self.rto.current()
        self._update_timer()

    def send(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """SEND call: queue ``data``; it goes out as window allows."""
        if self.fin_queued or self.state in (CLOSED, TIME_WAIT):
            return
        buf = self.sndbuf
        nxt = self.snd_nxt
        n = data.nbytes if data.__class__ is memoryview else len(data)  # bytes, not items
        if (self.state == ESTABLISHED and 0 < n <= self.mss and buf.end == nxt
                and self.persist_at is None and self.layer.fast.enabled):
            # one segment that fits the windows with nothing else unsent: what
            # _output_run does for it, without the run's loop (tcp_fast.py)
            cc = self.cc
            cwnd = cc.cwnd
            if 0 < cc.dupacks < 3 and not cc.in_recovery:
                cwnd += cc.dupacks * self.mss  # RFC 3042 limited transmit
            una = self.snd_una
            wnd = self.snd_wnd
            if n <= una + (wnd if wnd < cwnd else cwnd) - nxt and (
                    self.nodelay or nxt <= una or n == self.mss):
                # the segment is ``data`` itself (everything before it was
                # sent), and a single packet needs no cork
                if data.__class__ is bytes:
                    if buf._buf is None:  # SendBuffer.append to an empty buffer, inlined
                        buf._buf = data
                        buf.end = buf.start + n
                    else:
                        buf.append(data)
                    seg = data
                else:
                    buf.append(data)
                    seg = buf.view(nxt, n)
                if self.ooo is None:
                    # _emit of a segment that carries no SACK blocks, inlined,
                    # with _adv_window
                    rcv_buf = self.rcv_buf
                    space = rcv_buf - self.rcv_queued
                    rcv_nxt = self.rcv_nxt
                    adv = self.rcv_adv
                    cur = adv - rcv_nxt
                    if space < cur or (space - cur < self.mss and space < rcv_buf):
                        space = cur if cur > 0 else 0  # never shrink; receiver SWS avoidance
                    scale = self.rcv_wscale
                    field = space >> scale
                    if field > 0xFFFF:
                        field = 0xFFFF
                    edge = rcv_nxt + (field << scale)
                    if edge > adv:
                        self.rcv_adv = edge
                    self.last_ack_sent = rcv_nxt
                    self.ack_pending = 0
                    self.ack_now = False
                    self.delack_at = None
                    fast = self.layer.fast
                    stack = fast.stack
                    consts = self.fast_out
                    if (self.ts_ok and seg is data and consts is not None and consts[2]
                            and stack is not None and not stack._closed
                            and n + 52 <= stack.mtu):
                        # tcp_fast.emit of an IPv4 segment with the timestamp
                        # option and a bytes payload, inlined (the common
                        # response; the connection's constants are computed
                        # by its first emit): the same bytes, counters, IP
                        # ident and cork (tests/netstack/test_tcp_fastpath.py)
                        # to 32 bits only when over (a compare allocates
                        # nothing; an ``&`` with the two-digit MASK does)
                        ts_val = _floor(now * 1000.0) + self.ts_offset
                        if ts_val > MASK:
                            ts_val &= MASK
                        ts_ecr = self.ts_recent
                        seq = nxt + self.iss
                        if seq > MASK:
                            seq &= MASK
                        ack = rcv_nxt + self.irs
                        if ack > MASK:
                            ack &= MASK
                        if n > SPLIT_SUM_ABOVE:  # tcp_fast._payload_sum, inlined
                            h = n - ((n >> 2) << 1)
                            v = (_from_bytes(data[:h], "big") + _from_bytes(data[h:], "big")) \
                                % 0xFFFF
                        else:
                            v = _from_bytes(data, "big") % 0xFFFF
                        if n & 1:
                            v <<= 8
                        ident = stack._ident = (stack._ident + 1) & 0xFFFF
                        ttl = stack.ttl
                        local, remote = self.raw_addrs
                        fast.emits += 1  # tcp_segments_out and tx_packets (FastPath.fold)
                        packet = _O4TS_PACK(
                            0x45, 0, n + 52, ident, 0x4000, ttl, 6,
                            -(consts[1] + n + ident + (ttl << 8) + _IP4_TS_HDR_WORDS) % 0xFFFF,
                            local, remote, self.lport, self.rport, seq, ack, 0x80, ACK | PSH,
                            field,
                            -(consts[0] + n + seq + ack + field + v + ts_val + ts_ecr
                              + _TS_PSH_WORDS) % 0xFFFF,
                            0, _TS_WORD, ts_val, ts_ecr) + data
                        if stack._cork_depth:
                            stack._corked.append(packet)
                        else:  # as uncork() would; the device takes the destination
                            sender = stack.sender
                            if not (sender.sendPacket(packet, remote)
                                    if sender is stack._dst_sender else sender.sendPacket(packet)):
                                fast.counters["tx_refused"] += 1
                    else:
                        ts_val = (_floor(now * 1000.0) + self.ts_offset) & MASK if self.ts_ok \
                            else None
                        if not emit(fast, self, nxt, ACK | PSH, field, seg, ts_val,
                                    self.ts_recent):
                            self._emit_built(nxt, ACK | PSH, field, seg, ts_val)
                else:
                    self._emit(nxt, ACK | PSH, seg, now)
                if nxt == self.snd_max and self.rtt_seq is None:
                    self.rtt_seq, self.rtt_time = nxt + n, now
                nxt += n
                self.snd_nxt = nxt
                if nxt > self.snd_max:
                    self.snd_max = nxt
                t = self.rtx_at
                if t is None:
                    # nothing was in flight: restart after idle (congestion.py)
                    # here, after the segment, as the segment fitted either way
                    # (a restarted cwnd keeps min(IW, cwnd) >= n)
                    rto = self.rto
                    r = rto.rto
                    if now - self.last_send > r:
                        self._idle_restart(now)
                    t = self.rtx_at = now + (r if not rto.backoff else rto.current())
                self.last_send = now
                # _update_timer, inlined: the segment cleared the delayed ACK and
                # no persist timer runs (checked above), so of the five timers
                # only these three can be armed
                x = self.keep_at
                if x is not None and x < t:
                    t = x
                x = self.linger_at
                if x is not None and x < t:
                    t = x
                self.timer_at = t
                if self.heap_at is None or t < self.heap_at:
                    self.layer.schedule(self)
                return
        buf.append(data)
        if self.state in _SEND_STATES:
            self._output(now)
        self._update_timer()

    @property
    def send_queued(self) -> int:
        """Bytes buffered for sending (unacknowledged plus unsent)."""
        return len(self.sndbuf)

    def close(self, now: float) -> None:
        """CLOSE call (RFC 9293 3.10.4): FIN after all queued data."""
        st = self.state
        if self.fin_queued or st in (CLOSED, TIME_WAIT):
            return
        if st == SYN_SENT:
            self._terminate(None)
            return
        self.fin_queued = True
        if st == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif st == CLOSE_WAIT:
            self.state = LAST_ACK
        if self.state in _SEND_STATES:
            self._output(now)
        self._update_timer()

    def abort(self, now: float) -> None:
        """ABORT call: send RST (when synchronized) and delete the TCB."""
        if self.state in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._emit(self.snd_nxt, RST | ACK, b"", now)
        self.user = None
        self._terminate(None)

    def detach(self, now: float) -> None:
        """The user is gone (full close done): linger as an orphan."""
        self.user = None
        self.orphan = True
        if self.state == FIN_WAIT_2:
            self.linger_at = now + FIN_WAIT_2_TIMEOUT
            self._update_timer()

    # ------------------------------------------------------------------ passive open

    def open_passive(self, listener: Listener, seg: Segment, now: float) -> None:
        """A SYN arrived at a LISTEN port: enter SYN-RECEIVED, send SYN-ACK."""
        self.listener = listener
        self.state = SYN_RECEIVED
        self.rtt_time = now
        self._take_syn(seg, now)
        self.snd_wnd = seg.wnd
        self.snd_wl1, self.snd_wl2 = seg.seq, self.iss
        self._send_syn(now, with_ack=True)
        self.rtx_at = now + self.rto.current()
        self._update_timer()

    def open_from_cookie(self, listener: Listener, seg: Segment, mss: int,
                         wscale: int | None, sack_ok: bool, ts_ok: bool, now: float) -> None:
        """The ACK completing a SYN-cookie handshake: straight to ESTABLISHED."""
        self.listener = listener
        self.irs = (seg.seq - 1) & MASK
        self.rcv_nxt = self.rcv_adv = self.last_ack_sent = self.rcv_mark_seq = 1
        self.rcv_adv += min(self.rcv_buf, 0xFFFF)
        self.snd_una = self.snd_nxt = self.snd_max = 1
        self._set_options(mss, wscale, sack_ok, ts_ok, seg.ts_val)
        self.snd_wnd = seg.wnd << self.snd_wscale
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1, self.snd_wl2 = seg.seq, (self.iss + 1) & MASK
        self.state = ESTABLISHED

    def _take_syn(self, seg: Segment, now: float) -> None:
        self.irs = seg.seq
        self.rcv_nxt = self.last_ack_sent = 1
        self._set_options(seg.mss, seg.wscale, seg.sack_perm, seg.ts_val is not None, seg.ts_val)
        self.rcv_adv = self.rcv_nxt + min(self.rcv_buf, 0xFFFF)
        self.rcv_mark_seq = self.rcv_nxt

    def _set_options(self, peer_mss: int | None, wscale: int | None, sack_ok: bool,
                     ts_ok: bool, ts_val: int | None) -> None:
        if peer_mss is None:
            peer_mss = DEFAULT_MSS_V4 if self.remote.version == 4 else DEFAULT_MSS_V6
        mss = min(self.layer.mss_for(self.remote), max(peer_mss, 64))
        if wscale is not None:
            self.snd_wscale, self.rcv_wscale = wscale, RCV_WSCALE
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = sack_ok
        self.ts_ok = ts_ok
        if ts_ok:
            self.ts_recent = ts_val or 0
            mss -= TS_OPTION_LEN
        self.mss = mss
        self.cc.set_mss(mss)

    # ------------------------------------------------------------------ teardown

    def _terminate(self, reason: Exception | None) -> None:
        """Delete the TCB and tell the user (if still attached)."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.sndbuf = SendBuffer(self.snd_una)
        if self.ooo is not None:
            self.layer.ooo_bytes -= self.ooo.bytes
        self.ooo = None
        self.rcv_queue = None
        self.rtx_at = self.persist_at = self.delack_at = self.keep_at = self.linger_at = None
        self.timer_at = None
        self.layer.remove(self)
        user, self.user = self.user, None
        if user is not None:
            user.tcp_closed(reason)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self.rtx_at = self.persist_at = self.keep_at = None
        self.sndbuf = SendBuffer(self.snd_una)
        if self.ooo is not None:
            self.layer.ooo_bytes -= self.ooo.bytes
        self.ooo = None
        self.linger_at = now + TIME_WAIT_TIMEOUT
        self.layer.entered_time_wait(self)
