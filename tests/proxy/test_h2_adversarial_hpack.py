"""Adversarial differential tests of the gateway's HPACK decoder
(:class:`nbgateway.proxy.h2_hpack.BlockDecoder`) against ``hpack.Decoder``.

Every block a client sends goes through it.  Blocks are built from raw
representations (RFC 7541 6), not from an encoder: table size updates at
any position (several, beyond ``max_allowed_table_size``), integers with
zero-padded continuations, overlong and overflowing integers, string
lengths far past the block, Huffman strings with bad padding, EOS inside or
padding of 8+ bits, index 0 and indexes past the dynamic table, literals
that expand through indexing (the "HPACK bomb") and many tiny entries; the
decoders keep their state across a connection's blocks, and the limits
(``max_header_list_size``, ``max_allowed_table_size``) change between
blocks as SETTINGS acknowledgements would change them.

Each block: the same fields (and field types) or the same exception class
(``h2`` maps ``OversizedHeaderListError`` to ``DenialOfServiceError`` and
the rest to ``ProtocolError``: the class decides the GOAWAY code), and the
same dynamic table and table size afterwards, failed blocks included."""

from __future__ import annotations

import random
from typing import Any

import hpack
import pytest
from hpack.struct import NeverIndexedHeaderTuple

from nbgateway.proxy.h2_hpack import BlockDecoder, encode_integer, huffman_encode

#: names and values the blocks carry: identity headers in any case and with
#: underscores, upper case, control characters, long values
WORDS = [b"x-netbird-user", b"X-NetBird-User", b"x_netbird_groups", b"x-netbird-groups",
         b":path", b":method", b":authority", b"host", b"cookie", b"te", b"connection",
         b"a", b"", b"admin@example.com", b"GET", b"/", b"evil\r\nx-netbird-user: root",
         b"nul\x00", b"\xff\xfe", b"x" * 300, b"v" * 4000, b"trailers", b"Upper"]


def _int(rng: random.Random, value: int, prefix: int, flags: int) -> bytes:
    """``value`` with an N-bit prefix, sometimes zero-padded with extra
    continuation octets (valid up to hpack's five)."""
    out = encode_integer(value, prefix)
    out[0] |= flags
    if out[0] & ((1 << prefix) - 1) == (1 << prefix) - 1 and rng.random() < 0.2:
        # pad: the last octet gets the continuation bit, then zero groups
        pad = rng.choice((1, 2, 3, 4))
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def _string(rng: random.Random, data: bytes) -> bytes:
    r = rng.random()
    if r < 0.45:
        return _int(rng, len(data), 7, 0) + data
    coded = huffman_encode(data)
    if r < 0.85 or not coded:
        return _int(rng, len(coded), 7, 0x80) + coded
    how = rng.randrange(5)
    if how == 0:  # padding not all ones
        coded = coded[:-1] + bytes((coded[-1] & 0xF0,))
    elif how == 1:  # 8+ bits of padding
        coded += b"\xff"
    elif how == 2:  # EOS (30 ones) inside the string
        coded = b"\xff\xff\xff\xfc" + coded
    elif how == 3:  # truncated by a byte
        coded = coded[:-1]
    else:  # a random byte flipped
        i = rng.randrange(len(coded))
        coded = coded[:i] + bytes((coded[i] ^ (1 << rng.randrange(8)),)) + coded[i + 1:]
    return _int(rng, len(coded), 7, 0x80) + coded


def _index(rng: random.Random, entries: int) -> int:
    r = rng.random()
    if r < 0.45:
        return rng.randrange(1, 62)
    if r < 0.85 and entries:
        return 62 + rng.randrange(entries)
    return rng.choice((0, 62 + entries, 62 + entries + 1, 127, 128, 2 ** 20, 2 ** 34))


def _representation(rng: random.Random, entries: int, allowed: int) -> bytes:
    r = rng.random()
    if r < 0.3:  # indexed field
        return _int(rng, _index(rng, entries), 7, 0x80)
    if r < 0.8:  # a literal: incremental / without / never indexed
        prefix, flags = rng.choice(((6, 0x40), (4, 0x00), (4, 0x10)))
        if rng.random() < 0.5:
            head = _int(rng, _index(rng, entries), prefix, flags)
        else:
            head = bytes((flags,)) + _string(rng, rng.choice(WORDS))
        return head + _string(rng, rng.choice(WORDS))
    if r < 0.92:  # dynamic table size update
        size = rng.choice((0, 1, 64, 100, 4096, allowed, allowed + 1, 2 ** 31, 2 ** 34))
        return _int(rng, size, 5, 0x20)
    r = rng.random()
    if r < 0.25:  # an overlong integer (hpack: more than five continuation octets)
        first = rng.choice((0xFF, 0x7F, 0x3F, 0x1F))
        return bytes((first,)) + b"\xff" * rng.randrange(4, 9) + b"\x01"
    if r < 0.5:  # a string length far past the block
        return b"\x40" + _int(rng, rng.choice((300, 2 ** 20, 2 ** 34)), 7,
                              rng.choice((0, 0x80))) + b"abc"
    if r < 0.75:  # a truncated representation
        whole = _representation(rng, entries, allowed)
        return whole[:rng.randrange(max(1, len(whole)))]
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))


