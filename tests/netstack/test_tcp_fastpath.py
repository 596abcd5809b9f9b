"""The fused receive and output fast paths (``tcp_fast.py``) against the
general path.

Two stacks with the same secret, clock and IP ident are fed the same packet
sequences, one with the fused path enabled and one with it disabled; after
every step every emitted packet (byte for byte), every field of the
connection's TCB (with its congestion, RTO, send-buffer and out-of-order
state), the counters and what the application received must be equal.  The
scripts include the segments that must fall back (out of order, window full,
FIN, RST, retransmission, SACK blocks, a stale or missing timestamp, a
window change, a duplicate ACK) and check that they did (``fast.hits``).

The general stack runs either with header prediction (``Connection._fast_path``,
which shares ``Connection.predicted`` with the fused input) or, in the
``full`` variants, without it: every segment then takes the full RFC 9293
path (``_sync_input``, ``_process_ack``, ``_receive_text``), so what
``predicted`` does inline is checked against the general code it replaces.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.task import Clock

from nbgateway.netstack.checksum import fold, ones_sum
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.tcp import TCPLayer
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_const import ESTABLISHED
from nbgateway.netstack.tcp_wire import ACK, FIN, PSH, RST, SYN, parse_segment
from nbgateway.netstack.testing import PacketRecorder, build_tcp, snd_wire

KEY = b"\x02" * 32
PORT, CPORT = 8080, 41000
TS = b"\x01\x01\x08\x0a"
_SKIP = {"layer", "user", "listener", "local", "remote", "raw_addrs", "fast_out"}
#: TCP layers whose connections take no header prediction (the ``full`` twins)
_FULL_PATH_LAYERS: list = []
_PREDICTING = Connection._fast_path


def _fast_path_unless_full(self, seg, now):
    if any(self.layer is layer for layer in _FULL_PATH_LAYERS):
        return False
    return _PREDICTING(self, seg, now)


class User:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def tcp_established(self) -> None:
        self.events.append(("est",))

    def tcp_data(self, data: bytes) -> None:
        self.events.append(("data", bytes(data)))

    def tcp_eof(self) -> None:
        self.events.append(("eof",))

    def tcp_fin_acked(self) -> None:
        self.events.append(("fin_acked",))

    def tcp_writable(self) -> None:
        self.events.append(("writable",))

    def tcp_closed(self, reason) -> None:
        self.events.append(("closed", type(reason).__name__))


def snapshot(conn: Connection) -> dict:
    out = {}
    for name in Connection.__slots__:
        if name in _SKIP:
            continue
        v = getattr(conn, name)
        if name in ("cc", "rto"):
            v = tuple(getattr(v, a) for a in type(v).__slots__)
        elif name == "sndbuf":
            v = (v.start, v.end, bytes(v.view(v.start, len(v))) if len(v) else b"")
        elif name == "ooo" and v is not None:
            v = (repr(v._blocks), v.bytes)
        elif name == "rcv_queue" and v is not None:
            v = [bytes(x) for x in v]
        out[name] = v
    return out


class Twin:
    """The same scripted peer against a fused-path stack and a general-path one."""

    def __init__(self, me: str, peer: str, ts: bool, sack: bool = True,
                 full: bool = False) -> None:
        self.me, self.peer, self.ts = me, peer, ts
        self.stacks, self.users, self.conns, self.clocks = [], [], [], []
        for fast in (True, False):
            clock = Clock()
            clock.advance(1000)
            stack = Stack(PacketRecorder(), clock, [me],
                          tcp_factory=lambda s: TCPLayer(s, secret=b"s" * 32))
            stack._ident = 7
            stack.tcp.fast.enabled = fast
            if full and not fast:
                _FULL_PATH_LAYERS.append(stack.tcp)
            user = User()
            conns = []

            def accept(conn, conns=conns, user=user):
                conns.append(conn)
                return user

            stack.tcp.listen(PORT, accept)
            self.stacks.append(stack)
            self.users.append(user)
            self.conns.append(conns)
            self.clocks.append(clock)
        self.seq = 5000
        self.tsval = 100
        self.tsecr = 0
        opts = b"\x02\x04\x04\xcc" + (b"\x01\x01\x04\x02" if sack else b"")
        if ts:
            opts += TS + struct.pack("!II", self.tsval, 0)
        opts += b"\x01\x03\x03\x07"
        [synack] = self.feed([build_tcp(peer, me, CPORT, PORT, seq=self.seq - 1, flags=SYN,
                                        options=opts)])
        self.ack = synack.seq + 1
        self.tsecr = synack.ts_val or 0
        self.feed([self.segment(b"")])
        assert self.conns[0][0].state == ESTABLISHED

    @property
    def hits(self) -> int:
        return self.stacks[0].tcp.fast.hits

    def segment(self, payload: bytes = b"", *, seq: int | None = None, ack: int | None = None,
                flags: int = ACK | PSH, tsval: int | None = None, window: int = 1024,
                ts: bool | None = None, extra: bytes = b"") -> bytes:
        opts = extra
        if self.ts if ts is None else ts:
            opts = TS + struct.pack("!II", self.tsval if tsval is None else tsval,
                                    self.tsecr) + extra
        return build_tcp(self.peer, self.me, CPORT, PORT, seq=self.seq if seq is None else seq,
                         ack=self.ack if ack is None else ack, flags=flags, options=opts,
                         payload=payload, window=window)

    def send(self, payload: bytes, **kw) -> bytes:
        """The next in-order segment (advances the peer's sequence number)."""
        self.tsval += 1
        pkt = self.segment(payload, **kw)
        self.seq += len(payload)
        return pkt

    def feed(self, packets: list[bytes], batch: bool = False) -> list:
        """Both stacks get ``packets`` (one batch; a lone packet through
        ``packetReceived`` unless ``batch``); returns the fused one's output
        segments after checking it equals the general one's."""
        for stack in self.stacks:
            if len(packets) == 1 and not batch:
                stack.packetReceived(packets[0], KEY)
            else:
                stack.packetsReceived(packets, KEY)
        return self.compare()

    def write(self, data: bytes) -> list:
        for conns, clock in zip(self.conns, self.clocks, strict=True):
            conns[0].send(data, clock.seconds())
        return self.compare()

    def advance(self, dt: float) -> list:
        for clock in self.clocks:
            clock.advance(dt)
        return self.compare()

    def compare(self) -> list:
        a, b = (s.sender.take() for s in self.stacks)
        assert a == b
        ca, cb = (s.counters for s in self.stacks)
        assert ca == cb
        assert self.users[0].events == self.users[1].events
        if self.conns[0]:
            assert snapshot(self.conns[0][0]) == snapshot(self.conns[1][0])
        assert [c.timer_at for c in self.stacks[0].tcp.conns.values()] == \
            [c.timer_at for c in self.stacks[1].tcp.conns.values()]
        out = []
        for pkt in a:
            hl = (pkt[0] & 0x0F) * 4 if pkt[0] >> 4 == 4 else 40
            out.append(parse_segment(memoryview(pkt)[hl:]))
        if out:
            last = out[-1]
            self.tsecr = last.ts_val or self.tsecr
        return out

    def ack_all(self) -> None:
        conn = self.conns[0][0]
        self.ack = snd_wire(conn, conn.snd_max)


ADDRS = [("100.64.0.1", "100.64.0.2"), ("fd00::1", "fd00::2")]


@pytest.fixture(params=[(a, ts, full) for full in (False, True) for a in ADDRS
                        for ts in (True, False)],
                ids=["v4-ts", "v4", "v6-ts", "v6", "v4-ts-full", "v4-full", "v6-ts-full",
                     "v6-full"])
def twin(request, monkeypatch) -> Twin:
    (me, peer), ts, full = request.param
    monkeypatch.setattr(Connection, "_fast_path", _fast_path_unless_full)
    _FULL_PATH_LAYERS.clear()
    return Twin(me, peer, ts, full=full)


@pytest.fixture(params=[(ts, full) for full in (False, True) for ts in (True, False)],
                ids=["v4-ts", "v4", "v4-ts-full", "v4-full"])
def twin4(request, monkeypatch) -> Twin:
    """The IPv4 twins only (for the IPv4 batch loop's inline input)."""
    ts, full = request.param
    monkeypatch.setattr(Connection, "_fast_path", _fast_path_unless_full)
    _FULL_PATH_LAYERS.clear()
    return Twin(*ADDRS[0], ts, full=full)


def test_keepalive_exchanges_take_the_fused_path_with_identical_results(twin):
    for i in range(20):
        before = twin.hits
        twin.feed([twin.send(b"GET /%d HTTP/1.1\r\n\r\n" % i)])
        assert twin.hits == before + 1
        twin.advance(0.0001)
        twin.write(b"R" * (300 + i))
        twin.ack_all()
    # a pure ACK of the last response is predicted too
    before = twin.hits
    twin.feed([twin.send(b"")])
    assert twin.hits == before + 1
    # then the delayed ACK timer and a batch of requests
    twin.advance(0.05)
    twin.feed([twin.send(b"x" * 100), twin.send(b"y" * 100), twin.send(b"z" * 100)])
    twin.advance(0.001)
    assert twin.users[0].events[-1] == ("data", b"x" * 100 + b"y" * 100 + b"z" * 100)
    # the responses and ACKs left through the fused output, byte-identical
    assert twin.stacks[0].tcp.fast.emits >= 21
    assert twin.stacks[1].tcp.fast.emits == 0


def test_out_of_order_and_the_fill_fall_back(twin):
    twin.feed([twin.send(b"a" * 100)])
    first = twin.seq
    late = twin.send(b"b" * 100)
    later = twin.send(b"c" * 100)
    before = twin.hits
    dup = twin.feed([later])  # out of order: immediate duplicate ACK
    assert dup and dup[0].ack == (first - 0) & 0xFFFFFFFF
    twin.feed([late])  # fills the hole
    assert twin.hits == before
    twin.feed([twin.send(b"d" * 100)])  # in order again, reassembly queue empty
    assert twin.hits == before + 1


def test_window_full_and_paused_reader(twin):
    for conn in (twin.conns[0][0], twin.conns[1][0]):
        conn.pause_reading()
    chunk = b"w" * 1000
    sent = 0
    while sent < 400_000:
        twin.feed([twin.send(chunk)])
        sent += len(chunk)
        if twin.conns[0][0].rcv_adv - twin.conns[0][0].rcv_nxt < 1000:
            break
    assert twin.conns[0][0].rcv_adv - twin.conns[0][0].rcv_nxt < 1000
    # beyond the right edge: falls back and is trimmed or dropped the same way
    before = twin.hits
    twin.feed([twin.send(chunk)])
    twin.feed([twin.send(chunk)])
    assert twin.hits == before
    now = twin.clocks[0].seconds()
    twin.conns[0][0].resume_reading(now)
    twin.conns[1][0].resume_reading(twin.clocks[1].seconds())
    twin.compare()


def test_fin_rst_and_syn_fall_back(twin):
    twin.feed([twin.send(b"q" * 50)])
    before = twin.hits
    twin.feed([twin.segment(b"", flags=SYN, seq=twin.seq - 1)])  # challenge ACK
    twin.feed([twin.send(b"", flags=ACK | FIN)])
    assert twin.hits == before
    assert ("eof",) in twin.users[0].events
    twin.seq += 1
    twin.feed([twin.segment(b"", flags=RST)])
    assert twin.hits == before
    assert twin.users[0].events[-1][0] == "closed"
    assert not twin.stacks[0].tcp.fast.table


def test_retransmission_and_duplicate_ack_fall_back(twin):
    pkt = twin.send(b"r" * 200)
    twin.feed([pkt])
    before = twin.hits
    twin.feed([pkt])  # the same segment again: old data, answered with an ACK
    assert twin.hits == before
    twin.write(b"S" * 2000)  # two segments out
    twin.feed([twin.send(b"")])  # a duplicate ACK (nothing new acknowledged)
    assert twin.hits == before
    twin.advance(1.5)  # RTO: retransmission of our data
    twin.ack_all()
    twin.feed([twin.send(b"")])
    twin.feed([twin.send(b"n" * 10)])
    assert twin.hits == before + 2


def test_sack_blocks_stale_timestamps_and_window_changes_fall_back(twin):
    twin.write(b"S" * 3000)
    conn = twin.conns[0][0]
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", snd_wire(conn, conn.snd_una + 1216),
                                               snd_wire(conn, conn.snd_una + 2000))
    before = twin.hits
    twin.feed([twin.send(b"", extra=sack)])  # SACK information
    assert twin.hits == before
    twin.ack_all()
    twin.feed([twin.send(b"k" * 10, window=2048)])  # a window change
    assert twin.hits == before
    if twin.ts:
        twin.feed([twin.segment(b"t" * 10, tsval=1, window=2048)])  # PAWS: an old timestamp
        twin.feed([twin.send(b"u" * 10, ts=False, window=2048)])  # no timestamp on a TS connection
        assert twin.hits == before
    else:
        twin.feed([twin.send(b"v" * 10, ts=True, window=2048)])  # a timestamp nobody negotiated
        assert twin.hits == before
    twin.feed([twin.send(b"e" * 10, window=2048)])
    assert twin.hits == before + 1


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("NBGW_NETSTACK_FASTPATH", "0")
    stack = Stack(PacketRecorder(), Clock(), ["100.64.0.1"])
    assert stack.tcp.fast.enabled is False


