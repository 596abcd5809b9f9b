"""llhttp keeps a header value's trailing SP/HT; twisted.web (and nginx) strip
it (RFC 9112 5: OWS around a field value is not part of it).  The fast path
forwarded 'X-A: a\t' where the twisted.web path forwards 'X-A: a' (no
identity or framing issue: Content-Length '3 ' and Host 'h ' make the fast
path decline or miss its route).  Both now forward the value stripped."""

from tests.proxy.test_h1_adversarial_head import (
    ALICE,
    ENTRIES,
    _ctx,
    fast_parse,
    general,
    served,
    twisted_parse,
)

HEAD = b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-A: a\t \r\nAccept:  b  \r\n\r\n"


def test_fast_path_strips_trailing_ows_as_twisted_web():
    for entry in ENTRIES:
        _route, ctx = _ctx(entry, ALICE)
        assert served(entry, fast_parse(HEAD), ctx) == general(twisted_parse(HEAD), ctx)