def _block(rng: random.Random, entries: int, allowed: int) -> bytes:
    parts = [_representation(rng, entries, allowed) for _ in range(rng.randrange(0, 12))]
    if rng.random() < 0.3:  # a size update somewhere (the start is valid)
        where = 0 if rng.random() < 0.5 else rng.randrange(len(parts) + 1)
        parts.insert(where, _int(rng, rng.choice((0, 256, allowed)), 5, 0x20))
    if rng.random() < 0.05:  # the bomb: one big entry, then many references
        parts = [b"\x40\x01a" + _int(rng, 4000, 7, 0) + b"b" * 4000] + [b"\xbe"] * 200
    return b"".join(parts)


def _outcome(decoder: Any, data: bytes) -> tuple[Any, ...]:
    try:
        fields = decoder.decode(data, raw=True)
    except Exception as err:  # the class is the result
        result: Any = type(err)
    else:
        result = [(type(f), tuple(f)) for f in fields]
    table = decoder.header_table
    return (result, list(map(tuple, table.dynamic_entries)), table._current_size,
            decoder.header_table_size)


@pytest.mark.parametrize("seed", range(10))
def test_adversarial_blocks_decode_as_hpack(seed: int) -> None:
    """~50 connections of 30 blocks each per seed, limits changed between
    blocks: same fields or exception class, same table, every block."""
    rng = random.Random(1000 + seed)
    kinds: dict[Any, int] = {}
    for _ in range(50):
        ours, theirs = BlockDecoder(), hpack.Decoder()
        for _ in range(30):
            if rng.random() < 0.1:  # a SETTINGS ack changed our limits
                allowed = rng.choice((0, 256, 4096, 8192, 65536))
                ours.max_allowed_table_size = theirs.max_allowed_table_size = allowed
            if rng.random() < 0.1:
                limit = rng.choice((100, 1000, 8000, 65536))
                ours.max_header_list_size = theirs.max_header_list_size = limit
            data = _block(rng, len(theirs.header_table.dynamic_entries),
                          theirs.max_allowed_table_size)
            want = _outcome(theirs, data)
            assert _outcome(ours, data) == want, data
            key = want[0] if isinstance(want[0], type) else list
            kinds[key] = kinds.get(key, 0) + 1
    # every outcome was exercised: fields, a bad index, a bad size, a
    # malformed block, an oversized list
    assert kinds.get(list, 0) > 100
    for cls in (hpack.InvalidTableIndex, hpack.InvalidTableSizeError,
                hpack.HPACKDecodingError, hpack.OversizedHeaderListError):
        assert kinds.get(cls, 0) > 3, (cls, kinds)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_valid_blocks_decode_as_hpack(seed: int) -> None:
    """Blocks a real encoder made (with its table, so later ones index
    earlier entries), then truncated, extended, bit-flipped or spliced."""
    rng = random.Random(2000 + seed)
    for _ in range(30):
        sender = hpack.Encoder()
        ours, theirs = BlockDecoder(), hpack.Decoder()
        for _ in range(20):
            fields = [(rng.choice(WORDS[:12]) or b"x", rng.choice(WORDS))
                      for _ in range(rng.randrange(1, 8))]
            if rng.random() < 0.2:
                fields[0] = NeverIndexedHeaderTuple(*fields[0])
            data = bytearray(sender.encode(fields, huffman=rng.random() < 0.6))
            how = rng.randrange(5)
            if how == 1:
                del data[rng.randrange(len(data)):]
            elif how == 2:
                data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
            elif how == 3:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif how == 4:
                cut = rng.randrange(len(data))
                data = data[cut:] + data[:cut]
            assert _outcome(ours, bytes(data)) == _outcome(theirs, bytes(data)), bytes(data)


