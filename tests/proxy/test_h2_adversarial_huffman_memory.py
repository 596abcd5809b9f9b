"""A client's Huffman-coded literal of ~1 MB (one HEADERS + 64 CONTINUATION
frames): BlockDecoder's memory stays within hpack's own.  Decoded through
``bytes.join`` of per-byte pieces it peaked at ~90 bytes per received byte
(~95 MB; one Py_buffer of 80 B per piece); long strings are decoded into a
bytearray, and a block too long to decode within the header list limit is
refused before its strings are decoded."""

from __future__ import annotations

import tracemalloc

import hpack
import pytest

from nbgateway.proxy.h2_hpack import BlockDecoder, encode_integer, huffman_decode, huffman_encode

MAX_BLOCK = 65 * 16384


@pytest.mark.parametrize("plain", [b"a" * (MAX_BLOCK * 8 // 5 - 64),  # 5-bit codes: 2 per byte
                                   bytes(range(256)) * (MAX_BLOCK // 600)])
def test_long_huffman_literal_memory_is_bounded(plain: bytes) -> None:
    coded = huffman_encode(plain)
    head = encode_integer(len(coded), 7)
    head[0] |= 0x80
    data = b"\x40\x03x-a" + bytes(head) + coded
    peaks = []
    for decoder in (BlockDecoder(), hpack.Decoder()):  # over the 64 kB list limit
        tracemalloc.start()
        try:
            with pytest.raises(hpack.OversizedHeaderListError):
                decoder.decode(data, raw=True)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    # no more than hpack's own peak (~4 bytes per received byte)
    assert peaks[0] < peaks[1] + 256 * 1024, (peaks, len(data))
    assert huffman_decode(coded) == plain


def test_long_huffman_string_decodes_in_bounded_memory() -> None:
    """``huffman_decode`` itself (the block bound aside): ~1 MB of 5-bit codes
    decodes within a few bytes per received byte."""
    plain = b"a" * (MAX_BLOCK * 8 // 5)
    coded = huffman_encode(plain)
    tracemalloc.start()
    try:
        assert huffman_decode(coded) == plain
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(coded) + 256 * 1024, (peak, len(coded))


@pytest.mark.parametrize("limit", [100, 8000, 65536])
def test_block_past_the_bound_is_refused_undecoded(
        limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block longer than 30/8 of the header list limit (plus slack) cannot
    decode within it (every string decodes to at least 8/30 of its octets):
    refused as hpack refuses it, without decoding a string."""
    # the longest codes (30 bits): a string decoding to the fewest octets
    plain = b"\n" * ((limit * 30 // 8 + 20_000) * 8 // 30)
    coded = huffman_encode(plain)
    head = encode_integer(len(coded), 7)
    head[0] |= 0x80
    data = b"\x00\x03x-a" + bytes(head) + coded
    theirs = hpack.Decoder()
    theirs.max_header_list_size = limit
    with pytest.raises(hpack.OversizedHeaderListError):
        theirs.decode(data, raw=True)
    ours = BlockDecoder()
    ours.max_header_list_size = limit
    import nbgateway.proxy.h2_hpack as h2_hpack

    def refuse(_data: bytes) -> bytes:
        raise AssertionError("decoded a string of a block past the bound")

    monkeypatch.setattr(h2_hpack, "huffman_decode", refuse)
    monkeypatch.setattr(h2_hpack, "_huffman_decode_long", refuse)
    with pytest.raises(hpack.OversizedHeaderListError):
        ours.decode(data, raw=True)
