"""Private gate and ValidateTunnelPeer cache, with issue 6's hardening."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import (
    PrivateGate,
    TunnelValidationCache,
    session_cookie,
)
from nbgateway.errors import ManagementError
from nbgateway.routes.restrictions import Restrictions, parse_ip, tunnel_like


class Client:
    """Counts ValidateTunnelPeer calls; answers are released by the test."""

    def __init__(self):
        self.calls: list[tuple[str, str, Deferred]] = []
        self.accounts: list[str] = []  # the account each call was asked for
        self.auto = None  # callable(ip, domain) -> response, or None to hold

    def validate_tunnel_peer(self, tunnel_ip, domain, account_id=""):
        d = Deferred()
        self.calls.append((tunnel_ip, domain, d))
        self.accounts.append(account_id)
        if self.auto is not None:
            result = self.auto(tunnel_ip, domain)
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
        return d


def ok(token="T", email="alice@x"):
    return pb.ValidateTunnelPeerResponse(valid=True, user_id="u1", user_email=email,
                                         session_token=token, peer_group_ids=["g1", "g2"],
                                         peer_group_names=["eng", "ops"])


def denied(reason="not_in_group"):
    return pb.ValidateTunnelPeerResponse(valid=False, denied_reason=reason)


@pytest.fixture
def env():
    clock = Clock()
    client = Client()
    client.auto = lambda ip, domain: ok()
    cache = TunnelValidationCache(client, clock)
    roster = {("acct", "100.64.0.10")}
    gate = PrivateGate(cache, lambda a, ip: (a, ip) in roster)
    return clock, client, cache, gate, roster


def check(gate, ip="100.64.0.10", listener="acct", mapping="acct", domain="app.example"):
    results = []
    gate.check(listener_account=listener, mapping_account=mapping, domain=domain,
               client_ip=ip).addCallback(results.append)
    return results[0] if results else None


def test_public_listener_denied_without_rpc_b20(env):
    _, client, _, gate, _ = env
    d = check(gate, listener=None)
    assert not d.allowed and d.reason == "not_overlay" and client.calls == []


def test_not_in_roster_no_rpc_b21(env):
    _, client, cache, gate, _ = env
    d = check(gate, ip="100.64.0.99")
    assert not d.allowed and d.reason == "not_in_roster"
    assert client.calls == [] and len(cache) == 0


def test_known_peer_rpc_with_ip_and_domain_b22_b23(env):
    _, client, _, gate, _ = env
    d = check(gate)
    assert d.allowed and d.session_token == "T"
    assert [(ip, dom) for ip, dom, _ in client.calls] == [("100.64.0.10", "app.example")]
    assert d.identity.email == "alice@x" and d.identity.group_names == ("eng", "ops")
    assert d.identity.method == "oidc"


def test_denied_and_empty_token_and_error_fail_closed_b24_b25_b26(env):
    _, client, _, gate, _ = env
    client.auto = lambda ip, domain: denied("peer_not_found")
    d = check(gate)
    assert not d.allowed and d.reason == "peer_not_found"
    client.auto = lambda ip, domain: ok(token="")
    assert check(gate).reason == "empty_session_token"
    client.auto = lambda ip, domain: ManagementError("UNAVAILABLE")
    assert check(gate).reason == "rpc_error"


@pytest.mark.parametrize("ip", ["127.0.0.1", "169.254.1.1", "8.8.8.8", "::1", "fe80::1",
                                "not-an-ip"])
def test_non_tunnel_sources_denied_without_rpc_b27(env, ip):
    _, client, _, gate, roster = env
    roster.add(("acct", ip))
    assert not check(gate, ip=ip).allowed
    assert client.calls == []


def test_listener_account_must_own_the_mapping(env):
    _, client, _, gate, _ = env
    d = check(gate, mapping="other")
    assert not d.allowed and d.reason == "wrong_account" and client.calls == []


def test_cache_hit_one_rpc_b33_b41(env):
    _, client, _, gate, _ = env
    for _ in range(5):
        d = check(gate)
        assert d.allowed and d.session_token == "T"  # cache hits still carry the token
    assert len(client.calls) == 1


def test_single_flight_16_concurrent_b34(env):
    _, client, cache, gate, _ = env
    client.auto = None
    results = []
    for _ in range(16):
        gate.check(listener_account="acct", mapping_account="acct", domain="app.example",
                   client_ip="100.64.0.10").addCallback(results.append)
    assert len(client.calls) == 1 and results == []
    client.calls[0][2].callback(ok())
    assert len(results) == 16 and all(r.allowed for r in results)
    assert cache.stats.joins == 15


def test_first_caller_disconnect_does_not_fail_others(env):
    _, client, _, _, _ = env
    client.auto = None
    cache = TunnelValidationCache(client, Clock())
    first = cache.validate("acct", "100.64.0.10", "d")
    second = cache.validate("acct", "100.64.0.10", "d")
    errors, results = [], []
    first.addErrback(lambda f: errors.append(f.check(CancelledError)))
    second.addCallback(results.append)
    first.cancel()  # the first client went away
    assert errors == [CancelledError]
    client.calls[0][2].callback(ok())
    assert results and results[0].valid


def test_rpc_timeout_bounds_single_flight(env):
    clock, client, _, _, _ = env
    client.auto = None
    cache = TunnelValidationCache(client, clock, rpc_timeout=10)
    results = []
    cache.validate("a", "100.64.0.1", "d").addCallback(results.append)
    clock.advance(10.5)
    assert results == [None] and cache.stats.errors == 1


def test_denials_not_cached_b35(env):
    _, client, _, gate, _ = env
    client.auto = lambda ip, domain: denied()
    for _ in range(3):
        assert not check(gate).allowed
    assert len(client.calls) == 3


def test_ttl_expiry_b36(env):
    clock, client, _, gate, _ = env
    check(gate)
    clock.advance(300)
    check(gate)
    assert len(client.calls) == 1
    clock.advance(1)
    check(gate)
    assert len(client.calls) == 2


def test_key_includes_domain_and_account_b38(env):
    _, client, cache, _, _ = env
    cache.validate("a", "100.64.0.1", "d1")
    cache.validate("a", "100.64.0.1", "d2")
    cache.validate("b", "100.64.0.1", "d1")
    assert len(client.calls) == 3


def test_fifo_bound_per_account_b39(env):
    clock, client, _, _, _ = env
    cache = TunnelValidationCache(client, clock, max_per_account=1024)
    for i in range(1025):
        cache.validate("a", f"100.64.{i // 250}.{i % 250}", "d")
    assert len(cache) == 1024
    assert cache.lookup("a", "100.64.0.0", "d") is None
    assert cache.lookup("a", "100.64.0.1", "d") is not None
    assert cache.lookup("a", "100.64.4.24", "d") is not None


def test_roster_miss_then_hit_b40(env):
    _, client, cache, gate, roster = env
    assert not check(gate, ip="100.64.0.20").allowed
    assert client.calls == [] and len(cache) == 0
    roster.add(("acct", "100.64.0.20"))
    assert check(gate, ip="100.64.0.20").allowed
    assert len(client.calls) == 1


def test_evict_account(env):
    _, client, cache, gate, _ = env
    check(gate)
    cache.evict_account("acct")
    check(gate)
    assert len(client.calls) == 2


def test_broken_client_fails_closed(env):
    _, client, _, gate, _ = env

    def boom(ip, domain, account_id=""):
        raise RuntimeError("client bug")

    client.validate_tunnel_peer = boom
    assert check(gate).reason == "rpc_error"
    client.validate_tunnel_peer = lambda ip, domain, account_id="": fail(RuntimeError("x"))
    assert check(gate).reason == "rpc_error"


def test_the_question_carries_the_listeners_account(env):
    """nbgw_account_id: management answers valid only for a service of the
    account whose tunnel the request came in on."""
    _, client, _, gate, _ = env
    check(gate)
    assert client.accounts == ["acct"]


def test_session_cookie_attributes():
    assert session_cookie("T") == \
        "nb_session=T; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=Lax"


def test_tunnel_like_and_unmapping():
    assert tunnel_like(parse_ip("100.64.0.1")) and tunnel_like(parse_ip("fd00::1"))
    assert tunnel_like(parse_ip("10.1.2.3")) and tunnel_like(parse_ip("192.168.1.1"))
    assert not tunnel_like(parse_ip("100.128.0.1"))
    assert parse_ip("::ffff:100.64.0.1") == parse_ip("100.64.0.1")


def test_restrictions_b49_b50_b51():
    r = Restrictions(allowed_cidrs=["100.64.0.0/16"])
    assert r.check(parse_ip("100.65.5.6"), overlay=True) == "ip_restricted"
    assert r.check(parse_ip("100.64.5.6"), overlay=True) is None
    r = Restrictions(allowed_cidrs=["100.64.0.0/10"], allowed_countries=["us"])
    assert r.check(parse_ip("100.64.5.6"), overlay=True) is None
    assert r.check(parse_ip("100.64.5.6"), overlay=False) == "geo_unavailable"
    r = Restrictions(crowdsec_mode="enforce")
    assert r.check(parse_ip("100.64.5.6"), overlay=True) is None
    assert r.check(parse_ip("203.0.113.5"), overlay=False) == "crowdsec_unavailable"
    assert Restrictions(crowdsec_mode="observe").check(parse_ip("1.1.1.1"), False) is None
    r = Restrictions(blocked_cidrs=["100.64.0.0/24", "bogus"])
    assert r.check(parse_ip("100.64.0.9"), overlay=True) == "ip_restricted"
    assert Restrictions.from_proto(pb.AccessRestrictions()) is None


def now(gate, ip="100.64.0.10", listener="acct", mapping="acct", domain="app.example"):
    return gate.decide_now(listener_account=listener, mapping_account=mapping, domain=domain,
                           client_ip=ip)


def test_decide_now_without_rpc_local_refusals_and_cached_hits(env):
    """The synchronous half of check(): the same local refusals, the cached
    answer's decision (the very object check() fires with, counted as a
    hit), and None (no RPC started) when only the RPC can decide."""
    clock, client, cache, gate, roster = env
    assert now(gate, listener=None).reason == "not_overlay"
    assert now(gate, mapping="other").reason == "wrong_account"
    assert now(gate, ip="8.8.8.8").reason == "not_tunnel_ip"
    assert now(gate, ip="nope").reason == "invalid_ip"
    assert now(gate, ip="100.64.0.99").reason == "not_in_roster"
    assert now(gate) is None  # a miss: decide_now never makes the RPC
    assert client.calls == [] and cache.stats.hits == 0 and cache.stats.misses == 0
    first = check(gate)  # the RPC's answer, stored
    assert first.allowed and len(client.calls) == 1
    hit = now(gate)
    assert hit is not None and hit.allowed and hit.identity.email == "alice@x"
    assert hit.session_token == "T" and cache.stats.hits == 1
    assert check(gate) is hit and now(gate) is hit  # one decision per cached entry
    assert len(client.calls) == 1
    # a roster change, an eviction and the TTL all reach the synchronous path
    roster.discard(("acct", "100.64.0.10"))
    assert now(gate).reason == "not_in_roster"
    roster.add(("acct", "100.64.0.10"))
    cache.evict_account("acct")
    assert now(gate) is None
    check(gate)
    assert now(gate).allowed
    clock.advance(cache.ttl + 1)
    assert now(gate) is None and len(client.calls) == 2


def test_decide_now_never_allows_a_denial_or_error(env):
    _, client, cache, gate, _ = env
    client.auto = lambda ip, domain: denied()
    assert not check(gate).allowed
    assert now(gate) is None
    client.auto = lambda ip, domain: ManagementError("down")
    assert check(gate).reason == "rpc_error"
    assert now(gate) is None and len(cache) == 0


def test_decide_now_positional_same_as_keywords_and_fails_closed(env):
    """The request path calls decide_now positionally (a keyword call costs
    more): same answers, same order of checks, every doubt a denial."""
    clock, client, cache, gate, roster = env
    cases = [("acct", "acct", "app.example", "100.64.0.10"),   # a miss: None (RPC needed)
             (None, "acct", "app.example", "100.64.0.10"),     # not on the overlay
             ("acct", "other", "app.example", "100.64.0.10"),  # another account's name
             ("acct", "acct", "app.example", "8.8.8.8"),       # not a tunnel address
             ("acct", "acct", "app.example", "bogus"),         # not an address
             ("acct", "acct", "app.example", "100.64.0.99")]   # not in the roster
    for args in cases:
        listener, mapping, domain, ip = args
        assert gate.decide_now(*args) == gate.decide_now(
            listener_account=listener, mapping_account=mapping, domain=domain, client_ip=ip)
    assert gate.decide_now(*cases[0]) is None
    assert [gate.decide_now(*c).reason for c in cases[1:]] == [
        "not_overlay", "wrong_account", "not_tunnel_ip", "invalid_ip", "not_in_roster"]
    check(gate)  # the RPC's allowing answer, cached
    hit = gate.decide_now(*cases[0])
    assert hit.allowed and hit.session_token == "T" and len(client.calls) == 1
    # the roster is asked on every decision (a peer removed is refused at once)
    roster.clear()
    assert gate.decide_now(*cases[0]).reason == "not_in_roster"
    clock.advance(cache.ttl + 1)
    roster.add(("acct", "100.64.0.10"))
    assert gate.decide_now(*cases[0]) is None  # expired: asked again
