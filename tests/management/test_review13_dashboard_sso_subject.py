"""Review 13 (finding): one sign-in to another tenant's SSO-protected public
service takes over the victim's dashboard SSO (SQLite and PostgreSQL).

Public-service SSO provisions, on a person's first sign-in to a service, the
user ``oidc-<hash(account, issuer, subject)>`` (role ``user``) in the
account that owns the service.  The dashboard's SSO maps a subject to such
a user *in any account* before it looks at e-mail addresses, and takes the
first account of the list.  So a hostile tenant that gets the victim
account's admin to sign in once to one of its public services (a link is
enough; the provider remembers the session) has a user for that subject in
its own account: from then on the victim's dashboard SSO signs the admin in
there, as a regular user of the hostile account, never again into its own
account -- until someone deletes that user.  (The e-mail rule already
resists this: of several users with the e-mail the one created first wins.)

Expected: of every user the sign-in maps to (by subject in any account, or
by verified e-mail), the one created first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from nbgateway.management.model import Account, User, utcnow
from nbgateway.management.oidc import OIDCClaims, OIDCSettings
from nbgateway.management.ui.sso import SESSION_PREFIX, DashboardSSO

ISSUER = "https://idp.example"


@dataclass
class FakeFlow:
    settings: OIDCSettings
    claims: OIDCClaims

    def finish(self, code: str, state: str) -> OIDCClaims:
        return self.claims


def _provisioned_id(account: str, subject: str) -> str:
    """The id public-service SSO gives the subject in ``account`` (sso.SSO._provision)."""
    return "oidc-" + hashlib.sha256(f"{account}|{ISSUER}|{subject}".encode()).hexdigest()[:24]


def test_a_later_sign_in_to_another_tenants_service_does_not_take_the_dashboard(store):
    # accounts list in id order: the hostile one first
    store.accounts.create(Account(id="acct-0-hostile", domain="hostile.test"))
    store.accounts.create(Account(id="acct-1-victim", domain="victim.test"))
    then = utcnow() - timedelta(days=30)
    store.users.create(User(id="u-ann", account_id="acct-1-victim", email="ann@victim.test",
                            role="admin", created_at=then))
    claims = OIDCClaims(subject="sub-ann", email="ann@victim.test", email_verified=True,
                        groups=(), redirect_url="http://mgmt.test/ui/")
    settings = OIDCSettings(issuer=ISSUER, client_id="c",
                            callback_url="http://mgmt.test:33071/reverse-proxy/callback")
    dash = DashboardSSO(FakeFlow(settings, claims), lambda: store)
    assert dash.finish("code", "state") == SESSION_PREFIX + "u-ann"
    # Ann follows a link to the hostile tenant's SSO-protected public service
    # once: public-service SSO provisions her there (what sso.SSO._provision does)
    store.users.create(User(id=_provisioned_id("acct-0-hostile", "sub-ann"),
                            account_id="acct-0-hostile", email="ann@victim.test",
                            name="ann@victim.test", role="user", created_at=utcnow()))
    token = dash.finish("code", "state")
    ident = dash.identity(token)
    # today: the hostile account's regular user
    assert (ident.account_id, ident.user_id, ident.role) == ("acct-1-victim", "u-ann", "admin")
