"""FAILS on main at e5a5df0 (h2_hpack since b9ffbb2): a client's Huffman-coded literal of
~1 MB (one HEADERS + 64 CONTINUATION frames) makes BlockDecoder's
huffman_decode peak at ~90 bytes per received byte (~95 MB): its list of
per-byte pieces joined by bytes.join, which allocates one Py_buffer (80 B)
per piece.  hpack's decode_huffman peaks at ~4 bytes per byte.  Copy to
tests/proxy/ once h2_hpack decodes long strings into a bytearray."""

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
