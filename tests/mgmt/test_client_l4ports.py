"""The gateway advertises its public L4 ports (``nbgw_l4_public_ports``) in the
SyncMappings init and in the GetMappingUpdate request, against a real grpcio
ProxyService on loopback (tests/mgmt/servicer.py)."""

from __future__ import annotations

import pytest
import pytest_twisted

from nbgateway.config import load
from nbgateway.tap import build_gateway
from tests.mgmt.test_client_grpc import Env, HeldApplyStore, wait_for


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


def _ports(caps) -> tuple[list[tuple[int, int]], int]:
    adv = caps.nbgw_l4_public_ports
    return [(r.first, r.last) for r in adv.ranges], adv.tls_port


@pytest_twisted.ensureDeferred
async def test_sync_init_carries_the_public_l4_ports(env: Env) -> None:
    client = env.make_client(l4_public_ports=((1024, 2000), (5000, 5000)), l4_tls_port=8443)
    store = HeldApplyStore()
    client.subscribe_mappings(store)
    await wait_for(lambda: store.initial_sync_complete, "snapshot applied")
    caps = env.servicer.inits[-1].capabilities
    assert caps.HasField("nbgw_l4_public_ports")
    assert _ports(caps) == ([(1024, 2000), (5000, 5000)], 8443)
    assert caps.HasField("private") and caps.supports_private_service  # the five stay


@pytest_twisted.ensureDeferred
async def test_get_mapping_update_carries_them_too(env: Env) -> None:
    env.servicer.sync_unimplemented = True
    client = env.make_client(l4_public_ports=((20000, 20099),))
    store = HeldApplyStore()
    client.subscribe_mappings(store)
    await wait_for(lambda: store.initial_sync_complete, "snapshot via GetMappingUpdate")
    caps = env.servicer.gmu_requests[-1].capabilities
    assert _ports(caps) == ([(20000, 20099)], 0)


def test_not_advertised_without_ports_and_empty_is_present() -> None:
    env = Env()
    try:
        assert not env.client.capabilities_message().HasField("nbgw_l4_public_ports")
        none = env.make_client(l4_public_ports=())
        caps = none.capabilities_message()
        assert caps.HasField("nbgw_l4_public_ports") and _ports(caps) == ([], 0)
    finally:
        env.close()
def test_build_gateway_advertises_the_configured_ports() -> None:
    cfg = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.example", "addr": "127.0.0.1:8443",
                "l4_public_ports": "2000-2999,40000"}, environ={"NB_PROXY_TOKEN": "t"})
    gateway = build_gateway(cfg, environ={})
    caps = gateway.mgmt.capabilities_message()
    assert _ports(caps) == ([(2000, 2999), (40000, 40000)], 8443)
