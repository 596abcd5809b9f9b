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


class NewReno:
    """Congestion window state; sizes in bytes, sequence numbers unwrapped."""

    __slots__ = ("cwnd", "dupacks", "in_recovery", "mss", "recover", "ssthresh")

    def __init__(self, mss: int, iss: int) -> None:
        self.mss = mss
        self.cwnd = min(10 * mss, max(2 * mss, 14600))  # RFC 6928
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = min(10 * mss, max(2 * mss, 14600))

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
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * mss)
        else:
            self.cwnd += max(1, mss * mss // self.cwnd)
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

    def on_timeout(self, flight: int, snd_max: int) -> None:
        """RFC 5681 3.1 eq. 4 and the loss window; RFC 6582 4 records recover."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.dupacks = 0
        self.in_recovery = False
        self.recover = snd_max