def test_writes_nagle_small_windows_and_large_writes(twin):
    before = twin.stacks[0].tcp.fast.emits
    twin.write(b"a" * 100)  # one segment: the fused send
    assert twin.stacks[0].tcp.fast.emits == before + 1
    twin.write(b"b" * 3000)  # larger than the MSS: the output run
    for conn in (twin.conns[0][0], twin.conns[1][0]):
        conn.nodelay = False
    twin.write(b"c" * 10)  # Nagle: held while data is in flight
    twin.ack_all()
    twin.feed([twin.send(b"", window=1)])  # acknowledges all, shrinks the window
    for conn in (twin.conns[0][0], twin.conns[1][0]):
        conn.nodelay = True
    twin.write(b"d" * 10)
    twin.write(b"e" * 500)  # beyond the peer's window: partial, then a probe
    twin.advance(0.5)
    twin.advance(1.5)
    twin.ack_all()
    twin.feed([twin.send(b"", window=1024)])
    twin.advance(0.01)
    twin.ack_all()
    twin.feed([twin.send(b"", window=1024)])
    for conn in (twin.conns[0][0], twin.conns[1][0]):
        conn.nodelay = False
    before = twin.stacks[0].tcp.fast.emits
    twin.write(b"f" * 20)  # nothing in flight: not held by Nagle
    twin.write(b"g" * 20)  # held by Nagle
    assert twin.stacks[0].tcp.fast.emits == before + 1
    twin.ack_all()
    twin.feed([twin.send(b"")])
    twin.advance(0.05)


