"""Baseline: wireguard-go <-> wireguard-go throughput on this machine, right now.

Two namespaces joined by a veth pair, a wireguard-go interface in each, the
Linux kernel's TCP at both ends, one iperf3 stream each direction (bounded).
Other benchmarks call :func:`measure_wg_go_baseline` so their numbers are
printed next to a comparison measured in the same run (the box is noisy).

Run as root:  .venv/bin/python bench/wg_baseline.py [--seconds 5] [--veth]
"""

from __future__ import annotations

import argparse
import sys

try:
    from bench._testbed import Testbed, iperf3, start_iperf3_server, tunnel_pair, unavailable_reason
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import Testbed, iperf3, start_iperf3_server, tunnel_pair, unavailable_reason


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 -t per direction")
    parser.add_argument("--veth", action="store_true", help="also measure bare veth")
    args = parser.parse_args(argv)
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
