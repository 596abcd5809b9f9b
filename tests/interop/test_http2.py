"""HTTP/2 through the tunnel, end to end (issue 20): a stock wireguard-go peer
runs curl ``--http2`` against a private service on the gateway's tunnel TLS
listener, verifying the gateway's local CA.  ALPN chooses h2, the private
gate validates the peer, the identity headers are stamped on the (HTTP/1.1)
upstream request, and the management's access log records each request once.

Real processes as in ``test_private_e2e.py`` (whose ``World`` is reused):
management and gateway in netns G, the upstream on G's loopback, alice in
her own namespace.
"""

from __future__ import annotations

import json

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import APP, World, gateway_cas, service_body, wait_for

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick") as w:
        w.start_upstream()
        w.start_connected_gateway()
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [devs["id"]])
        w.rest("POST", "/reverse-proxies/services",
               service_body("app", APP, private=True, groups=[devs["id"]]))
        w.alice = w.connect_peer("alice")
        yield w


def _entries(world: World, path: str) -> list[dict]:
    data = world.rest("GET", f"/events/proxy?host={APP}&page_size=100")["data"]
    return [e for e in data if e["path"] == path]


def test_curl_http2_through_the_tunnel_with_the_local_ca(world):
    ns, gw_ip, _conf = world.alice
    _code, body, err = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(world.curl(
            ns, f"https://{APP}/h2-first", "--http2", "-w", "\n%{http_version}\n%{http_code}",
            gw_ip=gw_ip)),
        30, "a 200 over HTTP/2 from the private service")
    body, _, version = body.rpartition("\n")
    assert version == "2", (version, err)
    seen = json.loads(body)
    assert seen["path"] == "/h2-first"
    assert seen["headers"]["x-netbird-user"]
    assert "devs" in seen["headers"]["x-netbird-groups"].split(",")


def test_browser_style_request_over_h2_identity_stamped_and_logged_once(world):
    ns, gw_ip, _conf = world.alice
    code, body, err = world.curl(
        ns, f"https://{APP}/h2-browser?q=1", "--http2", "-w", "\n%{http_version}\n%{http_code}",
        "-H", "Accept: text/html,application/xhtml+xml,*/*;q=0.8",
        "-H", "Accept-Language: en-US,en;q=0.5", "-H", "Accept-Encoding: gzip, deflate, br",
        "-H", "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        "-H", "Sec-Fetch-Mode: navigate", "-H", "Cookie: theme=dark",
        "-H", "X-NetBird-User: mallory", "-H", "X-NetBird-Groups: admins",
        gw_ip=gw_ip)
    assert code == 200, err
    body, _, version = body.rpartition("\n")
    assert version == "2"
    hd = json.loads(body)["headers"]
    assert hd["x-netbird-user"] and hd["x-netbird-user"] != "mallory"
    groups = hd["x-netbird-groups"].split(",")
    assert "devs" in groups and "admins" not in groups
    assert hd["user-agent"].startswith("Mozilla/5.0")
    assert hd["cookie"] == "theme=dark"
    assert hd["x-forwarded-proto"] == "https"
    # several streams on one connection: one access-log entry per request
    urls = [a for _ in range(5) for a in ("-o", "/dev/null", f"https://{APP}/h2-multi")]
    r = ns.run(["curl", "-sS", "-m", "10", "--http2", "--resolve", f"{APP}:443:{gw_ip}",
                "--cacert", gateway_cas(world.gw_dir),
                "-w", "%{http_version} %{http_code} %{num_connects}\n", *urls],
               check=False, timeout=20)
    assert r.stdout.splitlines() == ["2 200 1"] + ["2 200 0"] * 4, (r.stdout, r.stderr)
    wait_for(lambda: len(_entries(world, "/h2-multi")) >= 5, 20, "the access-log entries")
    assert len(_entries(world, "/h2-multi")) == 5
    browser = wait_for(lambda: _entries(world, "/h2-browser"), 20, "the browser entry")
    assert len(browser) == 1
    assert browser[0]["status_code"] == 200