def test_an_active_open_with_an_equal_local_address_object_is_fused():
    import ipaddress

    clock = Clock()
    clock.advance(1000)
    stack = Stack(PacketRecorder(), clock, ["100.64.0.1"])
    user = User()
    conn = stack.tcp.connect(ipaddress.ip_address("100.64.0.2"), 80, user,
                             local=ipaddress.ip_address("100.64.0.1"))
    assert conn.local is stack.addresses[0]
    [syn] = stack.sender.take()
    s = parse_segment(memoryview(syn)[20:])
    stack.packetReceived(build_tcp("100.64.0.2", "100.64.0.1", 80, conn.lport, seq=900,
                                   ack=s.seq + 1, flags=SYN | ACK, window=1024,
                                   options=b"\x02\x04\x04\xcc"), KEY)
    assert conn.state == ESTABLISHED
    stack.sender.take()
    stack.packetReceived(build_tcp("100.64.0.2", "100.64.0.1", 80, conn.lport, seq=901,
                                   ack=s.seq + 1, flags=ACK | PSH, window=1024,
                                   payload=b"hello"), KEY)
    assert stack.tcp.fast.hits == 1
    assert ("data", b"hello") in user.events


# ---------------------------------------------------------------- issue 20: the inlined pieces


def _tcp_checksum_ok(pkt: bytes) -> bool:
    from nbgateway.netstack.checksum import internet_checksum, pseudo_sum_packed

    if pkt[0] >> 4 == 4:
        hl = (pkt[0] & 0x0F) * 4
        src, dst = pkt[12:16], pkt[16:20]
    else:
        hl, src, dst = 40, pkt[8:24], pkt[24:40]
    seg = pkt[hl:]
    ip_ok = pkt[0] >> 4 == 6 or internet_checksum(pkt[:hl]) == 0
    return ip_ok and internet_checksum(seg, pseudo_sum_packed(src, dst, 6, len(seg))) == 0


