"""SNI peeker: real ClientHellos from the ssl module, edge cases, fuzzing."""

from __future__ import annotations

import contextlib
import ssl
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.l4.sni import MAX_RECORD, NOT_TLS, TLS_NO_SNI, PeekResult, SNIPeeker, server_name


def client_hello(name: str | None) -> bytes:
    """The first flight of a real TLS client asking for ``name``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def hello_record(sni: bytes) -> bytes:
    """A hand-built ClientHello record whose server_name is ``sni``."""
    entry = b"\x00" + struct.pack("!H", len(sni)) + sni
    ext_body = struct.pack("!H", len(entry)) + entry
    exts = struct.pack("!HH", 0, len(ext_body)) + ext_body
    hello = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
             + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_real_client_hello_name_lower_cased():
    data = client_hello("App.Example.COM")
    p = SNIPeeker()
    assert p.feed(data) == PeekResult(True, "app.example.com")
    assert p.buffered == data


def test_byte_by_byte_and_replay_keeps_everything():
    data = client_hello("a.example") + b"trailing"
    p = SNIPeeker()
    results = [p.feed(data[i:i + 1]) for i in range(len(data))]
    first = next(i for i, r in enumerate(results) if r is not None)
    assert results[first] == PeekResult(True, "a.example")
    assert first < len(data) - len(b"trailing")  # answered at the end of the first record
    assert p.buffered == data


def test_no_sni_extension():
    assert SNIPeeker().feed(client_hello(None)) == TLS_NO_SNI


def test_not_tls():
    assert SNIPeeker().feed(b"GET / HTTP/1.1\r\n") == NOT_TLS
    assert SNIPeeker().feed(b"SSH-2.0-x") == NOT_TLS


def test_record_length_zero_or_oversize_is_tls_without_sni():
    assert SNIPeeker().feed(b"\x16\x03\x01\x00\x00") == TLS_NO_SNI
    over = MAX_RECORD + 1
    assert SNIPeeker().feed(b"\x16\x03\x01" + struct.pack("!H", over)) == TLS_NO_SNI


def test_truncated_waits_for_more():
    data = client_hello("a.example")
    p = SNIPeeker()
    assert p.feed(data[:4]) is None
    assert p.feed(data[4:20]) is None


def test_name_rules():
    assert SNIPeeker().feed(hello_record(b"a" * 253)).server_name == "a" * 253
    assert SNIPeeker().feed(hello_record(b"a" * 254)) == TLS_NO_SNI
    assert SNIPeeker().feed(hello_record(b"a\x00b.example")) == TLS_NO_SNI
    assert SNIPeeker().feed(hello_record("ä.example".encode())) == TLS_NO_SNI
    assert SNIPeeker().feed(hello_record(b"X.EXAMPLE")).server_name == "x.example"
    # the root dot is dropped once, as domain_key folds a route's domain
    assert SNIPeeker().feed(hello_record(b"X.Example.")).server_name == "x.example"
    assert SNIPeeker().feed(hello_record(b".")).server_name == ""


def test_lying_inner_lengths_mean_no_sni():
    rec = bytearray(hello_record(b"a.example"))
    rec[6:9] = (0xFFFFFF).to_bytes(3, "big")  # handshake longer than the record
    assert SNIPeeker().feed(bytes(rec)) == TLS_NO_SNI
    assert server_name(b"\x02\x00\x00\x00") == ""  # not a ClientHello


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_never_raises_and_bounded(data):
    p = SNIPeeker()
    r = p.feed(b"\x16\x03\x01" + struct.pack("!H", len(data)) + data)
    if data:
        assert r is not None and r.tls
    server_name(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_real_hello(pos, junk):
    data = bytearray(client_hello("b.example"))
    pos = min(pos, len(data) - 1)
    data[pos:pos + len(junk)] = junk
    r = SNIPeeker().feed(bytes(data))
    assert r is None or isinstance(r, PeekResult)
