"""The account runtime reports L4 mappings with the L4 manager's status:
ACTIVE only once bound, the manager's error otherwise; the inbound listener
only for private ones."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.mux import DeviceMux
from tests.test_accounts import Channel, Mgmt, Port, mapping, network


def test_l4_status_comes_from_the_l4_manager():
    mgmt = Mgmt()
    Channel.instances = []
    bound = {"pub": (pb.PROXY_STATUS_ACTIVE, None), "priv": (pb.PROXY_STATUS_ACTIVE, None),
             "clash": (pb.PROXY_STATUS_ERROR, "port 51820 conflicts with tunnel port")}
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=Clock(), mux=DeviceMux(), mgmt=mgmt,
        settings=AccountSettings(cluster="gw.example"), peer_channel_factory=Channel,
        serve_inbound=lambda runtime: succeed([Port()]),
        l4_status=lambda m: bound[m.id]))
    store = MappingStore()
    store.add_observer(registry)
    maps = []
    for sid, private in (("pub", False), ("priv", True), ("clash", False)):
        m = mapping(sid)
        m.mode, m.private, m.listen_port = "tcp", private, 7000
        maps.append(m)
    store.apply_batch(maps, False)
    Channel.instances[0].on_map(network())
    assert sorted(mgmt.status) == [
        ("clash", pb.PROXY_STATUS_ERROR, "port 51820 conflicts with tunnel port", None),
        ("priv", pb.PROXY_STATUS_ACTIVE, None, ("100.64.0.99", 443, 80)),
        ("pub", pb.PROXY_STATUS_ACTIVE, None, None)]
