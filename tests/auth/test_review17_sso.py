"""Review 17 (sec17): public-service SSO between hostile tenants (real SQLite
store, the in-memory OpenID Provider of tests/management/test_oidc).

Findings pinned here (each test fails on main before the fix):

* F1 -- the OIDC flow's table of pending sign-ins (PKCE verifier per nonce)
  holds at most 10,000 entries management-wide and a full table drops the
  oldest, whoever started it.  Every unauthenticated request to an
  OIDC-protected public service makes the gateway call ``GetOIDCURL`` (no
  cache), and a BYOP gateway can call it directly: one tenant starting
  10,000 sign-ins for its own service within the 10 minutes a flow lives
  makes every other tenant's users come back from the provider to "unknown
  or expired sign-in".  Expected: a full table gives up a flow of the
  account holding the most.
* F2 -- public-service SSO stores and forwards the ID token's ``email``
  without ``email_verified``: the provisioned user gets it, the session JWT
  carries it and ValidateSession answers it, so the upstream's
  ``X-NetBird-User`` names an address the provider never verified.  With the
  management-wide provider shared by every tenant, anybody whose provider
  account lets them type an address (self-registration, unverified profile
  e-mail) signs in to another tenant's service as ``ceo@victim``.  The
  dashboard's SSO already refuses unverified e-mail; oauth2-proxy refuses it
  by default.  Expected: an unverified e-mail is neither stored nor minted.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from nbgateway.management import oidc, sessionjwt
from nbgateway.management.model import (
    Account,
    AuthConfig,
    BearerAuth,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.oidc import OIDCFlow, OIDCSettings
from nbgateway.management.sso import SSO
from nbgateway.management.store import Store
from tests.management.test_oidc import ISSUER, NOW, IdP

CLUSTER = "eu.proxy.netbird.io"
#: the table's bound, made smaller so the flood is quick (the rule is the same)
MAX_FLOWS = 1000


def _service(store: Store, account: str) -> Service:
    return store.services.create(Service(
        account_id=account, name="app", domain=f"{account}-app.{CLUSTER}",
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="10.0.0.5", port=80,
                        protocol="http", options=TargetOptions(direct_upstream=True)),),
        auth=AuthConfig(bearer_auth=BearerAuth(True, ()))))


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(oidc, "MAX_FLOWS", MAX_FLOWS)
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    svcs = {}
    for account in ("acct-victim", "acct-evil"):
        store.accounts.create(Account(id=account, domain=f"{account}.test"))
        svcs[account] = _service(store, account)
    idp = IdP()
    flow = OIDCFlow(OIDCSettings(issuer=ISSUER, client_id="client", client_secret="s3cret",
                                 callback_url="https://m.example/reverse-proxy/callback",
                                 scopes=("openid", "email", "groups")),
                    fetch_json=idp.fetch, post_form=idp.post, clock=lambda: NOW)
    yield store, svcs, idp, SSO(lambda: store, flow)
    store.close()


def _start(idp: IdP, sso: SSO, account: str, redirect: str) -> tuple[str, str, str]:
    """GetOIDCURL; ``(state, challenge, nonce)`` of the sign-in it starts."""
    url = sso.oidc_url(account, redirect)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    return q["state"], q["code_challenge"], q["nonce"]


def _token(location: str) -> str:
    return parse_qs(urlsplit(location).query)["session_token"][0]


def test_one_tenants_sign_in_flood_keeps_other_tenants_sign_ins(world) -> None:
    """F1: the victim's user is at the provider while the hostile tenant
    starts MAX_FLOWS sign-ins for its own service; the victim's callback
    must still finish."""
    _store, svcs, idp, sso = world
    victim, evil = svcs["acct-victim"], svcs["acct-evil"]
    state, idp.challenge, idp.nonce = _start(idp, sso, "acct-victim",
                                             f"https://{victim.domain}/")
    for _ in range(MAX_FLOWS):
        _start(idp, sso, "acct-evil", f"https://{evil.domain}/")
    location = sso.callback({"code": "c", "state": state})  # main: SSOError "unknown or expired"
    claims = sessionjwt.verify_session(_token(location), victim.session_public_key,
                                       victim.domain)
    assert claims.method == "oidc"


def test_the_flooding_tenant_gives_up_its_own_oldest_sign_in(world) -> None:
    """F1 (the other side): the table stays bounded; the flooder's oldest goes."""
    _store, svcs, idp, sso = world
    evil = svcs["acct-evil"]
    first, idp.challenge, idp.nonce = _start(idp, sso, "acct-evil", f"https://{evil.domain}/")
    for _ in range(MAX_FLOWS):
        _start(idp, sso, "acct-evil", f"https://{evil.domain}/")
    assert len(sso.flow._flows) <= MAX_FLOWS
    with pytest.raises(Exception, match="unknown or expired"):
        sso.callback({"code": "c", "state": first})


def test_an_unverified_email_is_not_stored_or_minted(world) -> None:
    """F2: someone signs in to the victim's service with an address the
    provider did not verify."""
    store, svcs, idp, sso = world
    victim = svcs["acct-victim"]
    state, idp.challenge, idp.nonce = _start(idp, sso, "acct-victim",
                                             f"https://{victim.domain}/")
    idp.claims = {"sub": "mallory-sub", "email": "ceo@acct-victim.test",
                  "email_verified": False}
    location = sso.callback({"code": "c", "state": state})
    claims = sessionjwt.verify_session(_token(location), victim.session_public_key,
                                       victim.domain)
    user = store.users.find(claims.subject)
    assert user is not None and user.account_id == "acct-victim"
    # main: the token says email=ceo@acct-victim.test (X-NetBird-User upstream)
    assert claims.email == ""
    # main: stored, so ValidateSession answers user_email=ceo@acct-victim.test
    assert user.email == ""
    assert user.name != "ceo@acct-victim.test"


def test_a_verified_email_is_still_stored_and_minted(world) -> None:
    """F2 (the other side): a verified address works as before."""
    store, svcs, idp, sso = world
    victim = svcs["acct-victim"]
    state, idp.challenge, idp.nonce = _start(idp, sso, "acct-victim",
                                             f"https://{victim.domain}/")
    location = sso.callback({"code": "c", "state": state})
    claims = sessionjwt.verify_session(_token(location), victim.session_public_key,
                                       victim.domain)
    assert claims.email == "alice@example.com"
    assert store.users.find(claims.subject).email == "alice@example.com"


def test_an_address_that_loses_verification_is_dropped_on_the_next_sign_in(world) -> None:
    """F2: a user provisioned with a verified address whose next ID token
    says unverified (the account's address was changed at the provider) no
    longer carries the old address."""
    store, svcs, idp, sso = world
    victim = svcs["acct-victim"]
    state, idp.challenge, idp.nonce = _start(idp, sso, "acct-victim",
                                             f"https://{victim.domain}/")
    sso.callback({"code": "c", "state": state})
    state, idp.challenge, idp.nonce = _start(idp, sso, "acct-victim",
                                             f"https://{victim.domain}/")
    idp.claims = {"email": "ceo@acct-victim.test", "email_verified": False}
    location = sso.callback({"code": "c", "state": state})
    claims = sessionjwt.verify_session(_token(location), victim.session_public_key,
                                       victim.domain)
    assert claims.email == ""
    assert store.users.find(claims.subject).email == ""
