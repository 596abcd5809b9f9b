"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake (whitepaper section 5.4.2-5.4.5).

Pure functions over explicit state: no clock, no I/O, no peer table.  The
device supplies randomness (ephemeral keys, indices), timestamps and the
peer lookup; these functions only compute messages and session keys.  MACs
(mac1/mac2) are added by :mod:`nbgateway.wireguard.cookie`, since they depend
on the transport address and cookie state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nbgateway.wireguard._crypto import (
    CryptoError,
    InvalidTag,
    aead_decrypt,
    aead_encrypt,
    dh,
    dh_public,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from nbgateway.wireguard.constants import CONSTRUCTION, IDENTIFIER, LABEL_COOKIE, LABEL_MAC1
from nbgateway.wireguard.messages import Initiation, Response

INITIAL_CHAINING_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAINING_KEY, IDENTIFIER)
ZERO_PSK = bytes(32)


class HandshakeError(Exception):
    """A handshake message failed to authenticate or was otherwise unusable.

    ``reason`` is a counter name ('decrypt', 'unknown_peer', 'bad_point')."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StaticIdentity:
    """A static key pair and the values derived from its public key."""

    __slots__ = ("cookie_key", "hash0", "mac1_key", "private", "public")

    def __init__(self, private: bytes) -> None:
        self.private = private
        self.public = dh_public(private)
        derived = derive_public(self.public)
        self.hash0, self.mac1_key, self.cookie_key = derived


def derive_public(public: bytes) -> tuple[bytes, bytes, bytes]:
    """(initial handshake hash, mac1 key, cookie key) for a responder ``public``."""
    return (
        hash_(INITIAL_HASH, public),
        hash_(LABEL_MAC1, public),
        hash_(LABEL_COOKIE, public),
    )


@dataclass(slots=True)
class SessionKeys:
    send: bytes
    receive: bytes


@dataclass(slots=True)
class InitiatorState:
    """What the initiator keeps between sending an initiation and the response."""

    local_index: int
    ephemeral_private: bytes
    chaining_key: bytes
    hash: bytes
    remote_static: bytes
    preshared_key: bytes


@dataclass(slots=True)
class ConsumedInitiation:
    """The responder's view of an authenticated initiation."""

    remote_index: int
    remote_static: bytes
    remote_ephemeral: bytes
    timestamp: bytes
    chaining_key: bytes
    hash: bytes


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return dh(private, public)
    except CryptoError:  # low-order point: all-zero shared secret
        raise HandshakeError("bad_point") from None


def create_initiation(
    local: StaticIdentity,
    remote_static: bytes,
    remote_hash0: bytes,
    static_static: bytes,
    preshared_key: bytes,
    local_index: int,
    timestamp: bytes,
    ephemeral_private: bytes,
) -> tuple[InitiatorState, Initiation]:
    """Build an initiation (macs zeroed).  ``static_static`` is DH(S_i, S_r),
    precomputed per peer; ``remote_hash0`` is HASH(INITIAL_HASH || S_r)."""
    h = remote_hash0
    ephemeral = dh_public(ephemeral_private)
    ck = kdf1(INITIAL_CHAINING_KEY, ephemeral)
    h = hash_(h, ephemeral)
    ck, k = kdf2(ck, _dh(ephemeral_private, remote_static))
    enc_static = aead_encrypt(k, 0, local.public, h)
    h = hash_(h, enc_static)
    ck, k = kdf2(ck, static_static)
    enc_ts = aead_encrypt(k, 0, timestamp, h)
    h = hash_(h, enc_ts)
    state = InitiatorState(local_index, ephemeral_private, ck, h, remote_static, preshared_key)
    return state, Initiation(local_index, ephemeral, enc_static, enc_ts, bytes(16), bytes(16))


def consume_initiation(
    local: StaticIdentity,
    msg: Initiation,
    lookup: Callable[[bytes], bytes | None],
) -> ConsumedInitiation:
    """Authenticate an initiation addressed to ``local``.  ``lookup(static)``
    returns the cached DH(S_r, S_i) for a known peer or None (-> unknown_peer)."""
    h = hash_(local.hash0, msg.ephemeral)
    ck = kdf1(INITIAL_CHAINING_KEY, msg.ephemeral)
    ck, k = kdf2(ck, _dh(local.private, msg.ephemeral))
    try:
        remote_static = aead_decrypt(k, 0, msg.encrypted_static, h)
    except InvalidTag:
        raise HandshakeError("decrypt") from None
    h = hash_(h, msg.encrypted_static)
    static_static = lookup(remote_static)
    if static_static is None:
        raise HandshakeError("unknown_peer")
    ck, k = kdf2(ck, static_static)
    try:
        timestamp = aead_decrypt(k, 0, msg.encrypted_timestamp, h)
    except InvalidTag:
        raise HandshakeError("decrypt") from None
    h = hash_(h, msg.encrypted_timestamp)
    return ConsumedInitiation(msg.sender, remote_static, msg.ephemeral, timestamp, ck, h)


def create_response(
    consumed: ConsumedInitiation,
    preshared_key: bytes,
    local_index: int,
    ephemeral_private: bytes,
) -> tuple[Response, SessionKeys]:
    """Build the response (macs zeroed) and derive the responder's session keys."""
    ephemeral = dh_public(ephemeral_private)
    ck = kdf1(consumed.chaining_key, ephemeral)
    h = hash_(consumed.hash, ephemeral)
    ck = kdf1(ck, _dh(ephemeral_private, consumed.remote_ephemeral))
    ck = kdf1(ck, _dh(ephemeral_private, consumed.remote_static))
    ck, tau, k = kdf3(ck, preshared_key)
    h = hash_(h, tau)
    enc_nothing = aead_encrypt(k, 0, b"", h)
    recv, send = kdf2(ck, b"")
    msg = Response(local_index, consumed.remote_index, ephemeral, enc_nothing, bytes(16), bytes(16))
    return msg, SessionKeys(send=send, receive=recv)


def consume_response(local: StaticIdentity, state: InitiatorState, msg: Response) -> SessionKeys:
    """Authenticate a response to ``state`` and derive the initiator's session keys."""
    ck = kdf1(state.chaining_key, msg.ephemeral)
    h = hash_(state.hash, msg.ephemeral)
    ck = kdf1(ck, _dh(state.ephemeral_private, msg.ephemeral))
    ck = kdf1(ck, _dh(local.private, msg.ephemeral))
    ck, tau, k = kdf3(ck, state.preshared_key)
    h = hash_(h, tau)
    try:
        aead_decrypt(k, 0, msg.encrypted_nothing, h)
    except InvalidTag:
        raise HandshakeError("decrypt") from None
    send, recv = kdf2(ck, b"")
    return SessionKeys(send=send, receive=recv)
