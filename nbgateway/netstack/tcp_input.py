"""The segment-arrival half of a TCP connection: RFC 9293 3.10.7 SEGMENT
ARRIVES for every state but LISTEN -- header prediction for ESTABLISHED
(``predicted``, which the fused input of ``tcp_fast.py`` also calls), SYN-SENT
processing, the acceptability, RST and SYN checks of a synchronized state (PAWS,
RFC 5961 challenge ACKs), and ACK processing (RTT samples, duplicate ACKs and
fast retransmit, the send window update, our FIN acknowledged).  A method-only
mixin of :class:`~nbgateway.netstack.tcp_conn.Connection`, which holds the
state; accepted text goes on to ``tcp_receive.py``, replies to ``tcp_output.py``."""

from __future__ import annotations

from math import floor as _floor

from twisted.internet import error

from nbgateway.netstack.congestion import CLOCK_G, RTO_MAX, RTO_MIN
from nbgateway.netstack.tcp_const import (
    _SEND_STATES,
    _TEXT_STATES,
    ACK_EVERY,
    CLOSED,
    CLOSING,
    DELACK_TIMEOUT,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    FIN_WAIT_2_TIMEOUT,
    HALF,
    LAST_ACK,
    MASK,
    OOW_ACK_INTERVAL,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    TIME_WAIT_TIMEOUT,
    WRAP,
    _unwrap,
)
from nbgateway.netstack.tcp_wire import (
    ACK,
    FIN,
    RST,
    SYN,
    Segment,
)


