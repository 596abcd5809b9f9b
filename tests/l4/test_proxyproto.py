"""PROXY protocol reader (v1/v2) and v2 encoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.l4.proxyproto import (
    MAX_V2_LENGTH,
    NOT_PROXY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
    encode_v2,
)


def test_v1_tcp4_and_rest():
    r = ProxyHeaderReader()
    assert r.feed(b"PROXY TCP4 192.0.2.1 198.18.0.1 5555 443\r") is None
    hdr, rest = r.feed(b"\nhello")
    assert hdr == ProxyHeader(1, ("192.0.2.1", 5555), ("198.18.0.1", 443))
    assert rest == b"hello"


def test_v1_tcp6_unknown():
    hdr, _ = ProxyHeaderReader().feed(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
    assert hdr.source == ("2001:db8::1", 1)
    hdr, rest = ProxyHeaderReader().feed(b"PROXY UNKNOWN whatever\r\nX")
    assert hdr == ProxyHeader(1, None, None) and rest == b"X"


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY " + b"A" * 120,
])
def test_v1_malformed(line):
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderReader().feed(line)


def test_not_proxy_returns_everything():
    assert ProxyHeaderReader().feed(b"GET / HTTP/1.1\r\n") == (NOT_PROXY, b"GET / HTTP/1.1\r\n")
    assert ProxyHeaderReader().feed(b"\x16\x03\x01") == (NOT_PROXY, b"\x16\x03\x01")
    r = ProxyHeaderReader()
    assert r.feed(b"PRO") is None
    assert r.feed(b"XY") is None
    assert r.feed(b"!") == (NOT_PROXY, b"PROXY!")


def test_v2_round_trip_v4_v6_mapped():
    data = encode_v2(("192.0.2.7", 4000), ("198.18.0.1", 443)) + b"tail"
    hdr, rest = ProxyHeaderReader().feed(data)
    assert hdr == ProxyHeader(2, ("192.0.2.7", 4000), ("198.18.0.1", 443)) and rest == b"tail"
    hdr, _ = ProxyHeaderReader().feed(encode_v2(("2001:db8::5", 1), ("2001:db8::6", 2)))
    assert hdr.source == ("2001:db8::5", 1)
    data = encode_v2(("::ffff:192.0.2.9", 9), ("127.0.0.1", 10))
    assert data[13] == 0x11  # TCP over IPv4
    assert ProxyHeaderReader().feed(data)[0].source == ("192.0.2.9", 9)
    data = encode_v2(("192.0.2.9", 9), ("2001:db8::1", 10))
    assert data[13] == 0x21
    assert ProxyHeaderReader().feed(data)[0].source == ("::ffff:c000:209", 9)


def test_v2_byte_by_byte():
    data = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2))
    r = ProxyHeaderReader()
    for b in data[:-1]:
        assert r.feed(bytes([b])) is None
    assert r.feed(data[-1:])[0].source == ("10.0.0.1", 1)


def test_v2_local_and_tlvs_skipped():
    hdr, rest = ProxyHeaderReader().feed(V2_SIGNATURE + b"\x20\x00\x00\x00rest")
    assert hdr == ProxyHeader(2, None, None) and rest == b"rest"
    body = bytes(12) + b"\x04\x00\x01X"  # an IPv4 body followed by a NOOP TLV
    data = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body
    assert ProxyHeaderReader().feed(data)[0].source == ("0.0.0.0", 0)


@pytest.mark.parametrize("fixed,body", [
    (struct.pack("!BBH", 0x21, 0x11, 4), b"\x00" * 4),       # length shorter than addresses
    (struct.pack("!BBH", 0x21, 0x21, 12), b"\x00" * 12),     # v6 family, v4 length
    (struct.pack("!BBH", 0x31, 0x11, 12), b"\x00" * 12),     # version 3
    (struct.pack("!BBH", 0x2F, 0x11, 12), b"\x00" * 12),     # bad command
    (struct.pack("!BBH", 0x21, 0x51, 12), b"\x00" * 12),     # bad family
    (struct.pack("!BBH", 0x21, 0x11, MAX_V2_LENGTH + 1), b""),  # oversize
])
def test_v2_lies(fixed, body):
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderReader().feed(V2_SIGNATURE + fixed + body)


def test_v2_long_claim_waits_bounded():
    r = ProxyHeaderReader()
    assert r.feed(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_LENGTH)) is None
    assert len(r.buffered) <= 16 + MAX_V2_LENGTH


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_v2_body(body):
    for fixed in (V2_SIGNATURE, b"PROXY "):
        try:
            out = ProxyHeaderReader().feed(fixed + body)
        except ProxyProtocolError:
            continue
        assert out is None or out[0] is NOT_PROXY or isinstance(out[0], ProxyHeader)
