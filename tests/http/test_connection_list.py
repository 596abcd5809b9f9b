"""``Connection`` read as the comma-separated list RFC 9110 (7.6.1) makes it:
the ``close`` token in any field, in any case, with or without whitespace
(the end-to-end cases on both paths are in test_fast_path)."""

from __future__ import annotations

import pytest

from nbgateway.proxy.headers import connection_close


@pytest.mark.parametrize("values,closes", [
    ([b"close"], True), ([b"close, X-Foo"], True), ([b"keep-alive,close"], True),
    ([b"Keep-Alive,  CLOSE "], True), ([b"keep-alive", b"close"], True),
    ([b"keep-alive"], False), ([b"closed"], False), ([b"x-close, keep-alive"], False),
    ([b""], False), ([], False),
])
def test_close_token(values, closes):
    assert connection_close(values) is closes
