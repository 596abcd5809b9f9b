"""The instance admin's cross-account view (``/ui/accounts``) against a real
management: every account with counts for the instance admin, only its own
account for another account's admin (the REST API's rules), names escaped."""

from __future__ import annotations

import re

import pytest

from tests.ui.harness import Management, UiClient

EVIL = "<script>alert('acct')</script>"


@pytest.fixture(scope="module")
def mgmt():
    m = Management()
    try:
        created = m.rest("POST", "/accounts", {"name": EVIL})
        m.other = created["id"], created["token"]
        m.own = m.rest("GET", "/accounts")[0]["id"]
        yield m
    finally:
        m.stop()


def _client(mgmt, token):
    c = UiClient(mgmt.base)
    c.sign_in(token)
    return c


def test_instance_admin_sees_every_account_with_counts(mgmt):
    admin = _client(mgmt, mgmt.admin)
    status, _h, text = admin.get("/ui/accounts")
    assert status == 200, text[:300]
    assert '<a href="/ui/accounts">Accounts</a>' in text  # in the navigation
    rows = re.findall(r'<tr class="account">(.*?)</tr>', text, re.S)
    assert len(rows) == 2, rows
    assert "&lt;script&gt;alert(&#39;acct&#39;)&lt;/script&gt;" in text
    assert "<script>alert" not in text
    assert all('<td class="services">0</td>' in r for r in rows)
    other_id, _ = mgmt.other
    status, _h, text = admin.get(f"/ui/accounts/{other_id}")
    assert status == 200 and "read-only view of another account" in text
    assert "&lt;script&gt;" in text and "<script>alert" not in text
    status, _h, text = admin.get(f"/ui/accounts/{mgmt.own}")
    assert status == 200 and "read-only" not in text
    assert admin.get("/ui/accounts/no-such-account")[0] == 404


def test_another_accounts_admin_sees_only_its_own(mgmt):
    other_id, token = mgmt.other
    c = _client(mgmt, token)
    status, _h, text = c.get("/ui/")
    assert status == 200 and '<a href="/ui/accounts">' not in text  # not an instance admin
    status, _h, text = c.get("/ui/accounts")
    rows = re.findall(r'<tr class="account">(.*?)</tr>', text, re.S)
    assert status == 200 and len(rows) == 1 and "(yours)" in rows[0]
    # the other account does not exist for it (the API's 404)
    assert c.get(f"/ui/accounts/{mgmt.own}")[0] == 404
    assert c.get(f"/ui/accounts/{other_id}")[0] == 200


def test_accounts_pages_need_a_session(mgmt):
    anon = UiClient(mgmt.base)
    for path in ("/ui/accounts", f"/ui/accounts/{mgmt.own}"):
        status, headers, _ = anon.get(path)
        assert status == 303 and headers["Location"] == "/ui/login"
