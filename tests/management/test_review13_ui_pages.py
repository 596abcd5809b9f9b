"""Review 13: the dashboard (``/ui/``) with another account's ids, over real
HTTP against ``twistd nbmanagement`` (SQLite and PostgreSQL), as two hostile
accounts.

The dashboard's pages call the REST handlers with the signed-in identity, so
they inherit the API's scoping; pinned here over the pages themselves: B's
admin, signed in, opening or posting to A's service, peer (and its wg-quick
configuration), group, proxy token or account by id gets 404 and sees none
of A's data, and nothing of A changes; B's live view, access log and lists
show none of A's objects.
"""

from __future__ import annotations

import base64
import re

import pytest
from nacl.public import PrivateKey

from tests.ui.harness import UiClient

from .apiserver import BACKENDS, account_id, new_account, server_with_cluster, uniq

CLUSTER = "cl.review13ui.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with server_with_cluster(tmp_path_factory, request.param, CLUSTER) as srv:
        yield srv


def _ok(server, auth: str, method: str, path: str, body=None):
    resp = server.request(method, path, body, auth=auth)
    assert resp.status == 200, (method, path, resp)
    return resp.json


@pytest.fixture(scope="module")
def victim(server):
    auth = new_account(server)
    key = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
    group = _ok(server, auth, "POST", "/api/groups", {"name": uniq("victim-group")})
    peer = _ok(server, auth, "POST", "/api/peers", {"name": uniq("victim-peer"),
                                                    "public_key": key})
    svc = _ok(server, auth, "POST", SERVICES, {
        "name": uniq("victim-svc"), "domain": f"{uniq('victim')}.{CLUSTER}", "enabled": True,
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                     "host": "10.0.0.5", "port": 80, "enabled": True,
                     "options": {"direct_upstream": True}}]})
    token = _ok(server, auth, "POST", "/api/reverse-proxies/proxy-tokens", {"name": "gw"})
    return {"auth": auth, "id": account_id(server, auth), "group": group, "peer": peer,
            "service": svc, "token": token}


@pytest.fixture(scope="module")
def hostile(server):
    auth = new_account(server)
    ui = UiClient(server.url)
    ui.sign_in(auth.removeprefix("Token "))
    return ui


def _secrets_of(v) -> list[str]:
    """Strings that must not appear on another account's pages."""
    return [v["id"], v["group"]["name"], v["peer"]["name"], v["peer"]["ip"],
            v["service"]["domain"], v["service"]["name"], v["token"]["id"]]


def _csrf(ui: UiClient) -> str:
    _s, _h, text = ui.get("/ui/services")
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def test_another_accounts_pages_are_404_and_show_nothing(victim, hostile):
    pages = [f"/ui/services/{victim['service']['id']}", f"/ui/peers/{victim['peer']['id']}",
             f"/ui/peers/{victim['peer']['id']}/config", f"/ui/accounts/{victim['id']}"]
    for path in pages:
        status, _h, text = hostile.get(path)
        assert status == 404, (path, status, text[:300])
        leaked = [s for s in _secrets_of(victim) if s in text and s not in path]
        assert not leaked, (path, leaked)
    for path in ("/ui/", "/ui/services", "/ui/peers", "/ui/groups", "/ui/tokens",
                 "/ui/access-log", f"/ui/access-log?service_id={victim['service']['id']}",
                 "/ui/live/fragment", "/ui/accounts"):
        status, _h, text = hostile.get(path)
        assert status in (200, 403), (path, status, text[:300])
        leaked = [s for s in _secrets_of(victim) if s in text and s not in path]
        assert not leaked, (path, leaked)


def test_another_accounts_objects_survive_posts_by_id(server, victim, hostile):
    csrf = _csrf(hostile)
    posts = [
        (f"/ui/services/{victim['service']['id']}/delete", {}),
        (f"/ui/services/{victim['service']['id']}",
         {"name": "taken", "domain": f"taken.{CLUSTER}", "target_host": "10.9.9.9"}),
        (f"/ui/peers/{victim['peer']['id']}/delete", {}),
        (f"/ui/groups/{victim['group']['id']}/delete", {}),
        (f"/ui/tokens/{victim['token']['id']}/revoke", {}),
    ]
    for path, form in posts:
        status, _h, text = hostile.post(path, {"csrf": csrf, **form})
        assert status == 404, (path, status, text[:300])
    auth = victim["auth"]
    svc = _ok(server, auth, "GET", f"{SERVICES}/{victim['service']['id']}")
    assert svc["name"] == victim["service"]["name"]
    assert svc["domain"] == victim["service"]["domain"]
    _ok(server, auth, "GET", f"/api/peers/{victim['peer']['id']}")
    _ok(server, auth, "GET", f"/api/groups/{victim['group']['id']}")
    tokens = _ok(server, auth, "GET", "/api/reverse-proxies/proxy-tokens")
    assert [t.get("revoked") for t in tokens if t["id"] == victim["token"]["id"]] == [False]
