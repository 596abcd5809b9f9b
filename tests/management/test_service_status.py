"""Refused direct upstreams: write-time rejection by management, and the gateway's
refusal (status ERROR + message) kept per service and shown to admins.

* :func:`~nbgateway.management.validation.validate_service` refuses direct
  upstream hosts that can never be dialed (unspecified, multicast, broadcast in
  any spelling; malformed names), with the usual 422 envelope over REST.
* ``SendStatusUpdate.error_message`` is stored (cleaned and capped) and cleared
  by the next update without one.
* ``GET /api/reverse-proxies/services/{id}`` shows it as ``meta.status_message``;
  ``GET /api/reverse-proxies/service-status`` lists every account's services for
  the instance admin, the caller's own for an account admin, nothing for users.
"""

from __future__ import annotations

import uuid

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Service, Target, TargetOptions
from nbgateway.management.store._statusreports import MAX_STATUS_MESSAGE
from nbgateway.management.validation import direct_host_problem, validate_service
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, md

from .apiserver import BACKENDS, running_server

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

STATUS = "/api/reverse-proxies/service-status"
SERVICES = "/api/reverse-proxies/services"


def cluster_service(host: str, mode: str = "http") -> Service:
    target = Target(target_type="cluster", target_id="eu.proxy.netbird.io", host=host,
                    port=8080, protocol="tcp" if mode != "http" else "http",
                    options=TargetOptions(direct_upstream=True))
    return Service(account_id="a", name="s", domain="s.eu.proxy.netbird.io", mode=mode,
                   listen_port=0 if mode == "http" else 9000, targets=(target,))


# --- write-time validation -------------------------------------------------------------

REFUSED = {
    "0.0.0.0": "unspecified", "0": "unspecified", "0x0": "unspecified", "0.0": "unspecified",
    "::": "unspecified", "[::]": "unspecified", "::ffff:0.0.0.0": "unspecified",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "0xe0000001": "multicast",
    "ff02::1": "multicast", "[ff05::2]": "multicast", "255.255.255.255": "broadcast",
    "1.2.3.999": "not a valid ip address", "256.1": "not a valid ip address",
    "a..b": "not a valid hostname", "-bad.example": "not a valid hostname",
    "exa$mple.com": "not a valid hostname", "bäckend.lan": "not a valid hostname",
    "x" * 64 + ".lan": "not a valid hostname", "fe80::1::2": "not a valid ip address",
    "[backend.lan]": "not a valid ip address",
}

ACCEPTED = ["127.0.0.1", "127.1", "localhost", "backend.lan", "backend.lan.", "10.0.0.5",
            "fd00::1", "[fd00::1]", "169.254.169.254", "my_service", "db-1.internal",
            "2001:db8::5", "1e100.net"]


@pytest.mark.parametrize("host", sorted(REFUSED))
def test_direct_host_refused_at_write_time(host):
    with pytest.raises(ValidationError) as exc:
        validate_service(cluster_service(host))
    assert REFUSED[host] in str(exc.value).lower(), exc.value
    assert str(exc.value).startswith("target 0: direct upstream host")
    assert direct_host_problem(host) is not None


@pytest.mark.parametrize("host", ACCEPTED)
def test_direct_host_accepted(host):
    """What only the gateway can judge (loopback, link-local, private) is accepted here."""
    assert direct_host_problem(host) is None
    validate_service(cluster_service(host))


def test_l4_cluster_target_checked_too():
    with pytest.raises(ValidationError, match="unspecified"):
        validate_service(cluster_service("0.0.0.0", mode="tcp"))
    validate_service(cluster_service("10.0.0.9", mode="tcp"))


# --- the gateway's status message over gRPC ---------------------------------------------


def ssu(h: Harness, f: Fixture, **kw) -> None:
    h.stub.SendStatusUpdate(pb.SendStatusUpdateRequest(**kw), metadata=md(f.token))


