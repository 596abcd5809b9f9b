"""Receive coalescing of in-order TCP segments within one batch, and the
``verify_checksums=False`` stack option (packets WireGuard authenticated)."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.netstack.stack import Stack
from nbgateway.netstack.tcp_const import ESTABLISHED
from nbgateway.netstack.tcp_wire import ACK, FIN, PSH, SYN, parse_segment
from nbgateway.netstack.testing import PacketRecorder, StubTCP, build_tcp, build_udp, rcv_wire
from nbgateway.netstack.udp import listen_udp

KEY = b"\x01" * 32
PORT, CPORT = 8080, 40000
TS = b"\x01\x01\x08\x0a"


class User:
    """A recording TCPUser."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False

    def tcp_established(self) -> None:
        pass

    def tcp_data(self, data: bytes) -> None:
        self.data.append(bytes(data))

    def tcp_eof(self) -> None:
        self.eof = True

    def tcp_fin_acked(self) -> None:
        pass

    def tcp_writable(self) -> None:
        pass

    def tcp_closed(self, reason) -> None:
        pass


class Peer:
    """The remote end, scripted: builds packets to the stack, reads its output."""

    def __init__(self, me: str, peer: str, **stack_kw) -> None:
        self.me, self.peer = me, peer
        self.clock = Clock()
        self.rec = PacketRecorder()
        self.stack = Stack(self.rec, self.clock, [me], **stack_kw)
        self.user = User()
        self.conns: list = []

        def accept(conn):
            self.conns.append(conn)
            return self.user

        self.stack.tcp.listen(PORT, accept)
        self.seq = 1000

    def segments_out(self) -> list:
        out = []
        for pkt in self.rec.take():
            hl = (pkt[0] & 0x0F) * 4 if pkt[0] >> 4 == 4 else 40
            out.append(parse_segment(memoryview(pkt)[hl:]))
        return out

    def handshake(self, ts: bool = False) -> None:
        opts = TS + struct.pack("!II", 1, 0) if ts else b""
        self.stack.packetReceived(build_tcp(self.peer, self.me, CPORT, PORT, seq=self.seq - 1,
                                            flags=SYN, options=opts), KEY)
        [synack] = self.segments_out()
        self.ack = synack.seq + 1
        self.ts = ts
        self.stack.packetReceived(self.segment(b""), KEY)
        assert self.conns and self.conns[0].state == ESTABLISHED

    def open_flows(self, ports: tuple[int, ...]) -> dict[int, int]:
        """A connection from each source port in ``ports`` (SYN at 999, then the ACK
        of the stack's SYN-ACK): each port's ack number (the stack's ISN + 1)."""
        seqs = {}
        for port in ports:
            self.stack.packetReceived(build_tcp(self.peer, self.me, port, PORT, seq=999,
                                                flags=SYN), KEY)
            [synack] = self.segments_out()
            seqs[port] = synack.seq + 1
            self.stack.packetReceived(build_tcp(self.peer, self.me, port, PORT, seq=1000,
                                                ack=seqs[port], flags=ACK), KEY)
        return seqs

    def segment(self, payload: bytes, *, seq: int | None = None, flags: int = ACK,
                tsval: int = 2, window: int = 65535) -> bytes:
        opts = TS + struct.pack("!II", tsval, 1) if self.ts else b""
        return build_tcp(self.peer, self.me, CPORT, PORT,
                         seq=self.seq if seq is None else seq, ack=self.ack, flags=flags,
                         options=opts, payload=payload, window=window)

    def data(self, chunks: list[bytes], **kw) -> list[bytes]:
        out = []
        for c in chunks:
            out.append(self.segment(c, **kw))
            self.seq += len(c)
        return out


