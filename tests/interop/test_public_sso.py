"""SSO (OIDC) for a public service against a real OpenID Provider:

    netns G: node tests/interop/oidc_idp.mjs (npm oidc-provider, 127.0.0.1:47001)
             twistd nbmanagement --oidc-issuer http://127.0.0.1:47001 ...
             twistd nbgateway (public listener 127.0.0.1:8443), an upstream
             headless Chromium (names of the cluster mapped to 127.0.0.1)

``sso.<cluster>`` has SSO on with the distribution group ``eng``.  Alice (IdP
groups ``eng``) signs in at the provider and comes back through
``/reverse-proxy/callback`` to the upstream with her email and ``eng`` in the
identity headers; Bob (``sales``) gets the access-denied page; after the
provider rotates its signing key a new sign-in still works (the management
refetches the JWKS).  oidc-provider comes from the npm registry into
``$NBGW_OIDC_DIR`` (default /tmp/nbgw-oidc) on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from unittest import mock

import pytest

from tests.interop.conftest import require_testbed
from tests.interop.test_private_e2e import DOMAIN, UPSTREAM, VENV_BIN, World, service_body, wait_for
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

SSO = f"sso.{DOMAIN}"
IDP_PORT = 47001
ISSUER = f"http://127.0.0.1:{IDP_PORT}"
OIDC_DIR = os.environ.get("NBGW_OIDC_DIR", "/tmp/nbgw-oidc")
HERE = os.path.dirname(os.path.abspath(__file__))
ACCOUNTS = {"alice": {"email": "alice@example.test", "groups": ["eng"]},
            "bob": {"email": "bob@example.test", "groups": ["sales"]}}


def _require_oidc_provider() -> None:
    if os.path.isdir(os.path.join(OIDC_DIR, "node_modules", "oidc-provider")):
        return
    npm = shutil.which("npm")
    reason = None
    if not npm or not shutil.which("node"):
        reason = "node and npm are not installed"
    else:
        os.makedirs(OIDC_DIR, exist_ok=True)
        r = subprocess.run([npm, "install", "-s", "--no-audit", "--no-fund", "--prefix",
                            OIDC_DIR, "oidc-provider"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            reason = f"npm install oidc-provider failed: {r.stderr[-300:]}"
    if reason:
        if os.environ.get("NBGW_REQUIRE_INTEROP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


class SSOWorld(World):
    def start_idp(self, kid: str):
        script = os.path.join(OIDC_DIR, "oidc_idp.mjs")  # beside its node_modules
        shutil.copy(os.path.join(HERE, "oidc_idp.mjs"), script)
        proc = self.g.popen(["node", script, str(IDP_PORT), "idp-client-secret",
                             "http://127.0.0.1:33071/reverse-proxy/callback",
                             json.dumps(ACCOUNTS), kid],
                            stdout=self.log("idp"), stderr=subprocess.STDOUT)
        wait_for(lambda: self._idp_up(), 20, "the OpenID Provider")
        return proc

    def _idp_up(self) -> bool:
        r = self.g.run(["curl", "-s", "-m", "2", f"{ISSUER}/.well-known/openid-configuration"],
                       check=False)
        return '"issuer"' in r.stdout

    def start_management(self) -> None:
        secret = os.path.join(self.tmp, "oidc-secret")
        with open(secret, "w") as f:
            f.write("idp-client-secret\n")
        self.mgmt_proc = self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbmanagement",
             "--datadir", self.mgmt_dir, "--api-addr", "127.0.0.1:33071",
             "--grpc-addr", "127.0.0.1:33073", "--oidc-issuer", ISSUER,
             "--oidc-client-id", "nbmanagement", "--oidc-client-secret-file", secret,
             "--oidc-scopes", "openid email groups"],
            stdout=self.log("management"), stderr=subprocess.STDOUT, cwd=self.tmp)
        wait_for(lambda: self._get_ok("/openapi.json"), 30, "management REST API")
        with open(os.path.join(self.mgmt_dir, "admin-token")) as f:
            self.admin = f.read().strip()


@pytest.fixture(scope="module")
def world():
    require_testbed("curl")
    _require_oidc_provider()
    from tests.ui.browser import require_browser

    require_browser()
    tb = Testbed()
    try:
        w = SSOWorld(tb)
        script = os.path.join(w.tmp, "upstream.py")
        with open(script, "w") as f:
            f.write(UPSTREAM)
        w.g.popen([sys.executable, script, "8081", w.upstream_log, "127.0.0.1"],
                  stdout=w.log("upstream"), stderr=subprocess.STDOUT)
        w.idp = w.start_idp("key-1")
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--addr", "127.0.0.1:8443")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        eng = w.rest("POST", "/groups", {"name": "eng"})
        w.rest("POST", "/groups", {"name": "sales"})
        w.rest("POST", "/reverse-proxies/services", service_body(
            "sso", SSO, private=False,
            auth={"bearer_auth": {"enabled": True, "distribution_groups": [eng["id"]]}}))
        yield w
    finally:
        left = tb.close_with_log_tails("gateway", "management", "idp", tail=5000)
    assert not left, left


def _browser(world):
    from tests.ui import browser as ui

    extra = [f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1", "--ignore-certificate-errors"]
    with mock.patch.object(ui, "FLAGS", ui.FLAGS + extra), inside_netns(world.g.name):
        return ui.Browser()


def _sign_in(world, who: str, shot: str = ""):
    """A new browser signs in at the provider as ``who``; (browser, page text)."""

    b = _browser(world)
    try:
        return _sign_in_with(world, b, who, shot)
    except BaseException:
        with inside_netns(world.g.name):
            print("browser at", b.driver.current_url, b.driver.page_source[:2000])
            b.close()
        raise


def _sign_in_with(world, b, who: str, shot: str):
    from selenium.webdriver.common.by import By

    d = b.driver
    with inside_netns(world.g.name):
        d.get(f"https://{SSO}:8443/hello?x=1")
        wait_for(lambda: d.current_url.startswith(ISSUER), 20, "the provider's login page")
        d.find_element(By.NAME, "login").send_keys(who)
        d.find_element(By.NAME, "password").send_keys("any")
        b.click_and_wait("button[type=submit]")
        if d.current_url.startswith(ISSUER):  # the consent step
            b.click_and_wait("button[type=submit]")
        wait_for(lambda: d.current_url.startswith(f"https://{SSO}:8443/"), 20,
                 "the way back to the service")
        if shot:
            b.shoot(shot)
        return b, d.find_element(By.TAG_NAME, "body").text


def test_sso_sign_in_groups_denial_and_key_rotation(world):
    if not wait_for(lambda: world.g.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
             f"{SSO}:8443:127.0.0.1", f"https://{SSO}:8443/"], check=False).stdout == "302",
            30, "the SSO service on the gateway (302 to the provider)"):
        return
    b, text = _sign_in(world, "alice")
    try:
        seen = json.loads(text)
        assert seen["path"] == "/hello"  # the provider's return URL carries no query
        assert seen["headers"]["x-netbird-user"] == "alice@example.test"
        assert seen["headers"]["x-netbird-groups"] == "eng"
        with inside_netns(world.g.name):  # a reload is served from the cookie
            b.driver.refresh()
            assert json.loads(b.driver.find_element("tag name", "body").text)["path"] == \
                "/hello"
    finally:
        with inside_netns(world.g.name):
            b.close()
    first = time.monotonic()
    b, text = _sign_in(world, "bob", shot="public-sso-denied")
    try:
        assert "Access Denied" in text and "not authorized" in text
    finally:
        with inside_netns(world.g.name):
            b.close()
    # the provider rotates its signing key (a new process, a new key id)
    world.idp.terminate()
    world.idp.wait(timeout=10)
    world.idp = world.start_idp("key-2")
    time.sleep(max(0.0, 10.5 - (time.monotonic() - first)))  # JWKS refetch spacing
    b, text = _sign_in(world, "alice")
    try:
        assert json.loads(text)["headers"]["x-netbird-groups"] == "eng"
    finally:
        with inside_netns(world.g.name):
            b.close()
