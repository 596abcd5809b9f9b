"""WireGuard keys in wg(8) form: 32 raw bytes, base64 with padding (44 chars)."""

from __future__ import annotations

import base64
import binascii
import os

from nbgateway.wireguard._crypto import dh_public

KEY_LEN = 32


def clamp(key: bytes) -> bytes:
    """Curve25519 private key clamping, exactly as ``wg genkey`` does."""
    k = bytearray(key)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def generate_private_key() -> bytes:
    return clamp(os.urandom(KEY_LEN))


def generate_preshared_key() -> bytes:
    return os.urandom(KEY_LEN)


def public_key(private_key: bytes) -> bytes:
    if len(private_key) != KEY_LEN:
        raise ValueError("private key must be 32 bytes")
    return dh_public(clamp(private_key))


def key_to_base64(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise ValueError("key must be 32 bytes")
    return base64.b64encode(key).decode("ascii")


def key_from_base64(text: str) -> bytes:
    """Parse a wg(8) base64 key; ValueError if it is not exactly 32 bytes."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise ValueError("key must be 44 characters of base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"key is not valid base64: {exc}") from None
    if len(raw) != KEY_LEN:
        raise ValueError("key must decode to 32 bytes")
    return raw