def test_fused_output_checksums_for_every_payload_length_class(twin):
    """The fused output sums a payload with one big-int modulo (halved first
    above ``SPLIT_SUM_ABOVE`` bytes): odd and even lengths on both sides of
    that threshold give the general path's bytes, and the checksums verify
    independently."""
    from nbgateway.netstack.tcp_fast import SPLIT_SUM_ABOVE

    t = SPLIT_SUM_ABOVE
    mss = twin.conns[0][0].mss
    recorder = twin.stacks[0].sender
    seen: list[bytes] = []
    take = recorder.take

    def keep() -> list[bytes]:
        out = take()
        seen.extend(out)
        return out

    recorder.take = keep
    for n in (1, 2, 3, 127, 128, 129, 130, 131, 255, 256, 257, t - 1, t, t + 1, t + 2, t + 3,
              700, 701, mss - 1, mss):
        before = twin.stacks[0].tcp.fast.emits
        seen.clear()
        [seg] = twin.write(bytes((i * 7 + n) & 0xFF for i in range(n)))
        assert twin.stacks[0].tcp.fast.emits == before + 1
        assert len(seg.payload) == n and _tcp_checksum_ok(seen[0])
        twin.ack_all()
        twin.feed([twin.send(b"")])
    # all-ones and all-zero payloads (the one's-complement zero cases)
    for payload in (b"\xff" * 300, b"\x00" * 301, b"\xff\xff", b"\x00"):
        seen.clear()
        twin.write(payload)
        assert _tcp_checksum_ok(seen[0])
        twin.ack_all()
        twin.feed([twin.send(b"")])


def test_fused_send_after_a_backed_off_rto_arms_the_backed_off_timer(twin):
    twin.write(b"x" * 100)
    twin.advance(1.5)  # RTO: retransmitted, the timer backs off
    conn = twin.conns[0][0]
    assert conn.rto.backoff == 1
    twin.ack_all()
    twin.feed([twin.send(b"")])  # (with timestamps the echo resets the backoff)
    before = twin.stacks[0].tcp.fast.emits
    twin.write(b"y" * 100)  # the fused send: rtx_at from rto.current()
    assert twin.stacks[0].tcp.fast.emits == before + 1
    now = twin.clocks[0].seconds()
    assert conn.rtx_at == now + conn.rto.current()


def test_send_buffer_tracks_its_end_as_an_attribute():
    from nbgateway.netstack.buffers import SendBuffer

    buf = SendBuffer(10)
    assert (buf.end, len(buf)) == (10, 0)
    buf.append(b"")
    assert buf.end == 10 and buf._buf is None
    buf.append(memoryview(b"\x01\x00\x02\x00").cast("H"))  # counted in bytes, not items
    assert (buf.end, len(buf)) == (14, 4)
    buf.append(b"abcdef")
    assert buf.consume_to(5) == 0 and buf.start == 10  # below the start: nothing
    assert buf.consume_to(12) == 2 and (buf.start, buf.end, len(buf)) == (12, 20, 8)
    assert bytes(buf.view(12, 3)) == b"\x02\x00a"
    assert buf.consume_to(100) == 8 and (buf.start, buf.end, len(buf)) == (20, 20, 0)
    assert buf._buf is None and buf.consume_to(30) == 0
    buf.append(b"z")
    assert (buf.start, buf.end) == (20, 21) and bytes(buf.view(20, 1)) == b"z"


