"""Ports for the servers tests start as subprocesses.

A port from ``bind(0)`` comes from the kernel's ephemeral range, the same range
every outgoing connection on the machine draws its source port from: between
the probe and the server's own bind, any client socket (another test's, a
gateway's gRPC channel) may take it, and the server then exits with "already in
use".  :func:`free_port` picks below the ephemeral range instead, where the
kernel never hands out ports by itself, and checks that the port binds now.
"""

from __future__ import annotations

import random
import socket

_FALLBACK_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that binds on *host* now and that the kernel does not pick for
    outgoing connections (below ``ip_local_port_range``); ``bind(0)`` when none
    is found there."""
    high = _ephemeral_low() - 1
    low = max(1024, min(10000, high - 1000))
    for _ in range(64):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
