"""A path's load-balancing and health-check settings (pure data).

Upstream NetBird sends one ``PathMapping`` per (path, target); a path with
several entries is one route with several targets.  :class:`Balancing` is
how the gateway spreads requests over them and decides their health, read
from the ``PathTargetOptions.nbgw_balancing`` extension (field 1001) of the
first entry of the path that carries it; without it the defaults apply
(round robin, passive ejection after 3 consecutive transport failures, 10 s
back-off doubling up to 300 s, no active checks).  Out-of-range values are
clamped, so a mapping always yields usable settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICIES = ("round_robin", "least_conn")
DEFAULT_MAX_FAILURES = 3
DEFAULT_BACKOFF = 10.0
DEFAULT_MAX_BACKOFF = 300.0
DEFAULT_HEALTH_INTERVAL = 10.0
DEFAULT_HEALTH_TIMEOUT = 5.0
#: bounds applied to whatever a mapping says
MIN_HEALTH_INTERVAL = 1.0
MAX_HEALTH_INTERVAL = 3600.0
MAX_FAILURES_LIMIT = 100
MAX_BACKOFF_LIMIT = 3600.0


def _seconds(duration: Any, default: float) -> float:
    if duration is None:
        return default
    secs = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return float(secs) if secs > 0 else default


@dataclass(frozen=True, slots=True)
class Balancing:
    """How one path's targets are chosen and judged."""

    policy: str = "round_robin"
    max_failures: int = DEFAULT_MAX_FAILURES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    #: "" = no active health checks
    health_path: str = ""
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    #: 0 = any 2xx or 3xx
    health_status: int = 0

    @property
    def active(self) -> bool:
        return bool(self.health_path)

    def healthy_status(self, code: int) -> bool:
        """Does an active check's response status mean healthy?"""
        if self.health_status:
            return code == self.health_status
        return 200 <= code < 400

    @classmethod
    def from_proto(cls, msg: Any) -> Balancing:
        """From a ``pb.NbgwBalancing``; an unknown policy is round robin."""
        policy = msg.policy if msg.policy in POLICIES else "round_robin"
        failures = int(msg.max_failures)
        failures = min(failures, MAX_FAILURES_LIMIT) if failures > 0 else DEFAULT_MAX_FAILURES
        backoff = min(_seconds(msg.backoff, DEFAULT_BACKOFF), MAX_BACKOFF_LIMIT)
        max_backoff = min(_seconds(msg.max_backoff, DEFAULT_MAX_BACKOFF), MAX_BACKOFF_LIMIT)
        path = msg.health_path if msg.health_path.startswith("/") else ""
        interval = _seconds(msg.health_interval, DEFAULT_HEALTH_INTERVAL)
        interval = max(MIN_HEALTH_INTERVAL, min(interval, MAX_HEALTH_INTERVAL))
        timeout = min(_seconds(msg.health_timeout, DEFAULT_HEALTH_TIMEOUT), interval)
        status = int(msg.health_status)
        return cls(policy=policy, max_failures=failures, backoff=backoff,
                   max_backoff=max(max_backoff, backoff), health_path=path,
                   health_interval=interval, health_timeout=timeout,
                   health_status=status if 100 <= status <= 599 else 0)


DEFAULT_BALANCING = Balancing()


def balancing_of(options: Any) -> Balancing | None:
    """The ``nbgw_balancing`` of one ``PathTargetOptions`` (None: not set)."""
    if options is None or not hasattr(options, "HasField"):
        return None
    try:
        if not options.HasField("nbgw_balancing"):
            return None
    except ValueError:
        return None
    return Balancing.from_proto(options.nbgw_balancing)
