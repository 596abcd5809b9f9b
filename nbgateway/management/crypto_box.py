"""The management server's own WireGuard key pair (the key ``GetServerKey`` hands out).

Persisted as a base64 private key in a mode-0600 file so peers keep working
across restarts. The box envelope both ends of the peer channel share lives in
the ground-floor module :mod:`nbgateway.peerbox`.
"""

from __future__ import annotations

import os
import tempfile

from nacl.public import PrivateKey

from nbgateway.atomicfile import fsync_directory
from nbgateway.peerbox import KEY_SIZE, decode_wg_key, encode_wg_key

__all__ = ["ServerKey"]


class ServerKey:
    """The management server's WireGuard (X25519) key pair."""

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_SIZE:
            raise ValueError("server key must be 32 bytes")
        self._private = PrivateKey(private)

    @classmethod
    def generate(cls) -> ServerKey:
        return cls(bytes(PrivateKey.generate()))

    @property
    def private_bytes(self) -> bytes:
        return bytes(self._private)

    @property
    def public_bytes(self) -> bytes:
        return bytes(self._private.public_key)

    @property
    def public_b64(self) -> str:
        return encode_wg_key(self.public_bytes)

    @classmethod
    def load_or_create(cls, path: str) -> ServerKey:
        """Read the base64 private key from ``path``, creating it (0600) if absent."""
        try:
            with open(path, encoding="ascii") as f:
                return cls(decode_wg_key(f.read().strip()))
        except FileNotFoundError:
            pass
        key = cls.generate()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".wg-server-key.", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(encode_wg_key(key.private_bytes) + "\n")
                f.flush()
                os.fsync(f.fileno())  # on disk before its name is
            # link() refuses to overwrite: a concurrent creator's key wins
            try:
                os.link(tmp, path)
            except FileExistsError:
                with open(path, encoding="ascii") as f:
                    return cls(decode_wg_key(f.read().strip()))
        finally:
            os.unlink(tmp)
        fsync_directory(directory)  # the name survives a crash
        return key
