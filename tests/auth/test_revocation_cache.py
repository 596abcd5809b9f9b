"""Revocation in the ValidateTunnelPeer cache (issue 11 item 2): an eviction
forgets exactly the account's entries, and an RPC that was in flight when the
eviction happened neither re-populates the cache with its (stale) answer nor
serves callers that arrived after the eviction."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from nbgateway.auth.tunnel import TunnelValidationCache
from tests.auth.test_tunnel import Client, denied, ok


def held_cache():
    clock = Clock()
    client = Client()  # answers are released by the test
    return clock, client, TunnelValidationCache(client, clock)


def release(client, index, response):
    client.calls[index][2].callback(response)


def test_evict_account_drops_only_that_account():
    _clock, client, cache = held_cache()
    client.auto = lambda ip, domain: ok()
    cache.validate("a", "100.64.0.1", "d1")
    cache.validate("a", "100.64.0.2", "d2")
    cache.validate("b", "100.64.0.1", "d1")
    assert len(cache) == 3
    assert cache.evict_account("a") == 2
    assert cache.lookup("a", "100.64.0.1", "d1") is None
    assert cache.lookup("a", "100.64.0.2", "d2") is None
    assert cache.lookup("b", "100.64.0.1", "d1") is not None
    assert cache.stats.evictions == 2
    assert cache.evict_account("nobody") == 0


def test_inflight_answer_from_before_eviction_is_not_stored():
    _clock, client, cache = held_cache()
    results = []
    cache.validate("a", "100.64.0.1", "d").addCallback(results.append)
    cache.evict_account("a")  # the peer lost access while the RPC ran
    release(client, 0, ok(token="stale"))
    # the caller that was waiting gets the answer of the RPC it waited for ...
    assert [r.session_token for r in results] == ["stale"]
    # ... but nothing is stored: the next request asks management again
    assert cache.lookup("a", "100.64.0.1", "d") is None
    client.auto = lambda ip, domain: denied()
    later = []
    cache.validate("a", "100.64.0.1", "d").addCallback(later.append)
    assert len(client.calls) == 2 and not later[0].valid


def test_caller_after_eviction_does_not_join_the_stale_rpc():
    _clock, client, cache = held_cache()
    early, late = [], []
    cache.validate("a", "100.64.0.1", "d").addCallback(early.append)
    cache.evict_account("a")
    cache.validate("a", "100.64.0.1", "d").addCallback(late.append)
    assert len(client.calls) == 2  # a fresh RPC, not a join
    assert cache.stats.joins == 0
    # the fresh RPC answers first (denied), then the stale one (granted)
    release(client, 1, denied())
    release(client, 0, ok(token="stale"))
    assert not late[0].valid
    assert early[0].valid
    assert cache.lookup("a", "100.64.0.1", "d") is None
    assert len(cache) == 0


def test_stale_rpc_finishing_does_not_end_the_fresh_single_flight():
    _clock, client, cache = held_cache()
    cache.validate("a", "100.64.0.1", "d")
    cache.evict_account("a")
    fresh = []
    cache.validate("a", "100.64.0.1", "d").addCallback(fresh.append)
    release(client, 0, ok(token="stale"))
    # a third caller still joins the fresh RPC (the stale one must not have
    # removed the fresh flight from the single-flight table)
    joined = []
    cache.validate("a", "100.64.0.1", "d").addCallback(joined.append)
    assert len(client.calls) == 2 and cache.stats.joins == 1
    release(client, 1, ok(token="fresh"))
    assert [r.session_token for r in fresh + joined] == ["fresh", "fresh"]
    assert cache.lookup("a", "100.64.0.1", "d").session_token == "fresh"


def test_eviction_of_another_account_leaves_inflight_alone():
    _clock, client, cache = held_cache()
    cache.validate("a", "100.64.0.1", "d")
    cache.evict_account("b")
    cache.validate("a", "100.64.0.1", "d")
    assert len(client.calls) == 1 and cache.stats.joins == 1
    release(client, 0, ok())
    assert cache.lookup("a", "100.64.0.1", "d") is not None


def test_stale_rpc_timeout_and_cancelled_waiter_are_harmless():
    clock, _client, cache = held_cache()
    first = cache.validate("a", "100.64.0.1", "d")
    second = []
    cache.validate("a", "100.64.0.1", "d").addCallback(second.append)
    errors = []
    first.addErrback(lambda f: errors.append(f.check(CancelledError)))
    first.cancel()
    cache.evict_account("a")
    clock.advance(cache.rpc_timeout + 1)  # the stale RPC times out
    assert errors == [CancelledError] and second == [None]
    assert len(cache) == 0 and cache.stats.errors == 1