@pytest.mark.parametrize(("data", "error"), [
    (b"\x80", hpack.InvalidTableIndex),  # index 0
    (b"\x40\x00\x01a", None),  # empty literal name: decoded (h2 refuses it)
    (b"\xff\x80\x80\x80\x80\x80\x00", hpack.HPACKDecodingError),  # 6 continuation octets
    (b"\xff\xff\xff\xff\xff\x7f", hpack.InvalidTableIndex),  # 2^35-ish index
    (b"\x3f\xe1\x1f\x3f\xe1\x1f", None),  # two updates to the maximum
    (b"\x20\x3f\xe1\x1f\x20", None),  # 0, max, 0: the last wins
    (b"\x3f\xe2\x1f", hpack.InvalidTableSizeError),  # one past the allowed size
    (b"\x3f\xff\xff\xff\xff\x0f", hpack.InvalidTableSizeError),  # a huge size
    (b"\x82\x20", hpack.HPACKDecodingError),  # an update after a field
    (b"\x40\x7f\xff\xff\xff\xff\x0fab", hpack.HPACKDecodingError),  # length 2^35
    (b"\x40\x81\xff\x01a", hpack.HPACKDecodingError),  # Huffman: 8 bits of padding
    (b"\x40\x84\xff\xff\xff\xfc\x01a", hpack.HPACKDecodingError),  # Huffman: EOS
    (b"\x40\x81\x00\x01a", hpack.HPACKDecodingError),  # Huffman: '0' + padding of zeros
    (b"\x40\x80\x80", None),  # empty Huffman name and value
    (b"\x7f", hpack.HPACKDecodingError),  # an index prefix with nothing after it
    (b"\x40", hpack.HPACKDecodingError),  # a literal with nothing after it
])
def test_edge_blocks(data: bytes, error: Any) -> None:
    ours, theirs = BlockDecoder(), hpack.Decoder()
    want = _outcome(theirs, data)
    assert _outcome(ours, data) == want
    assert want[0] == error if error else isinstance(want[0], list)


def test_table_survives_a_connection_of_size_changes() -> None:
    """Entries added, the table shrunk to 0 and regrown by updates in later
    blocks, entries referenced by dynamic index across blocks: the same
    fields and table as hpack's throughout (a desync would give a client's
    later indexed field another value than the client meant)."""
    rng = random.Random(7)
    ours, theirs = BlockDecoder(), hpack.Decoder()
    for step in range(400):
        parts = []
        if step % 9 == 0:
            parts.append(_int(rng, rng.choice((0, 33, 70, 200, 4096)), 5, 0x20))
        for _ in range(rng.randrange(1, 6)):
            value = b"v%d" % rng.randrange(10 ** rng.randrange(1, 4))
            parts.append(b"\x40" + _string(rng, b"x-netbird-user") + _string(rng, value))
            entries = len(theirs.header_table.dynamic_entries)
            if entries:
                parts.append(_int(rng, 62 + rng.randrange(entries), 7, 0x80))
        data = b"".join(parts)
        want = _outcome(theirs, data)
        assert _outcome(ours, data) == want, step


def _lit(data: bytes, huffman: bool = False) -> bytes:
    if huffman:
        data = huffman_encode(data)
    head = encode_integer(len(data), 7)
    if huffman:
        head[0] |= 0x80
    return bytes(head) + data


#: the largest block h2 assembles: a HEADERS frame and 64 CONTINUATION
#: frames (h2.frame_buffer.CONTINUATION_BACKLOG) of 16,384 bytes
MAX_BLOCK = 65 * 16384


@pytest.mark.parametrize("case", ["bomb", "tiny-entries", "length-claims", "raw-literal",
                                  "bad-huffman-tail"])
def test_adversarial_block_memory_is_bounded(case: str) -> None:
    """A maximal block built to expand (one 4 kB entry then ~1M one-byte
    references to it; ~350k tiny indexed literals; length claims of 2^34; a
    1 MB raw literal; a 1 MB Huffman string failing at its first bytes):
    the decoder fails on it with no more than the block's size again in
    peak memory (hpack's own peak is about twice the block)."""
    import tracemalloc

    if case == "bomb":
        data = b"\x40" + _lit(b"x-netbird-user") + _lit(b"b" * 4000)
        data += b"\xbe" * (MAX_BLOCK - len(data))
    elif case == "tiny-entries":
        data = (b"\x40" + _lit(b"a") + _lit(b"")) * (MAX_BLOCK // 3)
    elif case == "length-claims":
        data = (b"\x40\x01a\x7f\xff\xff\xff\xff\x3f") * (MAX_BLOCK // 9)
    elif case == "raw-literal":
        data = b"\x40" + _lit(b"x-a") + _lit(b"a" * (MAX_BLOCK - 16))
    else:
        bad = b"\xff\xff\xff\xfc" + b"\x00" * (MAX_BLOCK - 16)  # EOS first
        data = b"\x40" + _lit(b"x-a") + bytes(encode_integer(len(bad), 7)) + bad
        data = data[:1 + 4] + bytes((data[5] | 0x80,)) + data[6:]  # the H bit
    decoder = BlockDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(hpack.HPACKDecodingError):
            decoder.decode(data, raw=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data) + 256 * 1024, peak
    assert decoder.header_table._current_size <= decoder.header_table_size
