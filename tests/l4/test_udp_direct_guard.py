"""A ``direct_upstream`` UDP target never reaches this gateway's own UDP
sockets (the WireGuard port, another service's public UDP relay), even where
the operator's allow-list covers the address: the rule the TCP dial guard
applies to the gateway's TCP listeners."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.dial import DirectUpstreamDeniedError
from nbgateway.dial.guard import GATEWAY_LISTENER, DialPolicy, loopback_rules, parse_allow_list
from nbgateway.l4.target import target_from_mapping
from nbgateway.l4.wiring import attach_l4, own_udp_sockets
from tests.l4.fakes import mapping

WG_PORT = 51820


class FakeUDPPort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.connected: tuple[str, int] | None = None

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def getHost(self) -> str:
        return f"udp {self.port}"

    def stopListening(self) -> None:
        return None


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUDPPort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = FakeUDPPort(port)
        self.udp.append(p)
        protocol.transport = p
        return p


def gateway(local=lambda ip: False, allow=""):
    cfg = SimpleNamespace(
        addr=SimpleNamespace(host="", port=8443), wg_port=WG_PORT, tunnel_http_port=80,
        tunnel_https_port=443, max_dial_timeout=0, max_session_idle_timeout=0,
        trusted_proxies=(), proxy_protocol=False, max_relays=0)
    policy = DialPolicy(loopback_rules("A") + loopback_rules("B") + parse_allow_list(allow),
                        is_local=local)
    return SimpleNamespace(
        config=cfg, reactor=FakeReactor(), wg_port=WG_PORT, mgmt=None, gate=None,
        tunnel_stack=lambda account: None, dialer_for=lambda a, d: None,
        direct=SimpleNamespace(policy=policy))


def direct(target: str, account: str = "A", port: int = 5353):
    m = mapping(mode="udp", port=port, target=target, sid=f"s{port}", account=account)
    m.path[0].options.direct_upstream = True
    return m


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "0.0.0.0", "[::1]",
                                  "[::ffff:127.0.0.1]", "0x7f000001", "203.0.113.9"])
def test_direct_udp_to_the_wireguard_port_is_refused(host):
    gw = gateway(local=lambda ip: str(ip) == "203.0.113.9", allow="203.0.113.0/24")
    manager = attach_l4(gw)
    target = target_from_mapping(direct(f"{host}:{WG_PORT}"))
    with pytest.raises(DirectUpstreamDeniedError) as err:
        manager.udp.open_upstream(target, DatagramProtocol())
    assert err.value.reason == GATEWAY_LISTENER
    assert not gw.reactor.udp  # no socket was opened


def test_direct_udp_to_another_accounts_public_udp_relay_is_refused():
    gw = gateway()
    manager = attach_l4(gw)
    manager.mapping_added(mapping(mode="udp", port=7000, target="10.0.0.5:53", sid="b1",
                                  account="B"))  # B's public UDP service on host port 7000
    assert [p.port for p in gw.reactor.udp] == [7000]
    ports = [(lst.host, lst.port) for lst in own_udp_sockets(manager)]
    assert (None, 7000) in ports and (None, WG_PORT) in ports
    target = target_from_mapping(direct("127.0.0.1:7000"))
    with pytest.raises(DirectUpstreamDeniedError) as err:
        manager.udp.open_upstream(target, DatagramProtocol())
    assert err.value.reason == GATEWAY_LISTENER
    # an allowed loopback port that is no socket of the gateway still works
    ok = manager.udp.open_upstream(target_from_mapping(direct("127.0.0.1:9999")),
                                   DatagramProtocol())
    assert ok.connected == ("127.0.0.1", 9999)
