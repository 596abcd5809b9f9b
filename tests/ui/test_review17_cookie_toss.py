"""Review 17 (sec17), finding F3: a hostile tenant's host beside the management
swaps the operator's dashboard session for its own (cookie tossing), in
headless Chromium against a real ``twistd nbmanagement``.

The dashboard's session cookie is ``nbgw_ui`` (``Path=/ui/``, host-only) and
the management reads it with twisted's ``getCookie``, which keeps the *last*
value of a name.  Any host under the same registrable parent as the
management (``mgmt.example.com`` beside a tenant's ``app.example.com``, or a
cluster domain ``*.proxy.example.com`` whose upstreams' ``Set-Cookie`` the
gateway passes through) can set ``nbgw_ui=<its own session>;
Domain=example.com; Path=/``.  Browsers send cookies with longer paths first,
so the tossed ``Path=/`` value always comes last and wins: the operator, still
looking at "their" dashboard, now acts in the attacker's account -- adds a
peer (its WireGuard configuration joins the attacker's network), sets service
passwords, creates proxy tokens, all of it the attacker's to read.  The same
holds for the SSO binding cookie ``nbgw_ui_sso`` (a login CSRF with the
attacker's code and state).

Expected: a request that carries the session cookie more than once acts in
no session (sign in again), and the attacker's data is never shown to the
victim.  (Over TLS the proposed fix also names the cookies ``__Host-...``,
which no sibling host can set; see test_review17_cookie_names.)
"""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.ui.browser import click_and_wait
from tests.ui.harness import Management, UiClient, free_port

PARENT = "parent.test"
MARKER = "review17-attackers-group"


class _Evil(http.server.BaseHTTPRequestHandler):
    """A tenant's page on a sibling host: sets a cookie for the parent domain."""

    sid = ""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>tenant app</title><p id=evil>hello</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Set-Cookie", f"nbgw_ui={self.sid}; Domain={PARENT}; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def world():
    from tests.ui.browser import require_browser

    require_browser()
    m = Management()
    try:
        created = m.rest("POST", "/accounts", {"name": "hostile tenant"})
        evil_token = created["token"]
        m.rest("POST", "/groups", {"name": MARKER}, token=evil_token)
        attacker = UiClient(m.base)
        attacker.sign_in(evil_token)
        sid = next(c.value for c in attacker.jar if c.name == "nbgw_ui")
        handler = type("Evil", (_Evil,), {"sid": sid})
        evil = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            yield m, evil.server_address[1]
        finally:
            evil.shutdown()
            evil.server_close()
    finally:
        m.stop()


@pytest.fixture
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.ui.browser import FLAGS, require_browser

    chromium, chromedriver = require_browser()
    import shutil
    import tempfile

    profile = tempfile.mkdtemp(prefix="nbgw-review17-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    # two names under one parent, both this machine
    opts.add_argument(f"--host-resolver-rules=MAP *.{PARENT} 127.0.0.1")
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_page_load_timeout(20)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_a_sibling_hosts_cookie_does_not_swap_the_dashboard_session(world, driver):
    from selenium.webdriver.common.by import By

    m, evil_port = world
    ui = f"http://mgmt.{PARENT}:{m.port}/ui"
    driver.get(f"{ui}/login")
    driver.find_element(By.ID, "token").send_keys(m.admin)
    click_and_wait(driver, "form.card button[type=submit]")  # the sign-in's answer first
    driver.get(f"{ui}/groups")
    assert driver.find_elements(By.ID, "groups"), driver.page_source[:500]
    assert MARKER not in driver.page_source
    # the operator opens a link to a tenant's app beside the management
    driver.get(f"http://app.{PARENT}:{evil_port}/")
    assert driver.find_element(By.ID, "evil").text == "hello"
    # ... and goes back to the dashboard
    driver.get(f"{ui}/groups")
    page = driver.page_source
    # main: the victim's browser now shows (and acts in) the attacker's account
    assert MARKER not in page
