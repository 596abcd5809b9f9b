"""The sending half of a TCP connection: segment emission, the advertised
window, transmission under the congestion/peer windows (Nagle, SWS
avoidance, limited transmit), retransmission (RTO with Karn's rule, SACK hole
filling, zero-window probes) and the timer dispatch.  A method-only mixin of
:class:`~nbgateway.netstack.tcp_conn.Connection`, which holds the state."""

from __future__ import annotations

from math import floor as _floor
from typing import TYPE_CHECKING

from twisted.internet import error

from nbgateway.netstack.tcp_const import (
    _SEND_STATES,
    CLOSE_WAIT,
    CLOSED,
    DATA_RETRIES,
    ESTABLISHED,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    MASK,
    PERSIST_MAX,
    RCV_WSCALE,
    SYN_RECEIVED,
    SYN_RETRIES,
    SYN_SENT,
    _unwrap,
)
from nbgateway.netstack.tcp_fast import emit
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TS_OPTION_LEN,
    Segment,
    build_segment,
    sack_option,
    syn_options,
    ts_option,
)

if TYPE_CHECKING:
    pass


class ConnectionOutput:
    """Output and timer methods of a connection (no state of its own)."""

    __slots__ = ()

    # ------------------------------------------------------------------ output

    def ts_now(self, now: float) -> int:
        return (_floor(now * 1000.0) + self.ts_offset) & MASK

    def _adv_window(self) -> int:
        rcv_buf = self.rcv_buf
        space = rcv_buf - self.rcv_queued
        rcv_nxt = self.rcv_nxt
        adv = self.rcv_adv
        cur = adv - rcv_nxt
        if space < cur or (space - cur < self.mss and space < rcv_buf):
            space = cur if cur > 0 else 0  # never shrink; receiver SWS avoidance (3.8.6.2.2)
        scale = self.rcv_wscale
        field = space >> scale
        if field > 0xFFFF:
            field = 0xFFFF
        edge = rcv_nxt + (field << scale)
        if edge > adv:
            self.rcv_adv = edge
        return field

    def _emit(self, seq: int, flags: int, payload: bytes | memoryview, now: float) -> None:
        ts_ok = self.ts_ok
        sack = b""
        if flags & ACK:
            ooo = self.ooo
            if ooo and self.sack_ok:
                # SACK blocks must not push a data segment past the MSS budget
                room = (self.mss - len(payload) - 4) // 8
                n = min(room, 3 if ts_ok else 4)
                if n > 0:
                    sack = sack_option(ooo.sack_blocks(n), self.irs)
            wnd = self._adv_window()
            self.last_ack_sent = self.rcv_nxt
            self.ack_pending = 0
            self.ack_now = False
            self.delack_at = None
        else:
            wnd = 0 if flags & RST else self._adv_window()
        ts_val = None
        if ts_ok:  # ts_now, masked only when over 32 bits (tcp_fast.emit)
            t = _floor(now * 1000.0) + self.ts_offset
            ts_val = t & MASK if t > MASK else t
        if not sack and emit(self.layer.fast, self, seq, flags, wnd, payload, ts_val,
                             self.ts_recent):
            return  # the fused output (tcp_fast.py): the same packet in one pack
        self._emit_built(seq, flags, wnd, payload, ts_val, sack)

    def _emit_built(self, seq: int, flags: int, wnd: int, payload: bytes | memoryview,
                    ts_val: int | None, sack: bytes = b"") -> None:
        """The general output of a segment whose window field, timestamp and
        SACK option are decided: build the TCP header, hand it to the layer."""
        opts = ts_option(ts_val, self.ts_recent) if ts_val is not None else b""
        self.layer.output(self, build_segment(self.lport, self.rport, seq + self.iss,
                                              self.rcv_nxt + self.irs, flags, wnd, opts + sack,
                                              payload))

    def _send_syn(self, now: float, with_ack: bool) -> None:
        if with_ack:
            ts = (self.ts_now(now), self.ts_recent) if self.ts_ok else None
            opts = syn_options(self.layer.mss_for(self.remote),
                               RCV_WSCALE if self.rcv_wscale else None, self.sack_ok, ts)
            flags = SYN | ACK
        else:
            opts = syn_options(self.layer.mss_for(self.remote), RCV_WSCALE, True,
                               (self.ts_now(now), 0))
            flags = SYN
        self.layer.output(self, build_segment(self.lport, self.rport, self.iss,
                                              self.rcv_nxt + self.irs, flags,
                                              min(self.rcv_buf, 0xFFFF), opts))
        self.snd_nxt = 1
        if self.snd_max < self.snd_nxt:
            self.snd_max = self.snd_nxt
        self.ack_pending = 0
        self.delack_at = None

    def _send_ack(self, now: float) -> None:
        # A pure ACK carries SND.MAX, not SND.NXT: after a go-back-N retransmission
        # SND.NXT can lie below what the peer already received, and an ACK with
        # such a sequence number would be unacceptable to it (as BSD does).
        self._emit(self.snd_max, ACK, b"", now)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 challenge ACK, rate limited per layer."""
        if self.layer.challenge_allowed(now):
            self._send_ack(now)

    def _output(self, now: float) -> None:
        """Send what the windows allow, the FIN when due, or a pending ACK (as
        one batch: the stack is corked meanwhile)."""
        stack = self.layer.stack
        stack.cork()
        try:
            self._output_run(now)
        finally:
            stack.uncork()

    def _output_run(self, now: float) -> None:
        buf = self.sndbuf
        data_end = buf.end
        sent = False
        if self.persist_at is None:
            mss = self.mss
            while True:
                nxt = self.snd_nxt
                avail = data_end - nxt
                if avail <= 0:
                    break
                cwnd = self.cc.cwnd
                if 0 < self.cc.dupacks < 3 and not self.cc.in_recovery:
                    cwnd += self.cc.dupacks * mss  # RFC 3042 limited transmit
                # min(avail, mss, una + min(wnd, cwnd) - nxt) without min()
                # calls (about 400 instructions each per segment)
                wnd = self.snd_wnd
                room = self.snd_una + (wnd if wnd < cwnd else cwnd) - nxt
                n = avail if avail < mss else mss
                if room < n:
                    n = room
                if n <= 0:
                    break
                if n < mss:
                    if n < avail:
                        # sender SWS avoidance (RFC 9293 3.8.6.2.1)
                        if n < self.max_snd_wnd // 2 and nxt > self.snd_una:
                            break
                    elif not self.nodelay and nxt > self.snd_una and not self.fin_queued:
                        break  # Nagle (RFC 896 / 9293 3.7.4)
                flags = ACK | PSH if n == avail else ACK
                if n == avail and self.fin_queued:
                    flags |= FIN
                self._emit(nxt, flags, buf.view(nxt, n), now)
                if nxt == self.snd_max and self.rtt_seq is None:
                    self.rtt_seq, self.rtt_time = nxt + n, now
                nxt += n + (1 if flags & FIN else 0)
                self.snd_nxt = nxt
                if nxt > self.snd_max:
                    self.snd_max = nxt
                if self.rtx_at is None:
                    # the first segment of a flight: restart after idle when
                    # nothing was in flight, i.e. not the go-back-N resend of
                    # an RTO (rtx_count); after the segment, which fits the
                    # restarted window either way (min(IW, cwnd) >= n), the
                    # loop goes on with the restarted cwnd (congestion.py)
                    rto = self.rto
                    r = rto.rto
                    if now - self.last_send > r and not self.rtx_count:
                        self._idle_restart(now)
                    self.rtx_at = now + (r if not rto.backoff else rto.current())
                sent = True
            if sent:
                self.last_send = now  # data left (a FIN alone is not data)
            if self.fin_queued and self.snd_nxt == data_end:
                self._emit(data_end, FIN | ACK, b"", now)
                self.snd_nxt = data_end + 1
                if self.snd_nxt > self.snd_max:
                    self.snd_max = self.snd_nxt
                if self.rtx_at is None:
                    self.rtx_at = now + self.rto.current()
                sent = True
            if (not sent and self.snd_wnd == 0 and data_end > self.snd_nxt
                    and self.snd_nxt == self.snd_una and self.rtx_at is None):
                self.persist_backoff = 0
                self.persist_at = now + self.rto.current()
        if self.ack_now and not sent:
            self._send_ack(now)

    def _idle_restart(self, now: float) -> None:
        """Restart after idle (RFC 5681 4.1, Linux's tcp_cwnd_restart; see
        ``congestion.py``): called by the send paths when nothing is in
        flight and the last data segment left more than the base RTO ago (a
        cheap pre-check); the full RTO includes backoff.  The idle period is
        used up by the restart, so it is never applied twice (e.g. when the
        peer's window keeps the data back).  ``tcp_idle_restarts`` counts the
        restarts that shrank the window."""
        cc = self.cc
        cwnd = cc.cwnd
        if cc.restart_after_idle(now - self.last_send, self.rto.current()):
            self.last_send = now
            if cc.cwnd < cwnd:
                self.layer.counters["tcp_idle_restarts"] += 1

    def _retransmit_first(self, now: float) -> None:
        """Resend the first unacknowledged segment."""
        self.rexmit_high = self.snd_una
        self._retransmit_hole(now)

    def _retransmit_hole(self, now: float) -> bool:
        """Resend one segment: the first one at or above ``rexmit_high`` that
        the peer has not selectively acknowledged (RFC 6675-style hole
        filling during recovery; without SACK information this is the first
        unacknowledged segment, as in RFC 6582).  Returns False if no hole
        is left below the highest SACKed sequence number."""
        una = self.snd_una
        pos = max(una, self.rexmit_high)
        sacked = self.sacked
        limit = self.snd_max
        if sacked:
            for start, end in sacked:
                if pos < start:
                    limit = start
                    break
                pos = max(pos, end)
            else:
                if pos > una:
                    return False  # nothing un-SACKed below the highest SACK
        elif pos > una:
            return False
        buf = self.sndbuf
        n = min(self.mss, buf.end - pos, limit - pos)
        self.rtt_seq = None  # Karn
        if n > 0:
            flags = ACK
            if self.fin_queued and pos + n == buf.end and self.snd_max > buf.end:
                flags |= FIN
            self._emit(pos, flags, buf.view(pos, n), now)
            self.last_send = now
            self.rexmit_high = pos + n
            self.layer.counters["tcp_retransmitted_segments"] += 1
            return True
        if self.fin_queued and self.snd_max > pos and pos == buf.end:
            self._emit(pos, FIN | ACK, b"", now)
            self.rexmit_high = pos + 1
            return True
        return False

    def _sacked_bytes(self) -> int:
        return sum(end - start for start, end in self.sacked or ())

    def _update_sacked(self, seg: Segment, ack: int) -> bool:
        """Merge the segment's SACK blocks (RFC 2018) into the scoreboard;
        D-SACK and stale blocks are ignored.  Returns True if new data was
        reported as received."""
        new = False
        sacked = self.sacked or []
        for left, right in seg.sack_blocks:
            lo = _unwrap(left - self.iss, self.snd_una)
            hi = _unwrap(right - self.iss, self.snd_una)
            if not (ack < lo < hi <= self.snd_max):
                continue
            merged = [lo, hi]
            keep = []
            covered = False
            for blk in sacked:
                if blk[1] < lo or blk[0] > hi:
                    keep.append(blk)
                else:
                    if blk[0] <= lo and blk[1] >= hi:
                        covered = True
                    merged[0] = min(merged[0], blk[0])
                    merged[1] = max(merged[1], blk[1])
            if not covered:
                new = True
            keep.append(merged)
            keep.sort()
            sacked = keep[:16]
        self.sacked = sacked or None
        return new

    # ------------------------------------------------------------------ timers

    def _update_timer(self) -> None:
        t = self.rtx_at
        x = self.delack_at
        if x is not None and (t is None or x < t):
            t = x
        x = self.persist_at
        if x is not None and (t is None or x < t):
            t = x
        x = self.keep_at
        if x is not None and (t is None or x < t):
            t = x
        x = self.linger_at
        if x is not None and (t is None or x < t):
            t = x
        self.timer_at = t
        if t is not None and (self.heap_at is None or t < self.heap_at):
            self.layer.schedule(self)

    def on_timer(self, now: float) -> None:
        """Run whatever timers are due (called by the layer's heap)."""
        if self.state == CLOSED:
            return
        if self.linger_at is not None and now >= self.linger_at:
            self.linger_at = None
            self._terminate(None)
            return
        if self.rtx_at is not None and now >= self.rtx_at:
            self._on_rto(now)
            if self.state == CLOSED:
                return
        if self.persist_at is not None and now >= self.persist_at:
            self._on_persist(now)
        if self.delack_at is not None and now >= self.delack_at:
            self._send_ack(now)
        if self.keep_at is not None and now >= self.keep_at:
            self._on_keepalive(now)
            if self.state == CLOSED:
                return
        self._update_timer()

    def _on_rto(self, now: float) -> None:
        self.rtx_at = None
        st = self.state
        if self.snd_una >= self.snd_max and st not in (SYN_SENT, SYN_RECEIVED):
            return
        self.rtx_count += 1
        if self.rtx_count > (SYN_RETRIES if st in (SYN_SENT, SYN_RECEIVED) else DATA_RETRIES):
            self.layer.counters["tcp_timeouts"] += 1
            self._terminate(error.TCPTimedOutError() if st != SYN_RECEIVED or
                            self.listener is None else None)
            return
        self.layer.counters["tcp_rto"] += 1
        self.rto.on_timeout()
        self.rtt_seq = None  # Karn: never time a retransmitted segment
        if st == SYN_SENT:
            self._send_syn(now, with_ack=False)
        elif st == SYN_RECEIVED:
            self._send_syn(now, with_ack=True)
        else:
            self.cc.on_timeout(self.snd_max - self.snd_una, self.snd_max)
            self.snd_nxt = self.snd_una
            self.sacked = None  # RFC 2018 8: SACKed data may be reneged
            self.rexmit_high = self.snd_una
            self._output(now)
        if self.rtx_at is None:
            self.rtx_at = now + self.rto.current()

    def _on_persist(self, now: float) -> None:
        self.persist_at = None
        una = self.snd_una
        if self.snd_wnd > 0 or self.sndbuf.end <= una:
            self._output(now)
            return
        self.layer.counters["tcp_window_probes"] += 1
        # (no last_send: a probe byte says nothing about the path, and
        # Linux's zero-window probes carry no data, so the window closed
        # for longer than an RTO restarts when it opens)
        self._emit(una, ACK, self.sndbuf.view(una, 1), now)
        if self.snd_nxt < una + 1:
            self.snd_nxt = una + 1
        if self.snd_max < self.snd_nxt:
            self.snd_max = self.snd_nxt
        self.persist_backoff += 1
        self.persist_at = now + min(self.rto.current() * (1 << self.persist_backoff), PERSIST_MAX)

    def _on_keepalive(self, now: float) -> None:
        self.keep_at = None
        if not self.keepalive or self.state not in (ESTABLISHED, CLOSE_WAIT):
            return
        if self.keep_probes == 0 and now - self.last_rcv < KEEPALIVE_IDLE:
            self.keep_at = self.last_rcv + KEEPALIVE_IDLE
            return
        if self.snd_max > self.snd_una:
            self.keep_at = now + KEEPALIVE_IDLE  # the retransmission timer covers it
            return
        if self.keep_probes >= KEEPALIVE_COUNT:
            self.layer.counters["tcp_keepalive_timeouts"] += 1
            self._terminate(error.TCPTimedOutError())
            return
        self.keep_probes += 1
        self._emit(self.snd_una - 1, ACK, b"", now)
        self.keep_at = now + KEEPALIVE_INTERVAL

    def set_keepalive(self, on: bool, now: float) -> None:
        self.keepalive = on
        self.keep_probes = 0
        self.keep_at = self.last_rcv + KEEPALIVE_IDLE if on else None
        self._update_timer()

    def icmp_error(self, kind: str, mtu: int | None, now: float) -> None:
        """See :meth:`TCPLayer.icmp_error`."""
        if kind == "frag_needed" and mtu:
            overhead = (40 if self.remote.version == 4 else 60) + (
                TS_OPTION_LEN if self.ts_ok else 0)
            mss = max(mtu, 576 if self.remote.version == 4 else 1280) - overhead
            if mss < self.mss:
                self.mss = self.cc.mss = mss
                if self.state in _SEND_STATES and self.snd_max > self.snd_una:
                    self.snd_nxt = self.snd_una  # resend at the smaller size
                    self._output(now)
                    self._update_timer()
            return
        if self.state == SYN_SENT and kind in ("port_unreachable", "protocol_unreachable",
                                               "admin_prohibited", "host_unreachable",
                                               "net_unreachable"):
            reason: Exception = (error.ConnectionRefusedError() if kind == "port_unreachable"
                                 else error.NoRouteError(string=kind))
            self._terminate(reason)

