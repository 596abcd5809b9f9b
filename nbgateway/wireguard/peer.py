"""Per-peer state: keys, endpoint (with roaming), session keypairs
(previous/current/next), staged packets, replay-protection of initiations, timers
and statistics.  Behaviour lives in :mod:`nbgateway.wireguard.device`; this module
holds state and the small helpers that only touch one peer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from nbgateway.netstack.prefix import Prefix
from nbgateway.wireguard._crypto import dh
from nbgateway.wireguard.constants import MAX_STAGED_PACKETS
from nbgateway.wireguard.cookie import CookieGenerator
from nbgateway.wireguard.noise import ZERO_PSK, InitiatorState, StaticIdentity, derive_public
from nbgateway.wireguard.replay import ReplayFilter
from nbgateway.wireguard.timers import PeerTimers, TimerConfig

_ZERO_TIMESTAMP = bytes(12)


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


class HandshakeState:
    """What a peer needs only once it handshakes (created on first use, see
    :class:`Peer`): the static-static DH result, the handshake hash prefix,
    the cookie state, a non-zero preshared key, the pending initiation and
    the replay/flood state of received initiations."""

    __slots__ = (
        "cookies",
        "handshake",
        "hash0",
        "last_initiation_consumed",
        "last_initiation_sent",
        "latest_timestamp",
        "local",
        "preshared_key",
        "static_static",
    )

    def __init__(self, local: StaticIdentity | None) -> None:
        self.local = local
        self.static_static: bytes | None = None
        self.hash0: bytes | None = None
        self.cookies: CookieGenerator | None = None
        self.preshared_key = ZERO_PSK
        self.handshake: InitiatorState | None = None
        self.last_initiation_sent: float | None = None
        self.latest_timestamp = _ZERO_TIMESTAMP
        self.last_initiation_consumed: float | None = None


class _HandshakeField:
    """A :class:`Peer` attribute stored in its :class:`HandshakeState`: it
    reads as ``default`` until that state exists, and setting the default
    (after ``normalize``) does not create the state."""

    __slots__ = ("default", "name", "normalize")

    def __init__(self, default: object,
                 normalize: Callable[[Any], Any] | None = None) -> None:
        self.default = default
        self.normalize = normalize
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, peer: Peer | None, owner: type | None = None) -> Any:
        if peer is None:
            return self
        hs = peer._hs
        return getattr(hs, self.name) if type(hs) is HandshakeState else self.default

    def __set__(self, peer: Peer, value: Any) -> None:
        if self.normalize is not None:
            value = self.normalize(value)
        if type(peer._hs) is HandshakeState or value != self.default:
            setattr(peer.hs, self.name, value)


class Peer:
    """A remote WireGuard peer known to the device.

    Idle peers are cheap (``__slots__``; a never-handshaken peer holds its
    key, endpoint and allowed IPs): the handshake-only state
    (:class:`HandshakeState`: static-static DH result, handshake hash prefix,
    cookie state, preshared key, initiation bookkeeping), the staging queue
    and the timer record are created on first use; until then ``_hs`` holds
    the device's :class:`StaticIdentity` (what the DH needs) and the
    handshake attributes read as their defaults.  Hot paths that run only
    after a handshake (which creates the timers) read ``peer._timers or
    peer.timers``: one slot read when the record exists."""

    __slots__ = (
        "_hs",
        "_staged",
        "_timers",
        "allowed_ips",
        "current",
        "endpoint",
        "last_handshake",
        "next",
        "persistent_keepalive",
        "previous",
        "public_key",
        "removed",
        "rx_bytes",
        "tx_bytes",
    )

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
        self._hs: StaticIdentity | HandshakeState = local
        if preshared_key:
            self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive or None
        self.allowed_ips: tuple[Prefix, ...] = ()

        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

        self._staged: deque[bytes] | None = None
        self._timers: PeerTimers | None = None

        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake: float | None = None
        self.removed = False

    # ---------------------------------------------------------- handshake state

    @property
    def hs(self) -> HandshakeState:
        """The handshake-only state, created on first use."""
        hs = self._hs
        if type(hs) is not HandshakeState:
            hs = self._hs = HandshakeState(hs)  # type: ignore[arg-type]
        return hs  # type: ignore[return-value]

    @property
    def has_handshake_state(self) -> bool:
        return type(self._hs) is HandshakeState

    @property
    def static_static(self) -> bytes:
        """DH(our static private, the peer's static public), on first handshake."""
        hs = self.hs
        if hs.static_static is None:
            assert hs.local is not None
            hs.static_static = dh(hs.local.private, self.public_key)
            hs.local = None
        return hs.static_static

    @property
    def hash0(self) -> bytes:
        """HASH(INITIAL_HASH || S_r) of the peer's key, on first use."""
        hs = self.hs
        if hs.hash0 is None:
            hs.hash0 = derive_public(self.public_key)[0]
        return hs.hash0

    @property
    def cookies(self) -> CookieGenerator:
        """The sending side's MAC/cookie state for this peer, on first use."""
        hs = self.hs
        if hs.cookies is None:
            hs.cookies = CookieGenerator(self.public_key)
        return hs.cookies

    # attributes kept in the HandshakeState: their defaults until it exists
    preshared_key = _HandshakeField(ZERO_PSK, normalize=lambda v: v or ZERO_PSK)
    #: the initiation this peer sent and awaits a response to
    handshake = _HandshakeField(None)
    last_initiation_sent = _HandshakeField(None)
    last_initiation_consumed = _HandshakeField(None)
    #: the newest TAI64N timestamp of an initiation consumed from this peer
    latest_timestamp = _HandshakeField(_ZERO_TIMESTAMP)

    @property
    def timers(self) -> PeerTimers:
        """The peer's timer deadlines, created on first use (first handshake,
        first packet, a keepalive setting): an idle peer has none."""
        t = self._timers
        if t is None:
            t = self._timers = PeerTimers()
        return t

    @property
    def has_timers(self) -> bool:
        return self._timers is not None

    @property
    def staged(self) -> deque[bytes]:
        """Packets waiting for a session (the queue exists once one was staged)."""
        if self._staged is None:
            self._staged = deque(maxlen=MAX_STAGED_PACKETS)
        return self._staged

    @property
    def has_staged(self) -> bool:
        return bool(self._staged)

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.previous, self.current, self.next) if kp is not None]

    def __repr__(self) -> str:
        import base64

        return f"<Peer {base64.b64encode(self.public_key).decode()[:8]}... {self.endpoint}>"
