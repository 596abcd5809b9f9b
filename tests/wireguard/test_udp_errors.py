"""Send errors of the WireGuard UDP adapter on a real socket, behind the
production :class:`DeviceMux` (issue 11.9): every error a send can raise
(a socket ``OSError``, Twisted's ``MessageLengthError`` and
``InvalidAddressError``) is counted where the metrics read it and never
escapes into the device or the reactor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.task import Clock

from nbgateway.observe.metrics import GatewayMetrics
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from nbgateway.wireguard.mux import DeviceMux


@pytest.fixture
def mux_port() -> Iterator[tuple[DeviceMux, WireGuardDevice, udp.WireGuardProtocol, int]]:
    mux = DeviceMux()
    dev = mux.add(WireGuardDevice(generate_private_key(), Clock(), index_registry=mux.registry))
    port = udp.listen(reactor, mux, 0, interface="127.0.0.1")
    try:
        yield mux, dev, port.protocol, port.getHost().port
    finally:
        port.connectionLost()  # closes the socket now (no reactor turn needed)


def produce_send_errors(protocol: udp.WireGuardProtocol, port: int) -> int:
    """Three real failures through the adapter; returns how many."""
    protocol.sendDatagrams([b"x" * 70_000], ("127.0.0.1", port))  # EMSGSIZE: MessageLengthError
    protocol.sendDatagram(b"x", ("::1", port))  # IPv6 on an IPv4 port: InvalidAddressError
    protocol.sendDatagram(b"x", ("127.0.0.1", 0))  # EINVAL from the kernel: OSError
    protocol.flush()  # (held until the end of the reactor turn otherwise)
    return 3


def test_send_errors_are_counted_on_the_production_mux(mux_port) -> None:
    mux, dev, protocol, port = mux_port
    assert mux.link is protocol and dev.link is protocol  # the device sends through it
    n = produce_send_errors(protocol, port)
    assert protocol.send_errors == n
    assert mux.counters["udp_send_error"] == n
    # a good datagram after the failures still goes out
    protocol.sendDatagram(b"\x01" * 8, ("127.0.0.1", port))
    assert protocol.send_errors == n


def test_send_errors_reach_the_metrics(mux_port) -> None:
    mux, dev, protocol, port = mux_port
    metrics = GatewayMetrics()
    metrics.mux = mux
    metrics.add_account("acc1", devices=[dev])
    n = produce_send_errors(protocol, port)
    protocol.connectionRefused()  # what the port calls on ECONNREFUSED
    text = generate_latest(metrics.registry).decode()
    assert f'nbgateway_wireguard_udp_errors_total{{kind="send_error"}} {float(n)}' in text
    assert 'nbgateway_wireguard_udp_errors_total{kind="refused"} 1.0' in text
