"""Baseline: wireguard-go <-> wireguard-go throughput on this machine, right now.

Two namespaces joined by a veth pair, a wireguard-go interface in each, the
Linux kernel's TCP at both ends, one iperf3 stream each direction (bounded).
Other benchmarks call :func:`measure_wg_go_baseline` so their numbers are
printed next to a comparison measured in the same run (the box is noisy).

:func:`measure_wg_go_burst` is the reference for the handshake burst of
``bench/scale.py --handshake-burst`` (issue 18): a stock wireguard-go "server"
with ``peers`` peers configured (the burst's peers among them), an established
wireguard-go peer running iperf3 (0.1-s intervals) through it to a kernel TCP
iperf3 server on the server's tunnel address, 10 s before and 10 s with the
burst starting 2 s in; the burst is the same as the gateway's: the project's
own initiator (:class:`bench._handshakes.Initiator`, key work prepared), one
UDP socket (source port) per peer, from a namespace of its own.  Printed: the
burst's completion, cookie replies and the established peer's ratio over the
burst window, computed as :func:`burst_window_summary` does for the gateway.

Run as root:  .venv/bin/python bench/wg_baseline.py [--seconds 5] [--veth]
              .venv/bin/python bench/wg_baseline.py --burst 1000 [--peers 10000]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import sys
import threading
import time

try:
    from bench._testbed import (
        Testbed,
        inside_netns,
        iperf3,
        start_iperf3_server,
        tunnel_pair,
        unavailable_reason,
    )
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import (
        Testbed,
        inside_netns,
        iperf3,
        start_iperf3_server,
        tunnel_pair,
        unavailable_reason,
    )


def measure_wg_go_baseline(seconds: int = 5, *, veth: bool = False) -> dict[str, float]:
    """Mbit/s through a wireguard-go tunnel: ``forward`` (A->B) and ``reverse`` (B->A).

    With ``veth=True`` also ``veth_forward``: the same namespaces without the
    tunnel (the ceiling).  Everything created is torn down before returning.
    """
    reason = unavailable_reason(need=("iperf3", "ss"))
    if reason is not None:
        raise RuntimeError(f"wireguard-go baseline unavailable: {reason}")
    with Testbed() as tb:
        ns_a, _wg_a, ns_b, _wg_b = tunnel_pair(tb)
        start_iperf3_server(ns_b, "0.0.0.0")
        result = {
            "forward": iperf3(ns_a, "100.64.0.2", seconds=seconds),
            "reverse": iperf3(ns_a, "100.64.0.2", seconds=seconds, reverse=True),
        }
        if veth:
            result["veth_forward"] = iperf3(ns_a, "198.18.0.2", seconds=seconds)
    return result


def burst_window_summary(before: list[tuple[float, float]], during: list[tuple[float, float]],
                         window: tuple[float, float]) -> dict:
    """The established peer's figures over a burst, from iperf3 0.1-s intervals
    ``(end time, Mbit/s)`` (time.monotonic): ``before`` (its first 5 skipped:
    slow start), the intervals overlapping ``window`` (first send .. last
    completion), the first second and 0.5-2.5 s after."""
    lo, hi = window
    base_list = [mbit for _, mbit in before[5:]]
    base = statistics.mean(base_list) if base_list else float("nan")
    during_w = [mbit for end, mbit in during if lo < end and end - 0.1 <= hi]
    first = [mbit for end, mbit in during if lo < end <= lo + 1.0]
    after = [mbit for end, mbit in during if hi + 0.5 < end <= hi + 2.5]
    # the same iperf3 run's last 1.5 s before the burst (one TCP connection,
    # adjacent in time: less exposed to the machine's load drifting)
    pre = [mbit for end, mbit in during if lo - 1.5 < end <= lo]
    out = {"before_mbit": base, "n": len(during_w),
           "pre_mbit": statistics.mean(pre) if pre else None}
    if during_w and base > 0:
        out.update(
            during_mbit=statistics.mean(during_w),
            ratio=statistics.mean(during_w) / base,
            first_1s=statistics.mean(first) / base if first and hi - lo > 1.0 else None,
            worst=min(during_w) / base,
            under_half=sum(1 for x in during_w if x / base < 0.5),
            zero=sum(1 for x in during_w if x / base < 0.005),
            after=statistics.mean(after) / base if after else None,
            intervals=[mbit / base for end, mbit in during
                       if lo - 0.3 < end and end - 0.1 <= hi + 0.3])
        if out["pre_mbit"]:
            out["ratio_pre"] = statistics.mean(during_w) / out["pre_mbit"]
    return out


def _iperf_intervals(ns, addr: str, seconds: float) -> list[tuple[float, float]]:
    t0 = time.monotonic()
    r = ns.run(["iperf3", "-c", addr, "-t", f"{seconds:g}", "-i", "0.1", "-J"],
               check=False, timeout=seconds + 30)
    report = json.loads(r.stdout)
    return [(t0 + iv["sum"]["end"], iv["sum"]["bits_per_second"] / 1e6)
            for iv in report["intervals"]]


def measure_wg_go_burst(n_burst: int = 1000, peers: int = 10_000,
                        iperf_seconds: float = 10.0, during_seconds: float = 30.0,
                        one_ip: bool = False) -> dict:
    """The handshake burst against a stock wireguard-go with ``peers`` peers
    (see the module docstring); returns the burst result and
    :func:`burst_window_summary` of the established peer.

    Each burst peer sends from its own source address (one IP each, from a
    /21 on the burst namespace's veth): wireguard-go rate-limits the
    MAC2-valid initiations it handles under load per source IP (20/s, burst
    5), so 1,000 peers behind one IP (``one_ip``, as the gateway's bench
    sends: distinct ports, one address; the gateway has no per-IP limit)
    take tens of seconds there.  iperf3 runs ``during_seconds`` with the
    burst 2 s in (wireguard-go's burst can outlast the gateway's 10 s)."""
    from bench._handshakes import Initiator, burst
    from nbgateway.wireguard.keys import generate_private_key, public_key

    reason = unavailable_reason(need=("iperf3", "ss", "wg"))
    if reason is not None:
        raise RuntimeError(f"wireguard-go burst baseline unavailable: {reason}")
    if peers < n_burst + 1:
        raise ValueError("peers must cover the burst and the established peer")
    with Testbed() as tb:
        srv, cli, bns = tb.netns(), tb.netns(), tb.netns()
        tb.veth(cli, "198.18.0.1/30", srv, "198.18.0.2/30")
        bveth, _ = tb.veth(bns, "198.18.8.1/21", srv, "198.18.15.254/21")
        sources = ["198.18.8.1"] * n_burst if one_ip else [
            f"198.18.{8 + (i + 1) // 256}.{(i + 1) % 256}" for i in range(n_burst)]
        if not one_ip:
            if n_burst > 2000:
                raise ValueError("at most 2,000 source addresses in the /21")
            bns.run(["ip", "-batch", "-"], input="".join(
                f"addr add {a}/21 dev {bveth}\n" for a in sources[1:]))
        wg_s = tb.wireguard_go(srv, listen_port=51820, addresses=["100.64.0.1/32"])
        wg_c = tb.wireguard_go(cli, listen_port=51820, addresses=["100.64.0.2/32"])
        privates = [generate_private_key() for _ in range(n_burst)]
        lines = [f"[Peer]\nPublicKey = {base64.b64encode(wg_c.keys.public).decode()}\n"
                 "AllowedIPs = 100.64.0.2/32\nEndpoint = 198.18.0.1:51820\n"]
        for i in range(peers - 1):
            pub = public_key(privates[i]) if i < n_burst else public_key(generate_private_key())
            lines.append(f"[Peer]\nPublicKey = {base64.b64encode(pub).decode()}\n"
                         f"AllowedIPs = 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32\n")
        path = tb.write_file("burst-server.conf", "\n".join(lines))
        t_conf = time.monotonic()
        srv.run(["wg", "addconf", wg_s.ifname, path], timeout=300)
        conf_seconds = time.monotonic() - t_conf
        wg_c.add_peer(wg_s.keys.public, allowed_ips=["100.64.0.1/32"],
                      endpoint="198.18.0.2:51820")
        cli.add_route(wg_c.ifname, "100.64.0.1/32")
        srv.add_route(wg_s.ifname, "100.64.0.2/32")
        start_iperf3_server(srv, "100.64.0.1")
        cli.ping("100.64.0.1", count=3)
        inis = [(Initiator(p, wg_s.keys.public, index=0x1000 + i), ("198.18.15.254", 51820))
                for i, p in enumerate(privates)]
        for ini, _ in inis:
            ini.prepare(2)
        with inside_netns(bns.name):
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in inis]
        for s, src in zip(socks, sources, strict=True):
            s.bind((src, 0))
        before = _iperf_intervals(cli, "100.64.0.1", iperf_seconds)
        box: dict = {}
        th = threading.Thread(target=lambda: box.update(
            during=_iperf_intervals(cli, "100.64.0.1", during_seconds)), daemon=True)
        th.start()
        time.sleep(2.0)
        t_burst = time.monotonic()
        try:
            result = burst(socks, inis)
        finally:
            for s in socks:
                s.close()
        th.join(during_seconds + 40)
        window = (t_burst, t_burst + max(result.last_completion, 0.5))
        return {"result": result, "conf_seconds": conf_seconds, "peers": peers,
                "one_ip": one_ip,
                "summary": burst_window_summary(before, box.get("during", []), window)}


def print_burst_summary(label: str, sm: dict) -> None:
    """One block of the established peer's figures (see :func:`burst_window_summary`)."""
    if "ratio" not in sm:
        print(f"  {label}: no iperf3 interval overlapped the burst", flush=True)
        return
    first = f"{sm['first_1s']:.2f} x" if sm.get("first_1s") is not None else "-"
    after = f"{sm['after']:.2f} x" if sm.get("after") is not None else "-"
    pre = (f" (/ the 1.5 s just before: {sm['ratio_pre']:.2f} x)"
           if sm.get("ratio_pre") is not None else "")
    print(f"  {label}: before {sm['before_mbit']:.0f} Mbit/s, during / before "
          f"{sm['ratio']:.2f} x{pre} ({sm['n']} x 0.1 s), first 1 s {first}, worst 0.1 s "
          f"{sm['worst']:.2f} x, under 0.5 x {sm['under_half']}/{sm['n']}, at 0.00 x "
          f"{sm['zero']}, 0.5-2.5 s after {after}", flush=True)
    print("    0.1-s intervals / before, from 0.3 s before: "
          + " ".join(f"{x:.2f}" for x in sm["intervals"]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 -t per direction")
    parser.add_argument("--veth", action="store_true", help="also measure bare veth")
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="the handshake-burst reference instead (N distinct peers)")
    parser.add_argument("--peers", type=int, default=10_000,
                        help="peers configured in the wireguard-go server for --burst")
    parser.add_argument("--burst-one-ip", action="store_true",
                        help="every burst peer from one source IP (distinct ports), as "
                             "bench/scale.py sends; wireguard-go then rate-limits per IP")
    args = parser.parse_args(argv)
    if args.burst:
        try:
            b = measure_wg_go_burst(args.burst, args.peers, one_ip=args.burst_one_ip)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 2
        r = b["result"]
        print(f"wireguard-go server, {b['peers']} peers (wg addconf {b['conf_seconds']:.1f} s); "
              f"burst of {r.total}, one UDP socket each"
              f"{' (one source IP)' if b['one_ip'] else ' (one source IP each)'}: "
              f"{r.completed}/{r.total} completed"
              + (f" in {r.seconds_to_all:.2f} s" if r.seconds_to_all is not None else "")
              + f", {r.cookie_replies} cookie replies, {r.initiations_sent} initiations sent",
              flush=True)
        print_burst_summary("established wireguard-go peer (iperf3 to kernel TCP)", b["summary"])
        return 0
    try:
        r = measure_wg_go_baseline(args.seconds, veth=args.veth)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wireguard-go <-> wireguard-go over veth, iperf3 1 stream, {args.seconds} s each:")
    print(f"  forward (A->B): {r['forward']:8.1f} Mbit/s")
    print(f"  reverse (B->A): {r['reverse']:8.1f} Mbit/s")
    if "veth_forward" in r:
        print(f"  bare veth     : {r['veth_forward']:8.1f} Mbit/s "
              f"(tunnel/veth = {r['forward'] / r['veth_forward']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
