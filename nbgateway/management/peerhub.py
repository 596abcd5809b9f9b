"""Which Sync streams a store change wakes: :class:`Subscription` (one
stream's coalescing one-slot "rebuild" flag and closed flag, thread-safe) and
:class:`PeerUpdateHub` (account -> streams, the current stream per peer key,
a per-account generation). Used by the peer channel's ``Sync``
(:mod:`~nbgateway.management.peerchannel`) and by ``NbgwSyncMany``
(:mod:`~nbgateway.management.syncmany`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from nbgateway.management.grpcloop import wake_threadsafe
from nbgateway.management.model import ChangeKind

__all__ = ["MAP_CHANGES", "PeerUpdateHub", "Subscription"]

#: changes that can alter a network map (proxy rows, tokens, logs cannot)
MAP_CHANGES = frozenset(
    {
        ChangeKind.ACCOUNT,
        ChangeKind.GROUP,
        ChangeKind.PEER,
        ChangeKind.USER,
        ChangeKind.SERVICE_CREATED,
        ChangeKind.SERVICE_UPDATED,
        ChangeKind.SERVICE_DELETED,
        ChangeKind.DOMAIN,
    }
)


class Subscription:
    """One Sync stream: a coalescing one-slot "rebuild" flag plus a closed flag.

    Thread-safe: :meth:`mark` and :meth:`close` run in any thread (the store's
    writer, the stopping service) and wake the stream's coroutine on its loop
    through ``event``.
    """

    def __init__(self, account_id: str, peer_id: str, key: str,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.account_id = account_id
        self.peer_id = peer_id
        self.key = key
        self.loop = loop
        #: set (on ``loop``) on every mark and on close
        self.event = asyncio.Event()
        #: set (on ``loop``) on close only: interrupts a blocked write
        self.closed_event = asyncio.Event()
        self._lock = threading.Lock()
        self.dirty = False
        self.closed = False

    def mark(self) -> None:
        with self._lock:
            self.dirty = True
        wake_threadsafe(self.loop, self.event)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        wake_threadsafe(self.loop, self.event)
        wake_threadsafe(self.loop, self.closed_event)

    def take(self) -> bool:
        """Consume a pending change; True if there was one (never once closed)."""
        with self._lock:
            if self.dirty and not self.closed:
                self.dirty = False
                return True
            return False

    async def next_change(self) -> bool:
        """Wait (on the loop) for a change; True when one is pending, False once closed."""
        while True:
            if self.take():
                return True
            if self.closed:
                return False
            self.event.clear()
            if self.dirty or self.closed:  # marked between take() and clear()
                continue
            await self.event.wait()


class PeerUpdateHub:
    """Routes store changes to the Sync streams of the affected account.

    Also tracks the current stream per peer key (a new stream supersedes the
    old one) and a per-account generation (a count of map changes).
    ``before_mark`` (the map cache's invalidation) sees each map change before
    any stream is woken.
    """

    def __init__(self, before_mark: Callable[[ChangeKind, str, tuple[str, ...]], None]
                 | None = None) -> None:
        self._before_mark = before_mark
        self._lock = threading.Lock()
        self._by_account: dict[str, set[Subscription]] = {}
        self._current: dict[str, Subscription] = {}
        self._generation: dict[str, int] = {}

    def generation(self, account_id: str) -> int:
        with self._lock:
            return self._generation.get(account_id, 0)

    def on_change(self, kind: ChangeKind, account_id: str, ids: tuple[str, ...]) -> None:
        """Store change listener (runs after commit in the writing thread; cheap)."""
        if kind not in MAP_CHANGES or not account_id:
            return
        if self._before_mark is not None:
            self._before_mark(kind, account_id, ids)
        with self._lock:
            self._generation[account_id] = self._generation.get(account_id, 0) + 1
            subs = list(self._by_account.get(account_id, ()))
        for s in subs:
            s.mark()

    def subscribe(self, sub: Subscription) -> Subscription | None:
        """Register ``sub``; returns the superseded stream of the same key, if any."""
        with self._lock:
            self._by_account.setdefault(sub.account_id, set()).add(sub)
            old = self._current.get(sub.key)
            self._current[sub.key] = sub
        if old is not None:
            old.close()
        return old

    def unsubscribe(self, sub: Subscription) -> bool:
        """Remove ``sub``; True if it was still the peer's current stream."""
        with self._lock:
            subs = self._by_account.get(sub.account_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_account[sub.account_id]
            current = self._current.get(sub.key) is sub
            if current:
                del self._current[sub.key]
        return current

    def active(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._by_account.values())

    def close_all(self) -> None:
        with self._lock:
            subs = [s for group in self._by_account.values() for s in group]
        for s in subs:
            s.close()
