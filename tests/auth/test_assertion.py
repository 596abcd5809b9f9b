"""The gateway's identity assertion signer, its stamping in the upstream
headers, the mapping fields and redaction (issue 16)."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.assertion import HEADER, AssertionSigner
from nbgateway.proxy.headers import prepare_upstream_headers
from nbgateway.routes.identity import Identity
from nbgateway.routes.redaction import REDACTED, redacted, redacted_json
from nbgateway.routes.service import AssertionSettings, entry_from_mapping

ALICE = Identity("u-alice", "alice@example.com", ("g1", "g2"), ("devs", "ops"), "oidc")


def _keypair(kid: str = "k1") -> tuple[AssertionSettings, jwt.PyJWK]:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    x = base64.urlsafe_b64encode(
        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).rstrip(b"=").decode()
    settings = AssertionSettings(mode="on", kid=kid, private_key=base64.b64encode(seed).decode(),
                                 keys=((kid, x),), issuer="https://mgmt.example", lifetime=300)
    return settings, jwt.PyJWK(settings.jwks()["keys"][0])


def test_token_claims_verify_against_the_published_jwk() -> None:
    settings, jwk = _keypair()
    clock = Clock()
    clock.advance(1_700_000_000)
    token = AssertionSigner(clock).token(settings, ALICE, "100.64.0.7", "app.example")
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    claims = jwt.decode(token, jwk, algorithms=["EdDSA"], audience="app.example",
                        issuer="https://mgmt.example",
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims["sub"] == "u-alice" and claims["email"] == "alice@example.com"
    assert claims["groups"] == ["g1", "g2"] and claims["group_names"] == ["devs", "ops"]
    assert claims["method"] == "oidc" and claims["peer_ip"] == "100.64.0.7"
    assert claims["exp"] - claims["iat"] == 300 and claims["iat"] == 1_700_000_000
    assert claims["jti"]
    # another audience does not verify
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, jwk, algorithms=["EdDSA"], audience="other.example",
                   options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})


def test_cached_per_identity_while_more_than_half_valid_and_bounded() -> None:
    settings, _ = _keypair()
    clock = Clock()
    signer = AssertionSigner(clock, max_cached=3)
    first = signer.token(settings, ALICE, "100.64.0.7", "app.example")
    clock.advance(149)
    assert signer.token(settings, ALICE, "100.64.0.7", "app.example") == first
    assert signer.minted == 1
    clock.advance(2)  # less than half the lifetime left: a fresh one
    second = signer.token(settings, ALICE, "100.64.0.7", "app.example")
    assert second != first and signer.minted == 2
    # another peer address or identity is another token
    assert signer.token(settings, ALICE, "100.64.0.8", "app.example") != second
    for i in range(10):
        signer.token(settings, Identity(f"u{i}", f"u{i}@x"), "100.64.0.9", "app.example")
    assert len(signer) == 3


def test_none_without_identity_mode_off_or_unusable_key() -> None:
    settings, _ = _keypair()
    signer = AssertionSigner(Clock())
    assert signer.token(settings, None, "100.64.0.7", "a") is None
    assert signer.token(None, ALICE, "100.64.0.7", "a") is None
    broken = AssertionSettings(mode="required", kid="k", private_key="not base64!")
    assert signer.token(broken, ALICE, "100.64.0.7", "a") is None
    assert signer.unusable_keys == 1
    assert "private_key" not in repr(settings) and settings.private_key not in repr(settings)


def test_headers_strip_client_copies_in_any_spelling_and_stamp() -> None:
    inbound = Headers({b"X-NetBird-Jwt-Assertion": [b"forged"],
                       b"x_netbird_jwt_assertion": [b"forged2"],
                       b"X-NETBIRD-JWT-ASSERTION": [b"forged3"]})
    kw = dict(host_header="app.example", target_netloc="10.0.0.1:80", pass_host_header=False,
              client_ip="100.64.0.7", over_tls=True)
    out = prepare_upstream_headers(inbound, identity=None, **kw)
    assert not [n for n, _ in out.getAllRawHeaders() if b"jwt" in n.lower()]
    out = prepare_upstream_headers(inbound, identity=ALICE, assertion="tok", **kw)
    assert out.getRawHeaders(HEADER) == ["tok"]
    names = [n for n, _ in out.getAllRawHeaders() if b"jwt" in n.lower()]
    assert names == [b"X-Netbird-Jwt-Assertion"]


def test_next_key_takes_over_at_its_time() -> None:
    old, old_jwk = _keypair("old")
    new, new_jwk = _keypair("new")
    settings = AssertionSettings(mode="on", kid="old", private_key=old.private_key,
                                 keys=(*new.keys, *old.keys), next_kid="new",
                                 next_private_key=new.private_key, next_from=1000)
    clock = Clock()
    clock.advance(990)
    signer = AssertionSigner(clock)
    before = signer.token(settings, ALICE, "100.64.0.7", "app.example")
    assert jwt.get_unverified_header(before)["kid"] == "old"
    clock.advance(10)  # the cached token of the old key is not reused past the switch
    after = signer.token(settings, ALICE, "100.64.0.7", "app.example")
    assert jwt.get_unverified_header(after)["kid"] == "new"
    opts = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    jwt.decode(after, new_jwk, algorithms=["EdDSA"], audience="app.example", options=opts)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(after, old_jwk, algorithms=["EdDSA"], audience="app.example", options=opts)
    assert "next_private_key" not in repr(settings)


def _mapping() -> pb.ProxyMapping:
    m = pb.ProxyMapping(id="s1", account_id="a1", domain="app.example")
    m.path.add(path="/", target="http://10.0.0.1:80")
    a = m.nbgw_assertion
    a.mode, a.kid, a.private_key = "required", "k1", "c2VjcmV0"
    a.issuer, a.lifetime_seconds = "i", 9999
    a.next_kid, a.next_private_key, a.next_from = "k2", "bmV4dHNlY3JldA==", 77
    a.keys.add(kid="k1", x="AAAA")
    a.keys.add(kid="k0", x="BBBB")
    return m


def test_mapping_fields_reach_the_service_entry() -> None:
    entry = entry_from_mapping(_mapping())
    s = entry.service.assertion
    assert s is not None and s.required and s.kid == "k1" and s.lifetime == 300
    assert [k["kid"] for k in s.jwks()["keys"]] == ["k1", "k0"]
    assert s.signing_key(76) == ("k1", "c2VjcmV0") and s.signing_key(77)[0] == "k2"
    m = _mapping()
    m.nbgw_assertion.mode = "off"
    assert entry_from_mapping(m).service.assertion is None
    m.nbgw_assertion.mode = "bogus"  # unknown: fail closed
    assert entry_from_mapping(m).service.assertion.required
    m.ClearField("nbgw_assertion")
    assert entry_from_mapping(m).service.assertion is None


def test_redaction_hides_the_signing_key() -> None:
    m = _mapping()
    r = redacted(m)
    assert r.nbgw_assertion.private_key == REDACTED
    assert r.nbgw_assertion.next_private_key == REDACTED
    assert "bmV4dHNlY3JldA==" not in redacted_json(m)
    assert "c2VjcmV0" not in redacted_json(m)
    assert m.nbgw_assertion.private_key == "c2VjcmV0"
    assert r.nbgw_assertion.keys[0].x == "AAAA"
