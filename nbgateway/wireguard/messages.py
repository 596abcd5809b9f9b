"""The four WireGuard message formats (whitepaper section 5.4), parsed and built
with precompiled :mod:`struct` layouts.  No cryptography here.

All integers are little-endian; the first four bytes are the message type as a
little-endian u32 (one type byte and three reserved zero bytes).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from nbgateway.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
)

# type | sender | ephemeral | encrypted static | encrypted timestamp | mac1 | mac2
INITIATION = struct.Struct("<II32s48s28s16s16s")
# type | sender | receiver | ephemeral | encrypted nothing | mac1 | mac2
RESPONSE = struct.Struct("<III32s16s16s16s")
# type | receiver | nonce | encrypted cookie
COOKIE_REPLY = struct.Struct("<II24s32s")
# type | receiver | counter
TRANSPORT_HEADER = struct.Struct("<IIQ")

assert INITIATION.size == MESSAGE_INITIATION_SIZE
assert RESPONSE.size == MESSAGE_RESPONSE_SIZE
assert COOKIE_REPLY.size == MESSAGE_COOKIE_REPLY_SIZE

# Offsets of mac1 and mac2: MACs cover everything before them.
INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    @classmethod
    def parse(cls, data: bytes) -> Initiation:
        _, *fields = INITIATION.unpack(data)
        return cls(*fields)

    def pack_without_macs(self) -> bytes:
        return INITIATION.pack(
            MESSAGE_INITIATION, self.sender, self.ephemeral, self.encrypted_static,
            self.encrypted_timestamp, b"", b"",
        )[:INITIATION_MAC1_OFFSET]


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    @classmethod
    def parse(cls, data: bytes) -> Response:
        _, *fields = RESPONSE.unpack(data)
        return cls(*fields)

    def pack_without_macs(self) -> bytes:
        return RESPONSE.pack(
            MESSAGE_RESPONSE, self.sender, self.receiver, self.ephemeral,
            self.encrypted_nothing, b"", b"",
        )[:RESPONSE_MAC1_OFFSET]


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    @classmethod
    def parse(cls, data: bytes) -> CookieReply:
        _, *fields = COOKIE_REPLY.unpack(data)
        return cls(*fields)

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


def transport_header(receiver: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter)
