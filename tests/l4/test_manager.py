"""L4Manager: binds, conflicts (upstream's messages), status, removal, access log."""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.l4.manager import L4Manager
from nbgateway.l4.udp import UDPRelays
from tests.l4.fakes import Endpoint, Transport, mapping


class Mgmt:
    def __init__(self) -> None:
        self.reports: list[tuple[str, int, str | None]] = []

    def send_status_update(self, sid, account, status, error_message=None, **kw):
        self.reports.append((sid, status, error_message))


class Log:
    def __init__(self) -> None:
        self.entries: list[pb.AccessLog] = []

    def log(self, entry):
        self.entries.append(entry)


class BusyReactor(MemoryReactorClock):
    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 7777:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def make(**kw):
    reactor = BusyReactor()
    mgmt, log = Mgmt(), Log()
    ep = Endpoint()
    m = L4Manager(reactor, dial=lambda t: ep, wg_port=51820, main_port=8443,
                  mgmt=mgmt, access_log=log, **kw)
    m.udp = UDPRelays(m, listen=lambda t, proto: reactor.listenUDP(t.listen_port, proto),
                      open_upstream=lambda t, proto: None)
    return m, reactor, mgmt, log, ep


def test_bind_then_active_and_unbind_on_last_route():
    m, reactor, mgmt, _, _ = make()
    svc = mapping(port=7000)
    assert m.status(svc)[0] == pb.PROXY_STATUS_ERROR  # not known yet
    m.mapping_added(svc)
    assert [p[0] for p in reactor.tcpServers] == [7000]
    assert m.status(svc) == (pb.PROXY_STATUS_ACTIVE, None)
    m.mapping_removed(svc)
    port = m.public[7000].listening
    reactor.advance(29)  # the listener lingers 30 s without routes
    assert m.public[7000].listening is port and not mgmt.reports
    m.mapping_added(mapping(port=7000, sid="again"))  # re-created: the socket is reused
    assert len(reactor.tcpServers) == 1
    assert m.status(mapping(port=7000, sid="again")) == (pb.PROXY_STATUS_ACTIVE, None)
    m.mapping_removed(mapping(port=7000, sid="again"))
    reactor.advance(30)
    assert 7000 not in m.public and not mgmt.reports


def test_conflicts_with_upstream_messages():
    m, _reactor, mgmt, _, _ = make()
    m.mapping_added(mapping(port=51820, sid="wg"))
    m.mapping_added(mapping(mode="udp", port=51820, sid="wgu"))
    m.mapping_added(mapping(port=7000, sid="first"))
    m.mapping_added(mapping(port=7000, sid="second"))
    m.mapping_added(mapping(port=0, sid="zero"))
    m.mapping_added(mapping(port=7001, sid="empty", target=""))
    errors = {sid: err for sid, _status, err in mgmt.reports}
    assert errors["wg"] == "port 51820 conflicts with tunnel port"
    assert errors["wgu"] == "UDP port 51820 conflicts with tunnel port"
    assert errors["second"] == "port 7000 is already used by service first"
    assert errors["zero"] == "invalid port 0: must be 1–65535"  # noqa: RUF001
    assert errors["empty"] == "empty target address for TCP service empty"
    assert m.status(mapping(port=7000, sid="first"))[0] == pb.PROXY_STATUS_ACTIVE


def test_tls_routes_share_a_port_but_not_a_name():
    m, reactor, mgmt, _, _ = make()
    m.mapping_added(mapping(mode="tls", port=7443, sid="a", domain="a.example"))
    m.mapping_added(mapping(mode="tls", port=7443, sid="b", domain="b.example"))
    m.mapping_added(mapping(mode="tls", port=7443, sid="c", domain="A.example."))
    assert len(reactor.tcpServers) == 1
    assert mgmt.reports == [("c", pb.PROXY_STATUS_ERROR,
                             "port 7443: server name a.example is already used by service a")]


def test_bind_failure_reports_the_os_reason():
    m, _reactor, mgmt, _, _ = make()
    svc = mapping(port=7777)
    m.mapping_added(svc)
    (_sid, status, err), = mgmt.reports
    assert status == pb.PROXY_STATUS_ERROR and "Address already in use" in err
    assert m.status(svc)[0] == pb.PROXY_STATUS_ERROR