@pytest.mark.parametrize(("me", "peer"), [("100.64.0.1", "100.64.0.2"), ("fd00::1", "fd00::2")])
@pytest.mark.parametrize("ts", [False, True])
def test_a_batch_of_in_order_segments_reaches_tcp_as_one(me, peer, ts):
    p = Peer(me, peer)
    p.handshake(ts=ts)
    chunks = [bytes([i]) * 1000 for i in range(20)]
    p.stack.packetsReceived(p.data(chunks), KEY)
    assert p.user.data == [b"".join(chunks)]  # one delivery, intact and in order
    assert p.stack.coalescer.runs == 1 and p.stack.coalescer.merged == 20
    assert p.stack.counters["tcp_segments_in"] == 2 + 20  # SYN, ACK, then the 20
    # 20 segments count as 20 toward the ACK policy: ACKed at once, not after 40 ms
    acks = p.segments_out()
    assert acks and acks[-1].ack == (p.seq & 0xFFFFFFFF)
    assert rcv_wire(p.conns[0], p.conns[0].rcv_nxt) == p.seq & 0xFFFFFFFF


def test_two_segment_run_is_acked_at_the_end_of_the_turn_not_delayed():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    p.stack.packetsReceived(p.data([b"a" * 500, b"b" * 500]), KEY)
    assert p.user.data == [b"a" * 500 + b"b" * 500]
    p.clock.advance(0)  # the end of the reactor turn
    [ack] = p.segments_out()
    assert ack.ack == p.seq & 0xFFFFFFFF


def test_a_gap_splits_runs_and_the_receiver_still_reassembles():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    start = p.seq
    pkts = p.data([b"0" * 100, b"1" * 100, b"2" * 100, b"3" * 100, b"4" * 100])
    # segment 2 is lost: 0,1 form one run, 3,4 another (out of order, queued)
    p.stack.packetsReceived(pkts[:2] + pkts[3:], KEY)
    assert p.user.data == [b"0" * 100 + b"1" * 100]
    assert p.stack.coalescer.runs == 2
    assert rcv_wire(p.conns[0], p.conns[0].rcv_nxt) == (start + 200) & 0xFFFFFFFF
    dup = p.segments_out()[-1]
    assert dup.ack == (start + 200) & 0xFFFFFFFF  # immediate duplicate ACK
    p.stack.packetsReceived([pkts[2]], KEY)  # the retransmission fills the hole
    assert b"".join(p.user.data) == b"".join(bytes([48 + i]) * 100 for i in range(5))


def test_ineligible_segments_flush_the_run_first_and_keep_the_order():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    a = p.data([b"a" * 10, b"b" * 10])
    fin = p.segment(b"c" * 10, flags=ACK | FIN)
    p.seq += 10
    p.stack.packetsReceived([*a, fin], KEY)
    assert p.user.data == [b"a" * 10 + b"b" * 10, b"c" * 10]
    assert p.user.eof
    assert rcv_wire(p.conns[0], p.conns[0].rcv_nxt) == (p.seq + 1) & 0xFFFFFFFF


def test_psh_is_merged_a_window_change_is_not():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    first = p.data([b"x" * 10])
    psh = p.data([b"y" * 10], flags=ACK | PSH)
    other_window = p.data([b"z" * 10], window=30000)
    p.stack.packetsReceived(first + psh + other_window, KEY)
    assert p.user.data == [b"x" * 10 + b"y" * 10, b"z" * 10]
    assert p.stack.coalescer.runs == 1


def test_runs_are_bounded_in_bytes():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    conn = p.conns[0]
    conn.rcv_adv = conn.rcv_nxt + (1 << 20)  # a window wide enough for the test
    chunks = [b"q" * 1200] * 120  # 144,000 bytes: three runs of at most 64 KiB
    p.stack.packetsReceived(p.data(chunks), KEY)
    assert b"".join(p.user.data) == b"".join(chunks)
    assert all(len(d) <= 64 * 1024 for d in p.user.data)
    assert p.stack.coalescer.runs == 3


def test_single_packets_are_not_coalesced():
    p = Peer("100.64.0.1", "100.64.0.2")
    p.handshake()
    for pkt in p.data([b"1" * 10, b"2" * 10]):
        p.stack.packetsReceived([pkt], KEY)
    assert p.user.data == [b"1" * 10, b"2" * 10]
    assert p.stack.coalescer.runs == 0


