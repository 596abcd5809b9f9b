"""Token formats, token hashing, argon2id secrets and service session keys.

* Proxy tokens (``nbx_``) and personal access tokens (``nbp_``): prefix + 30
  random base62 characters + the 6-character base62 CRC32 (IEEE) of the
  secret, left-padded with ``0``: 40 characters. Only the base64-std SHA-256
  of the whole token is stored (the token is high-entropy, so a fast hash is
  enough and allows an indexed lookup).
* Service secrets (password, PIN, header values): argon2id PHC strings with
  m=19456 KiB, t=2, p=1 (upstream parameters).
* Service session keys: Ed25519; the private key is stored as Go does, the
  base64 of the 64-byte seed||public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PROXY_TOKEN_PREFIX = "nbx_"
PAT_PREFIX = "nbp_"
SECRET_LEN = 30
CHECKSUM_LEN = 6
TOKEN_LEN = 4 + SECRET_LEN + CHECKSUM_LEN

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)


def _base62(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = BASE62[r] + out
    return out or "0"


def _checksum(secret: str) -> str:
    return _base62(binascii.crc32(secret.encode())).rjust(CHECKSUM_LEN, "0")


def generate_token(prefix: str) -> str:
    secret = "".join(secrets.choice(BASE62) for _ in range(SECRET_LEN))
    return prefix + secret + _checksum(secret)


def token_format_ok(token: str, prefix: str) -> bool:
    if not isinstance(token, str) or len(token) != TOKEN_LEN or not token.startswith(prefix):
        return False
    secret = token[len(prefix) : len(prefix) + SECRET_LEN]
    if any(c not in BASE62 for c in secret):
        return False
    return hmac.compare_digest(token[len(prefix) + SECRET_LEN :], _checksum(secret))


def hash_token(token: str) -> str:
    return base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(phc: str, secret: str) -> bool:
    """Constant-time argon2id check; False for a wrong secret or a malformed hash."""
    try:
        return _hasher.verify(phc, secret)
    except (VerificationError, InvalidHashError):
        return False


def is_hashed(value: str) -> bool:
    return value.startswith("$argon2id$")


def generate_session_keys() -> tuple[str, str]:
    """``(private, public)``: base64 of Go's 64-byte private key and of the 32-byte public key."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed + public).decode(), base64.b64encode(public).decode()