def test_status_update_message_is_stored_cleaned_and_cleared(harness: Harness,
                                                             fx: Fixture) -> None:
    ssu(harness, fx, service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ERROR,
        error_message="direct upstream 127.0.0.1:22 refused:\x00 not\nin allow-list")
    meta = fx.store.services.get(ACCOUNT, "svc-1").meta
    assert meta.status == "error"
    assert meta.status_message == "direct upstream 127.0.0.1:22 refused:  not in allow-list"
    assert meta.status_updated_at is not None
    ssu(harness, fx, service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ERROR,
        error_message="x" * 5000)
    assert len(fx.store.services.get(ACCOUNT, "svc-1").meta.status_message) == MAX_STATUS_MESSAGE
    ssu(harness, fx, service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ACTIVE)
    meta = fx.store.services.get(ACCOUNT, "svc-1").meta
    assert meta.status == "active" and meta.status_message == ""


# --- REST: the service and the instance admin's listing ------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def _service_body(domain: str, host: str = "10.0.0.5") -> dict:
    return {"name": "s", "domain": domain, "enabled": True,
            "targets": [{"target_id": "cl.test", "target_type": "cluster", "protocol": "http",
                         "host": host, "port": 8080, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def test_rest_rejects_unusable_direct_host_with_422(server):
    tag = uuid.uuid4().hex[:6]
    server.ok("POST", "/api/reverse-proxies/domains",
              {"domain": f"v{tag}.test", "target_cluster": "cl.test"})
    resp = server.post(SERVICES, _service_body(f"app.v{tag}.test", host="0x00000000"))
    assert resp.status == 422, resp
    assert resp.json == {"code": 422, "message":
                         'target 0: direct upstream host "0x00000000" is an unspecified address'}


def test_refusal_shown_on_the_service_and_in_the_instance_listing(server):
    tag = uuid.uuid4().hex[:6]
    server.ok("POST", "/api/reverse-proxies/domains",
              {"domain": f"a{tag}.test", "target_cluster": "cl.test"})
    svc_a = server.ok("POST", SERVICES, _service_body(f"app.a{tag}.test"))
    b = server.post("/api/accounts", {"name": f"b-{tag}"}).json
    auth_b = f"Token {b['token']}"
    resp = server.post("/api/reverse-proxies/domains",
                       {"domain": f"b{tag}.test", "target_cluster": "cl.test"}, auth=auth_b)
    assert resp.status == 200, resp
    resp = server.post(SERVICES, _service_body(f"app.b{tag}.test", "127.0.0.1"), auth=auth_b)
    assert resp.status == 200, resp
    svc_b = resp.json
    assert "status_message" not in svc_b["meta"]
    store = server.open_store()
    try:  # what the gateway's SendStatusUpdate does (the RPC is tested above)
        store.services.set_status(b["id"], svc_b["id"], "error",
                                 message="direct upstream 127.0.0.1:8080 denied: loopback "
                                         "is not in the allow-list of this account")
    finally:
        store.close()
    got = server.get(f"{SERVICES}/{svc_b['id']}", auth=auth_b).json
    assert got["meta"]["status"] == "error"
    assert got["meta"]["status_message"].startswith("direct upstream 127.0.0.1:8080 denied")
    assert "status_updated_at" in got["meta"]
    # the instance admin sees every account's services and which were refused
    rows = server.ok("GET", STATUS)
    by_id = {r["id"]: r for r in rows}
    assert by_id[svc_a["id"]]["account_id"] == "default"
    assert by_id[svc_a["id"]]["status"] == "pending" and "status_message" not in by_id[svc_a["id"]]
    assert by_id[svc_b["id"]]["account_id"] == b["id"]
    assert "allow-list" in by_id[svc_b["id"]]["status_message"]
    errors = server.ok("GET", STATUS + "?status=error")
    assert svc_b["id"] in {r["id"] for r in errors}
    assert svc_a["id"] not in {r["id"] for r in errors}
    assert all(set(r) <= {"account_id", "id", "name", "domain", "proxy_cluster", "status",
                          "status_message", "status_updated_at"} for r in rows)
    # an account admin sees its own account only; a regular user nothing
    own = server.get(STATUS, auth=auth_b).json
    assert [r["id"] for r in own] == [svc_b["id"]]
    user = server.post("/api/users", {"email": f"u{tag}@example.com", "role": "user",
                                      "is_service_user": True}, auth=auth_b).json
    pat = server.post(f"/api/users/{user['id']}/tokens", {"name": "t", "expires_in": 1},
                      auth=auth_b).json["plain_token"]
    resp = server.get(STATUS, auth=f"Token {pat}")
    assert resp.status == 403, resp
