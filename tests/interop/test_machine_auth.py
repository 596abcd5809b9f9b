"""Machine clients with real processes (issue 16):

    netns G: twistd nbmanagement, twistd nbgateway --mgmt (public listener
             127.0.0.1:8443), an upstream on 127.0.0.1:8081 echoing headers

A public service protected only by service tokens.  A token is created
through the REST API (secret shown once); curl with the two headers and with
``Authorization: Bearer`` gets 200 and the upstream sees ``X-NetBird-User:
token:<id>`` and never the secret; a wrong secret is 401; after the token is
revoked through ``nbgateway-admin services token ... revoke`` the gateway
answers 401 within 2 s; the access log names the token and the mechanism.

Session revocation: a PIN service's ``nb_session`` cookie works until a user
of the account is blocked through the REST API, then the gateway refuses it
within 2 s (management revokes every session of the account's services;
logging in again works).
"""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import DOMAIN, wait_for
from tests.interop.test_public_auth import _service, curl, public_world

pytestmark = pytest.mark.interop

MACHINE = f"machine.{DOMAIN}"
PIN = f"pin.{DOMAIN}"


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(public_world, "curl", logs=("gateway", "management")) as w:
        w.svc = w.rest("POST", "/reverse-proxies/services", _service("machine", MACHINE, {}))
        w.rest("POST", "/reverse-proxies/services", _service("pin", PIN, {
            "pin_auth": {"enabled": True, "pin": "135790"}}))
        yield w


def _admin(world, *argv: str) -> str:
    return world.admin_cli(*argv).stdout


def test_service_token_with_curl_and_revocation(world):
    # before any token the service is open (no schemes)
    wait_for(lambda: curl(world, MACHINE)[0] == 200, 30, "machine service on the gateway")
    made = world.rest("POST", f"/reverse-proxies/services/{world.svc['id']}/tokens",
                      {"name": "ci"})
    tid, secret = made["id"], made["secret"]
    wait_for(lambda: curl(world, MACHINE)[0] == 401, 10, "the token mapping on the gateway")

    code, _, body = curl(world, MACHINE, "/t", "-H", f"X-NetBird-Token-Id: {tid}",
                         "-H", f"X-NetBird-Token-Secret: {secret}")
    assert code == 200, (code, body)
    seen = json.loads(body)["headers"]
    assert seen["x-netbird-user"] == f"token:{tid}"
    assert secret not in json.dumps(seen)
    code, _, body = curl(world, MACHINE, "/b", "-H", f"Authorization: Bearer {tid}.{secret}")
    assert code == 200, (code, body)
    assert "authorization" not in json.loads(body)["headers"]

    wrong = secret[:-1] + ("B" if secret[-1] == "A" else "A")
    code, _, body = curl(world, MACHINE, "/w", "-H", f"X-NetBird-Token-Id: {tid}",
                         "-H", f"X-NetBird-Token-Secret: {wrong}")
    assert code == 401 and "invalid service token" in body

    out = _admin(world, "services", "token", MACHINE, "revoke", tid)
    revoked_at = time.monotonic()
    assert out == f"token {tid} revoked\n"
    while True:
        code = curl(world, MACHINE, "/r", "-H", f"Authorization: Bearer {tid}.{secret}")[0]
        if code == 401:
            break
        assert code == 200
        assert time.monotonic() - revoked_at < 2.0, "revoked token still accepted after 2 s"
        time.sleep(0.05)
    assert time.monotonic() - revoked_at < 2.0

    def logged():
        page = world.rest("GET", "/events/proxy?page_size=100")
        got = {(e.get("user_id"), e.get("auth_method_used"), e.get("status_code"))
               for e in page["data"] if e.get("host") == MACHINE}
        return got if (f"token:{tid}", "token", 200) in got and \
            (None, "token", 401) in {(u or None, m, s) for u, m, s in got} else None

    wait_for(logged, 30, "access-log entries naming the token")
    # the last token revoked: the service stays closed
    assert curl(world, MACHINE, "/open")[0] == 401


def _pin_login(world) -> str:
    """The login page's form token, then the PIN form posted same-origin."""
    page = curl(world, PIN)[2]
    form_token = re.search(r'name="nb_csrf" value="([^"]+)"', page).group(1)
    code, headers, body = curl(world, PIN, "/", "-H", f"Origin: https://{PIN}:8443",
                               "--data-urlencode", "pin=135790",
                               "--data-urlencode", f"nb_csrf={html.unescape(form_token)}")
    assert code == 303, (code, body)
    return headers["set-cookie"][0].split(";", 1)[0]


def test_blocked_user_ends_existing_sessions_within_2s(world):
    wait_for(lambda: curl(world, PIN)[0] == 401, 30, "pin service on the gateway")
    cookie = _pin_login(world)
    assert curl(world, PIN, "/c", "-H", f"Cookie: {cookie}")[0] == 200
    user = world.rest("POST", "/users", {"email": "mallory@example.test", "name": "m",
                                         "role": "user", "auto_groups": []})
    assert curl(world, PIN, "/c", "-H", f"Cookie: {cookie}")[0] == 200  # nothing revoked yet
    world.rest("PUT", f"/users/{user['id']}", {"role": "user", "auto_groups": [],
                                               "is_blocked": True})
    blocked_at = time.monotonic()
    while curl(world, PIN, "/c", "-H", f"Cookie: {cookie}")[0] == 200:
        assert time.monotonic() - blocked_at < 2.0, "revoked session still accepted after 2 s"
        time.sleep(0.05)
    assert curl(world, PIN, "/c", "-H", f"Cookie: {cookie}")[0] == 401
    time.sleep(1.1)  # a new login (issued after the cut-off second) works again
    fresh = _pin_login(world)
    assert curl(world, PIN, "/c", "-H", f"Cookie: {fresh}")[0] == 200
