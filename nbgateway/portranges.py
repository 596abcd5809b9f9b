"""Port ranges: the shared vocabulary of inclusive ``(low, high)`` host-port
ranges, as the gateway's ``--l4-public-ports`` flag writes them and management
stores what gateways advertise (``1024-65535``, ``53,8000-8999``; ``""`` is
no port).  Ground module: no imports from the rest of the package."""

from __future__ import annotations

from collections.abc import Iterable

Ranges = tuple[tuple[int, int], ...]


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, with overlapping and adjacent ranges merged."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """The canonical text: a lone port as itself, a range as ``low-high``."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
