"""Which management user a dashboard SSO sign-in becomes (real SQLite store,
the OIDC flow replaced by a fake that returns chosen claims)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from nbgateway.management.model import Account, User
from nbgateway.management.oidc import OIDCClaims, OIDCError, OIDCSettings
from nbgateway.management.store import Store
from nbgateway.management.ui.sso import (
    SESSION_PREFIX,
    DashboardSSO,
    SignInRefusedError,
    dashboard_callback,
)

ISSUER = "https://idp.example"


@dataclass
class FakeFlow:
    settings: OIDCSettings
    claims: OIDCClaims | None = None

    def finish(self, code: str, state: str) -> OIDCClaims:
        if self.claims is None:
            raise OIDCError("ID token nonce mismatch")
        return self.claims


def _claims(sub: str, email: str = "", verified: bool = True) -> OIDCClaims:
    return OIDCClaims(subject=sub, email=email, email_verified=verified, groups=(),
                      redirect_url="http://mgmt.test/ui/")


@pytest.fixture
def sso(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.accounts.create(Account(id="a1", domain="one.test"))
    store.accounts.create(Account(id="a2", domain="two.test"))
    digest = hashlib.sha256(f"a2|{ISSUER}|sub-prov".encode()).hexdigest()
    for u in (User(id="u-admin", account_id="a1", email="Ann@Example.test", role="admin"),
              User(id=f"oidc-{digest[:24]}", account_id="a2", email="", role="user"),
              User(id="u-twin1", account_id="a1", email="twin@example.test"),
              User(id="u-twin2", account_id="a2", email="twin@example.test"),
              User(id="u-pending", account_id="a1", email="p@example.test", blocked=True,
                   pending_approval=True)):
        store.users.create(u)
    settings = OIDCSettings(issuer=ISSUER, client_id="c",
                            callback_url="http://mgmt.test:33071/reverse-proxy/callback")
    yield DashboardSSO(FakeFlow(settings), lambda: store), store, digest
    store.close()


def test_callback_is_on_the_managements_origin():
    s = OIDCSettings(issuer=ISSUER, client_id="c",
                     callback_url="https://mgmt.test:8443/reverse-proxy/callback?x=1")
    assert dashboard_callback(s) == "https://mgmt.test:8443/ui/sso/callback"


def test_subject_and_verified_email_map_to_existing_users(sso):
    dash, _store, digest = sso
    dash.flow.claims = _claims("anything", "ann@example.TEST")
    token = dash.finish("code", "state")
    assert token == SESSION_PREFIX + "u-admin"
    ident = dash.identity(token)
    assert (ident.account_id, ident.user_id, ident.role) == ("a1", "u-admin", "admin")
    dash.flow.claims = _claims("sub-prov", "someone@else.test")  # provisioned by SSO
    assert dash.finish("c", "s") == SESSION_PREFIX + f"oidc-{digest[:24]}"


@pytest.mark.parametrize("claims,why", [
    (_claims("x", "ann@example.test", verified=False), "no management user"),
    (_claims("x", "p@example.test"), "is pending"),
    (_claims("x", "nobody@example.test"), "no management user"),
    (None, "nonce mismatch"),
])
def test_refusals(sso, claims, why):
    dash, _store, _ = sso
    dash.flow.claims = claims
    with pytest.raises(SignInRefusedError, match=why):
        dash.finish("code", "state")


def test_identity_follows_the_user_and_ignores_other_tokens(sso):
    dash, store, _ = sso
    token = SESSION_PREFIX + "u-admin"
    assert dash.identity(token) is not None
    assert dash.identity("nbp_something") is None
    from dataclasses import replace

    store.users.update(replace(store.users.find("u-admin"), blocked=True))
    assert dash.identity(token) is None
    assert dash.identity(SESSION_PREFIX + "gone") is None


def test_an_e_mail_of_several_accounts_signs_in_as_the_user_created_first(sso):
    """Another tenant adding a user with an existing user's e-mail neither
    takes that user's sign-in nor blocks it."""
    dash, store, _ = sso
    dash.flow.claims = _claims("x", "twin@example.test")
    assert dash.finish("code", "state") == SESSION_PREFIX + "u-twin1"  # created first (a1)
    store.accounts.create(Account(id="a3", domain="three.test"))
    store.users.create(User(id="u-squat", account_id="a3", email="ANN@example.test",
                            role="owner"))
    dash.flow.claims = _claims("anything", "ann@example.test")
    token = dash.finish("code", "state")
    assert token == SESSION_PREFIX + "u-admin"
    assert dash.identity(token).account_id == "a1"