def _corrupt_checksum(pkt: bytes, offset: int) -> bytes:
    b = bytearray(pkt)
    b[offset] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("verify", [True, False])
def test_tcp_checksum_verified_only_when_asked(verify):
    clock = Clock()
    stack = Stack(PacketRecorder(), clock, ["100.64.0.1"], tcp_factory=StubTCP,
                  verify_checksums=verify)
    pkt = _corrupt_checksum(build_tcp("100.64.0.2", "100.64.0.1", 1234, 80, payload=b"x"),
                            20 + 16)
    stack.packetReceived(pkt, KEY)
    if verify:
        assert stack.counters["drop_tcp_bad_checksum"] == 1
        assert stack.tcp.segments == []
    else:
        assert stack.counters["drop_tcp_bad_checksum"] == 0
        assert len(stack.tcp.segments) == 1


@pytest.mark.parametrize("verify", [True, False])
def test_udp_checksum_verified_only_when_asked(verify):
    clock = Clock()
    stack = Stack(PacketRecorder(), clock, ["100.64.0.1"], verify_checksums=verify)
    got = []

    class Rec(DatagramProtocol):
        def datagramReceived(self, data, addr):
            got.append(data)

    listen_udp(stack, 5353, Rec())
    pkt = _corrupt_checksum(build_udp("100.64.0.2", "100.64.0.1", 1000, 5353, b"hello"), 20 + 6)
    stack.packetReceived(pkt, KEY)
    if verify:
        assert stack.counters["drop_udp_bad_checksum"] == 1 and got == []
    else:
        assert got == [b"hello"]


def test_coalescing_can_be_switched_off():
    p = Peer("100.64.0.1", "100.64.0.2", coalesce=False)
    p.handshake()
    p.stack.packetsReceived(p.data([b"1" * 10, b"2" * 10]), KEY)
    assert p.user.data == [b"1" * 10, b"2" * 10]
    assert p.stack.coalescer.runs == 0


def test_lone_segments_between_runs_are_delivered_one_by_one_in_order():
    """A lone segment is handed on when the next one does not continue it (the
    common keep-alive batch: one request per connection), a run once it ends;
    a lone segment followed by its continuation still becomes a run."""
    from nbgateway.netstack.coalesce import TCPCoalescer

    got: list = []
    co = TCPCoalescer(lambda src, local, seg, key, now: got.append(("one", src, bytes(seg))),
                      lambda src, local, hdr, payload, n, now: got.append(
                          ("run", src, bytes(hdr), payload, n)))

    def seg(port: int, seq: int, payload: bytes, flags: int = ACK) -> memoryview:
        return memoryview(struct.pack("!HHIIBBHHH", port, PORT, seq, 1, 5 << 4, flags, 100, 0, 0)
                          + payload)

    a1, b1, b2, b3 = seg(1, 10, b"a"), seg(2, 10, b"b"), seg(2, 11, b"c"), seg(2, 12, b"d")
    c1, a2, d1 = seg(3, 10, b"e"), seg(1, 11, b"f"), seg(4, 10, b"g", ACK | FIN)
    for s, src in ((a1, b"A"), (b1, b"B"), (b2, b"B"), (b3, b"B"), (c1, b"C"), (a2, b"A"),
                   (d1, b"D")):
        co.add(src, None, s, KEY, 0.0)
    co.flush()
    assert got == [("one", b"A", bytes(a1)), ("run", b"B", bytes(b1[:20]), b"bcd", 3),
                   ("one", b"C", bytes(c1)), ("one", b"A", bytes(a2)), ("one", b"D", bytes(d1))]
    assert (co.runs, co.merged) == (1, 3)
    got.clear()
    co.add(b"A", None, seg(1, 20, b"x"), KEY, 0.0)
    co.flush()
    co.flush()  # nothing pending: nothing delivered twice
    assert got == [("one", b"A", bytes(seg(1, 20, b"x")))]


