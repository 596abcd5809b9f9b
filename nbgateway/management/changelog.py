"""The bounded change log behind resume by revision (issue 18).

:class:`ChangeLog` numbers each broadcast of mapping updates with the next
revision and keeps the last ones (at most ``size`` broadcasts and ``items``
updates in all, the oldest dropped first), so a gateway reconnecting with
the last revision it applied can be sent only what came after it.

Revisions start at ``base`` (by default the process start time in
microseconds) and grow by one per broadcast, so a revision issued by an
earlier process, or by another replica, is below ``base`` or above the
current revision and is never taken for one of this log's.

Plain data, no locking: :class:`~nbgateway.management.mappingstreams.MappingStreams`
calls it under its own lock (the same lock that registers connections, so a
stream sees each broadcast exactly once: in its resume or in its queue).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Generic, TypeVar

U = TypeVar("U")

#: broadcasts kept for resuming proxies
LOG_SIZE = 1024
#: updates kept in all at most (memory bound)
LOG_ITEMS = 20_000


class ChangeLog(Generic[U]):
    """See the module docstring."""

    def __init__(self, *, size: int = LOG_SIZE, items: int = LOG_ITEMS,
                 base: int | None = None) -> None:
        self.size = size
        self.items = items
        self.base = time.time_ns() // 1000 if base is None else base
        #: the revision of the last broadcast (``base`` before the first)
        self.revision = self.base
        self._entries: deque[tuple[int, list[U]]] = deque()
        self._count = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, updates: list[U]) -> int:
        """Record one broadcast; its revision."""
        self.revision += 1
        self._entries.append((self.revision, list(updates)))
        self._count += len(updates)
        while self._entries and (len(self._entries) > self.size or self._count > self.items):
            self._count -= len(self._entries.popleft()[1])
        return self.revision

    def since(self, revision: int) -> list[tuple[int, list[U]]] | None:
        """The broadcasts after ``revision``, oldest first; None when the log cannot
        tell (not a revision of this log, or trimmed past it)."""
        if revision < self.base or revision > self.revision:
            return None
        first = self._entries[0][0] if self._entries else self.revision + 1
        if revision < first - 1:
            return None
        return [(rev, ups) for rev, ups in self._entries if rev > revision]
