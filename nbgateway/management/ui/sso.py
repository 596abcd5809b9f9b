"""Dashboard sign-in through the management's OpenID Connect settings.

Owns the dashboard's side of SSO: a second :class:`~nbgateway.management.oidc.OIDCFlow`
over the same provider settings whose callback is ``/ui/sso/callback`` on the
management's own origin (authorization code + PKCE S256, signed state, nonce,
ID-token checks are the flow's), the mapping of a signed-in OIDC subject to an
existing management user, and the identity a signed-in SSO session acts with.

The dashboard never creates users: the subject maps to the users that
public-service SSO provisioned for it (same id derivation as
:mod:`nbgateway.management.sso`) and to the users whose e-mail equals the
provider's *verified* e-mail; of several, the one created first (a user
another account adds or provisions later neither takes nor blocks the
sign-in).
No user, or a pending or blocked user: refused.  The user is re-read on every page, so
blocking it or changing its role takes effect at once.

Blocking calls (provider discovery, token exchange, store) run in the caller's
thread pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from twisted.logger import Logger

from nbgateway.management.api.framework import Identity
from nbgateway.management.oidc import OIDCClaims, OIDCError, OIDCFlow, OIDCSettings

log = Logger()

CALLBACK_PATH = "/ui/sso/callback"
#: marks the session "token" of an SSO session (a personal access token never
#: has this form, and the marker is only ever set by :meth:`DashboardSSO.finish`)
SESSION_PREFIX = "sso-user:"
_ADMIN_ROLES = ("admin", "owner")


class SignInRefusedError(Exception):
    """The SSO sign-in is refused; the message is safe to show and to log."""


def dashboard_callback(settings: OIDCSettings, api_origin: str = "") -> str:
    """``/ui/sso/callback`` on the origin of the management's SSO callback URL."""
    parts = urlsplit(settings.callback_url or api_origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OIDCError("the management's OIDC callback URL has no http(s) origin")
    return urlunsplit((parts.scheme, parts.netloc, CALLBACK_PATH, "", ""))


class DashboardSSO:
    """Starts and finishes dashboard sign-ins; resolves SSO sessions to identities."""

    def __init__(self, flow: OIDCFlow, store_getter: Callable[[], Any]) -> None:
        self.flow = flow
        self._store = store_getter

    @classmethod
    def from_settings(cls, settings: OIDCSettings, store_getter: Callable[[], Any],
                      **flow_kw: Any) -> DashboardSSO:
        """A flow whose callback is the dashboard's; *flow_kw* are OIDCFlow's
        injected ``fetch_json``, ``post_form`` and ``clock``."""
        ui_settings = replace(settings, callback_url=dashboard_callback(settings))
        return cls(OIDCFlow(ui_settings, **flow_kw), store_getter)

    @property
    def landing(self) -> str:
        """Where a finished sign-in goes (the flow's signed redirect)."""
        parts = urlsplit(self.flow.settings.callback_url)
        return urlunsplit((parts.scheme, parts.netloc, "/ui/", "", ""))

    def start(self) -> tuple[str, str]:
        """``(provider URL, state)``; the caller binds the state to the browser's
        session so a callback from another browser is refused."""
        url = self.flow.authorization_url(self.landing)
        state = parse_qs(urlsplit(url).query).get("state", [""])[-1]
        return url, state

    def finish(self, code: str, state: str) -> str:
        """The session token of the user the provider signed in."""
        try:
            claims = self.flow.finish(code, state)
        except OIDCError as exc:
            raise SignInRefusedError(str(exc)) from None
        user = self._user_for(claims)
        if user.pending_approval or user.blocked:
            raise SignInRefusedError(f"user {user.id} is {user.status}")
        log.info("dashboard SSO sign-in of {user}", user=user.id, account_id=user.account_id)
        return SESSION_PREFIX + user.id

    def _user_for(self, claims: OIDCClaims) -> Any:
        store = self._store()
        issuer = self.flow.settings.issuer
        found = []
        accounts = store.accounts.list()
        for account in accounts:
            digest = hashlib.sha256(
                f"{account.id}|{issuer}|{claims.subject}".encode()).hexdigest()
            user = store.users.find(f"oidc-{digest[:24]}")
            if user is not None and user.account_id == account.id:
                found.append(user)
        if claims.email and claims.email_verified:
            wanted = claims.email.strip().lower()
            found += [u for account in accounts for u in store.users.list(account.id)
                      if (u.email or "").strip().lower() == wanted
                      and all(u.id != f.id for f in found)]
        if not found:
            raise SignInRefusedError("no management user for this sign-in")
        # The user created first, by subject or e-mail: another account adding
        # a user with the same e-mail later, or provisioning one for the same
        # subject (a sign-in to its SSO-protected public service), can neither
        # take this sign-in nor block it (refusing the sign-in when several
        # accounts had the e-mail let any tenant lock another account's admin
        # out of the dashboard's SSO).
        found.sort(key=lambda u: (u.created_at is None,
                                  u.created_at.timestamp() if u.created_at else 0.0, u.id))
        if len(found) > 1:
            log.warn("dashboard SSO: {count} users match the sign-in; the first created wins",
                     count=len(found), user=found[0].id, account_id=found[0].account_id)
        return found[0]

    def identity(self, session_token: str) -> Identity | None:
        """The identity of an SSO session, re-read now; None signs it out."""
        if not session_token.startswith(SESSION_PREFIX):
            return None
        user = self._store().users.find(session_token[len(SESSION_PREFIX):])
        if user is None or user.pending_approval or user.blocked:
            return None
        return Identity(account_id=user.account_id, user_id=user.id, role=user.role,
                        instance_admin=user.instance_admin and user.role in _ADMIN_ROLES)
