"""Review 14 (sec14): operator auth between hostile services, sans-IO.
Pins, each holding on main:

* the session verifier's memo of verified tokens never answers for another
  service key or another host (warm it first, then ask across);
* form tokens are bound to the host they were issued for; a post whose
  Origin/Referer names a sibling subdomain (another tenant under the same
  parent) is cross-site;
* the post-login redirect stays on the service's host for every target a
  client can send (WHATWG parsing: backslashes are slashes);
* the guess limiter's lock is per (service, address): a lock on one service
  neither blocks nor is cleared by another service;
* service tokens of one service are unknown to every other;
* the gateway's session cookie is host-only (no Domain), Secure, HttpOnly,
  SameSite=Lax, Path=/ -- from the operator-auth path and the private gate;
* ValidateTunnelPeer answers never cross accounts whose tunnel addresses
  overlap (cache, eviction, the account named in every question).
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest

from nbgateway.auth import tokens
from nbgateway.auth.csrf import FormTokens, same_site
from nbgateway.auth.policy import safe_return_path
from nbgateway.auth.ratelimit import AttemptLimiter
from nbgateway.auth.session import SessionVerifier, session_cookie
from nbgateway.auth.tunnel import session_cookie as tunnel_session_cookie
from nbgateway.management import sessionjwt
from nbgateway.management.store._secrets import generate_session_keys

A_PRIV, A_PUB = generate_session_keys()
B_PRIV, B_PUB = generate_session_keys()
NOW = 1_800_000_000.0


def test_verified_token_memo_never_answers_across_keys_or_hosts():
    v = SessionVerifier()
    tok = sessionjwt.sign_session(A_PRIV, subject="pin-user", domain="a.example",
                                  method="pin", now=NOW)
    assert v.verify(tok, A_PUB, "a.example", NOW) is not None  # memoised now
    assert v.verify(tok, A_PUB, "a.example", NOW + 1) is not None
    hits = v.cache_hits
    assert v.verify(tok, B_PUB, "a.example", NOW + 1) is None  # another service's key
    assert v.verify(tok, A_PUB, "b.example", NOW + 1) is None  # another host, same key
    assert v.verify(tok, A_PUB, "A.example", NOW + 1) is None  # the caller normalises
    assert v.cache_hits == hits
    # a re-created service (new key pair) for the same domain refuses old cookies
    _new_priv, new_pub = generate_session_keys()
    assert v.verify(tok, new_pub, "a.example", NOW + 1) is None
    # and the memo still expires its entries
    assert v.verify(tok, A_PUB, "a.example", NOW + 10 ** 7) is None


def test_form_tokens_are_bound_to_their_host():
    ft = FormTokens(b"s" * 32)
    tok = ft.issue("a.shared.example", NOW)
    assert ft.check(tok, "a.shared.example", NOW + 5)
    assert not ft.check(tok, "b.shared.example", NOW + 5)
    assert not ft.check(tok, "shared.example", NOW + 5)
    assert not FormTokens(b"t" * 32).check(tok, "a.shared.example", NOW + 5)


@pytest.mark.parametrize("headers", [
    {"origin": "https://a.shared.example"},
    {"origin": "https://shared.example"},
    {"origin": "https://b.shared.example.evil.example"},
    {"origin": "null"},
    {"referer": "https://a.shared.example/login"},
    {"sec-fetch-site": "cross-site", "origin": "https://b.shared.example"},
    {"sec-fetch-site": "same-site"} | {"origin": "https://a.shared.example"},
])
def test_sibling_tenant_posts_are_cross_site(headers):
    assert not same_site(headers, "b.shared.example")


def test_same_host_posts_are_same_site():
    assert same_site({"origin": "https://b.shared.example"}, "b.shared.example")
    assert same_site({"referer": "https://B.Shared.Example./x"}, "b.shared.example")


@pytest.mark.parametrize("uri", [
    "//evil.example/", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "/\\/evil.example", "\\/evil.example", "/%2F%2Fevil.example", "/.//evil.example",
    "/\t/evil.example", "/\r\n//evil.example", "/\x00//evil.example", "/\x7f//evil.example",
    "//evil.example?session_token=x", "/@evil.example", "/:@evil.example",
    "https://evil.example/", "http:evil.example", "evil.example", "",
    "/ok?next=//evil.example&session_token=t&password=p&pin=1",
])
def test_post_login_redirect_stays_on_the_host(uri):
    loc = safe_return_path(uri)
    assert loc.startswith("/") and not loc.startswith("//"), loc
    # a browser reads backslashes in http(s) URLs as slashes, and drops tab/CR/LF
    browser = loc.replace("\\", "/").replace("\t", "").replace("\r", "").replace("\n", "")
    assert not browser.startswith("//"), loc
    assert urlsplit(urljoin("https://b.shared.example/login", browser)).hostname == \
        "b.shared.example", loc
    assert "session_token" not in loc and "password=" not in loc and "pin=" not in loc


def test_guess_locks_are_per_service():
    lim = AttemptLimiter()
    for i in range(6):
        lim.failed("svc-a", "192.0.2.9", NOW + i)
    assert lim.retry_after("svc-a", "192.0.2.9", NOW + 7) > 0
    assert lim.retry_after("svc-b", "192.0.2.9", NOW + 7) == 0
    lim.succeeded("svc-b", "192.0.2.9")  # a success elsewhere clears nothing here
    assert lim.retry_after("svc-a", "192.0.2.9", NOW + 8) > 0


def test_service_tokens_are_unknown_to_other_services():
    a_id, a_secret = tokens.new_token()
    b_id, b_secret = tokens.new_token()
    a_tokens = ((a_id, "ci", tokens.digest(a_secret), 0),)
    b_tokens = ((b_id, "ci", tokens.digest(b_secret), 0),)
    assert tokens.check(a_tokens, a_id, a_secret, NOW) is not None
    assert tokens.check(b_tokens, a_id, a_secret, NOW) is None
    assert tokens.check(b_tokens, b_id, a_secret, NOW) is None  # B's id, A's secret
    assert tokens.check(((b_id, "ci", tokens.digest(a_secret), 0),), a_id, a_secret, NOW) is None


@pytest.mark.parametrize("make", [session_cookie, tunnel_session_cookie])
def test_session_cookie_is_host_only_and_locked_down(make):
    value = make("TOKEN", 3600)
    attrs = [a.strip().lower() for a in value.split(";")[1:]]
    assert value.split(";")[0] == "nb_session=TOKEN"
    assert not any(a.startswith("domain") for a in attrs)
    assert {"path=/", "httponly", "secure", "samesite=lax", "max-age=3600"} == set(attrs)


def test_tunnel_validations_never_cross_accounts_with_overlapping_addresses():
    """Accounts' tunnel ranges overlap: peer 100.64.0.10 of tenant A and peer
    100.64.0.10 of tenant B are different machines.  A's cached validation is
    never B's answer, B's eviction never drops A's, and every question names
    the listener's account."""
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache

    asked = []

    class Mgmt:
        def validate_tunnel_peer(self, ip, domain, account_id=""):
            asked.append((account_id, ip, domain))
            valid = (account_id, domain) in {("tenant-a", "a.example"), ("tenant-b", "b.example")}
            return succeed(pb.ValidateTunnelPeerResponse(
                valid=valid, user_id=f"u-{account_id}", user_email=f"{account_id}@x",
                session_token="T" if valid else "", denied_reason="" if valid else "no"))

    ip = "100.64.0.10"
    cache = TunnelValidationCache(Mgmt(), Clock())
    gate = PrivateGate(cache, lambda account, addr: addr == ip)  # both rosters hold it

    def decide(listener, mapping, domain):
        out = []
        gate.check(listener_account=listener, mapping_account=mapping, domain=domain,
                   client_ip=ip).addCallback(out.append)
        return out[0]

    a = decide("tenant-a", "tenant-a", "a.example")
    assert a.allowed and a.identity.email == "tenant-a@x"
    assert gate.decide_now("tenant-a", "tenant-a", "a.example", ip).allowed  # cached now
    # B's listener: A's domain is another account's mapping, refused locally
    assert decide("tenant-b", "tenant-a", "a.example").reason == "wrong_account"
    # B's own question about A's domain (a forged mapping) is never A's cached answer
    assert gate.decide_now("tenant-b", "tenant-b", "a.example", ip) is None
    assert not decide("tenant-b", "tenant-b", "a.example").allowed
    b = decide("tenant-b", "tenant-b", "b.example")
    assert b.allowed and b.identity.email == "tenant-b@x"
    assert asked == [("tenant-a", ip, "a.example"), ("tenant-b", ip, "a.example"),
                     ("tenant-b", ip, "b.example")]
    cache.evict_account("tenant-b")
    assert gate.decide_now("tenant-a", "tenant-a", "a.example", ip).allowed
    assert gate.decide_now("tenant-b", "tenant-b", "b.example", ip) is None
