"""TCP connections between two fake stacks: handshakes, transfer, close."""

from __future__ import annotations

import itertools
import os

import pytest

from nbgateway.netstack.tcp_const import TIME_WAIT_TIMEOUT
from nbgateway.netstack.tcp_wire import ACK, SYN, parse_segment

from .tcp_fakes import A4, A6, B4, B6, RecordingUser, listen_recording, make_pair


@pytest.mark.parametrize("v6", [False, True])
def test_handshake_transfer_and_close(v6):
    clock, a, b, w = make_pair(v6=v6)
    _lst, acc = listen_recording(b, 80)
    u = RecordingUser()
    conn = a.tcp.connect(B6 if v6 else B4, 80, u)
    w.run(until=lambda: u.established and acc)
    srv = acc[0].conn
    assert conn.state_name == srv.state_name == "ESTABLISHED"
    assert srv.remote == (A6 if v6 else A4) and srv.rport == conn.lport
    # options negotiated: MSS clamped to the MTU minus headers and timestamps
    assert conn.ts_ok and conn.sack_ok and conn.snd_wscale == srv.rcv_wscale
    assert conn.mss == 1280 - (60 if v6 else 40) - 12

    data = os.urandom(300_000)
    reply = os.urandom(50_000)
    conn.send(data, clock.seconds())
    srv.send(reply, clock.seconds())
    w.run(until=lambda: len(acc[0].data) == len(data) and len(u.data) == len(reply))
    assert bytes(acc[0].data) == data and bytes(u.data) == reply

    # active close: FIN-WAIT-1 -> FIN-WAIT-2 (peer half-open), then peer closes
    conn.close(clock.seconds())
    w.run(until=lambda: acc[0].eof and u.fin_acked)
    assert conn.state_name == "FIN-WAIT-2" and srv.state_name == "CLOSE-WAIT"
    srv.send(b"late reply", clock.seconds())  # half-close: the peer may still send
    srv.close(clock.seconds())
    w.run(until=lambda: acc[0].closed)
    assert u.data.endswith(b"late reply") and u.eof
    assert conn.state_name == "TIME-WAIT" and acc[0].closed == [None]
    assert len(a.tcp.time_wait) == 1
    w.run()
    assert conn.state_name == "CLOSED" and u.closed == [None]
    assert not a.tcp.conns and not b.tcp.conns and not a.tcp.time_wait
    assert clock.seconds() >= 1000.0 + TIME_WAIT_TIMEOUT


def test_simultaneous_open():
    clock, a, b, w = make_pair()
    ua, ub = RecordingUser(), RecordingUser()
    ca = a.tcp.connect(B4, 5000, ua)
    # the second side dials back from the first side's ports before seeing the SYN
    cb = b.tcp.connect(A4, ca.lport, ub)
    b.tcp.conns.pop((cb.local, cb.lport, cb.remote, cb.rport))
    cb.lport = 5000
    b.tcp.conns[(cb.local, 5000, cb.remote, cb.rport)] = cb
    b.sent.clear()
    cb.open_active(clock.seconds())  # re-send the SYN from port 5000
    w.run(until=lambda: ua.established and ub.established)
    assert ca.state_name == cb.state_name == "ESTABLISHED"
    ca.send(b"ping", clock.seconds())
    cb.send(b"pong", clock.seconds())
    w.run(until=lambda: ua.data and ub.data)
    assert ub.data == b"ping" and ua.data == b"pong"


def test_simultaneous_close():
    clock, a, b, w = make_pair()
    _lst, acc = listen_recording(b, 80)
    u = RecordingUser()
    conn = a.tcp.connect(B4, 80, u)
    w.run(until=lambda: acc)
    srv = acc[0].conn
    conn.close(clock.seconds())
    srv.close(clock.seconds())  # both FINs cross on the wire
    assert conn.state_name == srv.state_name == "FIN-WAIT-1"
    w.pump()
    assert {conn.state_name, srv.state_name} <= {"CLOSING", "TIME-WAIT"}
    w.run(until=lambda: conn.state_name == srv.state_name == "TIME-WAIT")
    assert u.eof and u.fin_acked and acc[0].eof and acc[0].fin_acked
    w.run()
    assert not a.tcp.conns and not b.tcp.conns


def test_connect_to_closed_port_is_refused():
    _clock, a, b, w = make_pair()
    u = RecordingUser()
    a.tcp.connect(B4, 81, u)
    w.run(until=lambda: u.closed)
    assert type(u.closed[0]).__name__ == "ConnectionRefusedError"
    assert b.counters["tcp_closed_port"] == 1 and not a.tcp.conns


def test_syn_retries_then_timeout():
    clock, a, _b, w = make_pair(fault=lambda d, i, s: [])  # black hole
    u = RecordingUser()
    a.tcp.connect(B4, 80, u)
    syn_times = []
    orig = a.send_transport

    def spy(src, dst, proto, seg):
        if parse_segment(seg).flags & SYN:
            syn_times.append(clock.seconds())
        return orig(src, dst, proto, seg)

    a.send_transport = spy
    w.run(until=lambda: u.closed, max_time=1000)
    gaps = [round(y - x, 3) for x, y in itertools.pairwise(syn_times)]
    assert gaps == [2.0, 4.0, 8.0, 16.0]  # RFC 6298 5.5 backoff of the 1 s initial RTO
    assert type(u.closed[0]).__name__ == "TCPTimedOutError"


def test_listener_refuses_and_handshake_ack_for_unknown_gets_rst():
    _clock, a, b, w = make_pair()
    b.tcp.listen(80, lambda conn: None)  # application refuses everything
    u = RecordingUser()
    a.tcp.connect(B4, 80, u)
    w.run(until=lambda: u.closed)
    assert u.established  # it was accepted, then reset by the application refusing it
    assert type(u.closed[0]).__name__ == "ConnectionLost"
    # a bare ACK to a listener with no cookies outstanding is answered with RST
    from nbgateway.netstack.tcp_wire import build_segment

    b.inject(A4, B4, build_segment(4444, 80, 1, 77, ACK, 100))
    (rst,) = b.take()
    assert rst.flags == 0x04 and rst.seq == 77


def test_bulk_transfer_mostly_takes_the_fast_path(monkeypatch):
    from nbgateway.netstack.tcp_conn import Connection

    clock, a, b, w = make_pair()
    _, acc = listen_recording(b, 80)
    u = RecordingUser()
    conn = a.tcp.connect(B4, 80, u)
    w.run(until=lambda: acc)
    slow = []
    orig = Connection._sync_input

    def counting(self, seg, now):
        slow.append(seg)
        return orig(self, seg, now)

    monkeypatch.setattr(Connection, "_sync_input", counting)
    data = os.urandom(1_000_000)
    conn.send(data, clock.seconds())
    w.run(until=lambda: len(acc[0].data) == len(data))
    assert bytes(acc[0].data) == data
    total = a.counters["tcp_segments_in"] + b.counters["tcp_segments_in"]
    assert len(slow) < total // 10, (len(slow), total)
