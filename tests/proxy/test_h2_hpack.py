"""nbgateway.proxy.h2_hpack against the ``hpack`` package it replaces on the
gateway's HTTP/2 connections: the same header block bytes and table for the
same fields, the same decoded fields (and field types) and table, errors for
the same malformed blocks."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError

from nbgateway.proxy.h2_hpack import (
    BlockDecoder,
    TableEncoder,
    encode_integer,
    huffman_decode,
    huffman_encode,
)
from nbgateway.proxy.h2trailers import TrailersH2Connection

#: what h2 turns into a ProtocolError (h2.connection._decode_headers)
_DECODE_ERRORS = (HPACKError, IndexError, TypeError, UnicodeDecodeError)

NAMES = [b":status", b":path", b":method", b":authority", b"content-type", b"etag",
         b"date", b"cache-control", b"set-cookie", b"x-request-id", b"x-a", b"cookie",
         b"authorization", b"accept-encoding", b"vary", b"server", b"x-long" * 30]
VALUES = [b"200", b"404", b"/", b"/index.html", b"GET", b"text/html", b"gzip, deflate",
          b"", b"x" * 200, b"\x00\xff\x80binary", "unicod\u00e9".encode()]


def _random_block(rng: random.Random, n: int) -> list:
    block = []
    for _ in range(n):
        name = rng.choice(NAMES) if rng.random() < 0.8 else b"n%d" % rng.randrange(40)
        r = rng.random()
        if r < 0.5:
            value = rng.choice(VALUES)
        elif r < 0.8:
            value = b"v%d" % rng.randrange(rng.choice((5, 500)))
        else:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        kind = rng.random()
        if kind < 0.1:
            block.append(NeverIndexedHeaderTuple(name, value))
        elif kind < 0.2:
            block.append(HeaderTuple(name, value))
        elif kind < 0.3:
            block.append((name, value, rng.random() < 0.5))
        elif kind < 0.35:
            block.append((name.decode("latin-1"), value.decode("latin-1")))
        else:
            block.append((name, value))
    return block


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("huffman", [True, False])
def test_encoder_same_bytes_and_table_as_hpack(seed: int, huffman: bool) -> None:
    rng = random.Random(seed)
    ours, theirs = TableEncoder(), hpack.Encoder()
    for step in range(400):
        if step % 37 == 5:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice((0, 64, 256, 1024, 4096, 8192))
            ours.header_table_size = size
            theirs.header_table_size = min(size, 4096)  # TableEncoder caps its table
        block = _random_block(rng, rng.randrange(0, 20))
        assert ours.encode(block, huffman) == theirs.encode(block, huffman), step
        assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
        assert ours.header_table._current_size == theirs.header_table._current_size
    # the index names only live entries, each at its newest copy
    table = ours.header_table
    live = list(table.dynamic_entries)
    for (name, value), seq in table.pairs.items():
        assert live[table.added - seq] == (name, value)
    assert set(table.pairs) == set(live)
    assert set(table.names) == {n for n, _ in live}


def test_encoder_dict_input_is_hpacks() -> None:
    headers = {b"content-type": b"text/html", b":status": b"200"}
    assert TableEncoder().encode(headers) == hpack.Encoder().encode(headers)


def test_integers_and_huffman_as_hpack() -> None:
    rng = random.Random(1)
    for value in list(range(300)) + [rng.randrange(2 ** 28) for _ in range(300)]:
        for bits in range(1, 9):
            assert encode_integer(value, bits) == hpack.hpack.encode_integer(value, bits)
    coder = hpack.Encoder().huffman_coder
    for n in range(0, 300, 7):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert huffman_encode(data) == coder.encode(data)


def _huffman(decode, data: bytes) -> bytes | None:
    try:
        return decode(data)
    except hpack.HPACKDecodingError:
        return None


def test_huffman_decode_as_hpack() -> None:
    """Valid strings of every length up to 40, every 1- and 2-byte string,
    random (mostly invalid) strings and padding cases: the same octets, or
    both fail."""
    rng = random.Random(3)
    cases = [bytes((a,)) for a in range(256)]
    cases += [bytes((a, b)) for a in range(256) for b in range(0, 256, 5)]
    for n in range(41):
        plain = bytes(rng.randrange(256) for _ in range(n))
        coded = huffman_encode(plain)
        assert huffman_decode(coded) == plain
        cases += [coded, coded + b"\xff", coded[:-1], coded + b"\x00"]
        if coded:
            cases.append(coded[:-1] + bytes((coded[-1] & 0xFE,)))  # padding not all ones
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))
              for _ in range(3000)]
    cases.append(b"\xff\xff\xff\xff")  # EOS (30 ones) inside a string
    failed = 0
    for data in cases:
        want = _huffman(hpack.huffman_table.decode_huffman, data)
        assert _huffman(huffman_decode, data) == want, data
        failed += want is None
    assert 1000 < failed < len(cases) - 1000


def _decode_both(ours: BlockDecoder, theirs: hpack.Decoder, data: bytes) -> None:
    try:
        want = theirs.decode(data, raw=True)
    except _DECODE_ERRORS:
        with pytest.raises(_DECODE_ERRORS):
            ours.decode(data, raw=True)
        return
    got = ours.decode(data, raw=True)
    assert got == want
    assert [type(h) for h in got] == [type(h) for h in want]
    assert ours.header_table.dynamic_entries == theirs.header_table.dynamic_entries
    assert ours.header_table_size == theirs.header_table_size


@pytest.mark.parametrize("seed", range(6))
def test_decoder_same_fields_and_table_as_hpack(seed: int) -> None:
    rng = random.Random(seed)
    sender = hpack.Encoder()
    ours, theirs = BlockDecoder(), hpack.Decoder()
    for step in range(400):
        if step % 41 == 7:  # the encoder shrinks its table (a size update)
            size = rng.choice((0, 128, 1024, 4096))
            sender.header_table_size = size
        data = sender.encode(_random_block(rng, rng.randrange(0, 20)),
                             huffman=rng.random() < 0.7)
        _decode_both(ours, theirs, data)


@pytest.mark.parametrize("seed", range(4))
def test_decoder_malformed_blocks_fail_as_hpack(seed: int) -> None:
    """Truncated, bit-flipped and random blocks: both raise, or both give the
    same fields (each pair of decoders sees the same history)."""
    rng = random.Random(seed)
    failures = 0
    for _ in range(600):
        data = bytearray(hpack.Encoder().encode(_random_block(rng, rng.randrange(1, 12))))
        how = rng.random()
        if how < 0.3 and data:
            del data[rng.randrange(len(data)):]
        elif how < 0.7 and data:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        try:
            hpack.Decoder().decode(bytes(data), raw=True)
        except _DECODE_ERRORS:
            failures += 1
        _decode_both(BlockDecoder(), hpack.Decoder(), bytes(data))
    assert failures > 100  # the malformed cases were exercised


@pytest.mark.parametrize("data", [
    b"\x80",  # index 0
    b"\xbe",  # index 62, empty dynamic table
    b"\xff\x80\x80\x80\x80\x80\x01",  # integer too long
    b"\xff\xff\xff\xff\xff\x0f",  # five continuation octets: hpack accepts the length
    b"\x40\x01a\x7f\x80\x80\x80\x80\x00" + b"x" * 127,  # the same, zero-padded, valid
    b"\x40\x01a\x7f\x80\x80\x80\x80\x80\x00" + b"x" * 127,  # one octet more: too long
    b"\x40\x03ab",  # truncated name
    b"\x40\x01a\x05abc",  # truncated value
    b"\x40\x81\xff\x01a",  # bad Huffman
    b"\x82\x3f\xe1\x1f",  # table size update after a field
    b"\x3f\xe2\x1f",  # table size update beyond the allowed size
    b"\x20\x82",  # table size 0 then a field
    b"\x00\x01a\x01b\x10\x01c\x01d\x0f\x2f\x01e",  # not indexed / never indexed / index 62 name
])
def test_decoder_edge_blocks(data: bytes) -> None:
    _decode_both(BlockDecoder(), hpack.Decoder(), data)


def test_decoder_oversized_header_list() -> None:
    ours, theirs = BlockDecoder(), hpack.Decoder()
    ours.max_header_list_size = theirs.max_header_list_size = 100
    data = hpack.Encoder().encode([(b"a", b"x" * 40), (b"b", b"y" * 40)])
    with pytest.raises(hpack.OversizedHeaderListError):
        theirs.decode(data, raw=True)
    with pytest.raises(hpack.OversizedHeaderListError):
        ours.decode(data, raw=True)


def test_decoder_text_mode_is_hpacks() -> None:
    data = hpack.Encoder().encode([(b":path", b"/x"), (b"a", "\u00e9".encode())])
    assert BlockDecoder().decode(data) == hpack.Decoder().decode(data) == [
        (":path", "/x"), ("a", "\u00e9")]


def test_gateway_connections_use_them() -> None:
    conn = TrailersH2Connection().conn
    assert isinstance(conn.encoder, TableEncoder)
    assert isinstance(conn.decoder, BlockDecoder)
    assert conn.decoder.max_header_list_size == conn.DEFAULT_MAX_HEADER_LIST_SIZE
