"""Retransmission timer and congestion control for one TCP connection.

* :class:`RTOEstimator` — RFC 6298: SRTT/RTTVAR with alpha=1/8, beta=1/4,
  K=4, initial RTO 1 s, exponential backoff capped at ``RTO_MAX``.  Deviation
  (documented, as Linux does): ``RTO_MIN`` is 200 ms instead of the RFC's
  SHOULD of 1 s, since tunnel RTTs are milliseconds.  Karn's rule is applied by
  the caller, which only feeds samples from segments that were never
  retransmitted (or from timestamp echoes, RFC 7323 4.1).
* :class:`NewReno` — RFC 5681 slow start and congestion avoidance (with
  appropriate byte counting, L=2*SMSS, RFC 3465) and RFC 6582 NewReno fast
  recovery; initial window per RFC 6928.

Window growth only while the window is used (RFC 7661 section 4: the
sender does not increase cwnd while it is not validated, i.e. while the
flow is not using it).  Outside recovery an ACK of new data grows ``cwnd``
only when the flow was *cwnd-limited* over the last round trip, measured
as ``used``: the highest flight (SND.MAX - SND.UNA) seen just before an ACK
since ``used_end``, the SND.MAX of the ACK that started the measurement.
Flight only rises by sending and only falls by ACKs, so its highest value
over a round trip is always seen just before some ACK; taking the highest
over the round trip rather than this ACK's flight keeps growth right when
a batch of ACKs is handled before the sender refills the window.  The
round trip ends with the ACK that covers ``used_end`` (still measured in
it); the next ACK (SND.UNA at or beyond ``used_end`` before it) starts a
new one from its own flight.  A flight higher than ``used`` also moves
``used_end`` to the current SND.MAX (the round trip of that flight).

* slow start (cwnd < ssthresh): grow when ``cwnd < 2 * used`` -- Linux's
  tcp_is_cwnd_limited rule: the flight may double per round trip, so a flow
  using more than half the window fills it in the next one; it also bounds
  cwnd to about twice the highest flight used.
* congestion avoidance: grow when ``used + SMSS > cwnd``, i.e. the window
  was full to within less than one segment (the sender could not send
  another full-sized segment), Linux's "packets_out >= cwnd" in bytes.

So a keep-alive connection of responses smaller than half the initial
window keeps cwnd at the initial window, and a later bulk response goes
out in flights of at most cwnd, never the peer's whole receive window.
Recovery (RFC 6582) is unchanged: the rule only gates the two increases.

Restart after idle (RFC 5681 section 4.1; Linux's tcp_cwnd_restart with
net.ipv4.tcp_slow_start_after_idle=1, its default): a window that has not
been used for longer than an RTO says nothing about the path any more, so
when a connection with nothing in flight is about to send again more than
one RTO after its last data segment, :meth:`NewReno.restart_after_idle`
halves ``cwnd`` once per RTO of idle time beyond the first, not below the
restart window RW = min(IW, cwnd), and first raises ``ssthresh`` to at
least 3/4 of the old ``cwnd`` (outside recovery), so slow start climbs
quickly back towards the old operating point.  The caller (the connection's
send paths) measures idle time from the last data segment sent, as Linux
does (``lsndtime``): an arriving request does not reset it, which is what
makes the rule apply to a keep-alive server at all (RFC 5681 4.1 notes that
timing from the last received segment fails for persistent HTTP).  RFC 7661
would let a sender that implements all of it (pipeACK, its loss response and
the non-validated period) keep the window through idle periods of up to
five minutes instead; only its growth rule is implemented here, as in Linux.
"""

from __future__ import annotations

RTO_INITIAL = 1.0
RTO_MIN = 0.2
RTO_MAX = 60.0
CLOCK_G = 0.001  # clock granularity G in RFC 6298 2.2


