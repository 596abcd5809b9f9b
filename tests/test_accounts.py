"""Per-account runtime lifecycle and status matrix."""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.dial.direct import DenialReports
from nbgateway.errors import ManagementRejectedError
from nbgateway.mgmt.netmap import AccountNetwork, InboundRule, RosterPeer
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from nbgateway.wireguard.mux import DeviceMux


class Mgmt:
    def __init__(self):
        self.created = []
        self.status = []
        self.reject = None

    def create_proxy_peer(self, service_id, account_id, token, key, cluster, endpoint=""):
        self.created.append((service_id, account_id, token, key, cluster, endpoint))
        if self.reject:
            return fail(ManagementRejectedError(f"proxy peer authentication failed: {self.reject}"))
        return succeed(None)

    def send_status_update(self, service_id, account_id, status, *, certificate_issued=False,
                           error_message=None, inbound_listener=None):
        self.status.append((service_id, status, error_message, inbound_listener))
        return succeed(None)


class Channel:
    instances: list = []

    def __init__(self, account_id, key, on_map):
        self.account_id, self.key, self.on_map = account_id, key, on_map
        self.started = self.stopped = False
        Channel.instances.append(self)

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


class Port:
    def __init__(self):
        self.stopped = False

    def stopListening(self):
        self.stopped = True


def network(serial=1, peers=(), rules=()):
    return AccountNetwork(
        serial=serial, address=ipaddress.ip_interface("100.64.0.99/10"),
        roster=tuple(peers), inbound_rules=tuple(rules))


def peer(ip):
    key = public_key(generate_private_key())
    return RosterPeer(key_to_base64(key), key, (ipaddress.ip_network(f"{ip}/32"),))


def mapping(sid="s1", account="acct", token="tok"):
    return pb.ProxyMapping(type=pb.UPDATE_TYPE_CREATED, id=sid, account_id=account,
                           domain=f"{sid}.example", auth_token=token, private=True)


def make(mgmt, *, serve=None, settings=None, **runtime_kw):
    Channel.instances = []
    mux = DeviceMux()
    ports = []

    def serve_inbound(runtime):
        ports.append(Port())
        return succeed(ports[-1:]) if serve is None else serve(runtime)

    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=Clock(), mux=mux, mgmt=mgmt,
        settings=settings or AccountSettings(cluster="gw.example", wg_endpoint="gw.example:51820"),
        peer_channel_factory=Channel, serve_inbound=serve_inbound, **runtime_kw))
    store = MappingStore()
    store.add_observer(registry)
    return store, registry, mux, ports


def test_first_mapping_registers_once_b10_b11():
    mgmt = Mgmt()
    store, registry, mux, _ = make(mgmt)
    store.apply_batch([mapping("s1"), mapping("s2")], False)
    assert len(mgmt.created) == 1
    sid, account, token, key, cluster, endpoint = mgmt.created[0]
    assert (sid, account, token, cluster, endpoint) == (
        "s1", "acct", "tok", "gw.example", "gw.example:51820")
    runtime = registry.get("acct")
    assert key == key_to_base64(runtime.device.public_key)
    assert runtime.device in mux.devices
    assert Channel.instances[0].started and Channel.instances[0].key == runtime.private_key


def test_rejection_reports_error_and_next_mapping_retries_b12():
    mgmt = Mgmt()
    mgmt.reject = "x"
    store, registry, _, _ = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    assert mgmt.status == [("s1", pb.PROXY_STATUS_ERROR, "proxy peer authentication failed: x",
                            None)]
    assert registry.get("acct").state == "failed"
    mgmt.reject = None
    store.apply_batch([mapping("s2", token="fresh")], False)
    assert mgmt.created[-1][2] == "fresh"
    assert registry.get("acct").state == "connecting"


def test_ready_brings_up_listeners_and_reports_active_with_listener_b13():
    mgmt = Mgmt()
    store, registry, _, _ = make(mgmt)
    store.apply_batch([mapping("s1"), mapping("s2")], False)
    p = peer("100.64.0.10")
    Channel.instances[0].on_map(network(peers=[p]))
    runtime = registry.get("acct")
    assert runtime.state == "ready" and runtime.tunnel_ip == "100.64.0.99"
    assert [str(a) for a in runtime.stack.addresses] == ["100.64.0.99"]
    assert sorted(mgmt.status) == [("s1", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80)),
                                   ("s2", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80))]
    assert runtime.in_roster("100.64.0.10") and not runtime.in_roster("100.64.0.11")
    assert p.key_bytes in runtime.device.peers


def test_every_account_stack_gets_the_connection_bound():
    """AccountSettings.max_tcp_connections (--max-tunnel-connections) bounds
    the TCP layer of each account's netstack; the default is the layer's."""
    from nbgateway.netstack.tcp import DEFAULT_MAX_CONNECTIONS

    for settings, expected in ((AccountSettings(cluster="gw", max_tcp_connections=7), 7),
                               (None, DEFAULT_MAX_CONNECTIONS)):
        store, registry, _, _ = make(Mgmt(), settings=settings)
        store.apply_batch([mapping("s1", account="a1"), mapping("s2", account="a2")], False)
        for n, inst in enumerate(Channel.instances):
            inst.on_map(network(peers=[peer(f"100.64.0.{10 + n}")]))
        for account in ("a1", "a2"):
            assert registry.get(account).stack.tcp.max_connections == expected