def _reference_sample(est, r: float) -> None:
    """RFC 6298 2.2/2.3 as RTOEstimator.sample was first written."""
    from nbgateway.netstack.congestion import CLOCK_G, RTO_MAX, RTO_MIN

    r = max(r, 0.0)
    if est[0] is None:
        est[0], est[1] = r, r / 2
    else:
        est[1] = 0.75 * est[1] + 0.25 * abs(est[0] - r)
        est[0] = 0.875 * est[0] + 0.125 * r
    est[2] = min(max(est[0] + max(CLOCK_G, 4 * est[1]), RTO_MIN), RTO_MAX)


def test_rto_sample_matches_the_rfc6298_reference():
    import random

    from nbgateway.netstack.congestion import RTOEstimator

    rng = random.Random(20)
    for _ in range(200):
        est = RTOEstimator()
        ref: list = [None, 0.0, 1.0]
        est.backoff = 3
        for _ in range(rng.randrange(1, 30)):
            r = rng.choice([-0.001, 0.0, 0.0005, 0.001, rng.uniform(0, 0.3),
                            rng.uniform(0, 90.0)])
            est.sample(r)
            _reference_sample(ref, r)
            assert (est.srtt, est.rttvar, est.rto, est.backoff) == (ref[0], ref[1], ref[2], 0)


