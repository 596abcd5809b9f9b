"""``--l4-public-ports``: the host ports public TCP/TLS/UDP services may bind.

A tenant's admin may give a public L4 service any ``listen_port``; outside the
operator's range (default 1024-65535) the gateway binds nothing, reports the
service ERROR with the port and the range, logs a warning and counts it in
``nbgateway_l4_port_refused``.  A TLS service on the main port (the gateway's
own listener, routed by SNI) and private services (the account's tunnel, not
the host) are not concerned.  The option reaches the manager from the flag,
the environment (the .tac) and the library constructor."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from twisted.application import service
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import DEFAULT_L4_PUBLIC_PORTS, load
from nbgateway.l4.manager import DEFAULT_PUBLIC_PORTS, L4Manager
from nbgateway.l4.udp import UDPRelays
from nbgateway.l4.wiring import attach_l4
from tests.l4.fakes import mapping
from tests.ports import free_port

ERROR = pb.PROXY_STATUS_ERROR
ACTIVE = pb.PROXY_STATUS_ACTIVE
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Mgmt:
    def __init__(self) -> None:
        self.reports: list[tuple[str, int, str | None]] = []

    def send_status_update(self, sid, account, status, error_message=None, **kw):
        self.reports.append((sid, status, error_message))


def make(main_port: int = 8443, **kw):
    reactor = MemoryReactorClock()
    mgmt = Mgmt()
    m = L4Manager(reactor, dial=lambda t: None, wg_port=51820, main_port=main_port,
                  mgmt=mgmt, **kw)
    reactor.udpPorts = []  # public host UDP ports bound

    def udp_listen(target, proto):
        if target.private:
            return None  # no tunnel yet (bound on account_ready)
        reactor.udpPorts.append(target.listen_port)
        return SimpleNamespace(getHost=lambda: target.listen_port, stopListening=lambda: None)

    m.udp = UDPRelays(m, listen=udp_listen, open_upstream=lambda t, proto: None)
    return m, reactor, mgmt


def metric(m: L4Manager, name: str) -> float:
    for fam in m.stats.collect():
        if fam.name == name:
            return fam.samples[0].value
    raise AssertionError(f"no metric {name}")


def test_default_refuses_ports_below_1024_binds_nothing_reports_error():
    m, reactor, mgmt = make()
    tcp = mapping(port=25, sid="smtp")
    tls = mapping(mode="tls", port=443, sid="https", domain="t.example")
    udp = mapping(mode="udp", port=53, sid="dns")
    with capturedLogs() as events:
        for svc in (tcp, tls, udp):
            m.mapping_added(svc)
    assert reactor.tcpServers == [] and reactor.udpPorts == []
    assert m.public == {} and m.udp.services == {}
    errors = {sid: (status, err) for sid, status, err in mgmt.reports}
    rng = "public L4 port range of this gateway (1024-65535)"
    assert errors == {"smtp": (ERROR, f"port 25 is outside the {rng}"),
                      "https": (ERROR, f"port 443 is outside the {rng}"),
                      "dns": (ERROR, f"UDP port 53 is outside the {rng}")}
    assert m.status(tcp) == errors["smtp"] and m.status(udp) == errors["dns"]
    assert m.stats.port_refused == 3
    assert metric(m, "nbgateway_l4_port_refused") == 3
    warned = [e for e in events if e.get("log_level").name == "warn"]
    assert [(e["service"], e["port"], e["ports"]) for e in warned] == [
        ("smtp", 25, "1024-65535"), ("https", 443, "1024-65535"), ("dns", 53, "1024-65535")]


def test_default_allows_1024_and_65535():
    m, reactor, mgmt = make()
    m.mapping_added(mapping(port=1024, sid="low"))
    m.mapping_added(mapping(mode="udp", port=65535, sid="high"))
    assert [p[0] for p in reactor.tcpServers] == [1024]
    assert reactor.udpPorts == [65535]
    assert not mgmt.reports and m.stats.port_refused == 0


def test_operator_range_allows_inside_refuses_outside():
    m, reactor, mgmt = make(public_ports=((53, 53), (8000, 8999)))
    m.mapping_added(mapping(mode="udp", port=53, sid="dns"))
    m.mapping_added(mapping(port=8080, sid="in"))
    m.mapping_added(mapping(port=9000, sid="out"))
    m.mapping_added(mapping(port=1024, sid="low"))
    assert [p[0] for p in reactor.tcpServers] == [8080] and reactor.udpPorts == [53]
    assert {sid: err for sid, _s, err in mgmt.reports} == {
        "out": "port 9000 is outside the public L4 port range of this gateway "
               "(53,8000-8999)",
        "low": "port 1024 is outside the public L4 port range of this gateway "
               "(53,8000-8999)"}


def test_empty_range_refuses_every_host_port():
    m, reactor, mgmt = make(public_ports=())
    m.mapping_added(mapping(port=7000))
    assert reactor.tcpServers == []
    assert mgmt.reports[0][2] == ("port 7000 is outside the public L4 port range of this "
                                  "gateway (none)")


def test_tls_on_the_main_port_is_allowed_but_not_a_tcp_fallback():
    """The main port is the gateway's own listener: SNI routes share it as
    today, whatever the range; a TCP fallback (which would take every
    connection no HTTP or TLS name claims) follows the range."""
    m, reactor, mgmt = make(main_port=443)
    http_factory = SimpleNamespace(front=None, sniffer=lambda addr: None)
    m.attach_main(http_factory, lambda name: False)
    tls = mapping(mode="tls", port=443, sid="pass", domain="p.example")
    m.mapping_added(tls)
    assert m.status(tls) == (ACTIVE, None)
    assert m.main is not None and "p.example" in m.main.sni_routes
    m.mapping_added(mapping(mode="tcp", port=443, sid="fb"))
    assert m.main.fallback is None
    assert mgmt.reports == [("fb", ERROR, "port 443 is outside the public L4 port range of "
                             "this gateway (1024-65535)")]
    m.mapping_added(mapping(mode="udp", port=443, sid="quic"))  # a host UDP socket
    assert reactor.udpPorts == [] and m.stats.port_refused == 2
    assert reactor.tcpServers == []  # the main port is bound by the gateway, not here


def test_private_services_are_not_concerned():
    bound = []

    def tunnel_listen(account, port, factory):
        bound.append(port)
        return None  # no tunnel yet: bound later, no refusal either way

    m, reactor, mgmt = make(tunnel_listen=tunnel_listen)
    tcp = mapping(port=25, sid="ptcp", private=True)
    m.mapping_added(tcp)
    m.mapping_added(mapping(mode="udp", port=123, sid="pudp", private=True))
    assert bound == [25] and ("acct", 25) in m.private
    assert "pudp" in m.udp.services and "pudp" not in m.udp.errors
    assert not mgmt.reports and m.stats.port_refused == 0
    assert reactor.tcpServers == [] and reactor.udpPorts == []


def test_changed_mapping_moving_outside_the_range_is_refused():
    m, reactor, _mgmt = make()
    old = mapping(port=7000, sid="s")
    m.mapping_added(old)
    assert m.status(old) == (ACTIVE, None)
    new = mapping(port=25, sid="s")
    m.mapping_changed(old, new)
    assert m.status(new)[0] == ERROR and "port 25 is outside" in m.status(new)[1]
    assert m.public[7000].empty  # the old port lingers without routes, then closes
    reactor.advance(30)
    assert 7000 not in m.public and [p[0] for p in reactor.tcpServers] == [7000]
    udp_old = mapping(mode="udp", port=7053, sid="u")
    m.mapping_added(udp_old)
    m.mapping_changed(udp_old, mapping(mode="udp", port=53, sid="u"))
    assert "u" not in m.udp.services and "UDP port 53 is outside" in m.udp.errors["u"]
    assert m.stats.port_refused == 2


def test_defaults_agree_and_config_parses_into_the_manager():
    assert tuple(DEFAULT_L4_PUBLIC_PORTS) == DEFAULT_PUBLIC_PORTS == ((1024, 65535),)
    assert load({}, {}).l4_public_ports == DEFAULT_L4_PUBLIC_PORTS
    assert L4Manager(MemoryReactorClock(), dial=lambda t: None).public_ports == \
        DEFAULT_PUBLIC_PORTS


def _gateway(cfg):
    return SimpleNamespace(
        config=cfg, reactor=MemoryReactorClock(), wg_port=51820, mgmt=None, gate=None,
        tunnel_stack=lambda account: None, dialer_for=lambda a, d: None,
        direct=SimpleNamespace(policy=None))


@pytest.mark.parametrize(("flags", "environ"), [
    ({"l4-public-ports": "25, 8000-8999"}, {"NB_PROXY_L4_PUBLIC_PORTS": "1-65535"}),
    ({}, {"NB_PROXY_L4_PUBLIC_PORTS": "8000-8999,25"}),
])
def test_flag_and_env_reach_the_manager(flags, environ):
    manager = attach_l4(_gateway(load(flags, environ)))
    assert manager.public_ports == ((25, 25), (8000, 8999))
    manager.mapping_added(mapping(port=25, sid="smtp"))
    manager.mapping_added(mapping(port=9000, sid="out"))
    assert [p[0] for p in manager.reactor.tcpServers] == [25]
    assert manager.stats.port_refused == 1


def test_a_config_without_the_setting_keeps_the_default():
    cfg = SimpleNamespace(
        addr=SimpleNamespace(host="", port=8443), wg_port=51820, tunnel_http_port=80,
        tunnel_https_port=443, max_dial_timeout=0, max_session_idle_timeout=0,
        trusted_proxies=(), proxy_protocol=False, max_relays=0)
    assert attach_l4(_gateway(cfg)).public_ports == DEFAULT_PUBLIC_PORTS


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NB_PROXY_", "NB_MANAGEMENT_"))}
    env.update({
        "NB_PROXY_WG_PORT": "0", "NB_PROXY_ADDRESS": "127.0.0.1:0",
        "NB_PROXY_HEALTH_ADDRESS": f"127.0.0.1:{free_port()}",
        "NB_PROXY_DATADIR": str(tmp_path / "data"),
        "NB_PROXY_CERTIFICATE_DIRECTORY": str(tmp_path / "certs"),
        "NB_MANAGEMENT_API_ADDR": f"127.0.0.1:{free_port()}",
        "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}",
    }, **extra)
    return env


def test_the_tac_passes_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", _env(tmp_path, NB_PROXY_L4_PUBLIC_PORTS="8000-8999"))
    app = service.loadApplication(os.path.join(ROOT, "tac", "nbgateway.tac"), "python")
    (gateway,) = list(service.IServiceCollection(app))
    assert gateway.l4.public_ports == ((8000, 8999),)


def test_the_tac_rejects_a_bad_range(tmp_path, monkeypatch):
    from nbgateway.config import ConfigError

    monkeypatch.setattr(os, "environ", _env(tmp_path, NB_PROXY_L4_PUBLIC_PORTS="80-70"))
    with pytest.raises(ConfigError, match="--l4-public-ports"):
        service.loadApplication(os.path.join(ROOT, "tac", "nbgateway.tac"), "python")


def test_the_library_constructor_passes_the_setting(tmp_path, monkeypatch):
    import nbgateway

    monkeypatch.setattr(os, "environ", _env(tmp_path))
    config = nbgateway.load_config({"l4_public_ports": "10000-20000"}, os.environ)
    gateway = nbgateway.makeGateway(config)
    assert gateway.l4.public_ports == ((10000, 20000),)


def test_a_mapping_that_does_not_parse_is_reported_by_tcp_and_udp_alike():
    """L4Manager.admit serves both: the reason recorded and reported ERROR,
    nothing bound; only the TCP/TLS side logs it (the UDP side never did)."""
    m, reactor, mgmt = make()
    with capturedLogs() as events:
        m.mapping_added(mapping(port=0, sid="tcp0"))
        m.mapping_added(mapping(mode="udp", port=7000, sid="udp-empty", target=""))
    assert reactor.tcpServers == [] and reactor.udpPorts == []
    assert m.public == {} and m.udp.services == {}
    assert {sid: (status, err) for sid, status, err in mgmt.reports} == {
        "tcp0": (ERROR, "invalid port 0: must be 1–65535"),  # noqa: RUF001
        "udp-empty": (ERROR, "empty target address for UDP service udp-empty")}
    assert m.errors == {"tcp0": "invalid port 0: must be 1–65535"}  # noqa: RUF001
    assert m.udp.errors == {"udp-empty": "empty target address for UDP service udp-empty"}
    assert m.stats.port_refused == 0
    warned = [e.get("service") for e in events if e.get("log_level").name == "warn"]
    assert warned == ["tcp0"]
