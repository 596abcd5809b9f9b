"""The receiving half of a TCP connection: accepting in-window text (in order
at once, out of order into the bounded
:class:`~nbgateway.netstack.buffers.Assembler`), the delayed-ACK policy,
receive window autotuning, delivery to the user or to the queue kept while it
is paused (``pause_reading``/``resume_reading``/``flush_received``), and the
peer's FIN.  A method-only mixin of
:class:`~nbgateway.netstack.tcp_conn.Connection`, which holds the state."""

from __future__ import annotations

from nbgateway.netstack.buffers import Assembler
from nbgateway.netstack.tcp_const import (
    ACK_EVERY,
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    DELACK_TIMEOUT,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    RCV_BUF,
    RCV_BUF_MAX,
    RCV_TUNE_CALM,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
)


class ConnectionReceive:
    """Receive-side methods of a connection (no state of its own)."""

    __slots__ = ()

    # ------------------------------------------------------------------ user API (reading)

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

    # ------------------------------------------------------------------ text and FIN

    def _receive_text(self, seq: int, payload: memoryview | bytes, now: float,
                      segs: int = 1) -> None:
        """Accept ``payload`` at ``seq`` (inside the window); ``segs``: how many
        segments it stands for (coalesced runs), counted toward the ACK policy."""
        rcv_nxt = self.rcv_nxt
        if seq == rcv_nxt:
            rcv_nxt += len(payload)
            self.rcv_nxt = rcv_nxt
            ptype = type(payload)  # a view: tobytes(), cheaper than a bytes() call
            chunks = [payload if ptype is bytes else payload.tobytes() if ptype is memoryview
                      else bytes(payload)]
            ooo = self.ooo
            if ooo:
                held = ooo.bytes
                while True:
                    more = ooo.pop_at(rcv_nxt)
                    if more is None:
                        break
                    chunks.append(more)
                    rcv_nxt += len(more)
                self.layer.ooo_bytes -= held - ooo.bytes
                self.rcv_nxt = rcv_nxt
                self.ack_now = True  # a hole was (partly) filled: ACK at once
                if not ooo:
                    self.ooo = None
            srtt = self.rto.srtt  # _tune_interval, inlined
            if now - self.rcv_mark_time >= (
                    0.02 if srtt is None else srtt if srtt > 0.01 else 0.01):
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
            user = self.user
            if len(chunks) == 1 and user is not None and not self.rcv_paused \
                    and not self.rcv_queue:
                user.tcp_data(chunks[0])  # _deliver's common case
                if self.state == CLOSED:
                    return
            else:
                for data in chunks:
                    self._deliver(data)
                    if self.state == CLOSED:
                        return
            if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
                self.ooo_fin = None
                self._fin_received(now)
        else:
            layer = self.layer
            self.rcv_loss = True
            self.ack_now = True  # RFC 5681 4.2: immediate duplicate ACK
            if layer.ooo_bytes + len(payload) > layer.max_ooo_bytes:
                # the stack's out-of-order bytes are at their bound: the peer
                # retransmits this segment after the hole is filled
                layer.counters["tcp_ooo_budget_drops"] += 1
                return
            ooo = self.ooo
            if ooo is None:
                ooo = self.ooo = Assembler()
            held = ooo.bytes
            if not ooo.add(seq, bytes(payload)):
                layer.counters["tcp_ooo_drops"] += 1
            else:
                layer.ooo_bytes += ooo.bytes - held
                layer.counters["tcp_ooo_segments"] += 1

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