def test_l4_mappings_are_reported_unsupported_never_active():
    """This gateway relays no TCP/UDP/TLS yet: such a mapping gets ERROR with the
    reason, while an HTTP mapping of the same account goes ACTIVE."""
    mgmt = Mgmt()
    store, registry, _, _ = make(mgmt)
    tcp = mapping("s2")
    tcp.mode, tcp.private = "tcp", False
    store.apply_batch([mapping("s1"), tcp], False)
    Channel.instances[0].on_map(network())
    assert sorted(mgmt.status) == [
        ("s1", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80)),
        ("s2", pb.PROXY_STATUS_ERROR, "TCP services are not supported by this gateway", None)]
    assert registry.get("acct").state == "ready"


def test_no_private_flag_no_inbound_listener_b14():
    mgmt = Mgmt()
    store, _, _, _ = make(mgmt, settings=AccountSettings(cluster="gw", private=False))
    store.apply_batch([mapping("s1")], False)
    Channel.instances[0].on_map(network())
    assert mgmt.status == [("s1", pb.PROXY_STATUS_ACTIVE, None, None)]


def test_listener_failure_reports_active_without_listener_b15():
    mgmt = Mgmt()
    store, _, _, _ = make(mgmt, serve=lambda rt: fail(OSError("port 443 busy")))
    store.apply_batch([mapping("s1")], False)
    Channel.instances[0].on_map(network())
    assert mgmt.status == [("s1", pb.PROXY_STATUS_ACTIVE, None, None)]


def test_service_added_to_ready_account_reported_at_once_b16():
    mgmt = Mgmt()
    store, _, _, _ = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    Channel.instances[0].on_map(network())
    mgmt.status.clear()
    store.apply_batch([mapping("s3")], False)
    assert mgmt.status == [("s3", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80))]
    assert len(mgmt.created) == 1


def test_last_service_removed_tears_down_b17():
    mgmt = Mgmt()
    store, registry, mux, ports = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    Channel.instances[0].on_map(network())
    runtime = registry.get("acct")
    mgmt.status.clear()
    removal = pb.ProxyMapping(type=pb.UPDATE_TYPE_REMOVED, id="s1", account_id="acct")
    store.apply_batch([removal], False)
    assert mgmt.status == [("s1", pb.PROXY_STATUS_TUNNEL_NOT_CREATED, None, None)]
    assert registry.get("acct") is None and runtime.state == "stopped"
    assert ports[0].stopped and Channel.instances[0].stopped
    assert mux.devices == [] and runtime.stack.closed


def test_roster_updates_add_and_remove_peers_and_filter_rules():
    mgmt = Mgmt()
    store, registry, _, _ = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    a, b = peer("100.64.0.10"), peer("100.64.0.11")
    rule = InboundRule(action="allow", sources=(ipaddress.ip_network("100.64.0.10/32"),),
                       protocols=frozenset({6}), ports=((80, 80), (443, 443)))
    Channel.instances[0].on_map(network(peers=[a, b], rules=[rule]))
    runtime = registry.get("acct")
    f = runtime.stack.filter
    assert f.allows(ipaddress.ip_address("100.64.0.10").packed, 6, 443, None)
    assert not f.allows(ipaddress.ip_address("100.64.0.11").packed, 6, 443, None)
    assert f.allows(ipaddress.ip_address("100.64.0.11").packed, 17, 53, None)  # DNS for roster
    Channel.instances[0].on_map(network(serial=2, peers=[a]))
    assert set(runtime.device.peers) == {a.key_bytes}
    assert not runtime.in_roster("100.64.0.11")


def test_registry_change_hook_called_for_cache_eviction():
    changed = []
    mgmt = Mgmt()
    mux = DeviceMux()
    registry = AccountRegistry(lambda acct: AccountRuntime(
        acct, reactor=Clock(), mux=mux, mgmt=mgmt, settings=AccountSettings(cluster="c"),
        peer_channel_factory=Channel), on_change=changed.append)
    store = MappingStore()
    store.add_observer(registry)
    store.apply_batch([mapping("s1")], False)
    assert changed == ["acct"]


def test_batch_ack_waits_for_registration():
    mgmt = Mgmt()
    pending = Deferred()
    mgmt.create_proxy_peer = lambda *a: pending
    store, _, _, _ = make(mgmt)
    done = []
    store.apply_batch([mapping("s1")], False).addCallback(done.append)
    assert done == []
    pending.callback(None)
    assert len(done) == 1


def test_a_refused_direct_dial_is_not_overwritten_by_a_later_active_report():
    """A public service can be served (and its direct dial refused) before the
    account's tunnel is up; bringing the tunnel up reports every service, and
    a refused one must stay ERROR with its reason until its mapping changes."""
    mgmt = Mgmt()
    denials = DenialReports()
    store, _, _, _ = make(mgmt, status_note=denials.note, forget_note=denials.forget)
    store.apply_batch([mapping("s1"), mapping("s2")], False)
    denials.record("s1", "direct_upstream target 127.0.0.1:80 refused by this gateway: loopback")
    Channel.instances[0].on_map(network())
    assert sorted(mgmt.status) == [
        ("s1", pb.PROXY_STATUS_ERROR,
         "direct_upstream target 127.0.0.1:80 refused by this gateway: loopback", None),
        ("s2", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80))]
    # the operator fixes the target: the changed mapping is ACTIVE again
    mgmt.status.clear()
    fixed = mapping("s1")
    fixed.type = pb.UPDATE_TYPE_MODIFIED
    fixed.domain = "s1-fixed.example"
    store.apply_batch([fixed], False)
    assert mgmt.status[-1] == ("s1", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80))
    assert denials.note("s1") is None
