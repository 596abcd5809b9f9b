"""Reconnect loop for management streams: jittered exponential backoff.

Upstream's schedule: initial interval 800 ms, multiplier 1.7, maximum interval
10 s, randomisation factor 1.0 (each wait is uniform in
``[interval * (1 - r), interval * (1 + r)]``, i.e. ``[0, 2 * interval]``),
unlimited retries until shutdown.  The backoff is reset only when the failed
attempt had actually connected, so immediate dial failures keep growing.

:class:`Backoff` is pure (inject ``random``); :class:`Reconnector` drives an
``attempt`` callable with an injected clock (``IReactorTime``), so tests use
:class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

INITIAL_INTERVAL = 0.8
MULTIPLIER = 1.7
MAX_INTERVAL = 10.0
RANDOMIZATION = 1.0


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter around the current interval."""

    initial: float = INITIAL_INTERVAL
    multiplier: float = MULTIPLIER
    max_interval: float = MAX_INTERVAL
    randomization: float = RANDOMIZATION
    random: Callable[[], float] = field(default=_random.random, repr=False)
    #: cap on a returned delay after the jitter (None: up to
    #: ``max_interval * (1 + randomization)``)
    max_delay: float | None = None
    interval: float = field(init=False)

    def __post_init__(self) -> None:
        self.interval = self.initial

    def reset(self) -> None:
        self.interval = self.initial

    def next_delay(self) -> float:
        """The wait before the next attempt; grows the interval for the one after."""
        delta = self.randomization * self.interval
        low = self.interval - delta
        delay = low + self.random() * (2 * delta)
        self.interval = min(self.interval * self.multiplier, self.max_interval)
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        return max(0.0, delay)


class AttemptResult:
    """What an attempt reports when it ends (by firing or failing its Deferred).

    An attempt's Deferred may fire with an :class:`AttemptResult` or a bool
    (``connected``); a failure may carry ``connected=True`` as an attribute of
    the exception.  Anything else counts as "never connected".
    """

    def __init__(self, connected: bool) -> None:
        self.connected = connected


class Reconnector:
    """Runs ``attempt()`` forever: when one ends, wait a backoff delay, retry.

    ``attempt`` returns a Deferred that fires when the connection it made has
    ended (a long-lived stream's lifetime).  ``stop()`` cancels the pending
    retry and the running attempt.  Slotted: one per account's peer channel.
    """

    __slots__ = ("_current", "_pending", "attempt", "attempts", "backoff", "clock",
                 "last_delay", "name", "running")

    def __init__(
        self,
        clock: IReactorTime,
        attempt: Callable[[], Deferred[object]],
        backoff: Backoff | None = None,
        name: str = "management",
    ) -> None:
        self.clock = clock
        self.attempt = attempt
        self.backoff = backoff if backoff is not None else Backoff()
        self.name = name
        self.attempts = 0
        self.running = False
        self._current: Deferred[object] | None = None
        self._pending: IDelayedCall | None = None
        self.last_delay: float | None = None

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self._run()

    def stop(self) -> None:
        self.running = False
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        current, self._current = self._current, None
        if current is not None:
            current.cancel()

    def _run(self) -> None:
        self._pending = None
        if not self.running:
            return
        self.attempts += 1
        d = maybeDeferred(self.attempt)
        self._current = d
        d.addBoth(self._ended, d)

    def _ended(self, result: object, d: Deferred[object]) -> None:
        if self._current is d:
            self._current = None
        if not self.running:
            return
        connected = _connected(result)
        if connected:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self.last_delay = delay
        reason = result.getErrorMessage() if isinstance(result, Failure) else "stream ended"
        log.warn(
            "{name} connection failed, retrying in {delay:.2f}s: {reason}",
            name=self.name,
            delay=delay,
            reason=reason,
        )
        self._pending = self.clock.callLater(delay, self._run)


def _connected(result: object) -> bool:
    if isinstance(result, Failure):
        return bool(getattr(result.value, "connected", False))
    if isinstance(result, AttemptResult):
        return result.connected
    return result is True
