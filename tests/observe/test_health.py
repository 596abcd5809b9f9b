"""Health probe transitions and /metrics over real HTTP on 127.0.0.1.

pytest-twisted drives the reactor here (the suite runs such modules last)."""

from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from nbgateway.config import HostPort
from nbgateway.observe.health import (
    ClientHealth,
    HealthState,
    client_health_from_device,
    health_service,
)
from nbgateway.observe.metrics import GatewayMetrics
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key
from nbgateway.wireguard.testing import MemoryNetwork, ipv4_packet


class Server:
    """Probes served by :func:`health_service` on an ephemeral loopback port."""

    def __init__(self) -> None:
        self.state = HealthState()
        self.metrics = GatewayMetrics()
        self.metrics.health = self.state
        self.service = health_service(reactor, HostPort("127.0.0.1", 0).endpoint(),
                                      self.state, self.metrics.registry)
        self.service.privilegedStartService()
        self.service.startService()
        ports = []
        # keep the port as the Deferred's result: stopService needs it to stop listening
        self.service._waitingForPort.addCallback(lambda p: ports.append(p) or p)
        self.base = f"http://127.0.0.1:{ports[0].getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def get(self, path, method=b"GET", accept=None):
        headers = Headers({b"accept": [accept]}) if accept else None
        response = await self.agent.request(method, (self.base + path).encode(), headers)
        body = await readBody(response)
        return response, body

    async def probe(self, path):
        response, body = await self.get(path)
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, json.loads(body)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    pytest_twisted.blockon(srv.service.stopService())


@pytest_twisted.ensureDeferred
async def test_transitions(server):
    state, probe = server.state, server.probe
    assert await probe("/healthz/live") == (200, {"status": "ok"})

    # starting: management not connected yet
    assert await probe("/healthz/startup") == (503, {"status": "fail", "checks": {
        "management_connected": False, "initial_sync_complete": False,
        "all_clients_healthy": True}})
    assert await probe("/healthz/ready") == (503, {"status": "fail",
                                                   "checks": {"management_connected": False}})

    # stream connected, snapshot not complete: ready, not started
    state.set_management_connected(True)
    assert (await probe("/healthz/ready"))[0] == 200
    code, body = await probe("/healthz/startup")
    assert code == 503 and body["checks"]["initial_sync_complete"] is False

    # initial sync complete -> started
    state.mark_initial_sync_complete()
    code, body = await probe("/healthz/startup")
    assert (code, body["status"]) == (200, "ok")

    # an unhealthy account runtime fails startup (with details), not readiness
    state.set_client("acc-ok", ClientHealth(healthy=True, management_connected=True,
                                            signal_connected=True, peers_total=2))
    state.set_client("acc-bad", ClientHealth(healthy=False, error="login failed"))
    code, body = await probe("/healthz/startup")
    assert code == 503 and body["checks"]["all_clients_healthy"] is False
    assert body["clients"]["acc-bad"]["error"] == "login failed"
    assert "error" not in body["clients"]["acc-ok"]
    assert body["clients"]["acc-ok"]["peers_total"] == 2
    assert (await probe("/healthz/ready"))[0] == 200
    code, body = await probe("/healthz")
    assert code == 200 and set(body["clients"]) == {"acc-ok", "acc-bad"}
    assert set(body["checks"]) == {"management_connected", "initial_sync_complete",
                                   "all_clients_healthy"}
    state.remove_client("acc-bad")
    assert (await probe("/healthz/startup"))[0] == 200

    # management lost: not ready; shutting down: not ready even when connected
    state.set_management_connected(False)
    assert (await probe("/healthz/ready"))[0] == 503
    state.set_management_connected(True)
    state.begin_shutdown()
    assert (await probe("/healthz/ready"))[0] == 503
    assert (await probe("/healthz"))[0] == 503
    assert (await probe("/healthz/live"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_metrics_endpoint(server):
    server.metrics.requests.record(200, 0.01)
    server.state.set_management_connected(True)
    response, body = await server.get("/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("nbgateway_http_requests_total", (("code", "200"),))] == 1
    assert samples[("nbgateway_management_connected", ())] == 1
    response, body = await server.get("/metrics",
                                      accept=b"application/openmetrics-text; version=1.0.0")
    assert b"openmetrics" in response.headers.getRawHeaders(b"content-type")[0]
    assert body.endswith(b"# EOF\n")


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods(server):
    for path in ("/", "/healthz/", "/healthz/nope", "/other"):
        response, _ = await server.get(path)
        assert response.code == 404, path
    for path in ("/healthz/ready", "/healthz", "/metrics"):
        response, _ = await server.get(path, method=b"POST")
        assert response.code == 405, path
    response, body = await server.get("/healthz/live", method=b"HEAD")
    assert (response.code, body) == (200, b"")


class ClientHealthFromDeviceTests(SynchronousTestCase):
    """Account-runtime health from a real WireGuard device pair."""

    def test_peer_counts_follow_handshakes(self):
        clock = Clock()
        clock.advance(1000.0)
        net = MemoryNetwork()
        ka, kb = generate_private_key(), generate_private_key()
        a = WireGuardDevice(ka, clock, rng=random.Random(1))
        gw = WireGuardDevice(kb, clock, rng=random.Random(2))
        net.attach(a, ("192.0.2.1", 1))
        net.attach(gw, ("192.0.2.2", 2))
        a.add_peer(public_key(kb), allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.2", 2))
        gw.add_peer(public_key(ka), allowed_ips=["10.0.0.1/32"])
        gw.add_peer(public_key(generate_private_key()), allowed_ips=["10.0.0.3/32"])

        h = client_health_from_device(gw, clock.seconds(), management_connected=True)
        self.assertEqual((h.healthy, h.peers_total, h.peers_connected), (True, 2, 0))

        a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"hi"))
        net.pump()
        h = client_health_from_device(gw, clock.seconds(), management_connected=True)
        self.assertEqual((h.peers_connected, h.peers_p2p, h.peers_degraded), (1, 1, 0))

        h = client_health_from_device(gw, clock.seconds() + 301, management_connected=True)
        self.assertEqual((h.peers_connected, h.peers_degraded), (1, 1))
        h = client_health_from_device(gw, clock.seconds() + 600, management_connected=True)
        self.assertEqual((h.peers_connected, h.peers_degraded), (0, 0))

        h = client_health_from_device(gw, clock.seconds(), management_connected=False)
        self.assertFalse(h.healthy)
        h = client_health_from_device(gw, clock.seconds(), management_connected=True,
                                      error="netstack closed")
        self.assertFalse(h.healthy)
        self.assertEqual(h.as_json()["error"], "netstack closed")
