"""When the client's SETTINGS_HEADER_TABLE_SIZE changes more than once before
the gateway's next header block (e.g. 1024, 4096, then 256; or a change, a
response block the gateway refuses, another change), hpack's encoder sent
every size in order, and the client, whose limit is now the last one,
refuses the larger intermediate size (RFC 7541 6.3): its connection failed.
RFC 7541 4.2: the encoder signals the smallest size reached, then the
final size, which is what is checked here."""

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
