"""Signed identity assertion end to end (issue 16 acceptance), real processes:

twistd nbmanagement + twistd nbgateway in namespace G, a private service with
``assertion: required`` whose upstream is ``examples/assertion_upstream.py``
(PyJWT's PyJWKClient against management's
``/.well-known/nbgateway/jwks.json?domain=``), and a stock wireguard-go peer
in the access group curling the service over the tunnel.

* through the gateway: 200, the upstream verified the assertion (sub, email,
  groups, peer_ip = the peer's tunnel address); a client-sent copy is replaced;
* around the gateway (straight to the upstream inside G): no assertion, a
  forged one (right kid, wrong key) and a real one replayed after it expired
  are all 401;
* rotation with requests in flight: a curl loop over the tunnel sees only 200s
  while the key rotates, later tokens name the new key, the JWKS lists both;
* the gateway serves the same JWKS at ``https://<service>/.well-known/...``.
* a public service with header auth (operator auth) and
  ``max_session_age_seconds: 120``: the upstream verifies an assertion with
  ``method: header``; the session cookie has ``Max-Age=120`` and its JWT
  lives 120 s; the cookie alone is asserted as the same identity.

Management runs with ``NB_MANAGEMENT_ASSERTION_LIFETIME=10`` so expiry is
seconds away, not five minutes, and publishes a rotated-in key 6 s (not 60 s)
before the gateway signs with it; the upstream refetches the JWKS for an
unknown key id at most every 3 s (PyJWKClient's cooldown, 30 s by default).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import APP, DOMAIN, VENV_BIN, World, gateway_cas, wait_for
from tests.interop.testbed import inside_netns

pytestmark = pytest.mark.interop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPSTREAM_PORT = 8082
JWKS = f"http://127.0.0.1:33071/.well-known/nbgateway/jwks.json?domain={APP}"
#: a public service with header auth (operator auth) and a 2-minute session
HDR = f"hdr.{DOMAIN}"
HDR_PORT = 8083
SESSION_AGE = 120
LIFETIME = 10
PUBLISH_AHEAD = 6


class AssertionWorld(World):
    def start_management(self) -> None:
        # the same process as World's, with a 10 s assertion lifetime
        env = dict(os.environ, NB_MANAGEMENT_ASSERTION_LIFETIME=str(LIFETIME),
                   NB_MANAGEMENT_ASSERTION_PUBLISH_AHEAD=str(PUBLISH_AHEAD))
        self.mgmt_proc = self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbmanagement",
             "--datadir", self.mgmt_dir, "--api-addr", "127.0.0.1:33071",
             "--grpc-addr", "127.0.0.1:33073"],
            stdout=self.log("management"), stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        wait_for(lambda: self._get_ok("/openapi.json"), 30, "management REST API")
        with open(os.path.join(self.mgmt_dir, "admin-token")) as f:
            self.admin = f.read().strip()

    def start_verifying_upstream(self, domain: str = APP, port: int = UPSTREAM_PORT) -> None:
        jwks = f"http://127.0.0.1:33071/.well-known/nbgateway/jwks.json?domain={domain}"
        self.g.popen([sys.executable, os.path.join(REPO, "examples", "assertion_upstream.py"),
                      "--jwks-url", jwks, "--audience", domain, "--port", str(port),
                      "--echo-token", "--refresh-cooldown", "3"],
                     stdout=self.log("upstream"), stderr=subprocess.STDOUT)

    def direct(self, token: str | None) -> tuple[int, dict]:
        """A request straight to the upstream, around the gateway."""
        headers = {"X-NetBird-Jwt-Assertion": token} if token is not None else {}
        req = urllib.request.Request(f"http://127.0.0.1:{UPSTREAM_PORT}/", headers=headers)
        with inside_netns(self.g.name):
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

    def jwks(self) -> dict:
        with inside_netns(self.g.name), urllib.request.urlopen(JWKS, timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(AssertionWorld, "curl", "wg-quick",
                          logs=("gateway", "management", "upstream")) as w:
        w.start_management()
        w.start_verifying_upstream()
        w.start_verifying_upstream(HDR, HDR_PORT)
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: any(DOMAIN in json.dumps(c)
                             for c in w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.devs = devs
        w.add_peer("alice", [devs["id"]])
        w.service = w.rest("POST", "/reverse-proxies/services", {
            "name": "app", "domain": APP, "enabled": True, "private": True,
            "access_groups": [devs["id"]], "assertion": "required",
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": UPSTREAM_PORT, "enabled": True,
                         "options": {"direct_upstream": True}}]})
        assert w.service["assertion"] == "required"
        w.hdr = w.rest("POST", "/reverse-proxies/services", {
            "name": "hdr", "domain": HDR, "enabled": True, "assertion": "on",
            "max_session_age_seconds": SESSION_AGE,
            "auth": {"header_auths": [{"enabled": True, "header": "X-Api-Key",
                                       "value": "s3cret-key"}]},
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": HDR_PORT, "enabled": True,
                         "options": {"direct_upstream": True}}]})
        w.alice = w.connect_peer("alice")
        yield w


def _get(world, path: str = "/whoami", *extra: str):
    ns, gw_ip, _conf = world.alice
    return world.curl(ns, f"https://{APP}{path}", *extra, gw_ip=gw_ip)


def test_upstream_verifies_the_assertion_through_the_gateway(world):
    code, body, err = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        _get(world, "/whoami", "-H", "X-NetBird-Jwt-Assertion: forged")),
        30, "a 200 from the verifying upstream")
    seen = json.loads(body)
    alice = world.peers["alice"]
    assert seen["sub"] and seen["method"]
    assert seen["peer_ip"] == alice["ip"]
    assert world.devs["id"] in seen["groups"] and "devs" in seen["group_names"]
    claims = jwt.decode(seen["token"], options={"verify_signature": False})
    assert claims["aud"] == APP and claims["exp"] - claims["iat"] == LIFETIME
    world.captured = seen["token"]
    # the gateway publishes the same keys for the service
    code, body, err = _get(world, "/.well-known/nbgateway/jwks.json")
    assert code == 200, err
    assert json.loads(body) == world.jwks()


def test_around_the_gateway_forged_and_expired_are_refused(world):
    assert world.direct(None)[0] == 401
    # forged: the published kid, signed with another key
    kid = world.jwks()["keys"][0]["kid"]
    now = int(time.time())
    forged = jwt.encode({"iss": "nbgateway-management", "aud": APP, "sub": "mallory",
                         "iat": now, "exp": now + 60, "jti": "x"},
                        Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})
    code, body = world.direct(forged)
    assert code == 401 and body["error"] == "InvalidSignatureError"
    # tampered claims on a real token: the signature no longer matches
    head, payload, sig = world.captured.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    evil = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert world.direct(f"{head}.{evil}.{sig}")[0] == 401
    # the real token is accepted until it expires, then refused
    exp = jwt.decode(world.captured, options={"verify_signature": False})["exp"]
    if time.time() < exp - 1:
        assert world.direct(world.captured)[0] == 200
    time.sleep(max(0.0, exp - time.time()) + 1.5)
    code, body = world.direct(world.captured)
    assert code == 401 and body["error"] == "ExpiredSignatureError"


def test_rotation_with_requests_in_flight(world):
    old_kid = world.jwks()["keys"][0]["kid"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            code, body, _err = _get(world)
            results.append((code, json.loads(body)["kid"] if code == 200 else body))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 5, 20, "requests before the rotation")
        world.rest("POST", f"/reverse-proxies/services/{world.service['id']}"
                           "/assertion-key/rotate")
        # published at once, before anything is signed with it
        new_kid = world.jwks()["keys"][0]["kid"]
        assert new_kid != old_kid
        assert not any(kid == new_kid for _code, kid in results)
        wait_for(lambda: any(kid != old_kid for code, kid in results if code == 200), 20,
                 "a request signed with the new key")
        n = len(results)
        wait_for(lambda: len(results) >= n + 5, 20, "requests after the rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    kids = [k["kid"] for k in world.jwks()["keys"]]
    assert kids == [new_kid, old_kid]
    assert results[-1][1] == new_kid


def _public(world, *extra: str) -> tuple[int, str, str]:
    """(status, response head, body) from the public listener over HTTPS."""
    r = world.g.run(["curl", "-sS", "-m", "10", "--resolve", f"{HDR}:8443:127.0.0.1",
                     "--cacert", gateway_cas(world.gw_dir), "-D", "/dev/stderr",
                     "-o", "-", *extra, f"https://{HDR}:8443/whoami"], check=False, timeout=20)
    head = r.stderr.replace("\r", "")
    status = [int(ln.split()[1]) for ln in head.splitlines() if ln.startswith("HTTP/")]
    return (status[-1] if status else 0), head, r.stdout


def test_operator_auth_identity_is_asserted_and_session_length_applies(world):
    wait_for(lambda: _public(world)[0] == 401, 30, "the public service on the gateway")
    code, head, body = _public(world, "-H", "X-Api-Key: s3cret-key",
                               "-H", "X-NetBird-Jwt-Assertion: forged")
    assert code == 200, (head, body)
    seen = json.loads(body)
    assert seen["method"] == "header" and seen["sub"]
    claims = jwt.decode(seen["token"], options={"verify_signature": False})
    assert claims["aud"] == HDR
    # the session cookie lives max_session_age_seconds, and so does its JWT
    cookie = next(ln for ln in head.splitlines()
                  if ln.lower().startswith("set-cookie: nb_session="))
    assert f"max-age={SESSION_AGE}" in cookie.lower(), cookie
    session = cookie.split("=", 1)[1].split(";", 1)[0]
    s_claims = jwt.decode(session, options={"verify_signature": False})
    assert s_claims["exp"] - s_claims["iat"] == SESSION_AGE
    # the cookie alone: the same identity, asserted again
    code, _head, body = _public(world, "-H", f"Cookie: nb_session={session}")
    assert code == 200 and json.loads(body)["sub"] == seen["sub"]
    assert _public(world, "-H", "X-Api-Key: wrong")[0] == 401
