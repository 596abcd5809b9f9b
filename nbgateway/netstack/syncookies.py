"""Keyed sequence-number secrets: RFC 6528 initial sequence numbers, per
connection timestamp offsets (RFC 7323 7.1) and SYN cookies (RFC 4987 3.6).

ISN = M + F(localip, localport, remoteip, remoteport, secret) with M a 4 us
clock and F a keyed BLAKE2b, as RFC 6528 section 3 specifies.

SYN cookie layout (the ISN of a stateless SYN-ACK)::

    bits 31..27  t       time slot (64 s slots, mod 32)
    bits 26..24  m       index into MSS_TABLE (the peer's MSS rounded down)
    bits 23..0   hash    keyed hash of (4-tuple, client ISN, t, m)

A cookie is accepted during the slot it was minted in and the next one
(64-128 s).  When the client sent timestamps, the low 6 bits of our TSval carry
the peer's window scale (4 bits, 15 = none) and SACK-permitted (1 bit), which
the client echoes in TSecr on its ACK.  What a cookie connection loses: the
exact MSS (rounded down to MSS_TABLE), and, without timestamps, window scaling
and SACK; data carried on the SYN is dropped (the client retransmits it).
"""

from __future__ import annotations

import hashlib
import os

from nbgateway.netstack.checksum import IPAddress

MSS_TABLE = (536, 1024, 1200, 1220, 1360, 1380, 1400, 1460)
COOKIE_SLOT = 64.0
_MASK24 = 0xFFFFFF
TS_OPT_BITS = 6
_TS_OPT_MASK = (1 << TS_OPT_BITS) - 1
_NO_WSCALE = 15


class SequenceSecrets:
    """Holds the per-stack secret; every derived value is keyed by it."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret if secret is not None else os.urandom(32)

    def _hash(self, tag: bytes, *parts: bytes, size: int = 4) -> int:
        h = hashlib.blake2b(digest_size=size, key=self._key, person=tag)
        for p in parts:
            h.update(p)
        return int.from_bytes(h.digest(), "big")

    @staticmethod
    def _tuple(local: IPAddress, lport: int, remote: IPAddress, rport: int) -> bytes:
        return local.packed + remote.packed + lport.to_bytes(2, "big") + rport.to_bytes(2, "big")

    def isn(self, local: IPAddress, lport: int, remote: IPAddress, rport: int,
            now: float) -> int:
        """RFC 6528 initial sequence number."""
        m = int(now * 250_000)
        return (m + self._hash(b"isn", self._tuple(local, lport, remote, rport))) & 0xFFFFFFFF

    def ts_offset(self, local: IPAddress, lport: int, remote: IPAddress, rport: int) -> int:
        """Per connection random TSval offset (RFC 7323 7.1)."""
        return self._hash(b"tsoff", self._tuple(local, lport, remote, rport))

    # -- SYN cookies -------------------------------------------------------

    def make_cookie(self, local: IPAddress, lport: int, remote: IPAddress, rport: int,
                    client_isn: int, mss: int, now: float) -> tuple[int, int]:
        """Return (cookie ISN, the MSS the cookie will restore)."""
        m = 0
        for i, v in enumerate(MSS_TABLE):
            if v <= mss:
                m = i
        t = int(now // COOKIE_SLOT) & 31
        h = self._cookie_hash(local, lport, remote, rport, client_isn, t, m)
        return (t << 27) | (m << 24) | h, MSS_TABLE[m]

    def check_cookie(self, local: IPAddress, lport: int, remote: IPAddress, rport: int,
                     client_isn: int, cookie: int, now: float) -> int | None:
        """The MSS encoded in a valid, fresh ``cookie``, else None."""
        t = cookie >> 27
        m = (cookie >> 24) & 7
        age = (int(now // COOKIE_SLOT) - t) & 31
        if age > 1:
            return None
        if self._cookie_hash(local, lport, remote, rport, client_isn, t, m) != cookie & _MASK24:
            return None
        return MSS_TABLE[m]

    def _cookie_hash(self, local: IPAddress, lport: int, remote: IPAddress, rport: int,
                     client_isn: int, t: int, m: int) -> int:
        return self._hash(
            b"cookie", self._tuple(local, lport, remote, rport),
            (client_isn & 0xFFFFFFFF).to_bytes(4, "big"), bytes((t, m)), size=3,
        )


def encode_ts_options(ts_val: int, wscale: int | None, sack_perm: bool) -> int:
    """Fold the peer's SYN options into the low bits of a TSval that must not
    exceed ``ts_val`` (so our timestamp clock never runs backwards)."""
    bits = (_NO_WSCALE if wscale is None else wscale) | (0x10 if sack_perm else 0)
    out = (ts_val & ~_TS_OPT_MASK) | bits
    if out > ts_val:
        out -= 1 << TS_OPT_BITS
    return out & 0xFFFFFFFF


def decode_ts_options(ts_ecr: int) -> tuple[int | None, bool]:
    """(peer window scale or None, SACK permitted) from an echoed TSval."""
    ws = ts_ecr & 0x0F
    return (None if ws == _NO_WSCALE else ws), bool(ts_ecr & 0x10)
