"""The device keeps its state in slots: no instance dict per account.

One device per account: past 30 attributes CPython 3.11 gives each instance
a private dict (~1.6 KiB), so the device (and its mixins) declare slots.  The
``__dict__`` slot stays for ad-hoc attributes (tests wrap methods) and is
only allocated when one is set; nothing the gateway does sets one.
"""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import ipv4_packet

from .conftest import make_pair


def _has_instance_dict(device: WireGuardDevice) -> bool:
    """Whether anything lives outside the slots, without creating the dict as
    ``vars()`` or ``__dict__`` would: the object's referents are its type, its
    slot values and, once one is set, its instance attributes (CPython 3.11
    keeps those inline; the values array is allocated at the first one)."""
    known = {id(getattr(device, name)) for name in WireGuardDevice.__slots__
             if name != "__dict__" and hasattr(device, name)}
    known.add(id(WireGuardDevice))
    return any(id(r) not in known for r in gc.get_referents(device))


def test_device_state_is_in_slots_through_a_handshake_and_data():
    pair = make_pair()
    assert pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"))
    pair.run(1.0)
    assert len(pair.sink_b.packets) == 1
    assert pair.a.counters["handshake_completed"] == 1
    for device in (pair.a, pair.b):
        assert not _has_instance_dict(device)
    pair.a.remove_peer(pair.b.public_key)
    pair.a.close()
    assert not _has_instance_dict(pair.a)


def test_device_on_a_mux_has_no_instance_dict():
    mux = DeviceMux(Clock())
    device = mux.add(WireGuardDevice(generate_private_key(), Clock(),
                                     index_registry=mux.registry))
    assert device.load_probe == mux.under_load
    assert not _has_instance_dict(device)
    mux.remove(device)
    assert device.load_probe is None and device.link is None
    assert not _has_instance_dict(device)


def test_a_fresh_device_has_no_load_probe():
    device = WireGuardDevice(generate_private_key(), Clock())
    assert device.load_probe is None
    assert not _has_instance_dict(device)


def test_ad_hoc_attributes_still_work():
    device = WireGuardDevice(generate_private_key(), Clock())
    seen: list[object] = []
    device.datagramsReceived = seen.append  # type: ignore[method-assign]
    device.datagramReceived(b"x", ("192.0.2.9", 1))
    assert seen == [((b"x", ("192.0.2.9", 1)),)]
    assert _has_instance_dict(device)
