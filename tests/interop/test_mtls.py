"""mTLS client certificates with real processes (issue 16):

    netns G: twistd nbmanagement, twistd nbgateway --mgmt (public listener
             127.0.0.1:8443), an upstream on 127.0.0.1:8081 echoing headers
    netns P: wireguard-go peer "alice" (in group devs), configured from
             management's wg-quick config

A public service ``mtls.gw.test`` whose only scheme is a client CA uploaded
with ``nbgateway-admin services client-ca ... set`` (rule: the certificate's
SAN email is a user's email).  On the public listener and over the tunnel,
curl with a certificate from that CA gets 200 and the upstream sees
``X-NetBird-User``/``-Groups`` of the mapped user; a certificate from another
CA, and none, get the 401 client-certificate page.  ``openssl s_client``
shows the CertificateRequest naming the service CA.  Replacing the CA
refuses the old certificates within 2 s; a user created after the CA was
set is mapped within 2 s.  The access log says ``mtls`` and names the user.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import DOMAIN, counter, gateway_cas, service_body, wait_for
from tests.interop.test_public_auth import PUBLIC, _service, public_world
from tests.tls._clientcerts import IssuingCA

pytestmark = pytest.mark.interop

MTLS = f"mtls.{DOMAIN}"
APP = f"app.{DOMAIN}"
EMAIL = "alice@example.test"


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(public_world, "curl", "wg-quick", "openssl",
                          logs=("gateway", "management")) as w:
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.user = w.rest("POST", "/users", {"email": EMAIL, "name": "Alice", "role": "user",
                                           "auto_groups": [devs["id"]]})
        w.add_peer("alice", [devs["id"]])
        # a private service gives alice's tunnel a gateway peer
        w.rest("POST", "/reverse-proxies/services",
               service_body("app", APP, private=True, groups=[devs["id"]]))
        w.svc = w.rest("POST", "/reverse-proxies/services", _service("mtls", MTLS, {}))
        w.ca, w.other = IssuingCA("Corp Client CA"), IssuingCA("Other CA")
        certs = os.path.join(w.tmp, "client")
        w.alice = w.ca.issue("Alice", emails=(EMAIL,)).write(certs, "alice")
        w.foreign = w.other.issue("Alice", emails=(EMAIL,)).write(certs, "foreign")
        w.ca_file = w.tb.write_file("corp-ca.pem", w.ca.pem)
        w.other_file = w.tb.write_file("other-ca.pem", w.other.pem)
        out = _admin(w, "services", "client-ca", MTLS, "set", w.ca_file)
        assert "client certificates mapped by email" in out, out
        assert "CA CN=Corp Client CA" in out, out
        yield w


def _admin(world, *argv: str) -> str:
    return world.admin_cli(*argv).stdout


def _curl(world, ns, addr: str, path: str, cert=None, *extra: str) -> tuple[int, str]:
    host, _, port = addr.rpartition(":")
    args = ["curl", "-sS", "-m", "10", "--resolve", f"{MTLS}:{port}:{host}",
            "--cacert", gateway_cas(world.gw_dir), "-o", "-",
            "-w", "\n%{http_code}", *extra]
    if cert is not None:
        args += ["--cert", cert[0], "--key", cert[1]]
    r = ns.run([*args, f"https://{MTLS}:{port}{path}"], check=False, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def _public(world, path="/", cert=None, *extra):
    return _curl(world, world.g, PUBLIC, path, cert, *extra)


def test_public_listener_curl_with_certificates(world):
    wait_for(lambda: _public(world, "/", world.alice)[0] == 200, 30,
             "the mTLS service on the gateway")
    for proto in ("--http1.1", "--http2"):
        code, body = _public(world, "/who", world.alice, proto, "-H", "X-NetBird-User: mallory")
        assert code == 200, body
        seen = json.loads(body)["headers"]
        assert seen["x-netbird-user"] == EMAIL
        assert seen["x-netbird-groups"] == "devs"
    for cert in (world.foreign, None):
        code, body = _public(world, "/denied", cert)
        assert code == 401, body
        assert "<h1>Client certificate required</h1>" in body
        assert "<form" not in body
    assert "certificate not accepted" in _public(world, "/x", world.foreign)[1]
    assert "no client certificate was presented" in _public(world, "/x")[1]


def test_openssl_s_client_shows_the_certificate_request(world):
    def names(servername: str) -> str:
        r = world.g.run(["openssl", "s_client", "-connect", PUBLIC, "-servername", servername,
                         "-cert", world.alice[0], "-key", world.alice[1]],
                        input="", check=False, timeout=20)
        return r.stdout

    out = names(MTLS)
    assert "Acceptable client certificate CA names" in out, out
    assert "CN = Corp Client CA" in out, out
    assert "Other CA" not in out
    # a name without a client CA asks for no certificate
    out = names(DOMAIN)
    assert "No client certificate CA names sent" in out, out
    metrics = world.metrics()
    assert counter(metrics, "nbgateway_mtls_certificate_requests_total") >= 1
    assert counter(metrics, "nbgateway_mtls_handshake_chain_checks_total", result="ok") >= 1


def test_over_the_tunnel(world):
    ns, gw_ip, _conf = world.connect_peer("alice")
    wait_for(lambda: _curl(world, ns, f"{gw_ip}:443", "/", world.alice)[0] == 200, 30,
             "the mTLS service over the tunnel")
    code, body = _curl(world, ns, f"{gw_ip}:443", "/t", world.alice, "--http2")
    assert code == 200, body
    assert json.loads(body)["headers"]["x-netbird-user"] == EMAIL
    code, body = _curl(world, ns, f"{gw_ip}:443", "/t", world.foreign)
    assert code == 401 and "Client certificate required" in body
    code, body = _curl(world, ns, f"{gw_ip}:443", "/t")
    assert code == 401 and "no client certificate was presented" in body


def test_access_log_and_replacing_the_ca(world):
    wait_for(lambda: _public(world, "/", world.alice)[0] == 200, 30, "the mTLS service")

    def logged():
        page = world.rest("GET", "/events/proxy?page_size=100")
        got = {(e.get("user_id") or None, e.get("auth_method_used"), e.get("status_code"))
               for e in page["data"] if e.get("host") == MTLS}
        return got if (world.user["id"], "mtls", 200) in got and \
            (None, "mtls", 401) in got else None

    wait_for(logged, 30, "access-log entries with mtls")

    # a user created after the CA was set is mapped with the next mapping update
    carol = world.ca.issue("Carol", emails=("carol@example.test",)).write(
        os.path.join(world.tmp, "client"), "carol")
    assert _public(world, "/c", carol)[0] == 401
    world.rest("POST", "/users", {"email": "Carol@Example.test", "name": "Carol",
                                  "role": "user", "auto_groups": []})
    created = time.monotonic()
    while (got := _public(world, "/c", carol))[0] != 200:
        assert time.monotonic() - created < 2.0, "new user not mapped after 2 s"
        time.sleep(0.05)
    assert json.loads(got[1])["headers"]["x-netbird-user"] == "Carol@Example.test"

    _admin(world, "services", "client-ca", MTLS, "set", world.other_file)
    replaced = time.monotonic()
    while _public(world, "/r", world.alice)[0] == 200:
        assert time.monotonic() - replaced < 2.0, "old CA's certificate accepted after 2 s"
        time.sleep(0.05)
    assert _public(world, "/r", world.alice)[0] == 401
    assert _public(world, "/r", world.foreign)[0] == 200
    assert "CA CN=Other CA" in _admin(world, "services", "client-ca", MTLS, "show")
