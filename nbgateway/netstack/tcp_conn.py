"""One TCP connection (the TCB of RFC 9293) as a sans-IO state machine.

The :class:`Connection` is fed parsed segments and ``now`` by
:class:`~nbgateway.netstack.tcp.TCPLayer` and emits segments through the layer.
It never touches the reactor: its timers (retransmission, persist, delayed ACK,
keepalive, TIME-WAIT/FIN-WAIT-2 linger) are deadlines summarised in
``timer_at``, which the layer keeps in one heap behind the stack's single
re-armed ``IDelayedCall``.

Sequence numbers inside the TCB are *unwrapped* Python ints (the wire value
plus multiples of 2**32), so comparisons are plain ``<``; incoming values are
unwrapped relative to SND.UNA / RCV.NXT, outgoing ones masked to 32 bits.

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet import error

from nbgateway.netstack.buffers import Assembler, SendBuffer
from nbgateway.netstack.congestion import NewReno, RTOEstimator
from nbgateway.netstack.tcp_const import (
    _SEND_STATES,
    _TEXT_STATES,
    ACK_EVERY,
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    DELACK_TIMEOUT,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    FIN_WAIT_2_TIMEOUT,
    HALF,
    LAST_ACK,
    MASK,
    OOW_ACK_INTERVAL,
    RCV_BUF,
    RCV_BUF_MAX,
    RCV_TUNE_CALM,
    RCV_WSCALE,
    STATE_NAMES,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    TIME_WAIT_TIMEOUT,
    _unwrap,
)
from nbgateway.netstack.tcp_output import ConnectionOutput
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TS_OPTION_LEN,
    Segment,
)

if TYPE_CHECKING:
    from nbgateway.netstack.checksum import IPAddress
    from nbgateway.netstack.tcp import Listener, TCPLayer



class TCPUser(Protocol):
    """What a connection reports to its user (the Twisted transport)."""

    def tcp_established(self) -> None: ...
    def tcp_data(self, data: bytes) -> None: ...
    def tcp_eof(self) -> None: ...
    def tcp_fin_acked(self) -> None: ...
    def tcp_writable(self) -> None: ...
    def tcp_closed(self, reason: Exception | None) -> None: ...


class Connection(ConnectionOutput):
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
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.sndbuf = SendBuffer(iss + 1)
        self.fin_queued = False
        self.irs = 0
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
        self.cc = NewReno(self.mss, iss)
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
        self.rexmit_high = iss
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
        n = len(data)
        if (self.state == ESTABLISHED and 0 < n <= self.mss and buf.end == nxt
                and self.persist_at is None and self.layer.fast.enabled):
            # one segment that fits the windows with nothing else unsent: what
            # _output_run does for it, without the run's loop (tcp_fast.py)
            cc = self.cc
            cwnd = cc.cwnd
            if 0 < cc.dupacks < 3 and not cc.in_recovery:
                cwnd += cc.dupacks * self.mss  # RFC 3042 limited transmit
            una = self.snd_una
            if n <= una + min(self.snd_wnd, cwnd) - nxt and (
                    self.nodelay or nxt <= una or n == self.mss):
                buf.append(data)
                stack = self.layer.stack
                stack.cork()
                try:
                    self._emit(nxt, ACK | PSH, buf.view(nxt, n), now)
                finally:
                    stack.uncork()
                if nxt == self.snd_max and self.rtt_seq is None:
                    self.rtt_seq, self.rtt_time = nxt + n, now
                nxt += n
                self.snd_nxt = nxt
                if nxt > self.snd_max:
                    self.snd_max = nxt
                if self.rtx_at is None:
                    self.rtx_at = now + self.rto.current()
                self._update_timer()
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

    def pause_reading(self) -> None:
        """Stop delivering data; the advertised window closes as it queues."""
        self.rcv_paused = True

    def resume_reading(self, now: float) -> None:
        """Deliver queued data and reopen the window (sending an update)."""
        self.rcv_paused = False
        self.flush_received(now)

    def flush_received(self, now: float) -> None:
        """Deliver data (and EOF) queued while paused or before accept."""
        while self.rcv_queue and not self.rcv_paused and self.user is not None:
            data = self.rcv_queue.pop(0)
            self.rcv_queued -= len(data)
            self.user.tcp_data(data)
        if self.rcv_queue:
            return
        self.rcv_queue = None
        self.rcv_queued = 0
        if self.eof_pending and self.user is not None and not self.rcv_paused:
            self.eof_pending = False
            self.user.tcp_eof()
        if self.state in (CLOSED, SYN_SENT, SYN_RECEIVED, TIME_WAIT):
            return
        old = self.rcv_adv - self.rcv_nxt
        if self.rcv_buf - old >= min(self.rcv_buf // 2, self.mss) and old < self.rcv_buf // 2:
            self._send_ack(now)
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
        self.rcv_nxt = self.rcv_adv = self.last_ack_sent = self.rcv_mark_seq = seg.seq
        self.rcv_adv += min(self.rcv_buf, 0xFFFF)
        self.snd_una = self.snd_nxt = self.snd_max = self.iss + 1
        self._set_options(mss, wscale, sack_ok, ts_ok, seg.ts_val)
        self.snd_wnd = seg.wnd << self.snd_wscale
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1, self.snd_wl2 = seg.seq, self.snd_una
        self.state = ESTABLISHED

    def _take_syn(self, seg: Segment, now: float) -> None:
        self.irs = seg.seq
        self.rcv_nxt = self.last_ack_sent = seg.seq + 1
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
        self.ooo = None
        self.linger_at = now + TIME_WAIT_TIMEOUT
        self.layer.entered_time_wait(self)

    # ------------------------------------------------------------------ input

    def segment_arrives(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7 SEGMENT ARRIVES for every state but LISTEN."""
        st = self.state
        if st == ESTABLISHED and self._fast_path(seg, now):
            return
        if st == SYN_SENT:
            self._syn_sent_input(seg, now)
        elif st != CLOSED:
            self._sync_input(seg, now)
        if self.state != CLOSED:
            self._update_timer()

    def _fast_path(self, seg: Segment, now: float) -> bool:
        """Header prediction for ESTABLISHED: the next in-order segment (data
        and/or a new cumulative ACK) with an unchanged window, no SYN, FIN, RST
        or URG, no SACK information in either direction, no recovery or
        window probing under way and a timestamp that passes PAWS.  Returns
        False (touching nothing) for anything else, which then takes the full
        RFC 9293 path; the outcome is the same either way."""
        if seg.flags & 0x27 or not seg.flags & ACK or seg.sack_blocks:
            return False  # SYN FIN RST URG, or no ACK
        return self.predicted(seg.seq, seg.ack, seg.wnd, seg.ts_val, seg.ts_ecr, seg.payload,
                              seg.segs, now)

    def predicted(self, seq: int, wire_ack: int, wnd: int, ts_val: int | None,
                  ts_ecr: int | None, payload: memoryview | bytes, segs: int,
                  now: float) -> bool:
        """The predicted-segment body of :meth:`_fast_path`, fed the header
        fields (wire values) of an ESTABLISHED connection's segment that
        carries ACK and no SYN/FIN/RST/URG/SACK (the caller checked the
        flags and options; the stack's fused path ``tcp_fast.py`` calls it
        without building a :class:`Segment`).  False: nothing was touched."""
        rcv_nxt = self.rcv_nxt
        if (seq != rcv_nxt & MASK or self.ooo is not None or self.sacked is not None
                or self.persist_at is not None or self.cc.in_recovery
                or wnd << self.snd_wscale != self.snd_wnd):
            return False
        if self.ts_ok and (ts_val is None or (ts_val - self.ts_recent) & HALF):
            return False
        una = self.snd_una
        ack = _unwrap(wire_ack, una)
        plen = len(payload)
        if ack < una or ack > self.snd_max:
            return False
        if plen:
            if plen > self.rcv_adv - rcv_nxt or self.orphan:
                return False
        elif ack == una:
            return False  # a pure duplicate ACK: counted on the full path
        self.last_rcv = now
        self.keep_probes = 0
        if self.ts_ok and self.last_ack_sent == rcv_nxt:
            self.ts_recent = ts_val  # RFC 7323 4.3
        self.snd_wl1, self.snd_wl2 = seq, wire_ack
        if ack > una:
            self._new_ack(ts_ecr, ack, now)  # may call the user, who may abort
        if plen and self.state != CLOSED:
            self._receive_text(rcv_nxt, payload, now, segs)
        if self.state != CLOSED:
            # an output run only when it has something to do: an ACK due now,
            # data the new ACK lets out, or a FIN (a request on a keep-alive
            # connection usually has none: its ACK waits for the response)
            end = self.sndbuf.end
            if self.ack_now or end > self.snd_nxt or (self.fin_queued and self.snd_nxt == end):
                self._output(now)
            self._update_timer()
        return True

    def _syn_sent_input(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = _unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._rst_reply(seg, now)
                return
        if flags & RST:
            if flags & ACK:
                self._terminate(error.ConnectionRefusedError())
            return
        if not flags & SYN:
            return
        self.last_rcv = now
        self._take_syn(seg, now)
        if flags & ACK:
            if self.rtx_count == 0 and not self.ts_ok:
                self.rto.sample(now - self.rtt_time)
            self._rtt_from_ts(seg, now)
            self.snd_una = ack
            self.snd_wnd = self.max_snd_wnd = seg.wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            self.rtx_at = None
            self.rtx_count = 0
            self._enter_established(now)
            if self.state == CLOSED:
                return
            self.ack_now = True
            self._output(now)
        else:
            # simultaneous open (RFC 9293 figure 7)
            self.state = SYN_RECEIVED
            self.snd_wnd = seg.wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, self.iss
            self._send_syn(now, with_ack=True)

    def _rtt_from_ts(self, seg: Segment, now: float) -> None:
        if self.ts_ok and seg.ts_ecr:
            d = (self.ts_now(now) - seg.ts_ecr) & MASK
            if d < 60_000:
                self.rto.sample(d / 1000.0)

    def _enter_established(self, now: float) -> None:
        self.state = ESTABLISHED
        if self.listener is not None:
            self.layer.passive_established(self)
        elif self.user is not None:
            self.user.tcp_established()
        if self.state == ESTABLISHED and self.fin_queued:
            self.state = FIN_WAIT_1

    def _rst_reply(self, seg: Segment, now: float) -> None:
        self.layer.send_rst_for(self.local, self.remote, seg)

    def _sync_input(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        payload = seg.payload
        rcv_nxt = self.rcv_nxt
        seq = _unwrap(seg.seq, rcv_nxt)
        st = self.state
        # PAWS (RFC 7323 5.3)
        if (self.ts_ok and seg.ts_val is not None and not flags & RST and self.ts_recent
                and (seg.ts_val - self.ts_recent) & HALF and (payload or flags & (SYN | FIN))):
            # (reordered pure ACKs are exempt, as in Linux's tcp_disordered_ack)
            self.layer.counters["tcp_paws_drops"] += 1
            if now - self.last_oow_ack >= OOW_ACK_INTERVAL:
                self.last_oow_ack = now
                self._send_ack(now)
            return
        # 1. sequence number acceptability
        plen = len(payload)
        seglen = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if seglen == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            ok = seq == rcv_nxt and not flags & SYN
            if ok:  # RFC 9293: still process ACK/RST of a segment at a zero window
                payload = payload[:0]
                flags &= ~FIN
                plen = 0
                self.ack_now = True
        else:
            last = seq + seglen - 1
            ok = (rcv_nxt <= seq < rcv_nxt + wnd) or (rcv_nxt <= last < rcv_nxt + wnd)
        if not ok:
            if st == SYN_RECEIVED and flags & SYN and not flags & ACK and seq == rcv_nxt - 1:
                self._send_syn(now, with_ack=True)  # the peer missed our SYN-ACK
                return
            if not flags & RST:
                self.layer.counters["tcp_out_of_window"] += 1
                if seglen or now - self.last_oow_ack >= OOW_ACK_INTERVAL:
                    # pure ACKs get at most one reply per interval: no ACK wars
                    self.last_oow_ack = now
                    self._send_ack(now)
            return
        self.last_rcv = now
        self.keep_probes = 0
        # 2. RST (RFC 5961 3.2)
        if flags & RST:
            if st == TIME_WAIT:
                return  # RFC 1337
            if seq != rcv_nxt:
                self.layer.counters["tcp_challenge_acks"] += 1
                self._challenge_ack(now)
                return
            self.layer.counters["tcp_rst_received"] += 1
            if st == SYN_RECEIVED and self.listener is not None:
                self._terminate(None)  # back to LISTEN
            elif st == SYN_RECEIVED:
                self._terminate(error.ConnectionRefusedError())
            elif st in (CLOSING, LAST_ACK):
                self._terminate(None)
            else:
                self._terminate(error.ConnectionLost("Connection reset by peer"))
            return
        # 4. SYN in a synchronized state (RFC 5961 4.2)
        if flags & SYN:
            self.layer.counters["tcp_challenge_acks"] += 1
            self._challenge_ack(now)
            return
        # 5. ACK
        if not flags & ACK:
            return
        # trim to the window (payload before RCV.NXT, beyond the right edge)
        if seq < rcv_nxt:
            skip = rcv_nxt - seq
            payload = payload[skip:]
            plen = len(payload)
            seq = rcv_nxt
        if plen and seq + plen > rcv_nxt + wnd:
            payload = payload[: rcv_nxt + wnd - seq]
            plen = len(payload)
            flags &= ~FIN
        if self.ts_ok and seg.ts_val is not None and seq <= self.last_ack_sent:
            self.ts_recent = seg.ts_val  # RFC 7323 4.3
        if not self._process_ack(seg, flags, plen, now):
            return
        if self.state == CLOSED:
            return
        # 7. segment text
        # (after the peer's FIN, text is ignored: RFC 9293 3.10.7.4 seventh)
        if plen and self.state in _TEXT_STATES:
            if self.orphan:
                self.layer.counters["tcp_data_after_close"] += 1
                self.abort(now)
                return
            self._receive_text(seq, payload, now, seg.segs)
            if self.state == CLOSED:
                return
        # 8. FIN
        if flags & FIN:
            fin_seq = seq + plen
            if fin_seq == self.rcv_nxt:
                self._fin_received(now)
            elif fin_seq > self.rcv_nxt:
                self.ooo_fin = fin_seq
        if self.state != CLOSED and self.state != TIME_WAIT and \
                (self.state in _SEND_STATES or self.ack_now):
            self._output(now)

    def _process_ack(self, seg: Segment, flags: int, plen: int, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth check; returns False when the segment is done."""
        ack = _unwrap(seg.ack, self.snd_una)
        st = self.state
        if st == SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self.layer.send_rst_for(self.local, self.remote, seg)
                return False
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            self.rtx_at = None
            if self.rtx_count == 0 and not self.ts_ok:
                self.rto.sample(now - self.rtt_time)
            self.rtx_count = 0
            self._rtt_from_ts(seg, now)
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            self._enter_established(now)
            return self.state != CLOSED
        if ack > self.snd_max:
            self._send_ack(now)  # acks something not yet sent
            return False
        if ack < self.snd_una - self.max_snd_wnd:
            self.layer.counters["tcp_challenge_acks"] += 1
            self._challenge_ack(now)  # RFC 5961 5.2
            return False
        una = self.snd_una
        wnd = seg.wnd << self.snd_wscale
        new_sack = False
        if seg.sack_blocks and self.sack_ok:
            new_sack = self._update_sacked(seg, ack)
        if ack > una:
            self._new_ack(seg.ts_ecr, ack, now)
        elif (ack == una and self.snd_max > una and self.persist_at is None and (
                new_sack or (plen == 0 and not flags & FIN and wnd == self.snd_wnd
                             and not seg.sack_blocks))):
            # RFC 6675: an ACK with new SACK information counts as a duplicate
            # (whatever its window); one whose only news is a D-SACK does not.
            self.layer.counters["tcp_dupacks"] += 1
            mss = self.mss
            flight = self.snd_max - una
            thresh = 3
            if self.sndbuf.end <= self.snd_max and flight < 4 * mss:
                thresh = max(1, -(-flight // mss) - 1)  # RFC 5827 early retransmit
            sack_lost = self.sacked is not None and self._sacked_bytes() >= 3 * mss
            if self.cc.on_dupack(una, self.snd_max, flight, thresh, sack_lost):
                self.layer.counters["tcp_fast_retransmits"] += 1
                self._retransmit_first(now)
                self.rtx_at = now + self.rto.current()
            elif self.cc.in_recovery and self.sacked:
                self._retransmit_hole(now)
        # window update (RFC 9293 3.10.7.4)
        seq = seg.seq
        wl1 = self.snd_wl1
        if ((seq - wl1) & MASK and not (seq - wl1) & HALF) or \
                (seq == wl1 and not (ack - self.snd_wl2) & HALF):
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seq, ack & MASK
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.persist_at is not None:
                self.persist_at = None
                self.snd_nxt = self.snd_una
        st = self.state
        if self.fin_queued and self.snd_una == self.sndbuf.end + 1:
            # our FIN is acknowledged
            if st == FIN_WAIT_1:
                self.state = FIN_WAIT_2
                if self.user is None:
                    self.linger_at = now + FIN_WAIT_2_TIMEOUT
                else:
                    self.user.tcp_fin_acked()
            elif st == CLOSING:
                self._enter_time_wait(now)
                if self.user is not None:
                    self.user.tcp_fin_acked()
                return False
            elif st == LAST_ACK:
                if self.user is not None:
                    self.user.tcp_fin_acked()
                self._terminate(None)
                return False
        if self.state == TIME_WAIT:
            if flags & FIN:
                self._send_ack(now)
                self.linger_at = now + TIME_WAIT_TIMEOUT
            return False
        return True

    def _new_ack(self, ts_ecr: int | None, ack: int, now: float) -> None:
        una = self.snd_una
        acked = ack - una
        flight = self.snd_max - una
        if self.ts_ok:
            if ts_ecr:  # as _rtt_from_ts
                d = (self.ts_now(now) - ts_ecr) & MASK
                if d < 60_000:
                    self.rto.sample(d / 1000.0)
        elif self.rtt_seq is not None and ack >= self.rtt_seq:
            self.rto.sample(now - self.rtt_time)
            self.rtt_seq = None
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self.sndbuf.consume_to(ack)
        self.rtx_count = 0
        sacked = self.sacked
        if sacked:
            while sacked and sacked[0][1] <= ack:
                del sacked[0]
            if not sacked:
                self.sacked = None
        partial = self.cc.on_ack(acked, ack, flight)
        if partial:
            self._retransmit_hole(now)
        if ack >= self.snd_max:
            self.rtx_at = None
        elif self.persist_at is None:
            self.rtx_at = now + self.rto.current()
        if self.want_writable and len(self.sndbuf) <= self.writable_low and self.user:
            self.want_writable = False
            self.user.tcp_writable()

    def _receive_text(self, seq: int, payload: memoryview | bytes, now: float,
                      segs: int = 1) -> None:
        """Accept ``payload`` at ``seq`` (inside the window); ``segs``: how many
        segments it stands for (coalesced runs), counted toward the ACK policy."""
        rcv_nxt = self.rcv_nxt
        if seq == rcv_nxt:
            rcv_nxt += len(payload)
            self.rcv_nxt = rcv_nxt
            chunks = [bytes(payload)]
            ooo = self.ooo
            if ooo:
                while True:
                    more = ooo.pop_at(rcv_nxt)
                    if more is None:
                        break
                    chunks.append(more)
                    rcv_nxt += len(more)
                self.rcv_nxt = rcv_nxt
                self.ack_now = True  # a hole was (partly) filled: ACK at once
                if not ooo:
                    self.ooo = None
            if now - self.rcv_mark_time >= self._tune_interval():
                self._tune_window(now)
            self.ack_pending += segs
            if self.ack_pending >= ACK_EVERY:
                self.ack_now = True
            elif self.ack_pending >= 2:
                # RFC 5681 4.2 asks for an ACK per two full segments; it is
                # sent at the end of this reactor turn (deadline "now"), so a
                # burst of segments read in one go is answered by one ACK.
                self.delack_at = now
            elif self.delack_at is None:
                self.delack_at = now + DELACK_TIMEOUT
            for data in chunks:
                self._deliver(data)
                if self.state == CLOSED:
                    return
            if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
                self.ooo_fin = None
                self._fin_received(now)
        else:
            if self.ooo is None:
                self.ooo = Assembler()
            self.rcv_loss = True
            if not self.ooo.add(seq, bytes(payload)):
                self.layer.counters["tcp_ooo_drops"] += 1
            else:
                self.layer.counters["tcp_ooo_segments"] += 1
            self.ack_now = True  # RFC 5681 4.2: immediate duplicate ACK

    def _tune_interval(self) -> float:
        srtt = self.rto.srtt
        return 0.02 if srtt is None else max(srtt, 0.01)

    def _tune_window(self, now: float) -> None:
        """Receive window autotuning, once per RTT (at least 10 ms): while the
        application keeps up, no segment arrived out of order and the window
        was nearly filled for RCV_TUNE_CALM intervals, grow it by a quarter (up to
        RCV_BUF_MAX); after an interval with out-of-order arrivals (loss, e.g.
        a full UDP socket buffer below us) halve it (down to RCV_BUF).
        Shrinking only stops extending the right edge; it never retracts it."""
        rcv_nxt = self.rcv_nxt
        if self.rcv_loss:
            self.rcv_buf = max(RCV_BUF, self.rcv_buf // 2)
            self.rcv_calm = 0
        elif ((rcv_nxt - self.rcv_mark_seq) * 4 >= self.rcv_buf * 3
              and self.rcv_buf < RCV_BUF_MAX and not self.rcv_paused and not self.rcv_queue):
            self.rcv_calm += 1
            if self.rcv_calm >= RCV_TUNE_CALM:
                self.rcv_buf = min(self.rcv_buf * 5 // 4, RCV_BUF_MAX)
        self.rcv_loss = False
        self.rcv_mark_seq = rcv_nxt
        self.rcv_mark_time = now

    def _deliver(self, data: bytes) -> None:
        if self.rcv_paused or self.rcv_queue or self.user is None:
            if self.rcv_queue is None:
                self.rcv_queue = []
            self.rcv_queue.append(data)
            self.rcv_queued += len(data)
        elif self.user is not None:
            self.user.tcp_data(data)

    def _fin_received(self, now: float) -> None:
        self.rcv_nxt += 1
        self.ack_now = True
        st = self.state
        if st in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif st == FIN_WAIT_1:
            self.state = CLOSING
        elif st == FIN_WAIT_2:
            self._send_ack(now)
            self._enter_time_wait(now)
        if self.user is None or self.rcv_queue or self.rcv_paused:
            self.eof_pending = True  # reported after the queued data (resume_reading)
        else:
            self.user.tcp_eof()