def test_a_batch_without_two_consecutive_packets_of_one_flow_skips_the_coalescer():
    """One request per connection (a keep-alive batch): nothing could merge, so
    the segments go to TCP directly, in order, with the same outcome as with
    coalescing off; a batch with two consecutive packets of one flow, or a
    packet the check does not parse (IPv6), still goes through it."""
    from nbgateway.netstack.stack_input import _one_flow_twice

    def conns_batch(stack_kw: dict) -> tuple[Peer, list, list[bytes]]:
        p = Peer("100.64.0.1", "100.64.0.2", **stack_kw)
        seqs = p.open_flows((40001, 40002, 40003))
        batch = [build_tcp(p.peer, p.me, port, PORT, seq=1000, ack=seqs[port], flags=ACK | PSH,
                           payload=b"GET %d" % port) for port in (40001, 40002, 40003)]
        return p, seqs, batch

    p, seqs, batch = conns_batch({})
    assert not _one_flow_twice(batch)
    added = []

    class Recording:
        def __init__(self, real) -> None:
            self.real = real

        def add(self, *a) -> None:
            added.append(a)
            self.real.add(*a)

        def flush(self) -> None:
            self.real.flush()

    real = p.stack.coalescer
    p.stack.coalescer = Recording(real)
    p.stack.packetsReceived(batch, KEY)
    assert added == []
    assert p.user.data == [b"GET 40001", b"GET 40002", b"GET 40003"]
    off, _, batch_off = conns_batch({"coalesce": False})
    off.stack.packetsReceived(batch_off, KEY)
    assert off.user.data == p.user.data
    assert off.stack.counters == p.stack.counters
    assert off.rec.take() == p.rec.take()
    assert [c.rcv_nxt for c in off.conns] == [c.rcv_nxt for c in p.conns]
    p.stack.packetsReceived([build_tcp(p.peer, p.me, 40001, PORT, seq=1009 + i, ack=seqs[40001],
                                       flags=ACK, payload=b"x") for i in range(2)], KEY)
    assert len(added) == 2  # one flow twice: through the coalescer, merged
    assert p.user.data[-1] == b"xx" and real.runs == 1
    # two consecutive packets of one flow (or an unparsed one): the coalescer decides
    assert _one_flow_twice([batch[0], batch[0]])
    assert _one_flow_twice([batch[0], batch[1], batch[1]])
    assert _one_flow_twice([build_tcp("fd00::2", "fd00::1", 1, PORT, seq=1, flags=ACK),
                            batch[0]])
    assert _one_flow_twice([b"", batch[0]])
    for kind in (memoryview, bytearray):  # any buffer of bytes, as before
        assert _one_flow_twice([kind(batch[0]), kind(batch[0])])
        assert not _one_flow_twice([kind(p) for p in batch])


