"""Management side of private L4: the synthetic ACL opens the service's
listen_port (TCP, or UDP for a UDP service) from the access groups to the
gateway's proxy peer; HTTP private services keep TCP 80/443."""

from __future__ import annotations

from nbgateway.management.model import Target
from nbgateway.management.synthetic import PortRange, inject_private_service_policies
from tests.management.test_synthetic import _proxy_peer, _service, fixture


def _rule(service):
    view = fixture(services=[service])
    (policy,) = inject_private_service_policies(view, service, [_proxy_peer()])
    (rule,) = policy.rules
    return rule


def test_private_tcp_and_tls_open_their_listen_port():
    target = Target(host="10.0.0.5", port=22, target_id="backend", target_type="host",
                    protocol="tcp")
    for mode in ("tcp", "tls"):
        rule = _rule(_service(mode=mode, listen_port=2222, targets=(target,)))
        assert rule.protocol == "tcp"
        assert rule.port_ranges == (PortRange(2222, 2222),)
        assert rule.sources == ("grp-admins",)


def test_private_udp_opens_udp():
    target = Target(host="10.0.0.5", port=53, target_id="backend", target_type="host",
                    protocol="udp")
    rule = _rule(_service(mode="udp", listen_port=5353, targets=(target,)))
    assert rule.protocol == "udp" and rule.port_ranges == (PortRange(5353, 5353),)


def test_private_http_keeps_80_and_443():
    rule = _rule(_service())
    assert rule.protocol == "tcp"
    assert rule.port_ranges == (PortRange(80, 80), PortRange(443, 443))
