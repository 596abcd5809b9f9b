"""The peer channel's per-account memo: one read per account revision, each map built once.

:class:`MapCache` owns, per account (LRU-bounded, ``size`` accounts), an
:class:`AccountEntry`: the account's :class:`~nbgateway.management.synthetic.AccountView`
and users read in one transaction (``store.accounts.read_view``), a revision
number, and a memo of whatever is derived from them (the peer channel keeps a
peer's encoded ``SyncResponse``, which is also its fingerprint, and the
account's access digest; not the built map objects, which are larger).
Every stream of the account and a reconnecting peer get the memoised values
until the revision changes; a burst of triggers for one account builds each
map once.  A new peer (e.g. a second gateway's proxy peer) starts a new
revision: the account is read once for all of its streams.

Invalidation: the store's after-commit change listener calls :meth:`MapCache.changed`
for the kinds that can alter a map.  ``PEER`` and ``SERVICE_UPDATED`` changes
name their rows: those ids are kept pending and, on the next :meth:`MapCache.get`,
re-read in one transaction and compared with the cached rows with what no map
reads set aside: a peer's ``last_seen``, a client peer's ``connected`` (a proxy
peer's ``connected`` decides its private-service DNS records, so it counts), a
service's ``meta`` (status, message, certificate times).  When nothing else
differs the entry, its revision and its built maps stay (a client's "connected"
write and the gateways' status reports cost one small read, no rebuild).  When
rows differ, the re-read rows replace the cached ones in a new view (a new
revision; the other tables are unchanged, or another kind of change would be
pending).  Anything else (another kind, a new or deleted row, more than
``max_pending`` ids) reads the whole account again.  The cached view's
``last_seen`` values and service status may therefore lag the store; nothing
built from it reads them.

Concurrency: reads run in the peer channel's executor threads.  Calls for one
account are serialised (a striped lock), and a change that lands while the
account is being read stays pending for the next call, so a stream marked
dirty by that change never gets the older entry again.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from nbgateway.management.model import ChangeKind, Peer, Service, User
from nbgateway.management.synthetic import AccountView

__all__ = ["AccountEntry", "MapCache", "same_peer_for_maps", "same_service_for_maps"]

T = TypeVar("T")

#: changes whose ids are re-read and compared instead of reloading the account
_ROW_KINDS = frozenset({ChangeKind.PEER, ChangeKind.SERVICE_UPDATED})
_STRIPES = 64


def same_peer_for_maps(old: Peer, new: Peer) -> bool:
    """True when ``new`` differs from ``old`` at most in what no map reads:
    ``last_seen``, and ``connected`` unless the peer is a proxy peer."""
    connected = new.connected if old.proxy or new.proxy else old.connected
    return old == dataclasses.replace(new, connected=connected, last_seen=old.last_seen)


def same_service_for_maps(old: Service, new: Service) -> bool:
    """True when ``new`` differs from ``old`` at most in its status (``meta``)."""
    return old == dataclasses.replace(new, meta=old.meta)


class AccountEntry:
    """One revision of an account: its view, users and what is built from them."""

    __slots__ = ("_memo", "_memo_limit", "revision", "users", "view")

    def __init__(self, view: AccountView, users: tuple[User, ...], revision: int) -> None:
        self.view = view
        self.users = users
        self.revision = revision
        self._memo: dict[Any, Any] = {}
        #: a few values per peer that renders (map, one response per capability set)
        self._memo_limit = 8 * len(view.peers) + 16

    def memo(self, key: Any, build: Callable[[], T]) -> T:
        """``build()`` once per revision and key (values must be treated as immutable)."""
        try:
            return self._memo[key]
        except KeyError:
            pass
        value = build()
        if len(self._memo) >= self._memo_limit:
            self._memo.clear()  # bounded; only recomputation is lost
        return self._memo.setdefault(key, value)


class _Pending:
    __slots__ = ("full", "peers", "services")

    def __init__(self) -> None:
        self.full = False
        self.peers: set[str] = set()
        self.services: set[str] = set()


class MapCache:
    """Per-account :class:`AccountEntry` cache; see the module docstring."""

    def __init__(self, store: Any, size: int = 1024, max_pending: int = 256) -> None:
        self._store = store
        self._size = size
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, AccountEntry] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._loading: dict[str, int] = {}
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._revision = 0
        #: counters for tests and benches: full account reads, row re-reads
        self.full_reads = 0
        self.row_reads = 0

    # -- invalidation (store listener thread) ----------------------------------------------

    def changed(self, kind: ChangeKind, account_id: str, ids: Iterable[str]) -> None:
        """Record a committed change that may alter the account's maps (cheap)."""
        with self._lock:
            if account_id not in self._entries and account_id not in self._loading:
                return  # nothing cached or being read: the next get reads it all
            p = self._pending.get(account_id)
            if p is None:
                p = self._pending[account_id] = _Pending()
            if p.full:
                return
            ids = tuple(ids)
            if kind not in _ROW_KINDS or not ids:
                p.full = True
            else:
                (p.peers if kind == ChangeKind.PEER else p.services).update(ids)
                if len(p.peers) + len(p.services) > self._max_pending:
                    p.full = True
            if p.full:
                p.peers.clear()
                p.services.clear()

    def forget(self, account_id: str) -> None:
        with self._lock:
            self._entries.pop(account_id, None)
            self._pending.pop(account_id, None)

    # -- reads (executor threads) ------------------------------------------------------------

    def get(self, account_id: str) -> AccountEntry:
        """The account's current entry (the store's NotFound for an unknown account)."""
        with self._stripes[hash(account_id) % _STRIPES]:
            with self._lock:
                entry = self._entries.get(account_id)
                pending = self._pending.pop(account_id, None)
                if entry is not None and pending is None:
                    self._entries.move_to_end(account_id)
                    return entry
                self._loading[account_id] = self._loading.get(account_id, 0) + 1
            try:
                try:
                    fresh = None
                    if entry is not None and pending is not None and not pending.full:
                        fresh = self._refresh(entry, pending)
                    entry = fresh or self._read(account_id)
                except BaseException:
                    with self._lock:  # the popped pending changes are not lost: read all next
                        self._entries.pop(account_id, None)
                    raise
                with self._lock:
                    self._entries[account_id] = entry
                    self._entries.move_to_end(account_id)
                    while len(self._entries) > self._size:
                        gone, _ = self._entries.popitem(last=False)
                        if gone not in self._loading:
                            # an account another thread is reading keeps the
                            # changes that landed during its read: the entry
                            # that thread stores predates them
                            self._pending.pop(gone, None)
                return entry
            finally:
                with self._lock:
                    n = self._loading[account_id] - 1
                    if n:
                        self._loading[account_id] = n
                    else:
                        del self._loading[account_id]
                        if account_id not in self._entries:
                            self._pending.pop(account_id, None)

    def _refresh(self, entry: AccountEntry, pending: _Pending) -> AccountEntry | None:
        """Re-read the pending rows: ``entry`` when none differs in anything maps
        use, a patched entry when some do, None when the account must be read."""
        view = entry.view
        if not pending.peers.issubset(view.peers):
            return None  # a new peer
        services = {s.id: s for s in view.services}
        if not pending.services.issubset(services):
            return None
        self.row_reads += 1
        peers, found = self._store.accounts.read_rows(
            view.account.id, sorted(pending.peers), sorted(pending.services))
        if len(peers) != len(pending.peers) or len(found) != len(pending.services):
            return None  # deleted meanwhile
        changed_peers = {p.id: p for p in peers if not same_peer_for_maps(view.peers[p.id], p)}
        changed_services = {s.id: s for s in found
                            if not same_service_for_maps(services[s.id], s)}
        if not changed_peers and not changed_services:
            return entry
        patched = AccountView.of(
            view.account,
            (changed_peers.get(pid, p) for pid, p in view.peers.items()),
            view.groups.values(),
            (changed_services.get(s.id, s) for s in view.services),
            view.domains,
        )
        return AccountEntry(patched, entry.users, self._next_revision())

    def _read(self, account_id: str) -> AccountEntry:
        rows = self._store.accounts.read_view(account_id)
        self.full_reads += 1
        view = AccountView.of(rows.account, rows.peers, rows.groups, rows.services, rows.domains)
        return AccountEntry(view, rows.users, self._next_revision())

    def _next_revision(self) -> int:
        with self._lock:
            self._revision += 1
            return self._revision
