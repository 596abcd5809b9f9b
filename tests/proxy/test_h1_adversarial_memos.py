"""The HTTP/1.1 fast path's per-name and per-value memos under client- and
upstream-chosen keys: ``connection_named`` (per Connection value), the head
parse's name memo (name -> canonical, kind, ``'Name: '`` line start),
``PLAN_SKIPS``, ``_always_dropped``'s, the relay's and the lean client's.

- 100,000 distinct Connection values (short and long) leave at most
  ``_CONNECTION_NAMED_MAX`` entries, and every answer is still right;
- every memo stays within its count after 10,000 distinct names;
- with the memos full of other names, a spelling never seen before of an
  identity, forwarding or hop-by-hop name is still dropped, and a header
  named in Connection still is: an answer does not depend on what the memo
  held (no poisoning across requests);
- a name first seen on one route (one account's, with custom headers) is
  copied on another as that route's options say.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from nbgateway.dial import http11_wire
from nbgateway.proxy import fast_request, headers
from nbgateway.proxy.headers import HOP_BY_HOP, _tokens, connection_named
from tests.proxy.test_h1_adversarial_head import (
    ALICE,
    ENTRIES,
    EVIL,
    _ctx,
    check_upstream,
    fast_parse,
    general,
    planned,
    served,
)

MEMOS = [
    (headers._CONNECTION_NAMED, headers._CONNECTION_NAMED_MAX),
    (fast_request._NAMES, fast_request._NAMES_MAX),
    (headers.PLAN_SKIPS, headers._PLAN_SKIPS_MAX),
    (headers._DROPPED, headers._DROPPED_MAX),
    (headers._RELAY_KINDS, headers._RELAY_KINDS_MAX),
    (http11_wire._NAMES, http11_wire._NAMES_MAX),
]


@contextmanager
def emptied_memos() -> Iterator[None]:
    """The module memos emptied for the test, their entries put back after."""
    saved = [dict(memo) for memo, _max in MEMOS]
    for memo, _max in MEMOS:
        memo.clear()
    try:
        yield
    finally:
        for (memo, _max), old in zip(MEMOS, saved, strict=True):
            memo.clear()
            memo.update(old)


def test_connection_named_memo_is_bounded_and_right_under_100k_values():
    rng = random.Random(77)
    hop = [h.encode() for h in HOP_BY_HOP]
    with emptied_memos():
        for i in range(100_000):
            tokens = [b"x-%d" % i, rng.choice(hop), rng.choice((b"X-NetBird-User", b"Host"))]
            if i % 7 == 0:
                tokens.append(b"y" * rng.randint(40, 200))
            rng.shuffle(tokens)
            value = b", ".join(tokens)
            named = connection_named([value])
            if i % 97 == 0:  # spot-check against every token less the standard set
                assert named == _tokens([value]) - set(hop), value
        assert len(headers._CONNECTION_NAMED) <= headers._CONNECTION_NAMED_MAX
        assert all(len(v) <= 64 for v in headers._CONNECTION_NAMED)
        # a memoised value answers as a fresh one, in any case of its names
        for value in list(headers._CONNECTION_NAMED)[:50]:
            assert connection_named([value]) == _tokens([value]) - set(hop)
            assert connection_named([value.upper()]) == _tokens([value]) - set(hop)


def test_name_memos_stay_within_their_counts():
    with emptied_memos():
        for i in range(10_000):
            head = (b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-N%05d: v\r\nx-n%05d: w\r\n\r\n"
                    % (i, i))
            fast_parse(head)
            headers._relay_kind(b"X-R%05d" % i)
            http11_wire._canonical(b"x-r%05d" % i)
        for memo, most in MEMOS:
            assert len(memo) <= most


def test_full_memos_do_not_change_what_is_dropped():
    with emptied_memos():
        for i in range(5000):  # every name memo full of other names
            fast_parse(b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-Fill-%05d: v\r\n\r\n" % i)
        assert len(fast_request._NAMES) == fast_request._NAMES_MAX
        assert len(headers._DROPPED) == headers._DROPPED_MAX
        # spellings no memo holds
        lines = [(b"x-NETBIRD-uSER", EVIL), (b"X-nETBIRD-gROUPS", EVIL), (b"x-fORWARDED-fOR", EVIL),
                 (b"X-rEAL-iP", EVIL), (b"fORWARDED", EVIL), (b"kEEP-aLIVE", b"1"),
                 (b"pROXY-aUTHORIZATION", b"Basic x"), (b"CoNnEcTiOn", b"X-sEcReT"),
                 (b"x-SECRET", b"secret"), (b"X-Fresh", b"ok"), (b"Host", b"app.example")]
        head = (b"GET /p HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in lines)
                + b"\r\n")
        for entry in ENTRIES:
            for identity in (None, ALICE):
                _route, ctx = _ctx(entry, identity)
                req = fast_parse(head)
                got = served(entry, req, ctx)
                custom = {}
                check_upstream(got, lines, identity, custom)
                assert b"secret" not in got and b"X-Fresh: ok\r\n" in got
                if planned(entry, req, ctx) is not None:
                    assert got == planned(entry, req, ctx, walk=True) == general(req, ctx)


def test_a_memoised_name_is_copied_as_each_route_says():
    """The name memo is shared by every route and account; the plan's
    custom-header check is per route: X-Env seen first on a route that
    overrides it, then on one that does not, then back."""
    with emptied_memos():
        head = b"GET /p HTTP/1.1\r\nHost: app.example\r\nX-Env: client\r\n\r\n"
        for entry in (ENTRIES[1], ENTRIES[0], ENTRIES[1], ENTRIES[0]):
            _route, ctx = _ctx(entry, ALICE)
            got = served(entry, fast_parse(head), ctx)
            if entry is ENTRIES[1]:
                assert b"X-Env: prod\r\n" in got and b"client" not in got
            else:
                assert b"X-Env: client\r\n" in got and b"prod" not in got
