"""Operator auth on public services with real processes:

    netns G: twistd nbmanagement (REST 127.0.0.1:33071, gRPC 127.0.0.1:33073)
             twistd nbgateway --mgmt ... (public listener 127.0.0.1:8443)
             an upstream on 127.0.0.1:8081 echoing the headers it received

Services (public, created through the REST API; secrets are argon2id-hashed
by management and blanked in every response):

* ``hdr.<cluster>``: header auth ``X-Api-Key``;
* ``pw.<cluster>``: password and PIN; ``pw2.<cluster>``: password.

curl: the right header value is 200 with an ``nb_session`` cookie and the
cookie alone is enough afterwards; a wrong value is 401; with management
stopped it is 502.  Headless Chromium (inside G, names mapped to the public
listener): the login page, a wrong password (401, error shown), the right one
(303 back to the original URL, then the upstream page with
``X-NetBird-User``), a reload served from the cookie, and the second domain
still asking.  Screenshots of the login, error and denied pages are saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock
from urllib.parse import quote

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import (
    DOMAIN,
    UPSTREAM,
    World,
    gateway_cas,
    service_body,
    wait_for,
)
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

PUBLIC = "127.0.0.1:8443"
HDR = f"hdr.{DOMAIN}"
PW = f"pw.{DOMAIN}"
PW2 = f"pw2.{DOMAIN}"


def _service(name: str, domain: str, auth: dict) -> dict:
    return service_body(name, domain, private=False, auth=auth)


def public_world(tb: Testbed) -> World:
    """A World whose netns G runs the header-echoing upstream on
    127.0.0.1:8081, management, and a gateway with its public listener on
    :data:`PUBLIC`, connected to management (no service yet)."""
    w = World(tb)
    script = os.path.join(w.tmp, "upstream.py")
    with open(script, "w") as f:
        f.write(UPSTREAM)
    w.g.popen([sys.executable, script, "8081", w.upstream_log, "127.0.0.1"],
              stdout=w.log("upstream"), stderr=subprocess.STDOUT)
    w.start_management()
    token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
    w.start_gateway(token, "--addr", PUBLIC)
    wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
             "the gateway to connect to management")
    return w


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(public_world, "curl",
                          logs=("gateway", "management", "upstream"), tail=6000) as w:
        w.hdr = w.rest("POST", "/reverse-proxies/services", _service("hdr", HDR, {
            "header_auths": [{"enabled": True, "header": "X-Api-Key", "value": "s3cret-key"}]}))
        w.pw = w.rest("POST", "/reverse-proxies/services", _service("pw", PW, {
            "password_auth": {"enabled": True, "password": "correct horse"},
            "pin_auth": {"enabled": True, "pin": "246810"}}))
        w.rest("POST", "/reverse-proxies/services", _service("pw2", PW2, {
            "password_auth": {"enabled": True, "password": "other"}}))
        yield w


def curl(w: World, host: str, path: str = "/", *extra: str) -> tuple[int, dict, str]:
    """(status, lower-case response headers, body) over HTTPS on the public listener."""
    r = w.g.run(["curl", "-sS", "-m", "10", "--resolve", f"{host}:8443:127.0.0.1",
                 "--cacert", gateway_cas(w.gw_dir), "-D", "/dev/stderr",
                 "-o", "-", *extra, f"https://{host}:8443{path}"], check=False, timeout=20)
    lines = r.stderr.replace("\r", "").split("\n")
    status, headers = 0, {}
    for line in lines:
        if line.startswith("HTTP/"):
            status, headers = int(line.split()[1]), {}
        elif ":" in line:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers, r.stdout


def test_secrets_are_hashed_and_never_returned(world):
    for svc in (world.hdr, world.pw):
        shown = world.rest("GET", f"/reverse-proxies/services/{svc['id']}")
        text = json.dumps(shown)
        assert "s3cret-key" not in text and "correct horse" not in text, text
    assert world.rest("GET", f"/reverse-proxies/services/{world.pw['id']}")["auth"][
        "password_auth"] == {"enabled": True, "password": ""}


def test_header_auth_with_curl(world):
    # the mapping reaches the gateway: an unauthenticated request asks (401)
    wait_for(lambda: curl(world, HDR)[0] == 401, 30, "hdr service on the gateway")
    code, headers, body = curl(world, HDR, "/h", "-H", "X-Api-Key: s3cret-key")
    assert code == 200, (code, body)
    cookie = headers["set-cookie"][0]
    assert cookie.startswith("nb_session=")
    assert "Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=Lax" in cookie
    seen = json.loads(body)["headers"]
    assert "x-api-key" not in seen
    assert seen["x-netbird-user"] == "header-user"
    token = cookie.split(";", 1)[0]
    code, _, body = curl(world, HDR, "/again", "-H", f"Cookie: {token}; keep=1")
    assert code == 200
    assert json.loads(body)["headers"]["cookie"] == "keep=1"  # nb_session never forwarded
    code, _, body = curl(world, HDR, "/h", "-H", "X-Api-Key: wrong")
    assert (code, body) == (401, "Unauthorized\n")


def _browser(world):
    from tests.ui import browser as ui

    ui.require_browser()
    extra = [f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1",
             "--ignore-certificate-errors"]
    with mock.patch.object(ui, "FLAGS", ui.FLAGS + extra), inside_netns(world.g.name):
        return ui.Browser()


def test_password_login_in_chromium(world):
    from selenium.webdriver.common.by import By

    wait_for(lambda: curl(world, PW)[0] == 401, 30, "pw service on the gateway")
    b = _browser(world)
    try:
        d = b.driver
        with inside_netns(world.g.name):
            url = f"https://{PW}:8443/app/page?x=1"
            d.get(url)
            assert d.find_element(By.ID, "nb-password")
            assert d.find_element(By.ID, "nb-pin")
            assert not b.axe(), b.axe()
            b.shoot("public-login")
            d.find_element(By.ID, "nb-password").send_keys("wrong")
            b.click_and_wait("#nb-password-submit")
            assert "Wrong password" in d.find_element(By.ID, "nb-error").text
            b.shoot("public-login-wrong-password")
            d.find_element(By.ID, "nb-password").send_keys("correct horse")
            b.click_and_wait("#nb-password-submit")
            assert d.current_url == url
            seen = json.loads(d.find_element(By.TAG_NAME, "body").text)
            assert seen["path"] == "/app/page?x=1"
            assert seen["headers"]["x-netbird-user"] == "password-user"
            assert "nb_session" not in seen["headers"].get("cookie", "")
            before = _upstream_count(world)
            d.refresh()
            seen = json.loads(d.find_element(By.TAG_NAME, "body").text)
            assert seen["headers"]["x-netbird-user"] == "password-user"
            assert _upstream_count(world) == before + 1
            d.get(f"https://{PW2}:8443/")
            assert d.find_element(By.ID, "nb-password")  # the other domain still asks
            desc = quote("<img src=x onerror=alert(1)>")
            d.get(f"https://{PW2}:8443/?error=access_denied&error_description={desc}")
            assert "<img src=x onerror=alert(1)>" in d.find_element(By.ID, "nb-denied").text
            b.shoot("public-access-denied")
            assert d.find_elements(By.TAG_NAME, "img") == []  # text, never markup
    finally:
        with inside_netns(world.g.name):
            b.close()


def _upstream_count(world) -> int:
    with open(world.upstream_log) as f:
        return f.read().count("/app/page?x=1\n")


def test_access_log_names_the_auth_mechanism(world):
    def mechanisms():
        page = world.rest("GET", "/events/proxy?page_size=100")
        seen = {(e.get("host"), e.get("auth_method_used"), e.get("status_code"))
                for e in page["data"]}
        want = {(HDR, "header", 200), (HDR, "header", 401), (PW, "password", 401)}
        return seen if want <= seen else None

    seen = wait_for(mechanisms, 30, "access-log entries with their auth mechanism")
    assert (PW, "password", 200) in seen or (PW, "password", 303) in seen, seen
    cli = world.g.run([os.path.join(os.path.dirname(sys.executable), "nbgateway-admin"),
                       "--url", "http://127.0.0.1:33071", "--token", world.admin,
                       "logs", "list", "--host", HDR], check=False)
    assert cli.returncode == 0, cli.stderr
    assert "AUTH_METHOD_USED" in cli.stdout and " header " in cli.stdout, cli.stdout


def test_management_down_is_502_and_cookie_still_works(world):
    code, headers, body = curl(world, HDR, "/h", "-H", "X-Api-Key: s3cret-key")
    assert code == 200, (code, headers, body)
    token = headers["set-cookie"][0].split(";", 1)[0]
    world.stop_management()
    code, _, body = curl(world, HDR, "/h", "-H", "X-Api-Key: s3cret-key")
    assert (code, body) == (502, "authentication service unavailable\n")
    # a session already granted is verified locally: no management needed
    code, _, _ = curl(world, HDR, "/h", "-H", f"Cookie: {token}")
    assert code == 200