def test_changed_mapping_closes_live_relays_and_logs_them():
    m, _reactor, _mgmt, log, ep = make()
    old = mapping(port=7000)
    m.mapping_added(old)
    router = m.public[7000]
    proto = router.buildProtocol(None)
    client = Transport()
    proto.makeConnection(client)
    ep.complete()
    proto.dataReceived(b"hello")
    new = mapping(port=7000, target="127.0.0.1:9001")
    m.mapping_changed(old, new)
    assert client.aborted
    (entry,) = log.entries
    assert entry.protocol == "tcp" and entry.service_id == "svc1"
    assert entry.bytes_upload == 5 and entry.metadata["close_reason"] == "route_removed"
    assert entry.source_ip == "192.0.2.10"
    assert m.public[7000].fallback.port == 9001


def test_private_waits_for_the_tunnel():
    listened = []

    def tunnel_listen(account, port, factory):
        if not ready:
            return None
        from twisted.internet.defer import succeed

        listened.append((account, port))
        return succeed(object())

    ready = False
    m, reactor, mgmt, _, _ = make(tunnel_listen=tunnel_listen)
    svc = mapping(port=2222, private=True)
    m.mapping_added(svc)
    assert not reactor.tcpServers and not listened  # never a host port
    assert m.status(svc)[0] == pb.PROXY_STATUS_ERROR
    ready = True
    m.account_ready("acct")
    assert listened == [("acct", 2222)]
    assert m.status(svc) == (pb.PROXY_STATUS_ACTIVE, None)
    m.mapping_added(mapping(port=80, private=True, sid="web"))
    assert mgmt.reports == []  # tunnel_ports not configured here
    m2, *_ = make(tunnel_listen=tunnel_listen, tunnel_ports=(80, 443))
    m2.mapping_added(mapping(port=443, private=True, sid="clash"))
    assert m2.errors["clash"] == "port 443 conflicts with the tunnel HTTP/HTTPS listener port"


def _connect(router, peer_port):
    from twisted.internet.address import IPv4Address

    proto = router.buildProtocol(IPv4Address("TCP", "192.0.2.10", peer_port))
    proto.makeConnection(Transport(peer=("192.0.2.10", peer_port)))
    return proto


def test_one_accounts_relays_over_all_its_ports_are_bounded():
    """Account A's TCP services on three host ports: at most
    max_account_relays live relays over all of them (each router alone would
    allow max_relays); account B's port is unaffected, and a relay that ends
    gives A its slot back.  Before, each port was bounded alone."""
    m, _reactor, _mgmt, _log, ep = make(max_relays=4, max_account_relays=5)
    for i, port in enumerate((7001, 7002, 7003)):
        m.mapping_added(mapping(port=port, sid=f"a{i}", account="A"))
    m.mapping_added(mapping(port=7004, sid="b0", account="B"))
    assert all(r.totals is m.account_relays for r in m.public.values())
    conns = [_connect(m.public[port], 40000 + n)
             for n, port in enumerate((7001, 7001, 7002, 7002, 7003, 7003))]
    assert [c.state for c in conns].count("dialing") == 5
    assert conns[-1].close_reason == "relay_limit" and m.account_relays == {"A": 5}
    assert m.stats.account_limit_hits == 1
    b = _connect(m.public[7004], 41000)
    assert b.state == "dialing" and m.account_relays == {"A": 5, "B": 1}
    conns[0].connectionLost(None)
    assert m.account_relays == {"A": 4, "B": 1}
    assert _connect(m.public[7003], 42000).state == "dialing"
    assert len(ep.factories) == 7  # 5 + B's + the one after the release


def test_udp_services_of_a_gateway_share_the_per_account_session_counts():
    m, _reactor, _mgmt, _log, _ep = make()
    from tests.l4.test_udp import FakeSocket

    m.udp.listen = lambda t, proto: FakeSocket()  # the memory reactor has no UDP
    m.mapping_added(mapping(mode="udp", port=7101, sid="u1", account="A"))
    m.mapping_added(mapping(mode="udp", port=7102, sid="u2", account="B"))
    services = list(m.udp.services.values())
    assert len(services) == 2
    assert all(s.account_sessions is m.udp.account_sessions for s in services)
    assert all(s.max_account_sessions == m.udp.max_account_sessions for s in services)