class RTOEstimator:
    __slots__ = ("backoff", "rto", "rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.backoff = 0

    def sample(self, r: float) -> None:
        """Feed one RTT measurement R (seconds)."""
        if r < 0.0:
            r = 0.0
        srtt = self.srtt
        if srtt is None:
            srtt = self.srtt = r
            rttvar = self.rttvar = r / 2
        else:
            err = srtt - r
            rttvar = self.rttvar = 0.75 * self.rttvar + 0.25 * (err if err >= 0.0 else -err)
            srtt = self.srtt = 0.875 * srtt + 0.125 * r
        k = 4.0 * rttvar
        rto = srtt + (k if k > CLOCK_G else CLOCK_G)
        self.rto = RTO_MIN if rto < RTO_MIN else RTO_MAX if rto > RTO_MAX else rto
        self.backoff = 0

    def current(self) -> float:
        """The RTO to arm now, including backoff."""
        return min(self.rto * (1 << self.backoff), RTO_MAX)

    def on_timeout(self) -> None:
        """RFC 6298 5.5: back off the timer."""
        if self.current() < RTO_MAX:
            self.backoff += 1


def initial_window(mss: int) -> int:
    """RFC 6928's initial window: min(10*MSS, max(2*MSS, 14600 bytes))."""
    return min(10 * mss, max(2 * mss, 14600))


class NewReno:
    """Congestion window state; sizes in bytes, sequence numbers unwrapped."""

    __slots__ = ("cwnd", "dupacks", "in_recovery", "mss", "recover", "ssthresh", "used",
                 "used_end")

    def __init__(self, mss: int, iss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss
        self.used = 0  # highest flight before an ACK since used_end was set
        self.used_end = iss  # SND.MAX when this round trip's measurement began

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)

    def on_ack(self, acked: int, ack: int, flight_before: int) -> bool:
        """New data acknowledged (``acked`` bytes, ACK value ``ack``).
        Returns True for a NewReno partial ACK: the caller retransmits the
        first unacknowledged segment (RFC 6582 3.2 step 5)."""
        mss = self.mss
        self.dupacks = 0
        if self.in_recovery:
            if ack >= self.recover:
                # Full acknowledgment: deflate the window (RFC 6582 3.2 step 5, option 1).
                self.in_recovery = False
                self.cwnd = min(self.ssthresh, max(flight_before - acked, mss) + mss)
                return False
            # Partial acknowledgment: deflate by the amount acked, add back one SMSS.
            self.cwnd = max(self.cwnd - acked + (mss if acked >= mss else 0), mss)
            return True
        if ack - acked >= self.used_end:  # a new round trip: measure from this flight
            used = self.used = flight_before
            self.used_end = ack - acked + flight_before  # SND.MAX
        else:
            used = self.used
            if flight_before > used:
                used = self.used = flight_before
                self.used_end = ack - acked + flight_before
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            if cwnd < 2 * used:  # cwnd-limited in slow start
                self.cwnd = cwnd + min(acked, 2 * mss)
        elif used + mss > cwnd:  # the window was full
            self.cwnd = cwnd + max(1, mss * mss // cwnd)
        return False

    def on_dupack(self, snd_una: int, snd_max: int, flight: int, thresh: int = 3,
                  sack_lost: bool = False) -> bool:
        """A duplicate ACK.  Returns True when the caller must fast-retransmit:
        the ``thresh``-th duplicate (3, RFC 5681 3.2 step 2; lower for small
        flights, RFC 5827 early retransmit) or, with SACK, once three segments
        above SND.UNA are SACKed (``sack_lost``, RFC 6675 IsLost); with
        RFC 6582 3.2 step 2's check that the ACK covers more than ``recover``."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += self.mss  # inflate, RFC 6582 3.2 step 4
            return False
        if (self.dupacks >= thresh or sack_lost) and snd_una >= self.recover:
            self.ssthresh = max(flight // 2, 2 * self.mss)
            self.recover = snd_max
            self.in_recovery = True
            self.cwnd = self.ssthresh + 3 * self.mss
            return True
        return False

    def restart_after_idle(self, idle: float, rto: float) -> bool:
        """Nothing was sent for ``idle`` seconds and nothing is in flight;
        ``rto`` is the current retransmission timeout (with backoff).  When
        ``idle`` exceeds it: ``ssthresh`` becomes at least 3/4 of ``cwnd``
        (unless in recovery) and ``cwnd`` is halved once per further whole
        or partial RTO, not below RW = min(IW, cwnd) -- Linux's
        tcp_cwnd_restart, in bytes.  Returns whether it applied.  The
        cwnd-limited measurement (``used``) restarts by itself: the first ACK
        after the idle period starts a new round trip."""
        if idle <= rto:
            return False
        cwnd = self.cwnd
        if not self.in_recovery:
            kept = (cwnd >> 1) + (cwnd >> 2)
            if kept > self.ssthresh:
                self.ssthresh = kept
        iw = initial_window(self.mss)
        rw = iw if iw < cwnd else cwnd
        # halve while idle > k * RTO, k = 1, 2, ... (Linux subtracts RTO in
        # a loop; a product keeps exact multiples from rounding over)
        k = 1
        while idle > k * rto and cwnd > rw:
            cwnd >>= 1
            k += 1
        self.cwnd = cwnd if cwnd > rw else rw
        return True

    def on_timeout(self, flight: int, snd_max: int) -> None:
        """RFC 5681 3.1 eq. 4 and the loss window; RFC 6582 4 records recover."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.dupacks = 0
        self.in_recovery = False
        self.recover = snd_max
