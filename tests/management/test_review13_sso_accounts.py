"""Review 13: public-service SSO between two accounts (SQLite and PostgreSQL),
with the in-memory OpenID Provider of test_oidc.

The same person (IdP subject) signs in to A's and to B's SSO-protected
public services.  Pinned:

* each sign-in provisions a user in the service's own account (two users,
  two ids); the IdP's groups claim names groups of the service's account
  only -- B's group ids or names in the claim give A's user nothing;
* the session token minted for A's service is refused for B's domain (and
  by ``verify_session`` with B's key);
* ``GetOIDCURL``'s check: A's account cannot get an authorization URL whose
  redirect is B's service;
* a state minted for A's service, replayed with B's host swapped into it,
  fails the signature and mints nothing.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from nbgateway.management import sessionjwt
from nbgateway.management.model import (
    Account,
    AuthConfig,
    BearerAuth,
    Group,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.oidc import OIDCError, OIDCFlow, OIDCSettings
from nbgateway.management.sso import SSO, SSOError

from .test_oidc import ISSUER, NOW, IdP

CLUSTER = "eu.proxy.netbird.io"


def _service(store, account: str, group: str) -> Service:
    return store.services.create(Service(
        account_id=account, name="app", domain=f"{account}-app.{CLUSTER}",
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="10.0.0.5", port=80,
                        protocol="http", options=TargetOptions(direct_upstream=True)),),
        auth=AuthConfig(bearer_auth=BearerAuth(True, (group,)))))


@pytest.fixture
def world(store):
    svcs = {}
    for account in ("acct-a", "acct-b"):
        store.accounts.create(Account(id=account, domain=f"{account}.test"))
        store.groups.create(Group(id=f"g-{account}", account_id=account, name=f"{account}-eng"))
        svcs[account] = _service(store, account, f"g-{account}")
    idp = IdP()
    flow = OIDCFlow(OIDCSettings(issuer=ISSUER, client_id="client", client_secret="s3cret",
                                 callback_url="https://m.example/reverse-proxy/callback",
                                 scopes=("openid", "email", "groups")),
                    fetch_json=idp.fetch, post_form=idp.post, clock=lambda: NOW)
    return store, svcs, idp, SSO(lambda: store, flow)


def _start(idp, sso, account: str, redirect: str) -> str:
    url = sso.oidc_url(account, redirect)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    idp.challenge, idp.nonce = q["code_challenge"], q["nonce"]
    return q["state"]


def _token(location: str) -> str:
    return parse_qs(urlsplit(location).query)["session_token"][0]


def test_one_person_two_accounts_two_users_and_no_crossing(world) -> None:
    store, svcs, idp, sso = world
    a, b = svcs["acct-a"], svcs["acct-b"]
    # the IdP's groups claim names B's group, by id and by name, and A's by name
    idp.claims = {"groups": ["g-acct-b", "acct-b-eng", "acct-a-eng"]}
    loc_a = sso.callback({"code": "c", "state": _start(idp, sso, "acct-a",
                                                        f"https://{a.domain}/")})
    claims_a = sessionjwt.verify_session(_token(loc_a), a.session_public_key, a.domain)
    user_a = store.users.find(claims_a.subject)
    assert user_a.account_id == "acct-a" and user_a.auto_groups == ("g-acct-a",)
    assert claims_a.groups == ("g-acct-a",)
    loc_b = sso.callback({"code": "c", "state": _start(idp, sso, "acct-b",
                                                        f"https://{b.domain}/")})
    claims_b = sessionjwt.verify_session(_token(loc_b), b.session_public_key, b.domain)
    user_b = store.users.find(claims_b.subject)
    assert user_b.account_id == "acct-b" and user_b.id != user_a.id
    assert user_b.auto_groups == ("g-acct-b",)
    # A's token is no session of B's service
    for key, domain in ((b.session_public_key, b.domain), (a.session_public_key, b.domain)):
        with pytest.raises(sessionjwt.InvalidSessionTokenError):
            sessionjwt.verify_session(_token(loc_a), key, domain)


def test_an_account_gets_no_sign_in_url_for_another_accounts_service(world) -> None:
    _store, svcs, _idp, sso = world
    with pytest.raises(OIDCError, match="not found"):
        sso.oidc_url("acct-a", f"https://{svcs['acct-b'].domain}/")


def test_a_state_with_another_accounts_host_swapped_in_mints_nothing(world) -> None:
    store, svcs, idp, sso = world
    a, b = svcs["acct-a"], svcs["acct-b"]
    state = _start(idp, sso, "acct-a", f"https://{a.domain}/")
    swapped = base64.urlsafe_b64encode(f"https://{b.domain}/".encode()).decode().rstrip("=")
    forged = "|".join([swapped, *state.split("|")[1:]])
    with pytest.raises(SSOError) as err:
        sso.callback({"code": "c", "state": forged})
    assert "session_token" not in err.value.redirect
    assert [u for u in store.users.list("acct-b") if u.id.startswith("oidc-")] == []
