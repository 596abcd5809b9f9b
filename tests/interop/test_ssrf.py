"""Cross-account reach through ``direct_upstream`` (issue 11 item 1), with
real processes: management, one gateway serving every account, logging
upstreams, curl -- all inside a namespace this test creates.

    netns G: twistd nbmanagement (REST 127.0.0.1:33071, gRPC 127.0.0.1:33073)
             twistd nbgateway --mgmt ... (public 127.0.0.1:8443, health 127.0.0.2:8080,
                                          --direct-upstream-allow 127.0.0.2/32@<B>)
             upstream of account A   127.0.0.1:8081 (logs every request)
             upstream of account B   127.0.0.2:8082 (logs every request)

Account B's admin (created through ``POST /api/accounts``) creates public
services whose ``direct_upstream`` target is A's upstream, the management
REST API, the management gRPC port, the gateway's health/metrics listener
(which is inside B's allow-list entry: the gateway's own listeners are never
dialed) and a few spellings of loopback.  Every one answers 502
``Destination Not Allowed``, A's upstream logs no request, the refusals are
in B's access log with the verdict ``direct_upstream_denied``, in the
gateway's metrics and, with the reason, in the services' status that the
instance admin lists; B's service to its own allowed upstream works.

A second gateway with embedded management (the README quickstart's setup)
shows that its bootstrap account -- the operator's -- reaches loopback, that
another account does not, and that not even the operator's account reaches
the embedded management's REST port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from tests.interop.conftest import require_testbed, world_on_testbed
from tests.interop.multiaccount import create_account, global_proxy_token, rest_as, rest_status
from tests.interop.test_private_e2e import DOMAIN, UPSTREAM, World, counter, wait_for
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

HEALTH = "127.0.0.2:8080"
B_UPSTREAM = ("127.0.0.2", 8082)

#: (service name, target host, target port): what B must not reach
ATTACKS = [
    ("steal-a", "127.0.0.1", 8081),        # account A's private upstream
    ("steal-a-hex", "0x7f000001", 8081),   # the same, spelled as a number
    ("steal-a-int", "2130706433", 8081),
    ("steal-a-short", "127.1", 8081),
    ("steal-a-v6", "::ffff:127.0.0.1", 8081),
    ("steal-a-name", "localhost", 8081),
    ("mgmt-rest", "127.0.0.1", 33071),     # management REST API
    ("mgmt-grpc", "127.0.0.1", 33073),     # management gRPC
    ("health", "127.0.0.2", 8080),         # the gateway's health/metrics (listed, still never)
    ("health-any", "0.0.0.0", 8080),
    ("public", "127.0.0.1", 8443),         # the gateway's own public listener
]


def _service(name: str, host: str, port: int) -> dict:
    return {"name": name, "domain": f"{name}.{DOMAIN}", "enabled": True, "private": False,
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": host, "port": port, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", logs=("gateway", "management"), tail=6000) as w:
        w.g.ip("addr", "add", "127.0.0.2/8", "dev", "lo")
        w.start_upstream()  # A's upstream, 127.0.0.1:8081 -> w.upstream_log
        script = os.path.join(w.tmp, "upstream-b.py")
        with open(script, "w") as f:
            f.write(UPSTREAM)
        w.b_log = os.path.join(w.tmp, "upstream-b.log")
        w.g.popen([sys.executable, script, str(B_UPSTREAM[1]), w.b_log, B_UPSTREAM[0]],
                  stdout=w.log("upstream-b"), stderr=subprocess.STDOUT)
        w.start_management()
        w.b_id, w.b_token = create_account(w, "tenant-b")
        w.start_gateway(global_proxy_token(w), "--health-addr", HEALTH,
                        "--direct-upstream-allow", f"127.0.0.2/32@{w.b_id}")
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        yield w


def public_get(w: World, domain: str) -> tuple[int, str]:
    r = w.g.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}",
                 "-H", f"Host: {domain}", "http://127.0.0.1:8443/probe"], check=False, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def routed(w: World, domain: str) -> tuple[int, str] | None:
    """The answer for ``domain`` once the gateway knows the service (its own
    404 page is "Service Not Found"; an upstream's 404 is an answer)."""
    code, body = public_get(w, domain)
    return None if code == 404 and "Service Not Found" in body else (code, body)


def metrics(w: World) -> str:
    with inside_netns(w.g.name), urllib.request.urlopen(f"http://{HEALTH}/metrics",
                                                        timeout=5) as r:
        return r.read().decode()


def test_tenant_cannot_direct_dial_other_accounts_or_the_gateway(world):
    w = world
    created, rejected = [], []
    for name, host, port in ATTACKS:
        status, body = rest_status(w, w.b_token, "POST", "/reverse-proxies/services",
                                   _service(name, host, port))
        if status in (200, 201):
            created.append(name)
        else:  # management may refuse a target it can tell is invalid: also no dial
            assert 400 <= status < 500, (name, status, body)
            rejected.append(name)
    assert {"steal-a", "mgmt-rest", "mgmt-grpc", "health", "public"} <= set(created), rejected
    rest_as(w, w.b_token, "POST", "/reverse-proxies/services", _service("own", *B_UPSTREAM))

    # B's own, allowed upstream works (this also waits for B's mappings to arrive)
    code, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        public_get(w, f"own.{DOMAIN}")), 30, "B's service to its allowed upstream")
    assert '"/probe"' in body
    assert _lines(w.b_log) == ["/probe"]

    a_before = _lines(w.upstream_log)
    for name in created:
        code, body = wait_for(lambda n=name: routed(w, f"{n}.{DOMAIN}"), 15, f"route {name}")
        assert code == 502, (name, code, body)
        assert "Destination Not Allowed" in body, (name, body)
    # nothing reached A's upstream (nor, by the 502s, management or the gateway)
    assert _lines(w.upstream_log) == a_before == []
    assert _lines(w.b_log) == ["/probe"]

    m = metrics(w)
    assert counter(m, "nbgateway_direct_upstream_dials_total", result="denied",
                   reason="gateway_listener") >= 2  # health (listed!) and the public listener
    assert counter(m, "nbgateway_direct_upstream_dials_total", result="denied",
                   reason="loopback") >= 3
    assert counter(m, "nbgateway_direct_upstream_dials_total", result="allowed") >= 1

    # B's access log says why; A sees none of it
    def denied_entries():
        logs = rest_as(w, w.b_token, "GET", "/events/proxy?page_size=100")["data"]
        hits = [e for e in logs if e.get("auth_method_used") == "direct_upstream_denied"]
        return hits if len(hits) >= len(created) else None

    hits = wait_for(denied_entries, 15, "the refusals in B's access log")
    assert all(e["status_code"] == 502 for e in hits)
    assert {e["host"].split(".", 1)[0] for e in hits} == set(created)

    # the instance admin sees which services the gateway refused, and why
    def refused():
        rows = {r["name"]: r for r in w.rest("GET", "/reverse-proxies/service-status")
                if r["account_id"] == w.b_id}
        bad = {n for n, r in rows.items() if r["status"] == "error"
               and "refused by this gateway" in (r.get("status_message") or "")}
        return rows if bad == set(created) else None

    rows = wait_for(refused, 15, "the refused services' status at management")
    assert "loopback" in rows["steal-a"]["status_message"]
    assert "own listeners" in rows["health"]["status_message"]
    assert rows["own"]["status"] != "error"


