"""wireguard-go against account devices behind a :class:`DeviceMux` with a
handshake queue on the real reactor (the gateway service's configuration).

Topology: one namespace; wireguard-go (tunnel 100.64.0.2) peered with an
account device (tunnel 100.64.0.1, answering ping through the netstack) behind
the mux's UDP port on 127.0.0.1.  Initiations go through the mux's
queue (drained per reactor turn); with ``under_load_depth=0`` the queue says
"under load" for every initiation, so wireguard-go first gets a cookie reply
and its MAC2 retry (after REKEY_TIMEOUT) is the one answered.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor

from nbgateway.netstack.stack import Stack
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from tests.interop.test_wireguard_interop import (
    GW_V4,
    PEER_V4,
    _maybe,
    assert_pinged,
    free_udp_port,
    ping,
)
from tests.interop.testbed import Netns, Testbed, inside_netns

pytestmark = pytest.mark.interop


@pytest.fixture
def world(testbed: Testbed):
    """Factory: (mux, its UDP port, device, netns, wireguard-go); the mux's socket
    and wireguard-go share one namespace."""
    made = []

    def make(**mux_kw):
        mux = DeviceMux(reactor, **mux_kw)
        ns = testbed.netns()
        with inside_netns(ns.name):
            port = udp.listen(reactor, mux, 0, interface="127.0.0.1")
        dev = mux.add(WireGuardDevice(generate_private_key(), reactor,
                                      index_registry=mux.registry))
        stack = Stack(dev, reactor, [GW_V4], mtu=dev.mtu)
        dev.sink = stack
        made.append((mux, port, dev, stack))
        wg = testbed.wireguard_go(ns, listen_port=free_udp_port(ns), addresses=[f"{PEER_V4}/32"])
        return mux, port.getHost().port, dev, ns, wg

    yield make
    for mux, port, dev, stack in made:
        mux.close()
        stack.close()
        dev.close()
        pytest_twisted.blockon(_maybe(port.stopListening()))


def _peer(dev: WireGuardDevice, ns: Netns, wg, endpoint: str) -> None:
    ns.add_route(wg.ifname, f"{GW_V4}/32")
    wg.add_peer(dev.public_key, allowed_ips=[f"{GW_V4}/32"], endpoint=endpoint)
    dev.add_peer(wg.keys.public, allowed_ips=[f"{PEER_V4}/32"])


@pytest_twisted.ensureDeferred
async def test_wireguard_go_handshakes_through_the_queue_without_cookies(world):
    mux, gw_port, dev, ns, wg = world()
    _peer(dev, ns, wg, f"127.0.0.1:{gw_port}")
    assert_pinged(await ping(ns, GW_V4, count=3, interval=0.2))
    c = Counter(dev.counters)
    assert c["handshake_initiation_rx"] >= 1 and c["cookie_reply_tx"] == 0
    assert mux.counters["handshake_queue_processed"] >= 1
    assert mux.handshake_queue_depth == 0
    assert mux.counters["mux_drop_handshake_queue_full"] == 0


@pytest_twisted.ensureDeferred
async def test_queue_under_load_sends_cookie_and_wireguard_go_mac2_retry_completes(world):
    mux, gw_port, dev, ns, wg = world(under_load_depth=0)
    _peer(dev, ns, wg, f"127.0.0.1:{gw_port}")
    res = await ping(ns, GW_V4, count=2, interval=0.2, wait=12.0, timeout=25.0)
    assert_pinged(res)
    c = Counter(dev.counters)
    assert c["cookie_reply_tx"] >= 1
    assert c["handshake_initiation_rx"] >= 1 and c["handshake_response_tx"] >= 1
    assert c["drop_bad_mac2"] == 0
    assert mux.counters["handshake_queue_processed"] >= 2
