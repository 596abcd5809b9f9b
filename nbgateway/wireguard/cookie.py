"""MAC1/MAC2 and cookie replies: the DoS mitigation of whitepaper section 5.4.4/5.4.7.

:class:`CookieChecker` is the receiving side (verifies mac1 on every handshake
message, and under load verifies mac2 or answers with a cookie reply).
:class:`CookieGenerator` is per peer on the sending side (adds mac1/mac2 to our
handshake messages, and consumes cookie replies from that peer).
"""

from __future__ import annotations

import hmac as _hmac
import os
import socket

from nbgateway.wireguard._crypto import CryptoError, mac, xaead_decrypt, xaead_encrypt
from nbgateway.wireguard.constants import COOKIE_REFRESH_TIME
from nbgateway.wireguard.messages import CookieReply
from nbgateway.wireguard.noise import derive_public

_ZERO16 = bytes(16)
_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def address_bytes(addr: tuple[str, int]) -> bytes:
    """Canonical bytes of a UDP source address (packed IP + big-endian port).

    ``inet_pton`` gives the same bytes as ``ipaddress.ip_address(host).packed``
    (and rejects the same strings) at ~1/20 of the cost: this runs once or twice
    per initiation answered under load."""
    host, port = addr[0], addr[1]
    try:
        packed = _inet_pton(_AF_INET, host)
    except OSError:
        try:
            packed = _inet_pton(_AF_INET6, host.split("%", 1)[0])
        except OSError:
            packed = host.encode("utf-8", "replace")
    return packed + int(port).to_bytes(2, "big")


class CookieChecker:
    """Receiving side: mac1 check, mac2 check and cookie reply creation."""

    def __init__(self, local_public: bytes, urandom=os.urandom) -> None:
        _, self.mac1_key, self.cookie_key = derive_public(local_public)
        self._urandom = urandom
        self._secret = urandom(32)
        self._secret_set = float("-inf")

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        expected = mac(self.mac1_key, msg[:mac1_offset])
        return _hmac.compare_digest(expected, msg[mac1_offset : mac1_offset + 16])

    def _tau(self, addr: tuple[str, int], now: float, create: bool) -> bytes | None:
        if now - self._secret_set > COOKIE_REFRESH_TIME:
            if not create:
                return None
            self._secret = self._urandom(32)
            self._secret_set = now
        return mac(self._secret, address_bytes(addr))

    def check_mac2(self, msg: bytes, mac2_offset: int, addr: tuple[str, int], now: float) -> bool:
        tau = self._tau(addr, now, create=False)
        if tau is None:
            return False
        expected = mac(tau, msg[:mac2_offset])
        return _hmac.compare_digest(expected, msg[mac2_offset : mac2_offset + 16])

    def make_reply(
        self, msg: bytes, mac1_offset: int, receiver: int, addr: tuple[str, int], now: float
    ) -> bytes:
        """A type-3 cookie reply to a handshake message that arrived under load."""
        tau = self._tau(addr, now, create=True)
        assert tau is not None
        nonce = self._urandom(24)
        mac1 = msg[mac1_offset : mac1_offset + 16]
        encrypted = xaead_encrypt(self.cookie_key, nonce, tau, mac1)
        return CookieReply(receiver, nonce, encrypted).pack()


class CookieGenerator:
    """Sending side for one remote peer: adds MACs, remembers cookies it is sent."""

    __slots__ = ("_cookie", "_cookie_set", "_decrypt_key", "_last_mac1", "_mac1_key")

    def __init__(self, remote_public: bytes) -> None:
        _, self._mac1_key, self._decrypt_key = derive_public(remote_public)
        self._cookie: bytes | None = None
        self._cookie_set = float("-inf")
        self._last_mac1: bytes | None = None

    def add_macs(self, msg_without_macs: bytes, now: float) -> bytes:
        mac1 = mac(self._mac1_key, msg_without_macs)
        self._last_mac1 = mac1
        body = msg_without_macs + mac1
        if self._cookie is not None and now - self._cookie_set < COOKIE_REFRESH_TIME:
            return body + mac(self._cookie, body)
        return body + _ZERO16

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if the reply authenticates against our last mac1."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(
                self._decrypt_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except CryptoError:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None
