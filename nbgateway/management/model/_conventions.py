"""The value conventions of the management model: ids, times, durations, freezing.

* Datetimes are timezone-aware UTC (:func:`utcnow`); ``None`` means unset.
* Durations are integer nanoseconds (the upstream column format); use
  :func:`parse_go_duration` / :func:`format_go_duration` at the API edge.
* ``id == ""`` on an object passed to a ``Store.create_*`` method means
  "generate one" (:func:`new_id`: xid-style, 20 characters, time-ordered).
* :func:`_freeze_tuple` / :func:`_freeze_dict` are what the frozen
  dataclasses' ``__post_init__`` use to own their sequences and mappings.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- ids --------------------------------------------------------------------

_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_xid_lock = threading.Lock()
_xid_counter = int.from_bytes(os.urandom(3), "big")
_xid_machine = os.urandom(3)


def new_id() -> str:
    """Return a new xid-style id: 20 lowercase base32hex characters, time-ordered."""
    global _xid_counter
    with _xid_lock:
        _xid_counter = (_xid_counter + 1) & 0xFFFFFF
        counter = _xid_counter
    raw = (
        int(time.time()).to_bytes(4, "big")
        + _xid_machine
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + counter.to_bytes(3, "big")
    )
    n = int.from_bytes(raw, "big") << 4  # 96 bits -> 100 bits = 20 x 5
    return "".join(_XID_ALPHABET[(n >> (5 * i)) & 31] for i in range(19, -1, -1))


# --- Go durations -------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION = (1 << 63) - 1


def parse_go_duration(text: str) -> int:
    """Parse a Go ``time.ParseDuration`` string ("300ms", "1.5s", "1h30m") to nanoseconds.

    Raises ``ValueError`` with Go's wording (``time: invalid duration "abc"``).
    """
    if not isinstance(text, str):
        raise ValueError(f"time: invalid duration {text!r}")
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        number, unit = m.group(1), m.group(2)
        whole, _, frac = number.partition(".")
        scale = _DURATION_UNITS[unit]
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_DURATION:
            raise ValueError(f'time: invalid duration "{text}"')
        pos = m.end()
    return sign * total


def _fmt_frac(v: int, prec: int) -> str:
    whole, frac = divmod(v, 10**prec)
    digits = f"{frac:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def format_go_duration(ns: int) -> str:
    """Format nanoseconds like Go's ``Duration.String()`` (30s, 2m0s, 1h0m0s, 1.5s, 300ms)."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        if u < 1_000:
            out = f"{u}ns"
        elif u < 1_000_000:
            out = _fmt_frac(u, 3) + "µs"
        else:
            out = _fmt_frac(u, 6) + "ms"
    else:
        secs_ns = u % 60_000_000_000
        mins_total = u // 60_000_000_000
        out = _fmt_frac(secs_ns, 9) + "s"
        if mins_total:
            hours, mins = divmod(mins_total, 60)
            out = f"{mins}m" + out
            if hours:
                out = f"{hours}h" + out
    return "-" + out if neg else out


def _freeze_tuple(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is not None and not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(value))


def _freeze_dict(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    object.__setattr__(obj, name, dict(value) if value is not None else {})
