"""Several targets per path, management side, against a live ``twistd
nbmanagement``: the service's ``load_balancing`` through REST and
``nbgateway-admin services balance``, validation, the mapping a gateway
receives (one PathMapping per target, the same nbgw_balancing on each, which
the gateway reads as one route with three targets), and the access log's
``upstream_target``.  SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import AccessLogQuery
from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.management.proxyrpcs import access_log_record
from nbgateway.routes.service import entry_from_mapping

from .apiserver import BACKENDS, running_server
from .test_cli import CLUSTER, ok, run


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


def _service(server, *extra: str) -> dict:
    zone = f"lb-{uuid.uuid4().hex[:6]}.test"
    ok(server, "domains", "create", zone, CLUSTER)
    targets = []
    for host in ("10.0.0.5", "10.0.0.6", "10.0.0.7"):
        targets += ["--target", f"type=cluster,id={CLUSTER},host={host},port=8080,path=/api"]
    return json.loads(ok(server, "--json", "services", "create", "--domain", f"app.{zone}",
                         *targets, *extra))


def test_cli_rest_store_and_mapping(server):
    svc = _service(server)
    assert svc["load_balancing"] == {"policy": "round_robin"}
    domain = svc["domain"]
    out = ok(server, "services", "balance", domain, "--policy", "least_conn",
             "--max-failures", "2", "--backoff", "5", "--max-backoff", "60",
             "--health-path", "/healthz", "--health-interval", "4", "--health-timeout", "2",
             "--health-status", "204")
    assert out == (f"{domain}: least_conn, eject after 2 failures, back-off 5-60 s, health "
                   "check GET /healthz every 4 s; targets per path: /api x3\n")
    shown = server.ok("GET", f"/api/reverse-proxies/services/{svc['id']}")
    assert shown["load_balancing"] == {
        "policy": "least_conn", "max_failures": 2, "backoff_seconds": 5,
        "max_backoff_seconds": 60,
        "health_check": {"path": "/healthz", "interval_seconds": 4, "timeout_seconds": 2,
                         "expected_status": 204}}
    # another CLI update keeps it (the PUT carries every request field)
    ok(server, "services", "identity", domain, "--max-session-age", "3600")
    shown = server.ok("GET", f"/api/reverse-proxies/services/{svc['id']}")
    assert shown["load_balancing"]["policy"] == "least_conn"

    store = server.open_store()
    try:
        model = store.services.get_by_domain(domain)
    finally:
        store.close()
    mapping = to_proto_mapping(model, pb.UPDATE_TYPE_CREATED)
    assert [(p.path, p.target) for p in mapping.path] == [
        ("/api", f"http://10.0.0.{i}:8080/") for i in (5, 6, 7)]
    for p in mapping.path:
        b = p.options.nbgw_balancing
        assert (b.policy, b.max_failures, b.backoff.seconds, b.max_backoff.seconds) == (
            "least_conn", 2, 5, 60)
        assert (b.health_path, b.health_interval.seconds, b.health_timeout.seconds,
                b.health_status) == ("/healthz", 4, 2, 204)
    # the gateway reads the three entries as one route with three targets
    route = entry_from_mapping(mapping).service.router.match("/api/x")
    assert [t.host for t in route.targets] == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    assert route.balancing.policy == "least_conn" and route.balancing.health_status == 204
    assert route.balancing.backoff == 5 and route.balancing.health_interval == 4

    out = ok(server, "services", "balance", domain, "--no-health-check", "--reset")
    assert "round_robin" in out and "no health check" in out
    store = server.open_store()
    try:
        mapping = to_proto_mapping(store.services.get_by_domain(domain), 1)
    finally:
        store.close()
    assert not any(p.options.HasField("nbgw_balancing") for p in mapping.path)


@pytest.mark.parametrize(("lb", "message"), [
    ({"policy": "random"}, "invalid load_balancing policy"),
    ({"max_failures": 101}, "max_failures must be between 0 and 100"),
    ({"backoff_seconds": 20, "max_backoff_seconds": 10}, "max_backoff_seconds must not"),
    ({"health_check": {"path": "healthz"}}, "invalid load_balancing health_check path"),
    ({"health_check": {"path": "/h z"}}, "invalid load_balancing health_check path"),
    ({"health_check": {"path": "/h", "expected_status": 42}}, "expected_status must be"),
    ({"health_check": {"path": "/h", "interval_seconds": 2, "timeout_seconds": 5}},
     "timeout_seconds must not exceed"),
])
def test_validation(server, lb, message):
    svc = _service(server)
    body = {k: svc[k] for k in ("name", "domain", "enabled", "targets", "mode")}
    body["load_balancing"] = lb
    resp = server.put(f"/api/reverse-proxies/services/{svc['id']}", body)
    assert resp.status == 422, resp
    assert message in resp.json["message"]


def test_types_and_l4_refused(server):
    svc = _service(server)
    body = {k: svc[k] for k in ("name", "domain", "enabled", "targets", "mode")}
    body["load_balancing"] = {"max_failures": "3"}
    assert server.put(f"/api/reverse-proxies/services/{svc['id']}", body).status == 400
    code, _out, err = run(server, "services", "balance", svc["domain"], "--policy", "nope")
    assert code != 0 and "invalid choice" in err
    zone = f"l4-{uuid.uuid4().hex[:6]}.test"
    ok(server, "domains", "create", zone, CLUSTER)
    resp = server.post("/api/reverse-proxies/services", {
        "name": "tcp", "domain": f"db.{zone}", "enabled": True, "mode": "tcp",
        "listen_port": 15432,
        "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "tcp",
                     "host": "10.0.0.9", "port": 5432, "enabled": True}],
        "load_balancing": {"policy": "least_conn"}})
    assert resp.status == 422 and "only supported for http services" in resp.json["message"]


def test_access_log_upstream_target_stored_and_listed(server):
    svc = _service(server)
    store = server.open_store()
    try:
        model = store.services.get_by_domain(svc["domain"])
        entry = pb.AccessLog(log_id="lb-log-1", account_id=model.account_id,
                             service_id=model.id, host=svc["domain"], path="/api/x",
                             method="GET", response_code=200, source_ip="100.64.0.9",
                             protocol="http", nbgw_target="http://10.0.0.6:8080")
        entry.timestamp.GetCurrentTime()
        store.access_logs.append(access_log_record(entry))
        page = store.access_logs.list(model.account_id, AccessLogQuery(page_size=100))
        assert [e.upstream_target for e in page.data if e.id == "lb-log-1"] == [
            "http://10.0.0.6:8080"]
    finally:
        store.close()
    logs = server.ok("GET", "/api/events/proxy")
    rows = logs["data"] if isinstance(logs, dict) else logs
    assert [r.get("upstream_target") for r in rows if r["id"] == "lb-log-1"] == [
        "http://10.0.0.6:8080"]
