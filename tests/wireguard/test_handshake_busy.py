"""The handshake queue while the data path is busy: smaller turns, spaced so the
drain takes at most ``busy_share`` of the time, with the reads in between going
to transport data; without data the drain runs every turn as before; every
handshake still completes."""

from __future__ import annotations

import pytest

from nbgateway.wireguard.mux import DeviceMux
from nbgateway.wireguard.testing import ipv4_packet
from tests.wireguard.test_handshake_queue import GW, _completed, _costly, _initiations, _world


def _established_data(net, mux, established, n: int) -> list[tuple[bytes, tuple[str, int]]]:
    """``n`` transport datagrams from an established peer to the gateway."""
    for i in range(n):
        established.sendPacket(ipv4_packet("100.65.0.1", "100.64.0.1", b"d%d" % i))
    out = [(d, src) for src, dst, d in net.queue if dst == GW]
    rest = [q for q in net.queue if q[1] != GW]  # replies to the newcomers stay queued
    net.queue.clear()
    net.queue.extend(rest)
    assert len(out) == n
    return out


def _one_read(net, mux, established, newcomers, n: int) -> None:
    """One read of the mux: every newcomer's initiation, then ``n`` transport
    datagrams of the established peer."""
    mux.datagramsReceived(_initiations(net, newcomers)
                          + _established_data(net, mux, established, n))


def _drain_call(clock, mux):
    """The mux's pending drain turn (the devices' timer calls are there too)."""
    (call,) = [c for c in clock.getDelayedCalls() if c.func == mux._drain]
    return call


def _run_at(clock, call) -> None:
    """Move the clock to ``call``'s time (exactly: no float sum) and run one turn."""
    clock.rightNow = call.getTime()
    clock.turn()


def _busy_world(n_newcomers: int, **mux_args):
    clock, net, mux, dev, sink, clients = _world(1 + n_newcomers, under_load_depth=1000,
                                                 **mux_args)
    established, newcomers = clients[0], clients[1:]
    established.sendPacket(ipv4_packet("100.65.0.1", "100.64.0.1", b"hello"))
    net.pump()  # its handshake (no data flowing: drained at once) and the packet
    assert len(sink.packets) == 1
    return clock, net, mux, dev, sink, established, newcomers


def test_busy_data_path_gets_small_spaced_turns_and_every_handshake_completes():
    clock, net, mux, dev, sink, established, newcomers = _busy_world(
        8, busy_datagrams=4, busy_time_budget=0.0005, busy_share=0.25)
    _costly(clock, dev, 0.0004)  # every run the device handles: 0.4 ms
    _one_read(net, mux, established, newcomers, 8)
    assert len(sink.packets) == 9  # the read's data first
    # busy: 0.5 ms budget, so two initiations (0.8 ms), then a wait of 3 x 0.8 ms
    assert mux.counters["handshake_queue_processed"] == 1 + 2
    call = _drain_call(clock, mux)
    assert call.getTime() - clock.seconds() == pytest.approx(0.0024)
    clock.turn()
    assert mux.counters["handshake_queue_processed"] == 3  # not yet
    # the reads meanwhile are the established peer's
    mux.datagramsReceived(_established_data(net, mux, established, 8))
    assert len(sink.packets) == 17
    assert mux.counters["handshake_queue_processed"] == 3
    rounds = 0
    while mux.handshake_queue_depth:
        call = _drain_call(clock, mux)
        _run_at(clock, call)
        rounds += 1
        if mux.handshake_queue_depth:
            mux.datagramsReceived(_established_data(net, mux, established, 8))
    assert rounds == 3  # 2 per turn: 8 = 2 + 3 x 2
    assert mux.counters["handshake_queue_busy_turns"] == 4 - 1  # the last left nothing
    net.pump()
    assert _completed(newcomers) == 8
    assert len(sink.packets) == 1 + 8 * 4


def test_without_data_the_next_turn_is_immediate_with_the_full_budget():
    clock, net, mux, dev, _sink, established, newcomers = _busy_world(
        8, busy_datagrams=4, busy_time_budget=0.0005, busy_share=0.25,
        handshake_time_budget=0.002, busy_hold=0.0)
    _costly(clock, dev, 0.0004)
    _one_read(net, mux, established, newcomers, 4)
    assert mux.counters["handshake_queue_processed"] == 1 + 2
    call = _drain_call(clock, mux)
    _run_at(clock, call)
    # no data since: not busy, 2 ms budget (five at 0.4 ms), next turn at once
    assert mux.counters["handshake_queue_processed"] == 1 + 2 + 5
    call = _drain_call(clock, mux)
    assert call.getTime() == clock.seconds()
    clock.turn()
    assert mux.handshake_queue_depth == 0
    net.pump()
    assert _completed(newcomers) == 8


def test_few_data_datagrams_do_not_count_as_busy():
    clock, net, mux, dev, _sink, established, newcomers = _busy_world(
        4, busy_datagrams=8, busy_time_budget=0.0005, handshake_time_budget=0.002)
    _costly(clock, dev, 0.0004)
    # a keepalive-sized trickle: three datagrams
    _one_read(net, mux, established, newcomers, 3)
    assert mux.counters["handshake_queue_processed"] == 1 + 4
    assert mux.counters["handshake_queue_busy_turns"] == 0


def test_the_wait_between_busy_turns_is_capped():
    clock, net, mux, dev, _sink, established, newcomers = _busy_world(
        3, busy_datagrams=1, busy_share=0.25, busy_max_delay=0.010)
    _costly(clock, dev, 0.010)  # one initiation: 10 ms, 3 x 10 ms would be 30 ms
    _one_read(net, mux, established, newcomers, 1)
    call = _drain_call(clock, mux)
    assert call.getTime() - clock.seconds() == pytest.approx(0.010)


def test_busy_share_must_be_a_fraction():
    with pytest.raises(ValueError):
        DeviceMux(busy_share=0.0)
    with pytest.raises(ValueError):
        DeviceMux(busy_share=1.5)


def test_busy_holds_while_the_flow_recovers_then_full_speed():
    # a stalled TCP flow (a loss, its retransmission timeout) sends little: the
    # drain stays spaced for busy_hold after the last busy turn
    clock, net, mux, dev, _sink, established, newcomers = _busy_world(
        12, busy_datagrams=4, busy_time_budget=0.0005, busy_share=0.25,
        handshake_time_budget=0.002, busy_hold=0.010)
    _costly(clock, dev, 0.0004)
    _one_read(net, mux, established, newcomers, 4)
    assert mux.counters["handshake_queue_processed"] == 1 + 2
    # no data since, but within the hold (10 ms): still two per turn, spaced
    call = _drain_call(clock, mux)
    _run_at(clock, call)
    assert mux.counters["handshake_queue_processed"] == 1 + 4
    assert _drain_call(clock, mux).getTime() > clock.seconds()
    assert mux.counters["handshake_queue_busy_turns"] == 2
    clock.rightNow = _drain_call(clock, mux).getTime() + 0.010
    clock.turn()  # the hold is over: the full budget, the next turn at once
    assert mux.counters["handshake_queue_processed"] == 1 + 4 + 5
    assert _drain_call(clock, mux).getTime() == clock.seconds()
    clock.turn()
    assert mux.handshake_queue_depth == 0
    net.pump()
    assert _completed(newcomers) == 12
