"""Review 17 (sec17), finding F4: another tenant's admin moves the victim's
dashboard SSO sign-in into its own account by *editing* the e-mail of one of
its old users (real ``twistd nbmanagement`` for the REST writes, the
dashboard's SSO mapping on the same store with the provider's answer fixed).

The dashboard maps a provider-verified e-mail to the management users with
that e-mail in any account and, of several, takes the user *created* first
(review 13: a user another tenant adds later must neither take nor block the
sign-in).  But ``PUT /users/{id}`` lets an account admin set any e-mail on
any of its users and keeps ``created_at``: a tenant whose account is older
than the victim's gives its own first user the victim admin's address (and
the role owner, and names its account like the victim's).  From then on the
victim's SSO sign-in lands in the attacker's account as its owner -- every
peer the victim adds joins the attacker's network, every service secret the
victim types is the attacker's -- and the victim cannot sign in to its own
account with SSO any more.

Expected: the victim's sign-in maps to the victim's own user (the proposed
fix: the users API keeps a user's e-mail; a new address is a new user).
"""

from __future__ import annotations

import os
import urllib.error

import pytest

from nbgateway.management.oidc import OIDCClaims, OIDCError, OIDCSettings
from nbgateway.management.store import Store
from nbgateway.management.ui.sso import DashboardSSO
from tests.ui.harness import Management

ISSUER = "https://idp.example"
VICTIM_EMAIL = "ops@victim.test"


class FakeFlow:
    """The provider signed in the victim's admin (verified e-mail)."""

    def __init__(self) -> None:
        self.settings = OIDCSettings(issuer=ISSUER, client_id="c",
                                     callback_url="http://mgmt.test/reverse-proxy/callback")

    def finish(self, code: str, state: str) -> OIDCClaims:
        if code != "victims-code":
            raise OIDCError("unknown code")
        return OIDCClaims(subject="victim-admin-sub", email=VICTIM_EMAIL,
                          email_verified=True, groups=(), redirect_url="http://mgmt.test/ui/")


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    try:
        yield m
    finally:
        m.stop()


def test_editing_an_old_users_email_does_not_take_another_tenants_sign_in(mgmt):
    # the hostile tenant's account exists first (its owner user is old)
    hostile = mgmt.rest("POST", "/accounts", {"name": "Victim Corp"})
    victim = mgmt.rest("POST", "/accounts", {"name": "victim", "admin_email": VICTIM_EMAIL})
    store = Store.open("sqlite:///" + os.path.join(mgmt.tmp, "data", "store.db"))
    try:
        sso = DashboardSSO(FakeFlow(), lambda: store)  # type: ignore[arg-type]
        # before: the victim's SSO sign-in is the victim's admin
        ident = sso.identity(sso.finish("victims-code", "state"))
        assert ident is not None and ident.account_id == victim["id"]
        # the hostile admin edits its own old user (main: 200)
        try:
            mgmt.rest("PUT", f"/users/{hostile['admin_user_id']}",
                      {"role": "owner", "auto_groups": [], "is_blocked": False,
                       "email": VICTIM_EMAIL}, token=hostile["token"])
        except urllib.error.HTTPError as exc:  # refusing the new address is a fix too
            assert exc.code in (400, 422), exc.code
        ident = sso.identity(sso.finish("victims-code", "state"))
        # main: the victim now signs in to the hostile account, as its owner
        assert ident is not None
        assert ident.account_id == victim["id"], ("signed in to", ident.account_id)
        assert ident.user_id == victim["admin_user_id"]
    finally:
        store.close()
