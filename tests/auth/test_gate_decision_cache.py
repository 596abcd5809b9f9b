"""The private gate keeps the allowing decision (and its Identity) of a cached
ValidateTunnelPeer answer in the cache entry: hits share it, and it dies with
the entry (TTL, FIFO bound, account eviction), so a revoked or changed peer
never keeps its old identity."""

from __future__ import annotations

from twisted.internet.task import Clock

from nbgateway.auth.tunnel import GateDecision, PrivateGate, TunnelValidationCache
from tests.auth.test_tunnel import Client, denied, ok


def setup(ttl: float = 300.0, max_per_account: int = 1024):
    clock = Clock()
    client = Client()
    client.auto = lambda ip, domain: ok()
    cache = TunnelValidationCache(client, clock, ttl=ttl, max_per_account=max_per_account)
    gate = PrivateGate(cache, lambda a, ip: True)
    return clock, client, cache, gate


def decide(gate: PrivateGate, ip: str = "100.64.0.10", domain: str = "app.example"
           ) -> GateDecision:
    out: list[GateDecision] = []
    gate.check(listener_account="acct", mapping_account="acct", domain=domain,
               client_ip=ip).addCallback(out.append)
    assert len(out) == 1
    return out[0]


def test_hits_share_one_decision_with_the_identity_of_the_answer():
    _clock, client, _cache, gate = setup()
    first = decide(gate)  # the miss: decided from the RPC's answer
    second, third = decide(gate), decide(gate)
    assert len(client.calls) == 1
    assert first.allowed and first.rpc and first.session_token == "T"
    assert first.identity is not None
    assert (first.identity.user_id, first.identity.email, first.identity.group_ids,
            first.identity.group_names, first.identity.method) == (
        "u1", "alice@x", ("g1", "g2"), ("eng", "ops"), "oidc")
    assert second == first
    assert second is third  # built once per cache entry, not per request


def test_the_decision_dies_with_an_evicted_account():
    _clock, client, cache, gate = setup()
    old = decide(gate)
    assert decide(gate) is decide(gate)
    cache.evict_account("acct")
    client.auto = lambda ip, domain: ok(token="T2", email="bob@x")
    new = decide(gate)
    assert len(client.calls) == 2
    assert new.identity is not None and new.identity.email == "bob@x"
    assert new.session_token == "T2" and old.session_token == "T"
    assert decide(gate) is decide(gate) and decide(gate).identity.email == "bob@x"
    # revoked: the next answer is a denial and nothing allowing is left
    cache.evict_account("acct")
    client.auto = lambda ip, domain: denied()
    refused = decide(gate)
    assert not refused.allowed and refused.identity is None
    assert not decide(gate).allowed and len(client.calls) == 4  # denials are never cached


def test_the_decision_expires_with_the_entry():
    clock, client, _cache, gate = setup(ttl=10)
    decide(gate)
    kept = decide(gate)
    clock.advance(11)
    client.auto = lambda ip, domain: ok(email="carol@x")
    fresh = decide(gate)
    assert len(client.calls) == 2
    assert fresh.identity.email == "carol@x" and kept.identity.email == "alice@x"


def test_the_decision_leaves_with_an_entry_pushed_out_by_the_bound():
    _clock, client, cache, gate = setup(max_per_account=1)
    decide(gate, ip="100.64.0.10")
    decide(gate, ip="100.64.0.11")  # pushes the first entry out
    client.auto = lambda ip, domain: ok(email="dave@x")
    again = decide(gate, ip="100.64.0.10")
    assert len(client.calls) == 3 and again.identity.email == "dave@x"
    assert len(cache) == 1


def test_plain_validate_still_returns_the_answer_on_a_hit():
    _clock, _client, cache, gate = setup()
    decide(gate)
    out: list = []
    cache.validate("acct", "100.64.0.10", "app.example").addCallback(out.append)
    assert out[0].session_token == "T" and out[0].user_email == "alice@x"
