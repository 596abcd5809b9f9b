"""Per-account memory: what an idle account shares instead of copying.

The behaviour behind the "Memory per idle account" figures of docs/scale.md:
runtimes keep the mapping store's serialized bytes (not a second copy),
tables keyed by a domain share the service's string, all-default target
options are one shared object, idle WireGuard peers leave no scrape entry,
and the per-account stack and runtime have no instance dict.
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.mgmt.netmap import AccountNetwork
from nbgateway.netstack.stack import Stack
from nbgateway.observe.metrics import GatewayMetrics
from nbgateway.routes.hosts import domain_key
from nbgateway.routes.service import TargetOptions, entry_from_mapping
from nbgateway.routes.table import ServiceTable
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.mux import DeviceMux


class _Mgmt:
    def __init__(self) -> None:
        self.status: list[tuple[str, int]] = []

    def create_proxy_peer(self, *args: object) -> object:
        return succeed(None)

    def send_status_update(self, service_id: str, account_id: str, status: int,
                           **kw: object) -> object:
        self.status.append((service_id, status))
        return succeed(None)


class _Channel:
    last: _Channel | None = None

    def __init__(self, account_id: str, key: bytes, on_map: object) -> None:
        self.on_map = on_map
        _Channel.last = self

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _mapping(sid: str = "s1", token: str = "tok", target: str = "http://10.0.0.1/",
             kind: int = pb.UPDATE_TYPE_CREATED) -> pb.ProxyMapping:
    return pb.ProxyMapping(type=kind, id=sid, account_id="acct", domain=f"{sid}.example",
                           auth_token=token, private=True,
                           path=[pb.PathMapping(path="/", target=target)])


def _world() -> tuple[MappingStore, AccountRegistry, _Mgmt]:
    mgmt = _Mgmt()
    store = MappingStore()
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=Clock(), mux=DeviceMux(), mgmt=mgmt,
        settings=AccountSettings(cluster="gw.example"), peer_channel_factory=_Channel,
        serve_inbound=lambda runtime: succeed([])), raw_of=store.raw)
    store.add_observer(registry)
    return store, registry, mgmt


def test_runtime_keeps_the_stores_serialized_mapping_not_a_copy():
    store, registry, mgmt = _world()
    store.apply_batch([_mapping("s1")], False)
    runtime = registry.get("acct")
    assert runtime is not None
    assert runtime.services["s1"] is store.raw("s1")
    assert runtime._registering is None  # a fired CreateProxyPeer attempt is not kept
    # a changed mapping: the runtime holds the store's new bytes
    store.apply_batch([_mapping("s1", target="http://10.0.0.2/", kind=pb.UPDATE_TYPE_MODIFIED)],
                      False)
    assert runtime.services["s1"] is store.raw("s1")
    assert pb.ProxyMapping.FromString(runtime.services["s1"]).path[0].target == \
        "http://10.0.0.2/"
    # delivered again with a fresh token (same content): still shared
    store.apply_batch([_mapping("s1", token="fresh", target="http://10.0.0.2/",
                                kind=pb.UPDATE_TYPE_MODIFIED)], False)
    assert runtime.services["s1"] is store.raw("s1")
    # reports still read it: the first map makes the service ACTIVE
    assert _Channel.last is not None
    _Channel.last.on_map(AccountNetwork(serial=1, address=ipaddress.ip_interface(
        "100.64.0.9/10"), roster=(), inbound_rules=()))
    assert runtime.state == "ready"
    assert ("s1", pb.PROXY_STATUS_ACTIVE) in mgmt.status


def test_runtime_without_a_store_serializes_its_own_copy():
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=Clock(), mux=DeviceMux(), mgmt=_Mgmt(),
        settings=AccountSettings(cluster="gw.example"), peer_channel_factory=_Channel))
    registry.account_added("acct")
    m = _mapping("s1")
    registry.mapping_added(m)
    assert registry.get("acct").services["s1"] == m.SerializeToString()


def test_domain_key_returns_a_normalised_name_itself():
    name = "".join(["app.", "example"])  # a fresh string object
    assert domain_key(name) is name
    assert domain_key(" App.Example. ") == "app.example"


def test_service_table_is_keyed_by_the_entrys_own_domain_string():
    table = ServiceTable()
    table.mapping_added(_mapping("s1"))
    (key, entry), = table.entries.items()
    assert key is entry.service.domain
    assert table.lookup("S1.example.") is entry


def test_default_target_options_are_one_shared_object():
    shared = TargetOptions.of(None)
    assert TargetOptions.of(pb.PathTargetOptions()) is shared
    assert shared == TargetOptions()
    entries = [entry_from_mapping(_mapping(f"s{i}")) for i in range(3)]
    assert all(e.service.router.routes[0].options is shared for e in entries)
    options = pb.PathTargetOptions(skip_tls_verify=True)
    options.custom_headers["X-A"] = "1"
    own = TargetOptions.of(options)
    assert own is not shared and own.skip_tls_verify and dict(own.custom_headers) == {"X-A": "1"}


def test_entries_of_one_account_share_its_id_string():
    a, b = (entry_from_mapping(_mapping(s)) for s in ("s1", "s2"))
    assert a.service.account_id is b.service.account_id


def _peer(rx: int, tx: int) -> SimpleNamespace:
    return SimpleNamespace(rx_bytes=rx, tx_bytes=tx)


def test_idle_peers_leave_no_scrape_entry_and_totals_stay_exact():
    metrics = GatewayMetrics()
    idle, busy = _peer(0, 0), _peer(100, 40)
    device = SimpleNamespace(peers={b"i": idle, b"b": busy}, counters={})
    metrics.add_account("acct", devices=[device])
    assert metrics.wireguard_bytes() == {"rx": 100, "tx": 40}
    assert set(metrics._peer_seen) == {id(busy)}  # the idle peer costs nothing
    idle.rx_bytes, busy.tx_bytes = 7, 50  # the idle peer wakes up
    assert metrics.wireguard_bytes() == {"rx": 107, "tx": 50}
    assert metrics.wireguard_bytes() == {"rx": 107, "tx": 50}  # no double count
    metrics.remove_account("acct")
    assert metrics.wireguard_bytes() == {"rx": 107, "tx": 50}


def test_stack_and_runtime_have_no_instance_dict():
    class _Sender:
        def sendPacket(self, packet: bytes) -> bool:
            return True

        def sendPackets(self, packets: list[bytes]) -> int:
            return len(packets)

    stack = Stack(_Sender(), Clock(), ["100.64.0.1"])
    runtime = AccountRuntime("acct", reactor=Clock(), mux=DeviceMux(), mgmt=_Mgmt(),
                             settings=AccountSettings(cluster="gw.example"),
                             peer_channel_factory=_Channel)
    assert not hasattr(stack, "__dict__") and not hasattr(runtime, "__dict__")


def test_gateway_runtimes_share_one_settings_object(tmp_path):
    from nbgateway.config import load
    from nbgateway.service import GatewayService

    config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "51820",
                   "datadir": str(tmp_path), "private": True, "health_addr": ""},
                  {"NB_PROXY_TOKEN": "t"})
    svc = GatewayService(config, reactor=Clock())
    a, b = svc._make_runtime("acct-a"), svc._make_runtime("acct-b")
    assert a.settings is b.settings
    assert a.settings == AccountSettings(cluster="gw.test", wg_endpoint="gw.test:51820",
                                         private=True, http_port=config.tunnel_http_port,
                                         https_port=config.tunnel_https_port)
    assert a.key_factory() == svc.account_key("acct-a") != b.key_factory()
