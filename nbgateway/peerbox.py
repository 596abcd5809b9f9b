"""The NaCl box envelope of the peer channel (NetBird ``encryption`` package, in Python).

A Login/Sync body is a serialized protobuf message sealed with a NaCl box
(Curve25519 + XSalsa20-Poly1305) between the sender's WireGuard private key
and the receiver's WireGuard public key. The wire layout is upstream's
``box.Seal(nonce[:], msg, nonce, peer, priv)``: a random 24-byte nonce
followed by the box ciphertext (16-byte Poly1305 tag + encrypted message),
which is exactly PyNaCl's combined ``EncryptedMessage`` format.

Both ends of the peer channel use it: the management server
(:mod:`nbgateway.management.peerchannel`) and the gateway's client
(:mod:`nbgateway.mgmt.peerclient`). It is a ground-floor module: it imports
neither of them, only PyNaCl and protobuf, so the gateway's management client
never imports the management server's modules. It owns the wire format
(nonce || box), WireGuard key parsing/encoding and :class:`BoxError`; key
storage belongs to whoever holds the key.
"""

from __future__ import annotations

import base64
import binascii
import functools

from google.protobuf.message import DecodeError, Message
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "OVERHEAD",
    "BoxError",
    "decode_wg_key",
    "encode_wg_key",
    "open_message",
    "open_raw",
    "seal_message",
    "seal_raw",
]

NONCE_SIZE = Box.NONCE_SIZE  # 24
OVERHEAD = NONCE_SIZE + 16  # nonce + Poly1305 tag
KEY_SIZE = 32


class BoxError(ValueError):
    """A body that does not open (bad length, wrong keys, tampered) or does not parse."""


def decode_wg_key(text: str) -> bytes:
    """Parse a base64 WireGuard key like ``wgtypes.ParseKey`` (std base64, 32 bytes)."""
    if not isinstance(text, str) or len(text) != 44:
        raise BoxError("invalid WireGuard key")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BoxError("invalid WireGuard key") from exc
    if len(raw) != KEY_SIZE:
        raise BoxError("invalid WireGuard key")
    return raw


def encode_wg_key(raw: bytes) -> str:
    return base64.b64encode(bytes(raw)).decode("ascii")


@functools.lru_cache(maxsize=4096)
def _box(peer_public: bytes, our_private: bytes) -> Box:
    """The box of a key pair (its shared key: two scalar multiplications, ~0.17 ms),
    kept for the pair's next message (a peer's Login, Sync and every map)."""
    return Box(PrivateKey(our_private), PublicKey(peer_public))


def seal_raw(plaintext: bytes, peer_public: bytes, our_private: bytes) -> bytes:
    """``nonce || box(plaintext)`` with a fresh random nonce."""
    return bytes(_box(bytes(peer_public), bytes(our_private)).encrypt(plaintext))


def open_raw(body: bytes, peer_public: bytes, our_private: bytes) -> bytes:
    """Inverse of :func:`seal_raw`; raises :class:`BoxError` on any failure."""
    if len(body) < OVERHEAD:
        raise BoxError("invalid encrypted message length")
    try:
        box = _box(bytes(peer_public), bytes(our_private))
        return bytes(box.decrypt(body[NONCE_SIZE:], body[:NONCE_SIZE]))
    except (CryptoError, ValueError, TypeError) as exc:
        raise BoxError("failed to decrypt message") from exc


def seal_message(message: Message, peer_public: bytes, our_private: bytes) -> bytes:
    return seal_raw(message.SerializeToString(), peer_public, our_private)


def open_message(body: bytes, into: Message, peer_public: bytes, our_private: bytes) -> Message:
    """Open ``body`` and parse it into the (empty) protobuf message ``into``."""
    plain = open_raw(body, peer_public, our_private)
    try:
        into.ParseFromString(plain)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BoxError("invalid request message") from exc
    return into
