"""The gateway's front door against real processes (issue 11 items 3, 5, 6
and the HTTP items of 9):

    netns G: twistd nbmanagement (REST 127.0.0.1:33071, gRPC 127.0.0.1:33073)
             twistd nbgateway --mgmt ... --private --handshake-timeout 3s
                 (public listener 127.0.0.1:8443, one netstack per account)
             a WSGI upstream (Python's wsgiref) on 127.0.0.1:8081 answering with
                 the CGI environment it built (HTTP_X_NETBIRD_USER, ...)
    netns A: stock wireguard-go peer "alice" of the bootstrap account (group devs)
    netns B: stock wireguard-go peer of a second account, created through
             POST /api/accounts

* 11.3: alice sends ``X_NetBird_User`` / ``X-NetBird_User`` / ``X_NetBird_Groups``
  to the private service (plain request and WebSocket-style upgrade); the
  WSGI upstream's ``HTTP_X_NETBIRD_USER`` is exactly the stamped value.
* 11.5: one byte of a ClientHello is closed at the 3 s handshake deadline on
  the public listener and through the tunnel; no traceback in the gateway log.
* 11.6: ``openssl s_client -servername app.<cluster>`` on the public listener
  and on account B's tunnel listener gets a certificate that does not name
  the private service; on alice's own tunnel listener it does.
* 11.9: duplicate Host is 400 and an absolute-form target is routed by its
  authority and forwarded in origin form (curl on the public listener);
  ``APP.<cluster>.`` routes like ``app.<cluster>``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.multiaccount import global_proxy_token, rest_as, tenant
from tests.interop.test_private_e2e import DOMAIN, World, gateway_cas, service_body, wait_for

pytestmark = pytest.mark.interop

APP = f"app.{DOMAIN}"      # private, account A (bootstrap)
PUB = f"pub.{DOMAIN}"      # public, account A
BAPP = f"b.{DOMAIN}"       # private, account B
PUBLIC = "127.0.0.1:8443"
HANDSHAKE_TIMEOUT = 3.0

WSGI_UPSTREAM = textwrap.dedent('''
    import json, sys
    from wsgiref.simple_server import WSGIRequestHandler, make_server
    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass
    def app(environ, start_response):
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        seen["PATH_INFO"] = environ.get("PATH_INFO", "")
        seen["QUERY_STRING"] = environ.get("QUERY_STRING", "")
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps(seen) + "\\n")
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=Quiet).serve_forever()
''')

ONE_BYTE = textwrap.dedent('''
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.settimeout(60)
    s.sendall(b"\\x16")  # the first byte of a TLS handshake record, then silence
    t0 = time.monotonic()
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    print(f"{time.monotonic() - t0:.2f}")
''')


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick", "openssl",
                          logs=("gateway", "management", "upstream"), tail=6000) as w:
        script = os.path.join(w.tmp, "wsgi_upstream.py")
        with open(script, "w") as f:
            f.write(WSGI_UPSTREAM)
        w.g.popen([sys.executable, script, "8081", w.upstream_log],
                  stdout=w.log("upstream"), stderr=subprocess.STDOUT)
        w.start_management()
        b = tenant(w, "tenant-b")
        w.start_gateway(global_proxy_token(w), "--addr", PUBLIC,
                        "--handshake-timeout", f"{HANDSHAKE_TIMEOUT:g}s")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [devs["id"]])
        w.rest("POST", "/reverse-proxies/services",
               service_body("app", APP, private=True, groups=[devs["id"]]))
        w.rest("POST", "/reverse-proxies/services", service_body("pub", PUB, private=False))
        bdevs = rest_as(w, b.admin, "POST", "/groups", {"name": "bdevs"})
        b.add_peer("bob", [bdevs["id"]])
        rest_as(w, b.admin, "POST", "/reverse-proxies/services",
                service_body("bapp", BAPP, private=True, groups=[bdevs["id"]]))
        w.alice = w.connect_peer("alice")[:2]
        w.bob = b.connect_peer("bob")[:2]
        yield w


def curl(ns, url: str, *extra: str, resolve: str = "", cacert: str = "") -> tuple[int, str]:
    args = ["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}"]
    if resolve:
        args += ["--resolve", resolve]
    if cacert:
        args += ["--cacert", cacert]
    r = ns.run([*args, *extra, url], check=False, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def _ok(result):
    return result if result[0] == 200 else None


def upstream_seen(w: World) -> list[dict]:
    """Every CGI environment the WSGI upstream built, oldest first."""
    with open(w.upstream_log) as f:
        return [json.loads(line) for line in f if line.strip()]


def gateway_log(w: World) -> str:
    with open(os.path.join(w.tmp, "gateway.log"), "rb") as f:
        return f.read().decode(errors="replace")


def served_names(ns, connect: str, servername: str) -> str:
    """Subject and subjectAltName of the certificate presented for ``servername``."""
    r = ns.run(["openssl", "s_client", "-connect", connect, "-servername", servername],
               input="", check=False, timeout=20)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S)
    assert pem, r.stdout + r.stderr
    x = ns.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"],
               input=pem.group(0), check=False)
    return x.stdout


# -- 11.3 -------------------------------------------------------------------------


def test_underscore_spellings_never_merge_into_the_stamped_identity(world):
    ns, gw_ip = world.alice
    cacert = gateway_cas(world.gw_dir)
    spoof = ["-H", "X_NetBird_User: mallory", "-H", "X-NetBird_User: mallory2",
             "-H", "X_NetBird_Groups: admins", "-H", "X_Forwarded_For: 10.6.6.6",
             "-H", "X_Real_IP: 10.6.6.6"]
    _code, body = wait_for(lambda: _ok(curl(ns, f"https://{APP}/who", *spoof,
                                            resolve=f"{APP}:443:{gw_ip}", cacert=cacert)),
                           30, "a 200 from the private service")
    env = json.loads(body)
    user = env["HTTP_X_NETBIRD_USER"]
    assert user and "mallory" not in user and "," not in user, env
    assert "admins" not in env["HTTP_X_NETBIRD_GROUPS"].split(","), env
    assert "devs" in env["HTTP_X_NETBIRD_GROUPS"].split(","), env
    assert "10.6.6.6" not in env["HTTP_X_FORWARDED_FOR"] + env["HTTP_X_REAL_IP"], env

    # the upgrade (WebSocket) path prepares its headers the same way
    curl(ns, f"https://{APP}/ws", *spoof, "--http1.1", "-H", "Connection: Upgrade",
         "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
         "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
         resolve=f"{APP}:443:{gw_ip}", cacert=cacert)
    seen = upstream_seen(world)
    ws = [e for e in seen if e["PATH_INFO"] == "/ws"]
    assert ws, seen
    assert ws[-1]["HTTP_X_NETBIRD_USER"] == user, ws[-1]
    assert "admins" not in ws[-1]["HTTP_X_NETBIRD_GROUPS"], ws[-1]


# -- 11.9 -------------------------------------------------------------------------


def test_duplicate_host_absolute_form_and_name_spellings(world):
    g = world.g
    wait_for(lambda: _ok(curl(g, f"http://{PUBLIC}/", "-H", f"Host: {PUB}")), 30,
             "the public service")
    before = len(upstream_seen(world))
    # curl 7.x passes CR LF inside a header value: a second Host line
    code, body = curl(g, f"http://{PUBLIC}/dup", "-H", f"Host: {PUB}",
                      "-H", "X-Pad: 1\r\nHost: evil.example")
    assert code == 400 and "duplicate Host" in body, (code, body)
    assert len(upstream_seen(world)) == before

    code, body = curl(g, f"http://{PUBLIC}/", "--request-target",
                      f"http://{PUB}/abs/path?x=1", "-H", "Host: nope.example")
    assert code == 200, (code, body)
    env = json.loads(body)
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/abs/path", "x=1"), env
    assert env["HTTP_X_FORWARDED_HOST"] == PUB, env

    for spelling in (PUB.upper() + ".", PUB + "."):
        code, body = curl(g, f"http://{PUBLIC}/", "-H", f"Host: {spelling}")
        assert code == 200, (spelling, code, body)
    # on alice's tunnel listener too, and a foreign Host port is 421 there
    ns, gw_ip = world.alice
    cacert = gateway_cas(world.gw_dir)
    code, _ = curl(ns, f"https://{APP.upper()}./", resolve=f"{APP.upper()}.:443:{gw_ip}",
                   cacert=cacert)
    assert code == 200
    code, body = curl(ns, f"http://{gw_ip}/", "-H", f"Host: {APP}:8080")
    assert code == 421, (code, body)


# -- 11.6 -------------------------------------------------------------------------


def test_private_certificate_only_on_its_own_accounts_tunnel(world):
    public = served_names(world.g, PUBLIC, APP)
    assert APP not in public, public
    assert DOMAIN in public, public  # the cluster's default certificate
    ns_b, gw_b = world.bob
    on_b = served_names(ns_b, f"{gw_b}:443", APP)
    assert APP not in on_b, on_b
    ns_a, gw_a = world.alice
    assert APP in served_names(ns_a, f"{gw_a}:443", APP)
    assert BAPP in served_names(ns_b, f"{gw_b}:443", BAPP)
    assert BAPP not in served_names(world.g, PUBLIC, BAPP)


# -- 11.5 -------------------------------------------------------------------------


def test_stalled_handshakes_closed_at_the_deadline_without_traceback(world):
    script = world.tb.write_file("one_byte.py", ONE_BYTE)
    ns, gw_ip = world.alice
    host, port = PUBLIC.split(":")
    started = time.monotonic()
    public = world.g.popen([sys.executable, script, host, port],
                           stdout=subprocess.PIPE, text=True)
    tunnel = ns.popen([sys.executable, script, gw_ip, "443"], stdout=subprocess.PIPE, text=True)
    held = [float(p.communicate(timeout=40)[0].strip()) for p in (public, tunnel)]
    assert time.monotonic() - started < 20
    for seconds in held:
        assert HANDSHAKE_TIMEOUT - 0.5 <= seconds <= HANDSHAKE_TIMEOUT + 3, held
    time.sleep(0.5)
    log = gateway_log(world)
    for bad in ("Traceback", "CRITICAL", "Unhandled Error", "'NoneType' object"):
        assert bad not in log, log[-3000:]
