"""Several WireGuard devices (one per account) behind one UDP port.

Every account has its own tunnel identity (static key) but all of them share the
gateway's single advertised UDP endpoint.  :class:`DeviceMux` sits between the
UDP adapter and the devices:

- transport data, handshake responses and cookie replies carry the receiver
  index, which the shared :class:`~nbgateway.wireguard.device.IndexRegistry`
  maps to exactly one device (indices are unique across devices);
- handshake initiations carry no index, so the mux finds the device whose
  public key the initiator's MAC1 was computed for (one keyed BLAKE2s per
  device; the cost of an initiation grows with the number of accounts).

Unroutable datagrams are counted in :attr:`DeviceMux.counters` and dropped;
the UDP adapter's socket errors land there too (:attr:`DeviceMux.events`).
"""

from __future__ import annotations

import hmac as _hmac
import struct
from collections import Counter

from nbgateway.interfaces import IDatagramLink
from nbgateway.wireguard._crypto import mac
from nbgateway.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_MIN_SIZE,
)
from nbgateway.wireguard.device import IndexRegistry, WireGuardDevice
from nbgateway.wireguard.messages import INITIATION_MAC1_OFFSET

_HEAD = struct.Struct("<II")


class DeviceMux:
    """Routes datagrams from one UDP socket to the device they belong to."""

    def __init__(self) -> None:
        self.registry = IndexRegistry()
        self.devices: list[WireGuardDevice] = []
        self.counters: Counter[str] = Counter()
        self._link: IDatagramLink | None = None

    # The UDP adapter sets ``link`` on whatever it feeds; pass it to every device.
    @property
    def link(self) -> IDatagramLink | None:
        return self._link

    @link.setter
    def link(self, value: IDatagramLink | None) -> None:
        self._link = value
        for device in self.devices:
            device.link = value

    @property
    def events(self) -> Counter[str]:
        """Where the UDP adapter counts socket errors (``udp_send_error``,
        ``udp_refused``): the mux's own :attr:`counters`, as a device's
        ``events`` are its own."""
        return self.counters

    @property
    def counters_total(self) -> Counter[str]:
        total = Counter(self.counters)
        for device in self.devices:
            total.update(device.counters)
        return total

    def add(self, device: WireGuardDevice) -> WireGuardDevice:
        """Attach a device built with ``index_registry=mux.registry``."""
        if device.index_registry is not self.registry:
            raise ValueError("device must be created with index_registry=mux.registry")
        if any(d.public_key == device.public_key for d in self.devices):
            raise ValueError("a device with this public key is already attached")
        self.devices.append(device)
        device.link = self._link
        return device

    def remove(self, device: WireGuardDevice) -> None:
        if device in self.devices:
            self.devices.remove(device)
            device.close()  # releases its indices from the shared registry
            device.link = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        device = self._owner(data)
        if device is not None:
            device.datagramReceived(data, addr)

    def datagramsReceived(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """A socket read's worth of datagrams: each run bound for one device is
        handed over in one ``datagramsReceived`` call, in arrival order."""
        run: list[tuple[bytes, tuple[str, int]]] = []
        run_device: WireGuardDevice | None = None
        for item in batch:
            device = self._owner(item[0])
            if device is None:
                continue
            if device is not run_device:
                if run:
                    run_device.datagramsReceived(run)
                    run = []
                run_device = device
            run.append(item)
        if run:
            run_device.datagramsReceived(run)

    def _owner(self, data: bytes) -> WireGuardDevice | None:
        """The device a datagram belongs to, or None (counted)."""
        n = len(data)
        if n < 8:
            self.counters["mux_drop_malformed"] += 1
            return None
        mtype, receiver = _HEAD.unpack_from(data)
        if mtype == MESSAGE_TRANSPORT and n >= MESSAGE_TRANSPORT_MIN_SIZE:
            device = self.registry.owners.get(receiver)
        elif mtype == MESSAGE_INITIATION and n == MESSAGE_INITIATION_SIZE:
            device = self._by_mac1(data)
        elif (mtype == MESSAGE_RESPONSE and n == MESSAGE_RESPONSE_SIZE) or (
            mtype == MESSAGE_COOKIE_REPLY and n == MESSAGE_COOKIE_REPLY_SIZE
        ):
            # response: sender at 4, receiver at 8; cookie reply: receiver at 4
            index = _HEAD.unpack_from(data, 4)[1] if mtype == MESSAGE_RESPONSE else receiver
            device = self.registry.owners.get(index)
        else:
            self.counters["mux_drop_malformed"] += 1
            return None
        if device is None:
            self.counters["mux_drop_unroutable"] += 1
        return device

    def _by_mac1(self, data: bytes) -> WireGuardDevice | None:
        body = data[:INITIATION_MAC1_OFFSET]
        mac1 = data[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + 16]
        for device in self.devices:
            if _hmac.compare_digest(mac(device.identity_mac1_key, body), mac1):
                return device
        return None
