"""Review 13 (finding): one account signing in to the dashboard over and over
signs every other account's people out, over real HTTP against ``twistd
nbmanagement``.

The dashboard keeps at most 1,000 signed-in sessions
(:data:`~nbgateway.management.ui.sessions.MAX_SIGNED_IN`), management-wide,
and a full table evicts the least recently used one, whoever it belongs to.
Any user of any account (a regular user's personal access token is enough;
sign-in is not rate limited) can fetch ``/ui/login`` and post its token 1,000
times: every other account's signed-in admin is then signed out, and keeps
being signed out for as long as the loop runs.  (Anonymous sessions already
have their own cap for this reason; signed-in ones had none per account.)

Expected: a full table evicts a session of the account holding the most
sessions, so the flooding account only ever evicts its own.
"""

from __future__ import annotations

import re

import pytest

from nbgateway.management.ui.sessions import MAX_SIGNED_IN
from tests.ui.harness import Management, UiClient


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    yield m
    m.stop()


def _flood_sign_ins(base: str, token: str, count: int) -> None:
    """``count`` sign-ins with ``token``, each from a fresh cookie jar."""
    for _ in range(count):
        c = UiClient(base)
        status, _h, text = c.get("/ui/login")
        assert status == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', text).group(1)
        status, headers, _t = c.post("/ui/login", {"csrf": csrf, "token": token})
        assert status == 303 and headers["Location"] == "/ui/"


def test_another_accounts_sign_in_flood_keeps_the_victim_signed_in(mgmt) -> None:
    victim = UiClient(mgmt.base)
    victim.sign_in(mgmt.admin)  # the instance admin, in its own account
    assert victim.get("/ui/")[0] == 200
    created = mgmt.rest("POST", "/accounts", {"name": "hostile"})
    attacker = created["token"]  # the hostile account's own admin
    _flood_sign_ins(mgmt.base, attacker, MAX_SIGNED_IN + 5)
    status, headers, _t = victim.get("/ui/")
    # today: 303 to /ui/login (the victim's session was evicted)
    assert status == 200, (status, headers.get("Location"))
