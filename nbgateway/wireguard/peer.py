"""Per-peer state: keys, endpoint (with roaming), session keypairs
(previous/current/next), staged packets, replay-protection of initiations, timers
and statistics.  Behaviour lives in :mod:`nbgateway.wireguard.device`; this module
holds state and the small helpers that only touch one peer."""

from __future__ import annotations

import ipaddress
from collections import deque

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from nbgateway.wireguard._crypto import dh
from nbgateway.wireguard.constants import MAX_STAGED_PACKETS
from nbgateway.wireguard.cookie import CookieGenerator
from nbgateway.wireguard.noise import ZERO_PSK, InitiatorState, StaticIdentity, derive_public
from nbgateway.wireguard.replay import ReplayFilter
from nbgateway.wireguard.timers import PeerTimers, TimerConfig


class Keypair:
    """One session: directional AEAD keys, indices, send counter, replay filter,
    and the session's deadlines as absolute clock values (so the data path
    compares one float instead of doing timer arithmetic per packet):

    - ``reject_at``: REJECT_AFTER_TIME after creation; nothing is sent or
      accepted with this session afterwards;
    - ``rekey_at``: REKEY_AFTER_TIME after creation; sends leave the fast path
      (the initiator starts a new handshake);
    - ``rx_rekey_at``: initiator only, REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT -
      REKEY_TIMEOUT after creation; a received packet past it starts a new
      handshake (the whitepaper's receive-side rekey); infinite for responders.
    """

    __slots__ = (
        "is_initiator",
        "local_index",
        "receive",
        "reject_at",
        "rekey_at",
        "remote_index",
        "replay",
        "rx_rekey_at",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        created: float,
        is_initiator: bool,
        cfg: TimerConfig,
    ) -> None:
        self.send = ChaCha20Poly1305(send_key)
        self.receive = ChaCha20Poly1305(receive_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.reject_at = created + cfg.reject_after_time
        self.rekey_at = created + cfg.rekey_after_time
        self.rx_rekey_at = (
            created + cfg.reject_after_time - cfg.keepalive_timeout - cfg.rekey_timeout
            if is_initiator
            else float("inf")
        )


class Peer:
    """A remote WireGuard peer known to the device."""

    def __init__(
        self,
        local: StaticIdentity,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        if len(public_key) != 32:
            raise ValueError("public key must be 32 bytes")
        self.public_key = public_key
        self.static_static = dh(local.private, public_key)
        self.hash0, _, _ = derive_public(public_key)
        self.cookies = CookieGenerator(public_key)
        self.preshared_key = preshared_key or ZERO_PSK
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive or None
        self.allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []

        self.handshake: InitiatorState | None = None
        self.last_initiation_sent: float | None = None
        self.latest_timestamp = bytes(12)
        self.last_initiation_consumed: float | None = None

        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.timers = PeerTimers()
        self.heap_generation = 0
        self.heap_at: float | None = None

        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake: float | None = None
        self.removed = False

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.previous, self.current, self.next) if kp is not None]

    def __repr__(self) -> str:
        import base64

        return f"<Peer {base64.b64encode(self.public_key).decode()[:8]}... {self.endpoint}>"
