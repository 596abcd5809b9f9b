"""The WireGuard + netstack data path of a keep-alive HTTP exchange, in process:
what one request/response costs the gateway below the HTTP layer.

A stock peer's keep-alive connection (kernel TCP through a 1280-MTU tunnel:
MSS 1228, timestamps, SACK, window scaling) sends ``--conns`` requests of
``--request`` bytes per round; each request carries the cumulative ACK of
the previous response (as a Linux client with delayed ACKs does), so the
gateway sees one datagram in and sends one out per exchange.  The requests
are encrypted beforehand by a peer ``WireGuardDevice`` (with the right
sequence, acknowledgment and timestamp numbers); the bench times only the
gateway side:

* one UDP read of ``--conns`` request datagrams -> ``datagramsReceived`` ->
  decrypt -> ``Stack`` -> TCP -> ``TunnelTCPTransport`` -> a protocol that
  keeps the bytes (what the HTTP server gets);
* then, as the upstream's responses arrive in later reactor turns, one
  ``transport.write`` of ``--response`` bytes per connection -> TCP ->
  ``Stack`` -> encrypt -> the UDP link (a ``WireGuardProtocol`` on a fake
  socket whose ``sendto``/``sendmsg`` only count, so no syscall is timed;
  with ``--hold`` the protocol holds output to the end of the "turn" and
  flushes once per round, as ``batch_sends`` does in the gateway).

The clock is a ``task.Clock`` advanced by 50 us per round (so the stack's
timer machinery runs as it does under load, but no timer fires).  Printed:
microseconds of CPU (``time.process_time``) per exchange, median of
``--rounds`` slices, and with ``--against DIR`` the same bench run with
another checkout's package in alternating subprocesses (same run, ratios of
the medians).  Counters at the end check that nothing was retransmitted,
dropped or sent twice: exactly one datagram out per exchange.

``--real-socket`` sends through a real UDP socket to a local receiver as well
(the send syscalls are timed, the receiver is drained outside the timing);
``--compare-hold`` alternates this tree without and with ``--hold``;
``--compare-fast`` alternates it with the netstack's fused TCP path
(``tcp_fast.py``) off and on (``NBGW_NETSTACK_FASTPATH``).

Instructions per exchange (load-independent): ``PYTHONHASHSEED=0 valgrind
--tool=callgrind --toggle-collect=starmap_next python bench/exchange_path.py
--starmap --exchanges 3200 [--hold | --real-socket]`` (with ``EXCHANGE_TREE=DIR``
for another checkout), then the collected total divided by 3,200.

Usage: python bench/exchange_path.py [--exchanges 20000] [--conns 16] [--rounds 5]
                                     [--against /tmp/old-tree] [--hold]
                                     [--real-socket] [--compare-hold] [--starmap]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

GW, PEER = "10.0.0.1", "10.0.0.2"
GW_ADDR, PEER_ADDR = ("127.0.0.1", 51820), ("127.0.0.1", 40000)
MSS = 1280 - 40 - 12
TS = b"\x01\x01\x08\x0a"


def _slice(exchanges: int, conns: int, req_len: int, resp_len: int, hold: bool,
           profiler=None, real_socket: bool = False, starmap: bool = False,
           peer_isn: int = 5000) -> dict:
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import Clock

    from nbgateway.netstack.stack import Stack
    from nbgateway.netstack.tcp_wire import ACK, PSH, SYN, parse_segment
    from nbgateway.netstack.testing import build_tcp
    from nbgateway.netstack.transport import TunnelTCPTransport
    from nbgateway.wireguard import udp
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import generate_private_key

    clock = Clock()
    clock.advance(1000)

    class Collect:
        def __init__(self) -> None:
            self.out: list = []

        def sendDatagram(self, data, addr):
            self.out.append((data, PEER_ADDR))

        def sendDatagrams(self, datagrams, addr):
            self.out.extend((d, PEER_ADDR) for d in datagrams)

    class Sink:
        def __init__(self) -> None:
            self.packets: list[bytes] = []

        def packetReceived(self, packet, key):
            self.packets.append(packet)

        def packetsReceived(self, packets, key):
            self.packets.extend(packets)

    class CountingSocket:
        """Counts sends; with ``real`` they also go out of a real UDP socket to
        a local receiver (drained between rounds, outside the timed part)."""

        def __init__(self, real: bool) -> None:
            self.datagrams = self.calls = 0
            self.real = self.rx = None
            if real:
                self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                self.rx.bind(("127.0.0.1", 0))
                self.rx.setblocking(False)
                self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.dst = self.rx.getsockname()

        def sendto(self, data, addr):
            self.datagrams += 1
            self.calls += 1
            if self.real is not None:
                self.real.sendto(data, self.dst)

        def sendmsg(self, buffers, ancdata, flags, addr):
            self.calls += 1
            size = struct.unpack("=H", ancdata[0][2])[0]
            self.datagrams += -(-sum(map(len, buffers)) // size)
            if self.real is not None:
                self.real.sendmsg(buffers, ancdata, flags, self.dst)

        def drain(self) -> int:
            n = 0
            while self.rx is not None:
                try:
                    self.rx.recv(70000)
                except BlockingIOError:
                    break
                n += 1
            return n

    class FakePort:
        import socket as _s
        addressFamily = _s.AF_INET
        _connectedAddr = None

        def __init__(self, sock) -> None:
            self.socket = sock
            self.reactor = clock

    class App(Protocol):
        def __init__(self) -> None:
            self.got = 0

        def dataReceived(self, data):
            self.got += len(data)

    if starmap:
        # fixed randomness for the handshake (receiver indices above 2**30 are
        # two-digit ints, as three in four random ones are: compared, looked up
        # and packed per datagram), so instruction counts repeat run to run
        import random
        gw = WireGuardDevice(bytes(range(1, 33)), clock, urandom=random.Random(1).randbytes)
        peer = WireGuardDevice(bytes(range(2, 34)), clock, urandom=random.Random(2).randbytes)
    else:
        gw = WireGuardDevice(generate_private_key(), clock)
        peer = WireGuardDevice(generate_private_key(), clock)
    stack = Stack(gw, clock, [GW], verify_checksums=False)
    if starmap:
        # a fixed TCP secret: the same ISNs and timestamp offsets every run, so
        # instruction counts repeat (a random one moves them by +-0.3k per
        # exchange: sequence numbers and timestamps above 2**30 are two-digit ints)
        from nbgateway.netstack.syncookies import SequenceSecrets
        stack.tcp.secrets = SequenceSecrets(bytes(range(32)))
    gw.sink = stack
    transports: list = []

    def accept(conn):
        app = App()
        t = TunnelTCPTransport(conn, app)
        t.makeConnection(app)
        transports.append(t)
        return t

    stack.tcp.listen(80, accept)
    peer.sink = sink = Sink()
    gw.add_peer(peer.public_key, allowed_ips=[f"{PEER}/32"], endpoint=PEER_ADDR)
    peer.add_peer(gw.public_key, allowed_ips=[f"{GW}/32"], endpoint=GW_ADDR)
    to_gw, to_peer = Collect(), Collect()
    peer.link, gw.link = to_gw, to_peer

    def exchange():
        while to_gw.out or to_peer.out:
            a, to_gw.out = to_gw.out, []
            gw.datagramsReceived(a)
            b, to_peer.out = to_peer.out, []
            peer.datagramsReceived(b)

    syn_opts = struct.pack("!BBH", 2, 4, MSS) + b"\x04\x02" + b"\x01\x03\x03\x07" + TS + \
        struct.pack("!II", 1, 0)
    state = []  # per connection: [seq, ack, tsecr, port]
    for i in range(conns):
        port = 40000 + i
        seq = (peer_isn + i * 1_000_000) & 0xFFFFFFFF
        peer.sendPacket(build_tcp(PEER, GW, port, 80, seq=seq - 1, flags=SYN,
                                  options=syn_opts))
        exchange()
        synack = parse_segment(memoryview(sink.packets[-1])[20:])
        ack = synack.seq + 1
        opts = TS + struct.pack("!II", 2, synack.ts_val)
        peer.sendPacket(build_tcp(PEER, GW, port, 80, seq=seq, ack=ack, flags=ACK,
                                  options=opts, window=1024))
        exchange()
        state.append([seq, ack, synack.ts_val, port])
    assert len(transports) == conns, stack.counters
    if starmap:
        print("receiver indices (gateway, peer):", [k for k in gw._indices],
              [k for k in peer._indices], file=sys.stderr)
    request = b"G" * req_len
    response = b"R" * resp_len
    rounds = exchanges // conns
    # the requests, encrypted beforehand in arrival order: round r carries one
    # request per connection, acknowledging the previous round's response
    reads = []
    for r in range(rounds):
        pkts = []
        for st in state:
            seq, ack, tsecr, port = st
            opts = TS + struct.pack("!II", 3 + r, tsecr)
            pkts.append(build_tcp(PEER, GW, port, 80, seq=seq, ack=ack, flags=ACK | PSH,
                                  options=opts, payload=request, window=1024))
            st[0] = seq + req_len
            st[1] = ack + resp_len
        peer.sendPackets(pkts)
        reads.append(to_gw.out)
        to_gw.out = []
    sock = CountingSocket(real_socket)
    link = udp.WireGuardProtocol(gw, batch_sends=True) if hold else udp.WireGuardProtocol(gw)
    link.transport = FakePort(sock)
    link.gso = True
    gw.link = link
    receive = gw.datagramsReceived
    advance = clock.advance
    writes = [t.write for t in transports]
    c0 = stack.counters.copy()
    if profiler is not None:
        profiler.enable()
    clock_cpu = time.process_time
    dt = 0.0
    received = 0
    if starmap:
        # the timed rounds as one itertools.starmap, nothing else inside it:
        # ``valgrind --tool=callgrind --toggle-collect=starmap_next`` counts
        # exactly these (the real socket's receiver is drained afterwards;
        # 8 MiB of receive buffer holds a few thousand exchanges)
        def one_round(read):
            advance(0.00005)
            receive(read)
            for w in writes:
                w(response)
            if hold:
                link.flush()

        t0 = clock_cpu()
        collections.deque(itertools.starmap(one_round, [(r,) for r in reads]), 0)
        dt = clock_cpu() - t0
        reads = []
        if real_socket:
            received += sock.drain()
    for read in reads:
        t0 = clock_cpu()
        advance(0.00005)
        receive(read)
        for w in writes:
            w(response)
        if hold:
            link.flush()
        dt += clock_cpu() - t0
        if real_socket:
            received += sock.drain()
    if profiler is not None:
        profiler.disable()
    got = sum(t.protocol.got for t in transports)
    assert got == rounds * conns * req_len, (got, stack.counters)
    n = rounds * conns
    c = stack.counters - c0
    return {"us_per_exchange": dt / n * 1e6, "datagrams_out_per_exchange": sock.datagrams / n,
            "send_calls_per_exchange": sock.calls / n,
            "received_per_exchange": received / n if real_socket else None,
            "retransmits": c["tcp_retransmitted_segments"] + c["tcp_rto"],
            "drops": sum(v for k, v in c.items() if k.startswith("drop_"))}


def _child(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--exchanges",
           str(args.exchanges), "--conns", str(args.conns), "--request", str(args.request),
           "--response", str(args.response)] + (["--hold"] if args.hold else []) + (
               ["--real-socket"] if args.real_socket else []) + [
               "--peer-isn", str(args.peer_isn)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exchanges", type=int, default=20000, help="exchanges per slice")
    p.add_argument("--conns", type=int, default=16, help="connections (requests per read)")
    p.add_argument("--request", type=int, default=110, help="request bytes")
    p.add_argument("--response", type=int, default=700, help="response bytes")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--peer-isn", type=int, default=5000,
                   help="the peer's first sequence number (connection i adds i * 10**6): "
                        "a Linux client's random ISN is above 2**30 three times in four, "
                        "a two-digit int (e.g. 3000000000)")
    p.add_argument("--hold", action="store_true",
                   help="hold output to the end of the round (WireGuardProtocol batch_sends)")
    p.add_argument("--real-socket", action="store_true",
                   help="the link's sends also leave through a real UDP socket to a local "
                        "receiver (syscalls timed; the receiver is drained outside the timing)")
    p.add_argument("--compare-hold", action="store_true",
                   help="alternate this tree without and with --hold (instead of --against)")
    p.add_argument("--compare-fast", action="store_true",
                   help="alternate this tree with the netstack's fused TCP path off and on "
                        "(NBGW_NETSTACK_FASTPATH=0/1, tcp_fast.py) instead of --against")
    p.add_argument("--against", metavar="DIR",
                   help="another checkout: alternate subprocesses with its package")
    p.add_argument("--starmap", action="store_true",
                   help="one slice in this process (EXCHANGE_TREE: the checkout whose package "
                        "it imports), the timed rounds as one itertools.starmap: run it under "
                        "valgrind --tool=callgrind --toggle-collect=starmap_next for "
                        "instructions per exchange (PYTHONHASHSEED=0, --exchanges 3200)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if args.child or args.starmap:
        sys.path.insert(0, os.environ.get("EXCHANGE_TREE", here))
        print(json.dumps(_slice(args.exchanges, args.conns, args.request, args.response,
                                args.hold, real_socket=args.real_socket,
                                starmap=args.starmap, peer_isn=args.peer_isn)))
        return 0
    trees = {"this tree": here}
    if args.against:
        trees = {"against": args.against, "this tree": here}
    if args.compare_hold:
        trees = {"no hold": here, "hold": here}
    if args.compare_fast:
        trees = {"fused off": here, "fused on": here}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    hold_arg = args.hold
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            args.hold = name == "hold" or (hold_arg and name != "no hold")
            env = {**os.environ, "EXCHANGE_TREE": tree, "PYTHONPATH": tree}
            if args.compare_fast:
                env["NBGW_NETSTACK_FASTPATH"] = "1" if name == "fused on" else "0"
            out = subprocess.run(_child(args), env=env,
                                 capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout))
    print(f"keep-alive exchanges through WireGuard + netstack, {args.conns} connections, "
          f"{args.request} B request / {args.response} B response, {args.exchanges} "
          f"exchanges per slice, medians of {args.rounds} alternated slices"
          f"{' (output held per round)' if hold_arg else ''}"
          f"{', sends through a real UDP socket' if args.real_socket else ''}:")
    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(x["us_per_exchange"] for x in rs)
        last = rs[-1]
        print(f"  {name:10s} {med[name]:7.1f} us CPU per exchange   (slices: "
              + ", ".join(f"{x['us_per_exchange']:.1f}" for x in rs)
              + f"; datagrams out per exchange {last['datagrams_out_per_exchange']:.2f}, "
              f"send calls {last['send_calls_per_exchange']:.3f}, retransmits "
              f"{last['retransmits']}, drops {last['drops']})")
    if args.against:
        print(f"  this tree / against: {med['this tree'] / med['against']:.3f}")
    if args.compare_hold:
        print(f"  hold / no hold: {med['hold'] / med['no hold']:.3f}")
    if args.compare_fast:
        print(f"  fused on / fused off: {med['fused on'] / med['fused off']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
