"""Dashboard sign-in through the management's OIDC settings, in headless Chromium
against a real OpenID Provider (npm ``oidc-provider``, tests/interop/oidc_idp.mjs)
and a real ``twistd nbmanagement`` with ``--oidc-*`` flags, all on loopback.

Alice (an admin by e-mail) signs in with SSO and sees the admin pages; Bob (a
user-role user) sees what the REST API gives a user (no services); Carol's
user is blocked and Dave has no management user: both are refused with the
reason on the sign-in page.  Blocking Alice afterwards signs her session out
on the next page; sign-out ends the session.  A callback that this browser did
not start is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.interop.test_public_sso import OIDC_DIR, _require_oidc_provider
from tests.ui.harness import Management, UiClient, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
IDP_SCRIPT = os.path.join(os.path.dirname(HERE), "interop", "oidc_idp.mjs")
PEOPLE = {name: {"email": f"{name}@example.test", "groups": []}
          for name in ("alice", "bob", "carol", "dave")}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = predicate()
        except Exception:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world():
    _require_oidc_provider()
    from tests.ui.browser import require_browser

    require_browser()
    idp_port, mgmt_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{idp_port}"
    tmp = os.path.join(OIDC_DIR, f"ui-sso-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    script = os.path.join(OIDC_DIR, "oidc_idp.mjs")  # beside its node_modules
    shutil.copy(IDP_SCRIPT, script)
    secret = os.path.join(tmp, "secret")
    with open(secret, "w") as f:
        f.write("ui-client-secret\n")
    log = open(os.path.join(tmp, "idp.log"), "wb")  # noqa: SIM115 - closed below
    idp = subprocess.Popen(["node", script, str(idp_port), "ui-client-secret",
                            f"http://127.0.0.1:{mgmt_port}/ui/sso/callback",
                            json.dumps(PEOPLE), "kid-ui"], stdout=log, stderr=subprocess.STDOUT)
    mgmt = None
    try:
        _wait(lambda: urllib.request.urlopen(
            issuer + "/.well-known/openid-configuration", timeout=2).read(), 20, "the provider")
        mgmt = Management(port=mgmt_port, extra_args=[
            "--oidc-issuer", issuer, "--oidc-client-id", "nbmanagement",
            "--oidc-client-secret-file", secret, "--oidc-scopes", "openid email groups"])
        users = {}
        for name, role in (("alice", "admin"), ("bob", "user"), ("carol", "user")):
            users[name] = mgmt.rest("POST", "/users", {
                "email": f"{name}@example.test", "name": name, "role": role,
                "auto_groups": [], "is_service_user": False})
        mgmt.rest("PUT", f"/users/{users['carol']['id']}", {
            "role": "user", "auto_groups": [], "is_blocked": True})
        mgmt.users = users
        yield mgmt
    finally:
        if mgmt is not None:
            mgmt.stop()
        idp.terminate()
        idp.wait(10)
        log.close()


def _sso(world, b, who: str):
    """Click "single sign-on" and sign in at the provider as *who*."""
    from selenium.webdriver.common.by import By

    d = b.driver
    d.get(world.base + "/ui/login")
    b.click_and_wait("#sso")
    for _ in range(3):  # the provider's login and consent steps (skipped when remembered)
        if d.current_url.startswith(world.base):
            break
        if d.find_elements(By.NAME, "login"):
            d.find_element(By.NAME, "login").send_keys(who)
            d.find_element(By.NAME, "password").send_keys("any")
        b.click_and_wait("button[type=submit]")
    _wait(lambda: d.current_url.startswith(world.base) and not d.current_url.startswith(
        world.base + "/ui/sso/start"), 15, "the way back to the dashboard")
    if "/ui/sso/callback" in d.current_url and not d.find_elements(By.ID, "login-error"):
        _wait(lambda: "/ui/sso/" not in d.current_url, 10, "the step to the dashboard")
    return d


def test_sso_sign_in_roles_denials_and_sign_out(world):
    from selenium.webdriver.common.by import By

    from tests.ui.browser import Browser

    b = Browser()
    try:
        d = _sso(world, b, "alice")
        assert d.current_url == world.base + "/ui/", d.current_url
        assert d.find_elements(By.CSS_SELECTOR, "form.signout")
        assert b.axe() == []
        b.shoot("sso-overview")
        d.get(world.base + "/ui/services")
        assert d.current_url == world.base + "/ui/services"
        assert "Services" in d.find_element(By.TAG_NAME, "h1").text
        cookies = {c["name"]: c for c in d.get_cookies()}
        assert cookies["nbgw_ui"]["httpOnly"] and cookies["nbgw_ui"]["sameSite"] == "Strict"
        assert "nbgw_ui_sso" not in cookies  # the binding cookie is spent
        # blocking the user signs the SSO session out on the next page
        world.rest("PUT", f"/users/{world.users['alice']['id']}", {
            "role": "admin", "auto_groups": [], "is_blocked": True})
        d.get(world.base + "/ui/groups")
        assert d.current_url == world.base + "/ui/login"
        world.rest("PUT", f"/users/{world.users['alice']['id']}", {
            "role": "admin", "auto_groups": [], "is_blocked": False})
        # signing in again (the provider remembers alice) then signing out
        d = _sso(world, b, "alice")  # the provider remembers her: no login form
        assert d.current_url == world.base + "/ui/"
        b.click_and_wait("form.signout button")
        assert d.current_url == world.base + "/ui/login"
        d.get(world.base + "/ui/services")
        assert d.current_url == world.base + "/ui/login"
    finally:
        b.close()


@pytest.mark.parametrize("who,reason", [
    ("bob", None), ("carol", "is blocked"), ("dave", "no management user")])
def test_sso_user_role_and_refusals(world, who, reason):
    from selenium.webdriver.common.by import By

    from tests.ui.browser import Browser

    b = Browser()
    try:
        d = _sso(world, b, who)
        if reason is None:  # a user-role user sees what the REST API gives it
            assert d.current_url == world.base + "/ui/"
            d.get(world.base + "/ui/services")
            main = d.find_element(By.TAG_NAME, "main").text
            assert "admin" in main.lower() or "permission" in main.lower(), main
            return
        assert d.current_url.startswith(world.base + "/ui/sso/callback")
        assert reason in d.find_element(By.ID, "login-error").text
        assert not d.find_elements(By.CSS_SELECTOR, "form.signout")
        assert b.axe() == []
        b.shoot(f"sso-refused-{who}")
        d.get(world.base + "/ui/")
        assert d.current_url == world.base + "/ui/login"
    finally:
        b.close()


def test_callback_not_started_in_this_browser_is_refused(world):
    client = UiClient(world.base)
    status, _h, text = client.get("/ui/sso/callback?code=x&state=a|b|c")
    assert status == 403 and "not started here" in text
    # a flow started by one client cannot be finished by another
    status, headers, _ = client.get("/ui/sso/start")
    assert status == 303 and headers["Location"].startswith("http://127.0.0.1:")
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["Location"]).query)["state"][0]
    other = UiClient(world.base)
    status, _h, text = other.get("/ui/sso/callback?" + urllib.parse.urlencode(
        {"code": "x", "state": state}))
    assert status == 403 and "not started here" in text
    # the right browser with a forged code: the provider refuses the exchange
    status, _h, text = client.get("/ui/sso/callback?" + urllib.parse.urlencode(
        {"code": "forged", "state": state}))
    assert status == 403 and "Single sign-on" in text
    assert client.get("/ui/")[0] == 303