EMBEDDED_DOMAIN = "nbgateway.internal"


@pytest.fixture(scope="module")
def embedded():
    """``twistd nbgateway`` with embedded management (no --mgmt), as in the
    README quickstart, plus a second account created by the operator."""
    require_testbed("curl")
    tb = Testbed()
    try:
        w = World(tb)
        w.start_upstream()  # the operator's upstream, 127.0.0.1:8081
        w.g.popen(
            [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
             "-l", "-", "nbgateway", "--addr", "127.0.0.1:8443",
             "--health-addr", "127.0.0.1:8080", "--datadir", w.gw_dir,
             "--cert-dir", os.path.join(w.gw_dir, "certs")],
            stdout=w.log("gateway"), stderr=subprocess.STDOUT, cwd=w.tmp,
            env={k: v for k, v in os.environ.items()
                 if not k.startswith(("NB_PROXY_", "NB_MANAGEMENT_"))})
        wait_for(lambda: w._get_ok("/openapi.json"), 30, "the embedded management REST API")
        with open(os.path.join(w.gw_dir, "admin-token")) as f:
            w.admin = f.read().strip()
        wait_for(lambda: EMBEDDED_DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to its embedded management")
        w.b_id, w.b_token = create_account(w, "tenant-b")
        yield w
    finally:
        path = os.path.join(tb.tmpdir, "gateway.log")
        if os.path.exists(path):
            print("--- gateway log tail ---")
            with open(path, "rb") as f:
                print(f.read()[-6000:].decode(errors="replace"))
        left = tb.close()
    assert not left, left


def _embedded_service(name: str, host: str, port: int) -> dict:
    svc = _service(name, host, port)
    svc["domain"] = f"{name}.{EMBEDDED_DOMAIN}"
    svc["targets"][0]["target_id"] = EMBEDDED_DOMAIN
    return svc


def test_embedded_default_loopback_for_the_operator_account_only(embedded):
    w = embedded
    w.rest("POST", "/reverse-proxies/services", _embedded_service("mine", "127.0.0.1", 8081))
    w.rest("POST", "/reverse-proxies/services",
           _embedded_service("mine-api", "127.0.0.1", 33071))
    for name, host in (("theirs", "127.0.0.1"), ("theirs-name", "localhost")):
        rest_as(w, w.b_token, "POST", "/reverse-proxies/services",
                _embedded_service(name, host, 8081))

    # the operator's (bootstrap) account reaches its loopback upstream
    code, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        public_get(w, f"mine.{EMBEDDED_DOMAIN}")), 30, "the operator's service")
    assert _lines(w.upstream_log) == ["/probe"]
    for name in ("mine-api", "theirs", "theirs-name"):
        code, body = wait_for(lambda n=name: routed(w, f"{n}.{EMBEDDED_DOMAIN}"), 15,
                              f"route {name}")
        # the embedded management's own REST port: not even for the operator's account;
        # loopback for another account: no
        assert code == 502 and "Destination Not Allowed" in body, (name, code, body)
    assert _lines(w.upstream_log) == ["/probe"]
