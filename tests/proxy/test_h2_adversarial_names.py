"""A request header name h2 accepts (RFC 9113 8.2.1: any visible ASCII but
upper case and ':') that is not an RFC 9110 token (``a(b``,
``x-netbird-user(``, ``{``, ``a"b``, ``x-a/b``) once made Twisted's
``Headers`` raise ``InvalidHeaderName`` inside the stream's constructor,
out of ``TrailersH2Connection.dataReceived`` into the reactor (a traceback
per request, the connection dropped without GOAWAY).  Expected and checked:
GOAWAY PROTOCOL_ERROR, as for every other malformed field, no request, no
exception (``check_request_headers`` takes token names only)."""

from __future__ import annotations

import h2.errors
import pytest
from hyperframe.frame import SettingsFrame

from tests.proxy.test_h2_adversarial_conn import BASE, PREFACE, _gateway, _headers_frames, _lit


@pytest.mark.parametrize("name", [b"a(b", b"x-netbird-user(", b"{", b'a"b', b"x-a/b", b"a@b",
                                  b"x-a=b", b"a[b]", b"a\\b", b"a;b", b"a,b", b"a?b"])
def test_non_token_names_end_the_connection(name: bytes) -> None:
    bad = BASE + b"\x00" + _lit(name, False) + _lit(b"v", False)
    wire = PREFACE + SettingsFrame(0).serialize() + _headers_frames(1, bad)
    got, record = _gateway([wire])
    assert got.raised is None, repr(got.raised)
    assert got.goaway == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert record.seen == []
