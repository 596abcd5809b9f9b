"""What one keep-alive HTTPS request costs the TLS layer in calls into
OpenSSL, through the gateway's fast channel on the record path
(nbgateway.tls.dispatch._RecordPath): one ``BIO_write`` and one
``SSL_read`` for the request, one ``SSL_write`` and one ``BIO_read`` for the
response, no BIO asked how much it holds, and one transport write -- the
least a memory-BIO TLS connection can do.  Each such call costs ~0.5-1.1k
instructions of cffi glue on top of OpenSSL's own work (callgrind), so a
call more per request is a measurable regression; the protocol's own attribute reads are pinned in
tests/tls/test_tls_hot_path.py.

Only the server's calls are counted: the names are patched where the record
path calls them (nbgateway.tls.records and the common read and write inlined
in nbgateway.tls.dispatch); the in-memory pyOpenSSL client calls OpenSSL
through pyOpenSSL's own bindings."""

from __future__ import annotations

import collections
from typing import Any

from OpenSSL import SSL
from twisted.trial import unittest

from nbgateway.tls import dispatch, records
from tests.tls.test_tls_instance_size import HTTPS

_CALLS = ("_bio_write", "_ssl_read", "_ssl_write", "_bio_read")
#: also counted, expected never on the common path: ``BIO_get_mem_data``
#: (asking a BIO how much it holds, records.unread/unsent) and
#: ``SSL_get_error`` (after a SSL_read that returned no plaintext)
_ASIDES = ("_mem_pending", "_get_error")


class _Counted:
    """Counts the record path's calls of the OpenSSL bindings."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        for name in _CALLS + _ASIDES:
            real = getattr(records, name)

            def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                self.calls[_name] += 1
                return _real(*args)

            for module in (records, dispatch):
                if hasattr(module, name):
                    test.patch(module, name, counted)


class RequestCallTests(unittest.SynchronousTestCase):
    def test_four_openssl_calls_and_one_transport_write_per_request(self):
        for version in (None, SSL.TLS1_2_VERSION):
            h = HTTPS(True, version)
            # the first read on the path goes through the loop (TLS 1.3: it
            # also carries the client's Finished) and proves reads exact
            for warm in (b"/warm", b"/warm2"):
                self.assertTrue(h.get(warm).endswith(b"tls"))
            counted = _Counted(self)
            writes = h.wire.writes
            n = 6
            for i in range(n):  # varied heads: each its own path, query and ETag
                got = h.get(b"/p%d/%s?q=%d" % (i, b"x" * (i * 37), i))
                self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
                self.assertTrue(got.endswith(b"\r\n\r\ntls"), got)
            self.assertEqual(dict(counted.calls), dict.fromkeys(_CALLS, n), version)
            self.assertEqual(h.wire.writes - writes, n)
            self.assertIsNotNone(h.server._path)  # still on the record path

    def test_twisted_path_makes_more_calls(self):
        # the same requests with the record path off go through pyOpenSSL's
        # Connection (whose calls the patch does not see) and never here
        h = HTTPS(False)
        self.assertTrue(h.get(b"/warm").endswith(b"tls"))
        counted = _Counted(self)
        for i in range(3):
            self.assertTrue(h.get(b"/p%d?q=%d" % (i, i)).endswith(b"tls"))
        self.assertEqual(sum(counted.calls[name] for name in ("_ssl_read", "_ssl_write")), 0)
        self.assertIsNone(h.server._path)
