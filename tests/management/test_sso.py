"""SSO glue (management/sso.py) over a real store (SQLite) and the in-memory
OpenID Provider of test_oidc: GetOIDCURL's redirect check, the callback
(user auto-provisioned into auto-groups and the IdP's groups, a token
ValidateSession-compatible for the service, pending/blocked users and IdP
errors redirected with error=access_denied)."""

from __future__ import annotations

import dataclasses
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
APP = f"app.{CLUSTER}"


@pytest.fixture
def world(tmp_path):
    from nbgateway.management.store import Store

    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    acct = store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    for gid, name in (("g-eng", "eng"), ("g-staff", "staff"), ("g-ops", "ops")):
        store.groups.create(Group(id=gid, account_id=acct.id, name=name))
    svc = store.services.create(Service(
        account_id=acct.id, name="app", domain=APP,
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="10.0.0.5", port=80,
                        protocol="http", options=TargetOptions(direct_upstream=True)),),
        auth=AuthConfig(bearer_auth=BearerAuth(True, ("g-eng",)))))
    idp = IdP()
    flow = OIDCFlow(OIDCSettings(issuer=ISSUER, client_id="client", client_secret="s3cret",
                                 callback_url="https://m.example/reverse-proxy/callback",
                                 scopes=("openid", "email", "groups")),
                    fetch_json=idp.fetch, post_form=idp.post, clock=lambda: NOW)
    sso = SSO(lambda: store, flow, auto_groups=("staff",))
    yield store, svc, idp, sso
    store.close()


def _sign_in(idp, sso, account="acct-1", redirect=f"https://{APP}/page?x=1"):
    url = sso.oidc_url(account, redirect)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    idp.challenge, idp.nonce = q["code_challenge"], q["nonce"]
    return sso.callback({"code": "c", "state": q["state"]})


def test_sign_in_provisions_the_user_and_mints_a_service_token(world):
    store, svc, idp, sso = world
    location = _sign_in(idp, sso)
    parts = urlsplit(location)
    assert (parts.scheme, parts.hostname, parts.path) == ("https", APP, "/page")
    q = parse_qs(parts.query)
    assert q["x"] == ["1"]
    claims = sessionjwt.verify_session(q["session_token"][0], svc.session_public_key, APP)
    assert claims.method == "oidc" and claims.email == "alice@example.com"
    assert claims.subject.startswith("oidc-")
    user = store.users.find(claims.subject)
    assert user.account_id == "acct-1" and user.role == "user"
    # auto-groups plus the IdP's groups that exist in the account, in that order
    assert user.auto_groups == ("g-staff", "g-eng", "g-ops")
    assert claims.groups == ("g-staff", "g-eng", "g-ops")
    # the next sign-in follows the IdP's groups (eng dropped)
    idp.claims = {"groups": ["ops"]}
    _sign_in(idp, sso)
    assert store.users.find(claims.subject).auto_groups == ("g-staff", "g-ops")


def test_oidc_url_only_for_sso_services_of_the_account(world):
    store, svc, _idp, sso = world
    with pytest.raises(OIDCError, match="not found"):
        sso.oidc_url("acct-other", f"https://{APP}/")
    with pytest.raises(OIDCError, match="not found"):
        sso.oidc_url("acct-1", "https://evil.example/")
    with pytest.raises(OIDCError):
        sso.oidc_url("acct-1", f"javascript://{APP}/")
    store.services.update(dataclasses.replace(svc, auth=AuthConfig()))
    with pytest.raises(OIDCError, match="not found"):
        sso.oidc_url("acct-1", f"https://{APP}/")


@pytest.mark.parametrize("status", ["blocked", "pending_approval"])
def test_blocked_or_pending_user_gets_access_denied(world, status):
    store, svc, idp, sso = world
    location = _sign_in(idp, sso)
    sub = sessionjwt.verify_session(parse_qs(urlsplit(location).query)["session_token"][0],
                                    svc.session_public_key, APP).subject
    user = store.users.find(sub)
    store.users.update(dataclasses.replace(user, **{status: True}))
    with pytest.raises(SSOError) as err:
        _sign_in(idp, sso)
    q = parse_qs(urlsplit(err.value.redirect).query)
    assert q["error"] == ["access_denied"] and "session_token" not in q
    assert urlsplit(err.value.redirect).hostname == APP


def test_idp_error_and_bad_state(world):
    _store, _svc, _idp, sso = world
    url = sso.oidc_url("acct-1", f"https://{APP}/")
    state = parse_qs(urlsplit(url).query)["state"][0]
    with pytest.raises(SSOError) as err:
        sso.callback({"error": "access_denied", "state": state})
    assert "error=access_denied" in err.value.redirect
    with pytest.raises(SSOError) as err:
        sso.callback({"code": "c", "state": "garbage"})
    assert err.value.redirect == ""
