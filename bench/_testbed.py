"""Benchmarks' access to the real-peer testbed in ``tests/interop/testbed.py``.

The harness lives in ONE place (the interop tests' package); benchmarks are run
as scripts from any directory, so this module puts the repository root on
``sys.path`` and re-exports the harness plus iperf3 helpers benches share.
"""

from __future__ import annotations

import json
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.interop.testbed import (  # noqa: E402
    CommandError,
    KeyPair,
    Netns,
    Testbed,
    WgGo,
    inside_netns,
    run,
    tunnel_pair,
    unavailable_reason,
)

__all__ = [
    "CommandError",
    "KeyPair",
    "Netns",
    "Testbed",
    "WgGo",
    "inside_netns",
    "iperf3",
    "run",
    "start_iperf3_server",
    "tunnel_pair",
    "unavailable_reason",
]

IPERF3_PORT = 5201


def start_iperf3_server(ns: Netns, bind: str, *, port: int = IPERF3_PORT,
                        timeout: float = 5.0) -> None:
    """Start ``iperf3 -s`` in ``ns`` (owned and killed by the testbed); wait until it listens."""
    ns.popen(["iperf3", "-s", "-B", bind, "-p", str(port)])
    deadline = time.monotonic() + timeout
    while True:
        out = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        if time.monotonic() > deadline:
            raise CommandError(f"iperf3 server in {ns.name} did not start listening")
        time.sleep(0.05)


def iperf3(client_ns: Netns, server_addr: str, *, seconds: int = 5, reverse: bool = False,
           streams: int = 1, port: int = IPERF3_PORT) -> float:
    """One bounded iperf3 TCP run from ``client_ns``; returns received Mbit/s.

    ``reverse`` makes the server send (data flows server -> client).
    """
    args = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(seconds),
            "-P", str(streams), "-J"]
    if reverse:
        args.append("-R")
    res = client_ns.run(args, timeout=seconds + 20.0)
    report = json.loads(res.stdout)
    return report["end"]["sum_received"]["bits_per_second"] / 1e6