@pytest.mark.parametrize("fused", [True, False])
def test_a_later_pair_of_one_flow_is_coalesced_from_its_second_packet(fused):
    """Coalescing is decided on the first two packets; after them the fused
    input compares each packet's flow (source, ports) with the previous
    one's and sends it and the rest of the batch through the coalescer when
    they match (the earlier packets went to TCP directly, in order); without
    the fused input the whole batch is checked first.  TCP gets the same
    bytes, counters and replies as with coalescing off."""

    def setup(stack_kw: dict) -> tuple[Peer, dict, list]:
        p = Peer("100.64.0.1", "100.64.0.2", **stack_kw)
        if not fused:
            p.stack._tcp_fast.enabled = False
        seqs = p.open_flows((40001, 40002, 40003))
        added: list = []
        real = p.stack.coalescer

        class Recording:
            def add(self, *a) -> None:
                added.append(a)
                real.add(*a)

            def flush(self) -> None:
                real.flush()

        p.stack.coalescer = Recording()
        return p, seqs, added

    def batch(p: Peer, seqs: dict, ports: list[int], offset: dict) -> list[bytes]:
        out = []
        for port in ports:
            out.append(build_tcp(p.peer, p.me, port, PORT, seq=1000 + offset[port],
                                 ack=seqs[port], flags=ACK, payload=b"%d" % port))
            offset[port] += 5
        return out

    rounds = ([40001, 40002, 40002, 40002], [40003, 40001, 40003, 40002, 40002],
              [40002, 40002, 40001], [40001, 40002, 40003])
    results = []
    for kw in ({}, {"coalesce": False}):
        p, seqs, added = setup(kw)
        offset = dict.fromkeys(seqs, 0)
        per_round = []
        for ports in rounds:
            added.clear()
            p.stack.packetsReceived(batch(p, seqs, ports, offset), KEY)
            per_round.append([a[2].tobytes()[-5:] for a in added])
        results.append((p, per_round))
    (on, added_on), (off, added_off) = results
    assert b"".join(off.user.data) == b"".join(on.user.data) == b"".join(
        b"%d" % port for ports in rounds for port in ports)
    assert off.stack.counters == on.stack.counters
    # the same replies (the ISNs differ: the stacks have their own secrets),
    # delayed ACKs included
    on.clock.advance(1)
    off.clock.advance(1)
    assert [(s.ack, s.flags, s.wnd, len(s.payload)) for s in off.segments_out()] == \
        [(s.ack, s.flags, s.wnd, len(s.payload)) for s in on.segments_out()]
    assert [c.rcv_nxt for c in off.conns] == [c.rcv_nxt for c in on.conns]
    assert added_off == [[], [], [], []]
    if fused:
        # from the second packet of the pair on; the first pair: all of it
        assert added_on == [[b"40002", b"40002"], [b"40002"], [b"40002", b"40002", b"40001"], []]
        assert on.user.data[1:3] == [b"40002", b"4000240002"]  # the pair's second merged
    else:
        # the whole batch when any pair matches (_one_flow_twice)
        assert added_on == [[b"40001", b"40002", b"40002", b"40002"],
                            [b"40003", b"40001", b"40003", b"40002", b"40002"],
                            [b"40002", b"40002", b"40001"], []]


def test_an_ipv6_pair_after_ipv4_packets_is_coalesced():
    """A packet the fused input does not parse (IPv6 here) switches coalescing
    on for the rest of the batch, as the pass over the batch did: the pair
    of one IPv6 flow after two IPv4 requests is merged."""
    clock = Clock()
    rec = PacketRecorder()
    stack = Stack(rec, clock, ["100.64.0.1", "fd00::1"])
    user = User()
    stack.tcp.listen(PORT, lambda conn: user)
    acks = {}
    for src, dst, port in (("100.64.0.2", "100.64.0.1", 40001),
                           ("100.64.0.2", "100.64.0.1", 40002), ("fd00::2", "fd00::1", 40003)):
        stack.packetReceived(build_tcp(src, dst, port, PORT, seq=999, flags=SYN), KEY)
        [out] = rec.take()
        hl = 20 if out[0] >> 4 == 4 else 40
        acks[port] = parse_segment(memoryview(out)[hl:]).seq + 1
        stack.packetReceived(build_tcp(src, dst, port, PORT, seq=1000, ack=acks[port],
                                       flags=ACK), KEY)
    batch = [build_tcp("100.64.0.2", "100.64.0.1", 40001, PORT, seq=1000, ack=acks[40001],
                       flags=ACK, payload=b"a"),
             build_tcp("100.64.0.2", "100.64.0.1", 40002, PORT, seq=1000, ack=acks[40002],
                       flags=ACK, payload=b"b"),
             build_tcp("fd00::2", "fd00::1", 40003, PORT, seq=1000, ack=acks[40003],
                       flags=ACK, payload=b"c"),
             build_tcp("fd00::2", "fd00::1", 40003, PORT, seq=1001, ack=acks[40003],
                       flags=ACK, payload=b"d")]
    stack.packetsReceived(batch, KEY)
    assert user.data == [b"a", b"b", b"cd"]
    assert (stack.coalescer.runs, stack.coalescer.merged) == (1, 2)