def test_inlined_new_reno_ack_matches_new_reno_on_ack(twin):
    """``_new_ack`` updates the congestion window itself outside recovery:
    the same result as ``NewReno.on_ack``, in slow start and congestion
    avoidance, for small and large acknowledgments.  Growth only when the
    window was used (congestion.py): slow start when cwnd < 2 * the flight,
    congestion avoidance when flight + SMSS > cwnd; the values are pinned."""
    import copy

    conn = twin.conns[0][0]
    mss = conn.mss
    assert 1000 < mss < 1500
    got = []
    for ssthresh, cwnd in ((1 << 30, 14600), (10_000, 20_000), (5000, 5000), (3000, 2000),
                           (1000, 1500)):
        for size in (1, 100, conn.mss, 2 * conn.mss + 5):
            conn.cc.ssthresh, conn.cc.cwnd, conn.cc.dupacks = ssthresh, cwnd, 2
            ref = copy.copy(conn.cc)
            una = conn.snd_una
            conn.send(b"d" * size, twin.clocks[0].seconds())
            assert conn.snd_max == una + size
            ref.on_ack(size, una + size, size)
            conn._new_ack(None, una + size, twin.clocks[0].seconds())
            assert (conn.cc.cwnd, conn.cc.dupacks) == (ref.cwnd, ref.dupacks)
            assert (conn.cc.used, conn.cc.used_end) == (ref.used, ref.used_end) == (
                size, una + size)
            assert conn.snd_una == una + size and conn.rtx_at is None
            got.append(conn.cc.cwnd - cwnd)
    assert got == [
        0, 0, 0, 0,  # slow start, flight at most 2 * SMSS + 5 of 14600: not used
        0, 0, 0, 0,  # congestion avoidance, flight + SMSS <= 20000: not full
        0, 0, 0, 0,  # congestion avoidance, flight + SMSS <= 5000
        # slow start with cwnd 2000: grows by the acked bytes (at most 2 * SMSS)
        # once the flight is more than half of it
        0, 0, mss, 2 * mss,
        # congestion avoidance with cwnd 1500: grows by SMSS*SMSS/cwnd once
        # flight + SMSS > 1500
        0, 0, mss * mss // 1500, mss * mss // 1500]


def test_payload_sum_folds_to_the_rfc1071_sum_for_every_length():
    import random

    from nbgateway.netstack.checksum import fold, ones_sum
    from nbgateway.netstack.tcp_fast import _payload_sum

    rng = random.Random(1071)
    for n in list(range(1, 600)) + list(range(600, 9000, 37)):
        for data in (rng.randbytes(n), b"\xff" * n, bytes(n)):
            for extra in (1, 6, 0xFFFF, 0x1FFFE):  # (emit's totals are never 0)
                assert fold(_payload_sum(data, n) + extra) == fold(ones_sum(data, extra))
                assert fold(_payload_sum(memoryview(data), n) + extra) == \
                    fold(ones_sum(data, extra))


def test_send_buffer_keeps_one_bytes_object_uncopied_and_converts_on_the_next_append():
    from nbgateway.netstack.buffers import SendBuffer

    data = b"0123456789"
    buf = SendBuffer(0)
    buf.append(data)
    assert buf._buf is data and buf.end == 10
    assert buf.consume_to(4) == 4 and bytes(buf.view(4, 3)) == b"456"
    buf.append(bytearray(b"ab"))  # the second append: a bytearray of what is left
    assert isinstance(buf._buf, bytearray) and buf._head == 0
    assert (buf.start, buf.end) == (4, 12) and bytes(buf.view(4, 8)) == b"456789ab"
    assert data == b"0123456789"
    other = bytearray(b"xyz")
    buf2 = SendBuffer(0)
    buf2.append(other)  # a mutable buffer is copied
    other[0] = ord("X")
    assert bytes(buf2.view(0, 3)) == b"xyz"
    big = bytes(range(256)) * 600  # 153,600 bytes in one piece: compacted as bytes
    buf3 = SendBuffer(0)
    buf3.append(big)
    assert buf3.consume_to(100_000) == 100_000
    assert buf3._head == 0 and bytes(buf3.view(100_000, 5)) == big[100_000:100_005]
    assert buf3.end == len(big) and len(buf3) == len(big) - 100_000


def test_fused_send_of_other_buffer_types(twin):
    """bytes go out as they are; a bytearray or a memoryview (whatever its
    format) goes out as the bytes the send buffer holds."""
    twin.write(bytearray(b"ba" * 50))
    twin.ack_all()
    twin.feed([twin.send(b"")])
    [seg] = twin.write(memoryview(b"\x01\x02" * 10).cast("H"))  # 10 items, 20 bytes
    assert bytes(seg.payload) == b"\x01\x02" * 10


def test_rto_armed_by_the_fused_send_fires_on_time_not_early(twin):
    """The fused send arms the retransmission deadline without a call into
    the estimator; on a task.Clock the retransmission comes exactly at
    now + RTO (the stack's timer may wake earlier for other deadlines and
    re-arm, but sends nothing)."""
    twin.feed([twin.send(b"GET / HTTP/1.1\r\n\r\n")])  # a delayed ACK is pending
    twin.write(b"R" * 500)
    conn = twin.conns[0][0]
    due = conn.rtx_at
    assert due == twin.clocks[0].seconds() + conn.rto.rto
    assert twin.advance(due - twin.clocks[0].seconds() - 0.001) == []
    [rtx] = twin.advance(0.001)
    assert len(rtx.payload) == 500 and twin.stacks[0].counters["tcp_rto"] == 1


def test_counters_fold_the_fused_paths_plain_ints_once(twin):
    """The fused paths count in plain ints (``hits``, ``emits``, the stack's
    IPv4 receive count); every read of ``Stack.counters`` folds them in, and
    reading again adds nothing."""
    stack = twin.stacks[0]
    first = stack.counters.copy()
    twin.feed([twin.send(b"GET / HTTP/1.1\r\n\r\n")])
    twin.write(b"R" * 100)
    fast = stack.tcp.fast
    assert fast.hits and fast.emits
    c1 = stack.counters.copy()
    c2 = stack.counters.copy()
    assert c1 == c2  # (the compare() in feed/write already checked them against the twin)
    diff = c1 - first
    assert diff["tcp_segments_in"] == 1 and diff["tcp_segments_out"] == 1
    assert diff["tx_packets"] == 1
    assert diff["rx_packets"] == 1
    assert stack._rx4 == 0 and (fast._hits_folded, fast._emits_folded) == (fast.hits, fast.emits)


def test_an_exception_in_the_fused_input_resets_the_connection_as_the_general_path(twin):
    """A bug under ``predicted`` (here: the application's ``tcp_data``
    raising) resets that one connection on the fused input (the stack's
    inline copy for IPv4, ``FastPath.input`` for IPv6) as ``TCPLayer._guarded``
    does on the general path: the same (no) packets, counters and user events."""
    twin.feed([twin.send(b"fine")])
    for user in twin.users:
        def boom(data, user=user):
            user.events.append(("data", bytes(data)))
            raise RuntimeError("a bug")
        user.tcp_data = boom
    before = twin.hits
    assert twin.feed([twin.send(b"boom")]) == []
    assert twin.hits == before  # counted as tcp_segments_in by FastPath.failed
    assert twin.users[0].events[-1] == ("closed", "RuntimeError")
    assert [s.counters["tcp_internal_errors"] for s in twin.stacks] == [1, 1]
    assert not twin.stacks[0].tcp.conns
    assert twin.stacks[0].counters["tcp_segments_in"] == twin.stacks[1].counters[
        "tcp_segments_in"]


def test_keepalive_exchanges_in_batches_of_one_take_the_fused_path(twin):
    """``packetsReceived`` hands an IPv4 packet's ``bytes`` to the fused input,
    which slices the payload out of them: the same results as the general path."""
    for i in range(5):
        before = twin.hits
        twin.feed([twin.send(b"GET /%d HTTP/1.1\r\n\r\n" % i)], batch=True)
        assert twin.hits == before + 1
        assert twin.users[0].events[-1] == ("data", b"GET /%d HTTP/1.1\r\n\r\n" % i)
        twin.advance(0.0001)
        twin.write(b"R" * (300 + i))
        twin.ack_all()


def _ip4_fix(packet: bytearray) -> bytes:
    """``packet`` with its IPv4 header checksum recomputed."""
    hl = (packet[0] & 0x0F) * 4
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", fold(ones_sum(packet[:hl])))
    return bytes(packet)


def _odd_ipv4_packets(twin: Twin) -> list[bytes]:
    """IPv4 packets that fail one check each of the batch loop's inline input
    (``StackInput.packetsReceived``), so ``_input4`` must take them whole."""
    good = twin.segment(b"odd")  # in order, not sent: each variant below is spoilt
    out = []
    p = bytearray(good)
    p[10] ^= 0xFF
    out.append(bytes(p))  # bad IP header checksum
    p = bytearray(good)
    p[2:4] = struct.pack("!H", len(good) + 4)
    out.append(_ip4_fix(p))  # total length beyond the packet
    p = bytearray(good)
    p[6] |= 0x20
    out.append(_ip4_fix(p))  # a first fragment (MF)
    p = bytearray(good)
    p[19] = 255
    out.append(_ip4_fix(p))  # not our address (a broadcast one: no ICMP error)
    p = bytearray(good)
    p[12] = 127
    out.append(_ip4_fix(p))  # a loopback source
    p = bytearray(good)
    p[12] = 0
    out.append(_ip4_fix(p))  # source 0.x
    p = bytearray(good[:30])
    p[2:4] = struct.pack("!H", 30)
    out.append(_ip4_fix(p))  # a truncated TCP header
    p = bytearray(good)
    p[-1] ^= 0x01
    out.append(bytes(p))  # a bad TCP checksum (dropped when verified)
    # a header with options (IHL 6: one NOP word)
    p = bytearray(good[:20]) + b"\x01\x01\x01\x00" + good[20:]
    p[0] = 0x46
    p[2:4] = struct.pack("!H", len(p))
    out.append(_ip4_fix(p))
    return out


@pytest.mark.parametrize("verify", [True, False])
def test_the_batch_loops_inline_input_against_input4_for_odd_packets(twin4, verify):
    """``packetsReceived`` checks an IPv4 packet inline and runs the fused TCP
    input itself; a packet failing any check goes to ``_input4`` untouched.
    Odd packets between in-order segments, in one batch (coalescing off,
    which would take a batch with two packets of one flow): the fused-path stack (the
    inline loop) and the general one (``_input4`` for every packet) emit the
    same bytes and end with the same counters, TCB and user events."""
    twin = twin4
    for stack in twin.stacks:
        stack.verify_checksums = verify
        stack.coalesce = False
    odd = _odd_ipv4_packets(twin)
    batch = []
    for i, bad in enumerate(odd):
        batch += [bad, twin.send(b"seg %d" % i)]
    before = twin.hits
    twin.feed(batch, batch=True)
    assert twin.hits - before == len(odd)
    got = b"".join(e[1] for e in twin.users[0].events if e[0] == "data")
    assert got.endswith(b"".join(b"seg %d" % i for i in range(len(odd))))
    counters = twin.stacks[0].counters
    for reason in ("drop_ip4_bad_checksum", "drop_ip4_truncated", "drop_not_local",
                   "drop_bad_source", "drop_tcp_truncated"):
        assert counters[reason] >= 1, reason
    assert counters["drop_tcp_bad_checksum"] == (1 if verify else 0)
    twin.advance(0.05)


def test_send_emits_an_ipv4_timestamped_segment_inline(twin, monkeypatch):
    """``Connection.send`` builds an IPv4 segment with timestamps itself
    (``tcp_fast.emit`` inlined) once the connection's output constants exist;
    everything else still calls ``emit``.  Both give the general path's bytes
    (``Twin.compare``), for odd, even, short and long payloads, corked or not."""
    from nbgateway.netstack import tcp_conn

    calls = []
    real_emit = tcp_conn.emit

    def counting_emit(*a):
        calls.append(a[1])
        return real_emit(*a)

    monkeypatch.setattr(tcp_conn, "emit", counting_emit)
    inline = ":" not in twin.me and twin.ts
    twin.feed([twin.send(b"req")])
    twin.write(b"first")  # emit computes the connection's output constants
    twin.ack_all()
    for n in (1, 2, 129, 700, 701):
        twin.feed([twin.send(b"req")])
        calls.clear()
        [seg] = twin.write(b"r" * n)
        assert len(seg.payload) == n
        fused = twin.conns[0][0]
        assert (fused not in calls) == inline
        twin.ack_all()
    # corked: the packet waits for the stack's uncork, as emit's does
    stack = twin.stacks[0]
    for s in twin.stacks:
        s.cork()
    twin.feed([twin.send(b"req")])
    for conns, clock in zip(twin.conns, twin.clocks, strict=True):
        conns[0].send(b"c" * 50, clock.seconds())
    assert [len(s._corked) for s in twin.stacks] == [1, 1] if inline else True
    for s in twin.stacks:
        s.uncork()
    twin.compare()
    assert stack.tcp.fast.emits >= 5


@pytest.mark.parametrize("full", [False, True], ids=["v4-ts", "v4-ts-full"])
def test_timestamps_and_rtt_at_fractional_millisecond_epoch_times(full, monkeypatch):
    """The millisecond clock of TSval and of the RTT sample is floor(now * 1000)
    (``math.floor``, not an ``int`` call): at epoch-like reactor times that are
    not whole milliseconds the fused and general paths send, and sample, what
    ``int(now * 1000)`` gives (RFC 7323 3.2, 4.1)."""
    monkeypatch.setattr(Connection, "_fast_path", _fast_path_unless_full)
    _FULL_PATH_LAYERS.clear()
    twin4 = Twin(*ADDRS[0], ts=True, full=full)
    twin4.advance(1_765_000_000.0007 - twin4.clocks[0].seconds())
    conn = twin4.conns[0][0]
    for i, step in enumerate((0.0004, 0.0126, 0.0319, 0.0001)):
        twin4.feed([twin4.send(b"GET /%d" % i)])
        sent_at = twin4.clocks[0].seconds()
        (seg,) = twin4.write(b"R" * 200)
        assert seg.ts_val == (int(sent_at * 1000) + conn.ts_offset) & 0xFFFFFFFF
        twin4.advance(step)
        twin4.ack_all()
        srtt = conn.rto.srtt
        twin4.feed([twin4.send(b"")])
        r = (int(twin4.clocks[0].seconds() * 1000) - int(sent_at * 1000)) / 1000.0
        expect = r if srtt is None else 0.875 * srtt + 0.125 * r
        assert conn.rto.srtt == expect


def test_predicted_text_is_delivered_as_bytes_whatever_the_payload_type():
    """``predicted`` hands a ``bytes`` payload on as is (the fused input's
    slice of the packet) and copies any other buffer into ``bytes``."""
    t = Twin(*ADDRS[0], ts=True)
    conn = t.conns[0][0]

    class Raw(User):
        def tcp_data(self, data) -> None:
            self.events.append(("data", data))  # as delivered, not copied

    user = conn.user = Raw()
    now = t.clocks[0].seconds()
    for payload in (b"abc", memoryview(b"xdefx")[1:4], bytearray(b"ghi")):
        n = len(payload)
        t.tsval += 1
        assert conn.predicted(t.seq, t.ack, 1024, t.tsval, t.tsecr, payload, 1, now)
        t.seq += n
        kind, data = user.events[-1]
        assert kind == "data" and type(data) is bytes and data == bytes(payload)
    kept = b"jkl"
    t.tsval += 1
    assert conn.predicted(t.seq, t.ack, 1024, t.tsval, t.tsecr, kept, 1, now)
    assert user.events[-1][1] is kept
    # the general path's in-order text (_receive_text) likewise
    for payload in (b"mno", memoryview(b"xpqrx")[1:4], bytearray(b"stu")):
        conn._receive_text(conn.rcv_nxt, payload, now)
        kind, data = user.events[-1]
        assert kind == "data" and type(data) is bytes and data == bytes(payload)


class _DstRecorder(PacketRecorder):
    """A sender whose sendPacket takes the destination the caller wrote."""

    packet_sender_takes_dst = True

    def __init__(self) -> None:
        super().__init__()
        self.dsts: list = []

    def sendPacket(self, packet: bytes, dst: bytes | None = None) -> bool:
        if dst is not None:
            assert dst == packet[16:20] and packet[0] == 0x45
        self.dsts.append(dst)
        return super().sendPacket(packet)


def test_the_fused_send_gives_the_destination_to_a_sender_that_takes_it(monkeypatch):
    """The inline IPv4 send hands a sender that declares
    ``packet_sender_takes_dst`` (the WireGuard device) the destination it
    wrote, with the same packets as the general path; a sender that does not
    declare it, or one swapped in after the stack was made, gets the packet
    alone."""
    import sys

    monkeypatch.setattr(Connection, "_fast_path", _fast_path_unless_full)
    monkeypatch.setattr(sys.modules[__name__], "PacketRecorder", _DstRecorder)
    twin = Twin("100.64.0.1", "100.64.0.2", ts=True)
    fused = twin.stacks[0]
    assert fused._dst_sender is fused.sender
    for i in range(5):
        twin.feed([twin.send(b"GET /%d" % i)])
        twin.advance(0.0001)
        fused.sender.dsts.clear()
        [seg] = twin.write(b"R" * (100 + i))
        assert seg.payload == b"R" * (100 + i)
        # (the first response goes through tcp_fast.emit, which computes the
        # connection's constants for the inline one)
        assert fused.sender.dsts == [None if i == 0 else bytes([100, 64, 0, 2])]
        twin.ack_all()
    # swapped for a sender that takes no destination: the packet alone
    plain = PacketRecorder.__mro__[1]()  # the stock PacketRecorder
    fused.sender = plain
    twin.feed([twin.send(b"GET /last")])
    twin.advance(0.0001)
    [seg] = twin.write(b"R" * 50)
    assert seg.payload == b"R" * 50
