"""The health/metrics listener announces itself by name and address (issue 12.6):
Twisted's own line only says ``_AdminSite starting on PORT``.

pytest-twisted drives the reactor here (the suite runs such modules last)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from nbgateway.config import HostPort
from nbgateway.observe.health import HealthState, health_service
from nbgateway.observe.metrics import GatewayMetrics


def test_health_listener_is_announced_with_its_address() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    metrics = GatewayMetrics()
    service = health_service(reactor, HostPort("127.0.0.1", 0).endpoint(), HealthState(),
                             metrics.registry)
    try:
        service.privilegedStartService()
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        port = service.port.getHost().port
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("health")]
        assert f"health and metrics listener (/healthz and /metrics) on 127.0.0.1:{port}" in lines
    finally:
        pytest_twisted.blockon(service.stopService())
