"""The OIDC relying party (management/oidc.py) against an in-memory OpenID
Provider: discovery, PKCE S256, state HMAC and single use, ID token checks
(algorithm, key, issuer, audience, expiry, nonce), key rotation, claims."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nbgateway.management.oidc import OIDCError, OIDCFlow, OIDCSettings, load_client_secret

ISSUER = "https://idp.example"
NOW = 1_800_000_000.0


def _key(kid):
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(priv.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return priv, jwk


class IdP:
    def __init__(self):
        self.keys = [_key("k1")]
        self.fetches = []
        self.challenge = None
        self.claims = {}
        self.signing = 0
        self.alg = "RS256"

    def fetch(self, url):
        self.fetches.append(url)
        if url == f"{ISSUER}/.well-known/openid-configuration":
            return {"issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/auth",
                    "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks"}
        if url == f"{ISSUER}/jwks":
            return {"keys": [jwk for _, jwk in self.keys]}
        raise AssertionError(url)

    def post(self, url, form, auth):
        assert url == f"{ISSUER}/token"
        assert auth == ("client", "s3cret")
        digest = hashlib.sha256(form["code_verifier"].encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != self.challenge:
            return {"error": "invalid_grant"}
        priv, jwk = self.keys[self.signing]
        claims = {"iss": ISSUER, "aud": "client", "sub": "alice-sub", "iat": int(NOW),
                  "exp": int(NOW) + 300, "nonce": self.nonce, "email": "alice@example.com",
                  "email_verified": True, "groups": ["eng", 7, "ops"], **self.claims}
        return {"id_token": jwt.encode(claims, priv, algorithm=self.alg,
                                       headers={"kid": jwk["kid"]})}


@pytest.fixture
def idp():
    return IdP()


def flow(idp, now=lambda: NOW):
    settings = OIDCSettings(issuer=ISSUER, client_id="client", client_secret="s3cret",
                            callback_url="https://mgmt.example/reverse-proxy/callback",
                            scopes=("openid", "email", "groups"))
    return OIDCFlow(settings, fetch_json=idp.fetch, post_form=idp.post, clock=now,
                    state_key=b"k" * 32)


def start(idp, f, redirect="https://app.example/path"):
    url = f.authorization_url(redirect)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(f"{ISSUER}/auth?")
    assert q["code_challenge_method"] == "S256" and q["response_type"] == "code"
    assert q["redirect_uri"] == "https://mgmt.example/reverse-proxy/callback"
    assert q["scope"] == "openid email groups"
    idp.challenge, idp.nonce = q["code_challenge"], q["nonce"]
    return q["state"]


def test_code_flow_with_pkce_and_claims(idp):
    f = flow(idp)
    state = start(idp, f)
    got = f.finish("code", state)
    assert (got.subject, got.email, got.email_verified) == ("alice-sub", "alice@example.com",
                                                            True)
    assert got.groups == ("eng", "ops")
    assert got.redirect_url == "https://app.example/path"
    with pytest.raises(OIDCError, match="unknown or expired"):
        f.finish("code", state)  # a state is good once


def test_state_tampering_and_expiry(idp):
    f = flow(idp)
    state = start(idp, f)
    _b64, nonce, mac = state.split("|")
    evil = base64.urlsafe_b64encode(b"https://evil.example/").rstrip(b"=").decode()
    with pytest.raises(OIDCError, match="signature"):
        f.finish("code", f"{evil}|{nonce}|{mac}")
    with pytest.raises(OIDCError, match="malformed"):
        f.finish("code", "garbage")
    t = [NOW]
    f = flow(idp, now=lambda: t[0])
    state = start(idp, f)
    t[0] += 601
    with pytest.raises(OIDCError, match="expired"):
        f.finish("code", state)


def test_wrong_verifier_is_refused(idp):
    f = flow(idp)
    state = start(idp, f)
    idp.challenge = "not-the-challenge"
    with pytest.raises(OIDCError, match="without an id_token"):
        f.finish("code", state)


@pytest.mark.parametrize("claims, match", [
    ({"iss": "https://other.example"}, "rejected"),
    ({"aud": "someone-else"}, "rejected"),
    ({"exp": int(NOW) - 1}, "expired"),
    ({"nonce": "replayed"}, "nonce"),
])
def test_id_token_checks(idp, claims, match):
    f = flow(idp)
    state = start(idp, f)
    idp.claims = claims
    with pytest.raises(OIDCError, match=match):
        f.finish("code", state)


def test_hmac_and_none_algorithms_are_refused(idp):
    f = flow(idp)
    state = start(idp, f)
    idp.alg, idp.keys = "HS256", [(b"x" * 32, {"kid": "k1"})]
    with pytest.raises(OIDCError, match="not accepted"):
        f.finish("code", state)


def test_key_rotation_refetches_the_jwks_once(idp):
    t = [NOW]
    f = flow(idp, now=lambda: t[0])
    f.finish("code", start(idp, f))
    jwks_fetches = idp.fetches.count(f"{ISSUER}/jwks")
    idp.keys.append(_key("k2"))
    idp.signing = 1  # the IdP rotated: tokens now signed with k2
    t[0] += 11
    f.finish("code", start(idp, f))
    assert idp.fetches.count(f"{ISSUER}/jwks") == jwks_fetches + 1
    # a token signed with a key nobody published is refused, and does not
    # make every callback refetch the JWKS (at most once per 10 s)
    rogue_priv, rogue_jwk = _key("k3")
    published = list(idp.keys)
    idp.keys = [*published, (rogue_priv, rogue_jwk)]
    idp.signing = 2
    saved, jwks_calls = idp.fetch, []

    def fetch_published(url):
        if url.endswith("/jwks"):
            jwks_calls.append(t[0])
            return {"keys": [j for _, j in published]}
        return saved(url)

    f._fetch = fetch_published
    t[0] += 11
    for _ in range(3):
        with pytest.raises(OIDCError, match="unknown key"):
            f.finish("code", start(idp, f))
    assert len(jwks_calls) == 1


def test_settings_and_secret_loading(tmp_path, monkeypatch):
    with pytest.raises(OIDCError):
        OIDCSettings(issuer="", client_id="c")
    with pytest.raises(OIDCError):
        OIDCSettings(issuer=ISSUER, client_id="c", scopes=("email",))
    assert "s3cret" not in repr(OIDCSettings(issuer=ISSUER, client_id="c",
                                             client_secret="s3cret"))
    path = tmp_path / "secret"
    path.write_text("from-file\nignored\n")
    assert load_client_secret(str(path)) == "from-file"
    monkeypatch.setenv("NB_MANAGEMENT_OIDC_CLIENT_SECRET", " from-env ")
    assert load_client_secret() == "from-env"


def test_redirect_must_be_http_with_host(idp):
    with pytest.raises(OIDCError):
        flow(idp).authorization_url("javascript:alert(1)")
