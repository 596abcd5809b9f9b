"""Public L4 ports end to end: over REST against a real ``twistd nbmanagement``
(SQLite and PostgreSQL; the gateway rows written to its database as a
connected gateway's stream writes them), and the gateway's own gRPC client
advertising its ports to the real ProxyService before a service is created."""

from __future__ import annotations

import io
import uuid

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred

from nbgateway.management.cli._output import Painter
from nbgateway.management.cli._status import assess, render
from nbgateway.management.errors import ValidationError
from nbgateway.management.l4ports import GatewayPorts
from nbgateway.management.model import ProxyCapabilities, ProxyRecord
from tests.management import test_grpc_support as support
from tests.management.test_cli_help import NOW, _data
from tests.management.test_grpc_gateway_client import started_client, wait_for
from tests.management.test_grpc_support import Fixture, Harness, make_service

from .apiserver import BACKENDS, running_server

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

CLUSTER = "l4.proxy.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        srv.add_domain("l4apps.test", CLUSTER)
        store = srv.open_store()
        try:
            store.proxies.register(ProxyRecord(
                id="gw-l4", session_id="s1", cluster_address=CLUSTER, ip_address="10.0.0.1",
                capabilities=ProxyCapabilities(
                    supports_custom_ports=True,
                    l4_ports=GatewayPorts(((20000, 20001), (30000, 30099)), 443))))
        finally:
            store.close()
        yield srv


def body(mode: str = "tcp", port: int = 0, **over) -> dict:
    name = f"l4-{uuid.uuid4().hex[:8]}"
    b = {"name": name, "domain": f"{name}.l4apps.test", "enabled": True, "mode": mode,
         "listen_port": port,
         "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "tcp",
                      "host": "db.lan", "port": 5432, "enabled": True,
                      "options": {"direct_upstream": True}}]}
    b.update(over)
    return b


def test_rest_refuses_a_port_outside_with_422_naming_the_range(server) -> None:
    before = len(server.ok("GET", SERVICES))
    resp = server.post(SERVICES, body(port=8080))
    assert resp.status == 422, resp
    message = resp.json["message"]
    assert "listen_port 8080" in message and "20000-20001,30000-30099" in message
    resp = server.post(SERVICES, body(mode="tls", port=8443))
    assert resp.status == 422 and "tls also on 443" in resp.json["message"]  # lower-cased
    assert len(server.ok("GET", SERVICES)) == before  # nothing stored


def test_rest_accepts_inside_tls_on_443_and_auto_assigns_inside(server) -> None:
    inside = server.ok("POST", SERVICES, body(port=30050))
    assert inside["listen_port"] == 30050
    assert server.ok("POST", SERVICES, body(mode="tls", port=443))["listen_port"] == 443
    auto = [server.ok("POST", SERVICES, body(mode="udp"))["listen_port"] for _ in range(3)]
    assert auto == [20000, 20001, 30000]
    # an update to a port outside is refused; inside it is taken
    sid = inside["id"]
    upd = body(port=9000, name=inside["name"], domain=inside["domain"])
    resp = server.put(f"{SERVICES}/{sid}", upd)
    assert resp.status == 422 and "listen_port 9000" in resp.json["message"]
    upd["listen_port"] = 30051
    assert server.ok("PUT", f"{SERVICES}/{sid}", upd)["listen_port"] == 30051


def test_rest_lists_what_the_gateway_advertised(server) -> None:
    (gw,) = [p for p in server.ok("GET", "/api/reverse-proxies/proxies") if p["id"] == "gw-l4"]
    assert (gw["l4_public_ports"], gw["l4_tls_port"]) == ("20000-20001,30000-30099", 443)


@pytest_twisted.ensureDeferred
async def test_gateway_client_advertises_and_management_checks(harness: Harness,
                                                               fx: Fixture) -> None:
    client, mappings = started_client(harness, fx, "gw-l4",
                                      l4_public_ports=((20000, 20009),), l4_tls_port=443)
    try:
        await wait_for(lambda: mappings.initial_sync_complete, "snapshot")
        row = fx.store.proxies.get("gw-l4")
        assert row.capabilities.l4_ports == GatewayPorts(((20000, 20009),), 443)
        tcp = dict(mode="tcp", targets=(support.cluster_target(port=5432),))
        with pytest.raises(ValidationError, match=r"allowed: 20000-20009\)"):
            fx.store.services.create(make_service("db", listen_port=15432, **tcp))
        svc = fx.store.services.create(make_service("db", **tcp))
        assert svc.listen_port == 20000
        await wait_for(lambda: mappings.get(svc.id) is not None, "the L4 mapping")
        assert mappings.get(svc.id).listen_port == 20000
    finally:
        await maybeDeferred(client.stopService)


def test_status_shows_the_advertised_ports() -> None:
    proxy = {"id": "p1", "cluster_address": "gw.test", "status": "connected", "online": True,
             "capabilities": {}, "inbound_listeners": [], "l4_public_ports": "2000-2999",
             "l4_tls_port": 443}
    plain = dict(proxy, id="p2")
    del plain["l4_public_ports"], plain["l4_tls_port"]
    out = io.StringIO()
    render(assess(_data(proxies=[proxy, plain]), NOW), out, Painter(False))
    assert "    public L4 ports: 2000-2999 (TLS also on 443)\n" in out.getvalue()
    assert out.getvalue().count("public L4 ports") == 1  # not advertised: no line
