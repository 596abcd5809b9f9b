"""L4Manager: private listeners follow a re-created tunnel (TCP and UDP), and
``--max-relays`` / ``NB_PROXY_MAX_RELAYS`` reaches every port router."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import ConfigError, load
from nbgateway.l4.manager import L4Manager
from nbgateway.l4.router import MAX_RELAYS
from nbgateway.l4.udp import UDPRelays
from tests.l4.fakes import Endpoint, Transport, mapping


class Port:
    def __init__(self, tunnel: object, port: int) -> None:
        self.tunnel, self.port, self.stopped = tunnel, port, False

    def stopListening(self):
        self.stopped = True
        return succeed(None)

    def getHost(self) -> str:
        return f"tunnel:{self.port}"


class Tunnels:
    """The gateway's account -> current netstack, and listeners per tunnel."""

    def __init__(self) -> None:
        self.current: dict[str, object] = {}
        self.ports: list[Port] = []

    def listen(self, account, port, factory):
        tunnel = self.current.get(account)
        if tunnel is None:
            return None
        p = Port(tunnel, port)
        self.ports.append(p)
        return succeed(p)

    def udp_listen(self, target, proto):
        if target.private:
            tunnel = self.current.get(target.account_id)
            if tunnel is None:
                return None
            p = Port(tunnel, target.listen_port)
            self.ports.append(p)
            return p
        raise AssertionError("public UDP not used here")


def make(tunnels: Tunnels, *, with_tunnel_of: bool = True, **kw):
    reactor = MemoryReactorClock()
    m = L4Manager(reactor, dial=lambda t: Endpoint(), wg_port=51820,
                  tunnel_listen=tunnels.listen,
                  tunnel_of=tunnels.current.get if with_tunnel_of else None, **kw)
    m.udp = UDPRelays(m, listen=tunnels.udp_listen, open_upstream=lambda t, p: None)
    return m, reactor


def test_private_tcp_listener_is_rebound_on_a_recreated_tunnel():
    tunnels = Tunnels()
    m, _ = make(tunnels, gate=lambda target, ip: Deferred())  # the gate is still asking
    svc = mapping(port=2222, private=True)
    m.mapping_added(svc)
    tunnels.current["acct"] = old = object()
    m.account_ready("acct")
    router = m.private[("acct", 2222)]
    first = router.listening
    assert first.tunnel is old and m.status(svc) == (pb.PROXY_STATUS_ACTIVE, None)
    client = Transport(peer=("100.64.0.5", 40000))
    router.buildProtocol(None).makeConnection(client)
    assert router.connections and not client.aborted
    m.account_ready("acct")  # same tunnel (a new network map): nothing changes
    assert router.listening is first and len(tunnels.ports) == 1
    # the account's tunnel goes and comes back; the service stays
    tunnels.current["acct"] = new = object()
    m.account_ready("acct")
    assert first.stopped and router.listening is not first
    assert router.listening.tunnel is new and router.tunnel is new
    assert client.aborted  # connections of the old tunnel are reset
    assert m.status(svc) == (pb.PROXY_STATUS_ACTIVE, None)


def test_lingering_private_router_reused_by_a_recreated_service_rebinds():
    """The real sequence: the account's last service is deleted (its tunnel
    closes, the port lingers 30 s), a service is created again on the port
    (a new tunnel): the listener must be on the new tunnel."""
    tunnels = Tunnels()
    m, reactor = make(tunnels)
    tunnels.current["acct"] = object()
    m.mapping_added(mapping(port=2222, private=True))
    m.account_ready("acct")
    m.mapping_removed(mapping(port=2222, private=True))
    del tunnels.current["acct"]
    reactor.advance(5)
    m.mapping_added(mapping(port=2222, private=True, sid="again"))
    tunnels.current["acct"] = new = object()
    m.account_ready("acct")
    assert m.private[("acct", 2222)].listening.tunnel is new
    assert [p.stopped for p in tunnels.ports] == [True, False]


def test_without_tunnel_identity_the_old_behaviour_stays():
    tunnels = Tunnels()
    m, _ = make(tunnels, with_tunnel_of=False)
    tunnels.current["acct"] = object()
    m.mapping_added(mapping(port=2222, private=True))
    m.account_ready("acct")
    tunnels.current["acct"] = object()
    m.account_ready("acct")
    assert len(tunnels.ports) == 1


def test_private_udp_socket_is_rebound_on_a_recreated_tunnel():
    tunnels = Tunnels()
    m, _ = make(tunnels)
    svc = mapping(mode="udp", port=5353, private=True)
    tunnels.current["acct"] = old = object()
    m.mapping_added(svc)
    udp = m.udp.services[svc.id]
    assert udp.listening.tunnel is old and udp.tunnel is old
    m.account_ready("acct")
    assert len(tunnels.ports) == 1
    tunnels.current["acct"] = new = object()
    m.account_ready("acct")
    assert tunnels.ports[0].stopped
    assert udp.listening.tunnel is new
    assert m.status(svc) == (pb.PROXY_STATUS_ACTIVE, None)


def test_max_relays_reaches_public_and_private_routers():
    tunnels = Tunnels()
    m, _ = make(tunnels, max_relays=2)
    m.mapping_added(mapping(port=7000))
    m.mapping_added(mapping(port=2222, private=True, sid="p"))
    for router in (m.public[7000], m.private[("acct", 2222)]):
        assert router.max_relays == 2
    router = m.public[7000]
    for i in range(2):
        router.buildProtocol(None).makeConnection(Transport(peer=("192.0.2.1", 40000 + i)))
    assert router.buildProtocol(None) is None  # the third is refused
    assert len(router.connections) == 2 and m.stats.limit_hits == 1
    assert make(Tunnels())[0].max_relays == MAX_RELAYS == 4096


def test_max_relays_flag_and_env():
    assert load({}, {}).max_relays == 4096
    assert load({"max-relays": "100"}, {}).max_relays == 100
    assert load({}, {"NB_PROXY_MAX_RELAYS": "7"}).max_relays == 7
    for bad in ("0", "-1", "many"):
        try:
            load({"max-relays": bad}, {})
        except ConfigError:
            continue
        raise AssertionError(f"--max-relays {bad} accepted")
