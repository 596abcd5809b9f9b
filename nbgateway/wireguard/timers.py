"""WireGuard timer configuration and the per-peer timer state (whitepaper
section 6, wireguard-go ``timers.go``).

Timers are plain absolute deadlines (``float`` clock seconds or ``None``) kept on
the peer; the device collects them into one re-armed reactor call.  The event
functions below are named after the protocol events that set or clear them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nbgateway.wireguard import constants as C


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """The whitepaper's timer constants; tests may scale them down."""

    rekey_after_time: float = C.REKEY_AFTER_TIME
    reject_after_time: float = C.REJECT_AFTER_TIME
    rekey_attempt_time: float = C.REKEY_ATTEMPT_TIME
    rekey_timeout: float = C.REKEY_TIMEOUT
    rekey_timeout_jitter: float = C.REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = C.KEEPALIVE_TIMEOUT
    rekey_after_messages: int = C.REKEY_AFTER_MESSAGES
    reject_after_messages: int = C.REJECT_AFTER_MESSAGES

    @property
    def max_handshake_attempts(self) -> int:
        return int(self.rekey_attempt_time / self.rekey_timeout)

    def scaled(self, factor: float) -> TimerConfig:
        """All durations multiplied by ``factor`` (message limits unchanged)."""
        return replace(
            self,
            rekey_after_time=self.rekey_after_time * factor,
            reject_after_time=self.reject_after_time * factor,
            rekey_attempt_time=self.rekey_attempt_time * factor,
            rekey_timeout=self.rekey_timeout * factor,
            rekey_timeout_jitter=self.rekey_timeout_jitter * factor,
            keepalive_timeout=self.keepalive_timeout * factor,
        )


class PeerTimers:
    """Absolute deadlines for one peer.  ``None`` means not armed.

    ``heap_at``/``heap_generation`` place the peer in the device's timer heap
    (the scheduler's bookkeeping; :meth:`clear` leaves them, so stale heap
    entries stay recognisable)."""

    __slots__ = (
        "handshake_attempts",
        "heap_at",
        "heap_generation",
        "need_another_keepalive",
        "new_handshake",
        "persistent_keepalive",
        "retransmit_handshake",
        "send_keepalive",
        "zero_key_material",
    )

    def __init__(self) -> None:
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_key_material: float | None = None
        self.persistent_keepalive: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.heap_at: float | None = None
        self.heap_generation = 0

    def next_deadline(self) -> float | None:
        best = None
        for t in (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def clear(self) -> None:
        self.retransmit_handshake = None
        self.send_keepalive = None
        self.new_handshake = None
        self.zero_key_material = None
        self.persistent_keepalive = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
