"""Sequence numbers across 2**32: the TCB counts relative to ISS/IRS
(tcp_conn.py) and converts at the wire, so a transfer must come out intact
whether the *wire* values wrap (ISNs just below 2**32, on either side, over a
lossy, reordering link: SACK, retransmission and out-of-order data around
the wrap) or the *relative* values pass 2**32 (after 4 GiB, simulated by
rebasing an idle connection: the wire is unchanged, the TCB numbers jump).
Both stacks are real (IP layer, fused fast path and general path)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from twisted.internet.task import Clock

from nbgateway.netstack.tcp_const import ESTABLISHED
from nbgateway.netstack.testing import make_stack_pair, rcv_wire, run_until, snd_wire

from .tcp_fakes import RecordingUser, listen_recording

M = 0xFFFFFFFF
PORT = 7000


def _pair(isn_a: int, isn_b: int, v6: bool = False, **fault):
    clock = Clock()
    clock.advance(100.0)
    a, b, link = make_stack_pair(clock, **fault)
    a.tcp.secrets.isn = lambda *_: isn_a
    b.tcp.secrets.isn = lambda *_: isn_b
    # the TCP sequence numbers the link carries (IPv4 and IPv6, no options)
    seen: list[int] = []
    send = link._send

    def spy(end, packet):
        hl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
        proto = packet[9] if packet[0] >> 4 == 4 else packet[6]
        if proto == 6 and len(packet) >= hl + 8:
            seen.append(struct.unpack_from("!I", packet, hl + 4)[0])
        return send(end, packet)

    link._send = spy
    _listener, accepted = listen_recording(b, PORT)
    client = RecordingUser()
    remote = b.addresses[1] if v6 else b.addresses[0]
    client.conn = a.tcp.connect(remote, PORT, client)
    assert run_until(clock, lambda: bool(accepted) and client.established)
    return clock, a, b, client, accepted[0], seen


def _exchange(clock, client, server, up: bytes, down: bytes) -> None:
    now = clock.seconds()
    client.conn.send(up, now)
    server.conn.send(down, now)
    client.conn.close(now)
    server.conn.close(now)
    assert run_until(clock, lambda: client.eof and server.eof and client.fin_acked
                     and server.fin_acked, timeout=600.0)
    assert bytes(server.data) == up
    assert bytes(client.data) == down


@pytest.mark.parametrize(("isn_a", "isn_b"), [
    (M, M - 1),                          # the SYN itself takes the last number
    (M - 700, M - 100_000),              # wraps in the first segments / mid-transfer
    ((1 << 31) - 300, M - 50_000),       # across the half-way mark and the wrap
    (0, (1 << 30) - 1),                  # small ones: nothing wraps on one side
])
@pytest.mark.parametrize("v6", [False, True])
def test_transfer_across_the_wire_wrap(isn_a, isn_b, v6):
    clock, a, b, client, server, seen = _pair(isn_a, isn_b, v6=v6, drop=0.03, reorder=0.1,
                                              duplicate=0.03, seed=isn_a ^ isn_b, jitter=0.002)
    c, s = client.conn, server.conn
    # relative inside, the chosen ISNs on the wire
    assert (c.iss, s.iss, c.irs, s.irs) == (isn_a, isn_b, isn_b, isn_a)
    assert c.snd_una == c.rcv_nxt == s.snd_una == s.rcv_nxt == 1
    assert snd_wire(c, c.snd_una) == (isn_a + 1) & M == rcv_wire(s, s.rcv_nxt)
    blob = hashlib.shake_256(b"%d" % isn_a).digest(600_000)
    _exchange(clock, client, server, blob[:250_000], blob[250_000:])
    # both directions moved well past the numbers they started from
    assert c.snd_max > 250_000 and s.snd_max > 350_000
    if isn_a > M - 250_000 or isn_b > M - 350_000:
        assert min(seen) < 400_000 and max(seen) > M - 400_000  # the wire wrapped
    assert len(seen) > 400  # every segment was seen (the link's one way in)
    assert a.tcp.counters["tcp_internal_errors"] == 0 == b.tcp.counters["tcp_internal_errors"]
    assert a.tcp.counters["tcp_retransmitted_segments"] + \
        b.tcp.counters["tcp_retransmitted_segments"] > 0  # the losses were repaired


def _rebase(conn, send: int, recv: int) -> None:
    """Move an idle connection's relative numbers up by ``send`` (send side)
    and ``recv`` (receive side), the bases down by as much: the wire values
    stay the same, as after that many bytes each way."""
    assert conn.state == ESTABLISHED and conn.snd_una == conn.snd_max == conn.sndbuf.end
    assert conn.ooo is None and conn.sacked is None and conn.rtt_seq is None
    conn.snd_una += send
    conn.snd_nxt += send
    conn.snd_max += send
    conn.sndbuf.start += send
    conn.sndbuf.end += send
    conn.cc.recover += send
    conn.rexmit_high += send
    conn.iss = (conn.iss - send) & M
    conn.rcv_nxt += recv
    conn.rcv_adv += recv
    conn.last_ack_sent += recv
    conn.rcv_mark_seq += recv
    conn.irs = (conn.irs - recv) & M


@pytest.mark.parametrize("fault", [{}, {"drop": 0.03, "reorder": 0.1, "seed": 7}])
def test_relative_numbers_past_2_32(fault):
    """After 4 GiB the relative numbers need more than 32 bits: the fast
    path's plain differences no longer match and the unwrap must take over."""
    clock, a, b, client, server, _seen = _pair(M - 5000, 123_456, **fault)
    c, s = client.conn, server.conn
    up_k, down_k = (1 << 32) - 1000, (1 << 32) + (1 << 31) - 10_000
    wire = [snd_wire(c, c.snd_nxt), rcv_wire(c, c.rcv_nxt), snd_wire(s, s.snd_nxt),
            rcv_wire(s, s.rcv_nxt)]
    _rebase(c, up_k, down_k)
    _rebase(s, down_k, up_k)
    assert wire == [snd_wire(c, c.snd_nxt), rcv_wire(c, c.rcv_nxt), snd_wire(s, s.snd_nxt),
                    rcv_wire(s, s.rcv_nxt)]
    hits = a.tcp.fast.hits + b.tcp.fast.hits
    blob = hashlib.shake_256(b"past").digest(300_000)
    # request/response rounds first (the fused paths), then bulk both ways
    for i in range(20):
        req, resp = blob[i * 100:(i + 1) * 100], blob[i * 700:(i + 1) * 700]
        got = len(server.data)
        c.send(req, clock.seconds())
        assert run_until(clock, lambda got=got: len(server.data) == got + 100)
        got = len(client.data)
        s.send(resp, clock.seconds())
        assert run_until(clock, lambda got=got: len(client.data) == got + 700)
    assert c.snd_una > 1 << 32 and s.rcv_nxt > 1 << 32  # past 2**32 on both ends
    if not fault:
        assert a.tcp.fast.hits + b.tcp.fast.hits > hits + 20  # the fused input took them
    assert bytes(server.data) == b"".join(blob[i * 100:(i + 1) * 100] for i in range(20))
    assert bytes(client.data) == b"".join(blob[i * 700:(i + 1) * 700] for i in range(20))
    server.data.clear()
    client.data.clear()
    _exchange(clock, client, server, blob[:120_000], blob[120_000:])
    assert a.tcp.counters["tcp_internal_errors"] == 0 == b.tcp.counters["tcp_internal_errors"]
