"""MappingStore: the gateway's last known ProxyMappings (pure, no I/O).

Owns the mapping lifecycle rules:

* CREATED for a new id adds it; CREATED for a known id is treated as a
  modification (hardening over upstream 2.12, where a redelivered CREATED with
  a new domain left the old domain routable).  Redelivery with the same
  content (only ``auth_token`` differs, the normal case after a reconnect)
  refreshes the stored copy and notifies ``mapping_refreshed``.
* MODIFIED carries the full mapping and replaces the stored one; MODIFIED for
  an unknown id is an add (management sends the token with it).
* REMOVED deletes by id; REMOVED for an unknown id is counted and ignored.
* Per stream, the ids of every mapping received up to and including the
  message with ``initial_sync_complete`` form the snapshot; at that message
  every stored id not in it is removed.  A stream that ends before the flag
  reconciles nothing; messages after the flag never reconcile.

Observers (:class:`MappingObserver`) hear per-mapping and per-account events
in order.  Observer methods may return Deferreds (e.g. the per-account runtime
calling CreateProxyPeer); :meth:`MappingStore.apply_batch` then returns a
Deferred that fires when all of them settled, so the management client acks
the batch only after it was really applied.  Observer errors are logged and
never undo stored state.

Malformed mappings (empty id, unknown update type, past ``max_mappings``) are
counted in :attr:`MappingStore.dropped` and skipped.  A new mapping of an
account that already holds ``max_per_account`` mappings is dropped the same
way (and counted per account in :attr:`MappingStore.dropped_by_account`): one
tenant with many services must not fill the table every account shares, so
that the others' new services would be dropped.

Memory: each mapping is kept serialized (~0.2 KiB for a plain service; a
parsed ``ProxyMapping`` holds a upb arena of ~1.4 KiB), and the reads
(:meth:`MappingStore.get` and the others) return a freshly parsed copy.
Observers get a parsed message per notification; one that keeps mappings
keeps that cost.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.interfaces import IMappingStore
from nbgateway.routes.hosts import domain_key
from nbgateway.routes.redaction import LazyRedacted

log = Logger()

CREATED = pb.UPDATE_TYPE_CREATED
MODIFIED = pb.UPDATE_TYPE_MODIFIED
REMOVED = pb.UPDATE_TYPE_REMOVED

#: Default bound on stored mappings (management sends ~one per service).
MAX_MAPPINGS = 100_000
#: Default bound on one account's stored mappings (a tenth of the table).
MAX_MAPPINGS_PER_ACCOUNT = 10_000


class MappingObserver:
    """Base class for store observers; override what you need.

    All methods run synchronously inside :meth:`MappingStore.apply_batch`, in
    mapping order.  ``account_added`` precedes the first ``mapping_added`` of
    an account; ``account_removed`` follows its last ``mapping_removed``.
    Mappings passed in are owned by the store: do not mutate them.  A method
    may return a Deferred; the batch's ack waits for it.
    """

    def account_added(self, account_id: str) -> Deferred[Any] | None:
        return None

    def account_removed(self, account_id: str) -> Deferred[Any] | None:
        return None

    def mapping_added(self, mapping: pb.ProxyMapping) -> Deferred[Any] | None:
        return None

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> Deferred[Any] | None:
        return None

    def mapping_refreshed(self, mapping: pb.ProxyMapping) -> Deferred[Any] | None:
        """Redelivered with identical content (fresh ``auth_token``)."""
        return None

    def mapping_removed(self, mapping: pb.ProxyMapping) -> Deferred[Any] | None:
        return None

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> Deferred[Any] | None:
        """A complete snapshot was applied; ``removed_ids`` were stale."""
        return None


#: the domain index uses the service model's normalisation, so a name the
#: store finds is a name the router routes (one function,
#: :func:`nbgateway.routes.hosts.domain_key`; this alias is that function)
normalise_domain = domain_key


def _load(raw: bytes) -> pb.ProxyMapping:
    return pb.ProxyMapping.FromString(raw)


def _same_content(a: pb.ProxyMapping, b: pb.ProxyMapping) -> bool:
    """Equal ignoring ``type`` and the one-time ``auth_token``."""
    a2, b2 = pb.ProxyMapping(), pb.ProxyMapping()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for m in (a2, b2):
        m.ClearField("type")
        m.ClearField("auth_token")
    return a2 == b2


@implementer(IMappingStore)
class MappingStore:
    """In-memory mapping table keyed by service id, indexed by domain/account."""

    def __init__(self, max_mappings: int = MAX_MAPPINGS,
                 max_per_account: int = MAX_MAPPINGS_PER_ACCOUNT) -> None:
        self.max_mappings = max_mappings
        self.max_per_account = max_per_account
        #: account -> new mappings dropped because the account was full
        self.dropped_by_account: dict[str, int] = {}
        #: id -> the mapping serialized (see the module docstring: memory)
        self._by_id: dict[str, bytes] = {}
        self._domains: dict[str, list[str]] = {}  # domain -> ids, newest last
        self._accounts: dict[str, set[str]] = {}  # account -> ids
        self._observers: list[MappingObserver] = []
        self._snapshot: set[str] | None = None  # ids seen on the current stream
        self._in_stream = False
        self.initial_sync_complete = False
        self.snapshots_completed = 0
        self.dropped = 0
        self.unknown_removals = 0

    # -- observers -----------------------------------------------------------

    def add_observer(self, observer: MappingObserver) -> None:
        if observer not in self._observers:
            self._observers.append(observer)

    def remove_observer(self, observer: MappingObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    # -- reads ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, service_id: str) -> pb.ProxyMapping | None:
        raw = self._by_id.get(service_id)
        return None if raw is None else _load(raw)

    def raw(self, service_id: str) -> bytes | None:
        """The stored mapping serialized: the store's own bytes object, so an
        observer keeping it (the account runtime) holds no second copy."""
        return self._by_id.get(service_id)

    def lookup_domain(self, domain: str) -> pb.ProxyMapping | None:
        ids = self._domains.get(domain_key(domain))
        return _load(self._by_id[ids[-1]]) if ids else None

    def mappings_for_account(self, account_id: str) -> list[pb.ProxyMapping]:
        return [_load(self._by_id[i]) for i in sorted(self._accounts.get(account_id, ()))]

    def accounts(self) -> frozenset[str]:
        return frozenset(self._accounts)

    def all(self) -> list[pb.ProxyMapping]:
        return [_load(raw) for raw in self._by_id.values()]

    # -- stream lifecycle ----------------------------------------------------

    def stream_started(self) -> None:
        self._in_stream = True
        self._snapshot = set()

    def stream_ended(self) -> None:
        self._in_stream = False
        self._snapshot = None

    def apply_batch(
        self, mappings: Iterable[pb.ProxyMapping], initial_sync_complete: bool
    ) -> Deferred[None] | None:
        pending: list[Deferred[Any]] = []
        for mapping in mappings:
            self._apply_one(mapping, pending)
        if initial_sync_complete and self._snapshot is not None:
            self._reconcile(self._snapshot, pending)
            self._snapshot = None  # later messages never reconcile
        if not pending:
            return None
        d = DeferredList(pending, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    # -- internals -----------------------------------------------------------

    def _notify(self, pending: list[Deferred[Any]], method: str, *args: Any) -> None:
        for observer in list(self._observers):
            d = maybeDeferred(getattr(observer, method), *args)
            d.addErrback(self._observer_failed, method)
            if not d.called:
                pending.append(d)

    def _observer_failed(self, reason: Failure, method: str) -> None:
        log.failure("mapping observer {method} failed", reason, method=method)

    def _apply_one(self, mapping: pb.ProxyMapping, pending: list[Deferred[Any]]) -> None:
        kind = mapping.type
        if not mapping.id or kind not in (CREATED, MODIFIED, REMOVED):
            self.dropped += 1
            log.warn(
                "dropping malformed mapping (id={id!r}, type={type})", id=mapping.id, type=kind
            )
            return
        if self._snapshot is not None:
            self._snapshot.add(mapping.id)
        log.debug(
            "mapping {type} {domain} {id}: {mapping}",
            type=pb.ProxyMappingUpdateType.Name(kind),
            domain=mapping.domain,
            id=mapping.id,
            mapping=LazyRedacted(mapping),
        )
        if kind == REMOVED:
            if mapping.id in self._by_id:
                self._remove(mapping.id, pending)
            else:
                self.unknown_removals += 1
            return
        stored = pb.ProxyMapping()
        stored.CopyFrom(mapping)
        raw = stored.SerializeToString(deterministic=True)
        old_raw = self._by_id.get(mapping.id)
        if old_raw is None:
            if len(self._by_id) >= self.max_mappings:
                self.dropped += 1
                log.error("mapping table full ({n}); dropping {id}", n=len(self), id=mapping.id)
                return
            if self._account_full(stored):
                return
            self._insert(stored, raw, pending)
            return
        old = _load(old_raw)
        if _same_content(old, stored):
            self._by_id[stored.id] = raw
            self._notify(pending, "mapping_refreshed", stored)
        else:
            self._replace(old, stored, raw, pending)

    def _account_full(self, mapping: pb.ProxyMapping) -> bool:
        """Drop (count, log) a new mapping of an account at its bound."""
        ids = self._accounts.get(mapping.account_id)
        if ids is None or len(ids) < self.max_per_account:
            return False
        self.dropped += 1
        account = mapping.account_id
        n = self.dropped_by_account[account] = self.dropped_by_account.get(account, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.error("account {account} holds {limit} mappings, the per-account bound; "
                      "dropping {id} ({n} dropped so far)", account=account,
                      limit=self.max_per_account, id=mapping.id, n=n)
        return True

    def _index(self, mapping: pb.ProxyMapping) -> None:
        if mapping.domain:
            # interned (as the service table and runtimes do): one string each
            self._domains.setdefault(domain_key(sys.intern(mapping.domain)), []).append(
                sys.intern(mapping.id))

    def _unindex(self, mapping: pb.ProxyMapping) -> None:
        if not mapping.domain:
            return
        key = domain_key(mapping.domain)
        ids = self._domains.get(key)
        if ids and mapping.id in ids:
            ids.remove(mapping.id)
            if not ids:
                del self._domains[key]

    def _insert(self, mapping: pb.ProxyMapping, raw: bytes,
                pending: list[Deferred[Any]]) -> None:
        account = sys.intern(mapping.account_id)
        new_account = account not in self._accounts
        sid = sys.intern(mapping.id)
        self._by_id[sid] = raw
        self._accounts.setdefault(account, set()).add(sid)
        self._index(mapping)
        if new_account:
            self._notify(pending, "account_added", account)
        self._notify(pending, "mapping_added", mapping)

    def _replace(
        self, old: pb.ProxyMapping, new: pb.ProxyMapping, raw: bytes,
        pending: list[Deferred[Any]],
    ) -> None:
        if old.account_id != new.account_id:
            # A service never moves between accounts upstream; if it does,
            # treat it as remove + add so per-account state stays consistent
            # (the add within the new account's bound).
            self._remove(old.id, pending)
            if not self._account_full(new):
                self._insert(new, raw, pending)
            return
        self._unindex(old)
        self._by_id[new.id] = raw
        self._index(new)
        self._notify(pending, "mapping_changed", old, new)

    def _remove(self, service_id: str, pending: list[Deferred[Any]]) -> None:
        mapping = _load(self._by_id.pop(service_id))
        self._unindex(mapping)
        ids = self._accounts[mapping.account_id]
        ids.discard(service_id)
        self._notify(pending, "mapping_removed", mapping)
        if not ids:
            del self._accounts[mapping.account_id]
            self._notify(pending, "account_removed", mapping.account_id)

    def _reconcile(self, seen: set[str], pending: list[Deferred[Any]]) -> None:
        stale = [i for i in self._by_id if i not in seen]
        for service_id in stale:
            log.info("Removing stale mapping absent from snapshot", id=service_id)
            self._remove(service_id, pending)
        self.initial_sync_complete = True
        self.snapshots_completed += 1
        log.info("Initial mapping sync complete", mappings=len(self), stale=len(stale))
        self._notify(pending, "snapshot_reconciled", frozenset(stale))