class ConnectionInput:
    """Segment-arrival methods of a connection (no state of its own)."""

    __slots__ = ()

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
        # relative to IRS: the plain difference is RCV.NXT unless the wire
        # value wrapped (then only the residue can tell)
        x = seq - self.irs
        if ((x != rcv_nxt and (x - rcv_nxt) & MASK) or self.ooo is not None
                or self.sacked is not None or self.persist_at is not None
                or self.cc.in_recovery or wnd << self.snd_wscale != self.snd_wnd):
            return False
        if self.ts_ok and (ts_val is None or (ts_val - self.ts_recent) & HALF):
            return False
        una = self.snd_una
        snd_max = self.snd_max
        # relative to ISS: a plain difference in [SND.UNA, SND.MAX] is the
        # unwrapped value (the two are less than 2**31 apart); anything else
        # is unwrapped around SND.UNA (_unwrap) and checked again
        ack = wire_ack - self.iss
        if ack < una or ack > snd_max:
            d = (ack - una) & MASK
            ack = una + d - WRAP if d & HALF else una + d
            if ack < una or ack > snd_max:
                return False
        plen = len(payload)
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
            # _new_ack for a predicted segment (no SACK state, no recovery, no
            # persist timer: checked above), inlined: once per exchange
            rto = self.rto
            if self.ts_ok:
                if ts_ecr:  # as _rtt_from_ts
                    d = (_floor(now * 1000.0) + self.ts_offset) - ts_ecr  # ts_now
                    if d < 0 or d >= 60_000:
                        d &= MASK
                    if d < 60_000:
                        # RTOEstimator.sample(d / 1000), inlined (RFC 6298 2.2-2.3)
                        r = d / 1000.0
                        srtt = rto.srtt
                        if srtt is None:
                            srtt = rto.srtt = r
                            rttvar = rto.rttvar = r / 2
                        else:
                            err = srtt - r
                            rttvar = rto.rttvar = 0.75 * rto.rttvar + 0.25 * (
                                err if err >= 0.0 else -err)
                            srtt = rto.srtt = 0.875 * srtt + 0.125 * r
                        k = 4.0 * rttvar
                        r = srtt + (k if k > CLOCK_G else CLOCK_G)
                        rto.rto = RTO_MIN if r < RTO_MIN else RTO_MAX if r > RTO_MAX else r
                        rto.backoff = 0
            elif self.rtt_seq is not None and ack >= self.rtt_seq:
                rto.sample(now - self.rtt_time)
                self.rtt_seq = None
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            buf = self.sndbuf
            end = buf.end
            if ack >= end:
                # SendBuffer.consume_to of everything (the common case)
                if end > buf.start:
                    buf.start = end
                    buf._buf = None
                    buf._head = 0
            else:
                buf.consume_to(ack)
            self.rtx_count = 0
            # NewReno.on_ack outside recovery (growth only when cwnd-limited)
            cc = self.cc
            cc.dupacks = 0
            flight = snd_max - una
            if una >= cc.used_end:
                used = cc.used = flight
                cc.used_end = snd_max
            else:
                used = cc.used
                if flight > used:
                    used = cc.used = flight
                    cc.used_end = snd_max
            cwnd = cc.cwnd
            if cwnd < cc.ssthresh:
                if cwnd < 2 * used:
                    acked = ack - una
                    mss = cc.mss
                    cc.cwnd = cwnd + (acked if acked < 2 * mss else 2 * mss)
            elif used + cc.mss > cwnd:
                mss = cc.mss
                inc = mss * mss // cwnd
                cc.cwnd = cwnd + (inc if inc > 1 else 1)
            if ack >= snd_max:
                self.rtx_at = None
            else:
                self.rtx_at = now + (rto.rto if not rto.backoff else rto.current())
            if self.want_writable and self.user and buf.end - buf.start <= self.writable_low:
                self.want_writable = False
                self.user.tcp_writable()  # may abort
        if plen and self.state != CLOSED:
            # _receive_text for the in-order segment with nothing out of order
            # (checked above), inlined
            rcv_nxt += plen
            self.rcv_nxt = rcv_nxt
            # the fused input's bytes as they are; a view (the general path,
            # IPv6) copied by tobytes(), a third of a bytes() call's time
            ptype = type(payload)
            data = payload if ptype is bytes else payload.tobytes() if ptype is memoryview \
                else bytes(payload)
            srtt = self.rto.srtt  # _tune_interval, inlined
            if now - self.rcv_mark_time >= (
                    0.02 if srtt is None else srtt if srtt > 0.01 else 0.01):
                self._tune_window(now)
            pending = self.ack_pending + segs
            self.ack_pending = pending
            if pending >= ACK_EVERY:
                self.ack_now = True
            elif pending >= 2:
                self.delack_at = now  # RFC 5681 4.2, at the end of this turn
            elif self.delack_at is None:
                self.delack_at = now + DELACK_TIMEOUT
            user = self.user
            if user is not None and not self.rcv_paused and not self.rcv_queue:
                user.tcp_data(data)  # _deliver's common case
            else:
                self._deliver(data)
            if self.state == CLOSED:
                return True
            if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
                self.ooo_fin = None
                self._fin_received(now)
        if self.state != CLOSED:
            # an output run only when it has something to do: an ACK due now,
            # data the new ACK lets out, or a FIN (a request on a keep-alive
            # connection usually has none: its ACK waits for the response)
            end = self.sndbuf.end
            if self.ack_now or end > self.snd_nxt or (self.fin_queued and self.snd_nxt == end):
                self._output(now)
            # _update_timer, inlined
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
        return True

    def _syn_sent_input(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = _unwrap(seg.ack - self.iss, self.snd_una)
            if ack <= 0 or ack > self.snd_max:
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
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
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
        self.last_send = now  # as Linux: no restart after idle on the first data
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
        seq = _unwrap(seg.seq - self.irs, rcv_nxt)
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
        ack = _unwrap(seg.ack - self.iss, self.snd_una)
        st = self.state
        if st == SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self.layer.send_rst_for(self.local, self.remote, seg)
                return False
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
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
                (seq == wl1 and not (seg.ack - self.snd_wl2) & HALF):
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seq, seg.ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.persist_at is not None:
                self.persist_at = None
                self.snd_nxt = self.snd_una
                if now - self.last_send > self.rto.rto:
                    # the window reopens with data queued and only a probe
                    # byte out: Linux's restart check on a window update
                    self._idle_restart(now)
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
        rto = self.rto
        if self.ts_ok:
            if ts_ecr:  # as _rtt_from_ts
                d = ((_floor(now * 1000.0) + self.ts_offset) - ts_ecr) & MASK  # ts_now
                if d < 60_000:
                    rto.sample(d / 1000.0)
        elif self.rtt_seq is not None and ack >= self.rtt_seq:
            rto.sample(now - self.rtt_time)
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
        cc = self.cc
        if cc.in_recovery:
            if cc.on_ack(acked, ack, flight):  # a partial ACK
                self._retransmit_hole(now)
        else:
            # NewReno.on_ack outside recovery (inlined: once per ACK; growth
            # only when cwnd-limited, see congestion.py)
            cc.dupacks = 0
            if una >= cc.used_end:
                used = cc.used = flight
                cc.used_end = una + flight  # SND.MAX
            else:
                used = cc.used
                if flight > used:
                    used = cc.used = flight
                    cc.used_end = una + flight
            cwnd = cc.cwnd
            mss = cc.mss
            if cwnd < cc.ssthresh:
                if cwnd < 2 * used:
                    cc.cwnd = cwnd + (acked if acked < 2 * mss else 2 * mss)
            elif used + mss > cwnd:
                inc = mss * mss // cwnd
                cc.cwnd = cwnd + (inc if inc > 1 else 1)
        if ack >= self.snd_max:
            self.rtx_at = None
        elif self.persist_at is None:
            self.rtx_at = now + (rto.rto if not rto.backoff else rto.current())
        if self.want_writable and self.user and \
                self.sndbuf.end - self.sndbuf.start <= self.writable_low:
            self.want_writable = False
            self.user.tcp_writable()
