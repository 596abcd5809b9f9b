"""FAILS on main at e5a5df0 (pre-existing: hpack's Encoder does the same;
TableEncoder inherits its _encode_table_size_change): when the client's
SETTINGS_HEADER_TABLE_SIZE changes more than once before the gateway's next
header block (e.g. 1024, 4096, then 256; or a change, a response block the
gateway refuses, another change), the next block carries every size in
order, and the client, whose limit is now the last one, refuses the larger
intermediate size (RFC 7541 6.3: a size above the limit is a decoding
error): its connection fails.  RFC 7541 4.2: the encoder signals the
smallest size reached, then the final size.  Only the client's own
connection breaks (low severity); fix: /tmp/h16/fuzz12/size_changes.patch."""

from __future__ import annotations

import hpack

from nbgateway.proxy.h2_hpack import TableEncoder


def test_smallest_then_final_size() -> None:
    for changes in ([1024, 4096, 256], [65536, 256], [0, 4096], [100, 50, 80], [300]):
        encoder = TableEncoder()
        decoder = hpack.Decoder()
        for size in changes:
            encoder.header_table_size = size
        decoder.max_allowed_table_size = changes[-1]
        block = encoder.encode([(b"x-a", b"1"), (b"x-b", b"2")])
        assert decoder.decode(block, raw=True) == [(b"x-a", b"1"), (b"x-b", b"2")]
        assert decoder.header_table_size == encoder.header_table_size == changes[-1]
        assert list(decoder.header_table.dynamic_entries) == list(
            encoder.header_table.dynamic_entries)
