"""bench/_handshakes.Initiator against the project's own responder (in process)."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from bench._handshakes import Initiator, receiver_index
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key

GW = ("192.0.2.1", 51820)
ME = ("192.0.2.9", 40000)


class _Link:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendDatagram(self, data: bytes, addr) -> None:
        self.sent.append((bytes(data), addr))


def _responder(n: int, threshold: int) -> tuple[Clock, WireGuardDevice, _Link, list[bytes]]:
    clock = Clock()
    clock.advance(1000.0)
    dev = WireGuardDevice(generate_private_key(), clock, rng=random.Random(1),
                          under_load_threshold=threshold)
    link = _Link()
    dev.link = link
    privates = [generate_private_key() for _ in range(n)]
    for p in privates:
        dev.add_peer(public_key(p), allowed_ips=[])
    return clock, dev, link, privates


def _deliver(dev: WireGuardDevice, link: _Link, data: bytes, by_index: dict, now: float):
    link.sent.clear()
    dev.datagramReceived(data, ME)
    return [by_index[receiver_index(d)].receive(d, now) for d, _ in link.sent
            if receiver_index(d) in by_index]


def test_handshakes_complete_with_derived_keys() -> None:
    clock, dev, link, privates = _responder(3, threshold=1000)
    inis = [Initiator(p, dev.identity.public, index=i + 1) for i, p in enumerate(privates)]
    by_index = {i.index: i for i in inis}
    for ini in inis:
        assert _deliver(dev, link, ini.initiation(clock.seconds()), by_index,
                        clock.seconds()) == ["done"]
    assert all(i.done and i.keys is not None for i in inis)
    assert dev.events["handshake_completed"] == 0  # the responder completes on first data
    assert dev.events["handshake_response_tx"] == 3


def test_cookie_reply_then_retry_with_mac2_completes() -> None:
    clock, dev, link, privates = _responder(5, threshold=2)
    inis = [Initiator(p, dev.identity.public, index=100 + i) for i, p in enumerate(privates)]
    by_index = {i.index: i for i in inis}
    first = [_deliver(dev, link, i.initiation(clock.seconds()), by_index, clock.seconds())
             for i in inis]
    assert ["cookie"] in first and ["done"] in first  # under load after the threshold
    waiting = [i for i in inis if not i.done]
    assert all(i.cookie_replies == 1 and not i.due(clock.seconds()) for i in waiting)
    clock.advance(5.4)  # REKEY_TIMEOUT + jitter: the retry carries MAC2
    for ini in waiting:
        assert ini.due(clock.seconds())
        assert _deliver(dev, link, ini.initiation(clock.seconds()), by_index,
                        clock.seconds()) == ["done"]
    assert all(i.done for i in inis)
    assert dev.events["cookie_reply_tx"] == len(waiting)


def test_wrong_responder_key_never_completes() -> None:
    clock, dev, link, privates = _responder(1, threshold=1000)
    ini = Initiator(privates[0], public_key(generate_private_key()), index=7)
    assert _deliver(dev, link, ini.initiation(clock.seconds()), {7: ini}, clock.seconds()) == []
    assert not ini.done and dev.events["drop_bad_mac1"] == 1


def test_prepared_initiations_complete_and_the_retry_carries_mac2() -> None:
    clock, dev, link, privates = _responder(4, threshold=1)
    inis = [Initiator(p, dev.identity.public, index=200 + i) for i, p in enumerate(privates)]
    by_index = {i.index: i for i in inis}
    for ini in inis:
        ini.prepare(2, walltime=1000.0)  # the same wall time: timestamps still increase
    first = [_deliver(dev, link, i.initiation(clock.seconds()), by_index, clock.seconds())
             for i in inis]
    assert ["cookie"] in first
    waiting = [i for i in inis if not i.done]
    clock.advance(5.4)
    for ini in waiting:
        # the second prepared message, MAC2 from the cookie added when sent
        assert len(ini._prepared) == 1
        assert _deliver(dev, link, ini.initiation(clock.seconds()), by_index,
                        clock.seconds()) == ["done"]
        assert not ini._prepared
    assert all(i.done for i in inis)
    assert dev.events["drop_stale_timestamp"] == 0
