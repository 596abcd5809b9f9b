"""review19 F2: out-of-order bytes held by one account's stack have no bound
of their own.  Each connection keeps up to its receive window (64 KiB, and
autotuning grows it to 1 MiB) of out-of-order text in its Assembler, and a
stack holds up to ``max_connections`` (16,384) connections: one peer of one
account, sending each connection a window of text after a one-byte hole
that it never fills, makes the gateway's shared heap hold about 1 GiB (up to
16 GiB with grown windows) for as long as the connections live (an idle
established connection is never timed out).  Every other account runs in
the same process.  The stack should cap the out-of-order bytes it holds (a
segment beyond the cap is dropped and retransmitted later, as Linux prunes
its out-of-order queue under memory pressure) while in-order text is still
taken.  Sans-IO: the fake stack of tests/netstack/tcp_fakes.py."""

from __future__ import annotations

from nbgateway.netstack.tcp_wire import ACK, RST, SYN, build_segment

from .tcp_fakes import A4, B4, listen_recording, make_pair

M = 0xFFFFFFFF
#: a generous per-stack cap for this test (HEAD holds 64 MiB at 1,024
#: connections and 1 GiB at the default 16,384)
BUDGET = 32 * 1024 * 1024
CONNECTIONS = 1024


def ooo_held(stack) -> int:
    return sum(c.ooo.bytes for c in stack.tcp.conns.values() if c.ooo)


def open_and_fill(b, accepted, port: int) -> int:
    """Complete a handshake from ``port`` (client ISN 1000) and send a window
    of text after a one-byte hole at 1001; returns the ACK number to use."""
    b.inject(A4, B4, build_segment(port, 80, 1000, 0, SYN, 65535))
    (synack,) = b.take()
    ack = (synack.seq + 1) & M
    b.inject(A4, B4, build_segment(port, 80, 1001, ack, ACK, 65535))
    conn = accepted[-1].conn
    wnd = conn.rcv_adv - conn.rcv_nxt
    b.inject(A4, B4, build_segment(port, 80, 1002, ack, ACK, 65535, payload=b"x" * (wnd - 1)))
    b.take()
    return ack


def test_one_peer_cannot_make_a_stack_hold_unbounded_out_of_order_bytes():
    _clock, _a, b, _w = make_pair()
    _, accepted = listen_recording(b, 80)
    assert b.tcp.max_connections >= CONNECTIONS  # the default bound lets them all in
    for i in range(CONNECTIONS):
        open_and_fill(b, accepted, 20000 + i)
    assert len(accepted) == CONNECTIONS
    held = ooo_held(b)
    assert held <= BUDGET, f"one peer made the stack hold {held} out-of-order bytes"


def test_in_order_text_is_still_taken_when_out_of_order_bytes_are_capped():
    _clock, _a, b, _w = make_pair()
    _, accepted = listen_recording(b, 80)
    acks = [open_and_fill(b, accepted, 20000 + i) for i in range(CONNECTIONS)]
    # a connection of the same account that sends in order is served
    b.inject(A4, B4, build_segment(30000, 80, 5000, 0, SYN, 65535))
    (synack,) = b.take()
    ack = (synack.seq + 1) & M
    b.inject(A4, B4, build_segment(30000, 80, 5001, ack, ACK, 65535))
    b.inject(A4, B4, build_segment(30000, 80, 5001, ack, ACK, 65535, payload=b"hello"))
    assert bytes(accepted[-1].data) == b"hello"
    # the first flooded connection fills its hole: its held text is delivered
    first = accepted[0]
    b.inject(A4, B4, build_segment(20000, 80, 1001, acks[0], ACK, 65535, payload=b"y"))
    assert bytes(first.data)[:1] == b"y"
    assert ooo_held(b) <= BUDGET


def test_closed_connections_give_their_out_of_order_room_back():
    _clock, _a, b, _w = make_pair()
    _, accepted = listen_recording(b, 80)
    acks = [open_and_fill(b, accepted, 20000 + i) for i in range(CONNECTIONS)]
    for i, ack in enumerate(acks):  # the peer resets every flooded connection
        b.inject(A4, B4, build_segment(20000 + i, 80, 1001, ack, RST | ACK, 0))
    assert ooo_held(b) == 0 and len(b.tcp.conns) == 0
    b.take()
    # a new connection's out-of-order text is held again
    open_and_fill(b, accepted, 40000)
    assert ooo_held(b) > 0
