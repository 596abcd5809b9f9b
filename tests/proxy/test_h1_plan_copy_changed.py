"""RoutePlan.head takes the head parse's copied lines only while the request's
headers are as parsed.  A header removed and another added between parse and
plan (same count), or a value replaced in place (setRawHeaders on an existing
name), must reach the upstream as changed, never as the client sent it: the
fast path's headers (``ParsedHeaders``) note any change made through their
methods, and the plan then walks them.  (Nothing on the fast path changes
request headers this way today; this keeps future front-door or auth code
from sending stale lines.)"""

from tests.proxy.test_h1_adversarial_head import ALICE, ENTRIES, _ctx, fast_parse, planned

HEAD = b"GET /p HTTP/1.1\r\nHost: app.example\r\nAccept: a\r\nX-Env: e\r\n\r\n"


def test_removed_and_added_header_is_not_sent():
    entry = ENTRIES[0]
    _route, ctx = _ctx(entry, ALICE)
    req = fast_parse(HEAD)
    req.requestHeaders.removeHeader(b"X-Env")
    req.requestHeaders.setRawHeaders(b"X-Added", [b"n"])
    assert planned(entry, req, ctx) == planned(entry, req, ctx, walk=True)


def test_value_replaced_in_place_is_sent_replaced():
    entry = ENTRIES[0]
    _route, ctx = _ctx(entry, ALICE)
    req = fast_parse(HEAD)
    req.requestHeaders.setRawHeaders(b"X-Env", [b"changed"])
    assert b"X-Env: changed\r\n" in planned(entry, req, ctx)


def test_unchanged_headers_take_the_parsed_lines() -> None:
    """The guard costs nothing when nothing changed: the plan's head is the
    walk's, and the parse marked the headers unchanged."""
    entry = ENTRIES[0]
    _route, ctx = _ctx(entry, ALICE)
    req = fast_parse(HEAD)
    assert req.requestHeaders.changed is False
    assert req.upstream_copy is not None
    assert planned(entry, req, ctx) == planned(entry, req, ctx, walk=True)
