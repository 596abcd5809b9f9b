"""The mapping-store observer that owns the account runtimes.

:class:`AccountRegistry` creates an :class:`~nbgateway.accounts.AccountRuntime`
on the first mapping of an account (``make_runtime``, injected), routes each
mapping change to its account's runtime (a fresh token retries a failed
registration) and tears the runtime down with the account's last mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts._runtime import AccountRuntime
from nbgateway.store.mappings import MappingObserver


class AccountRegistry(MappingObserver):
    """Creates an :class:`AccountRuntime` per account with mappings, routes
    services to it, and tears it down when its last mapping goes."""

    def __init__(self, make_runtime: Callable[[str], AccountRuntime],
                 on_change: Callable[[str], None] | None = None,
                 on_removed: Callable[[str], Any] | None = None,
                 raw_of: Callable[[str], bytes | None] | None = None) -> None:
        self.make_runtime = make_runtime
        self.on_change = on_change  # e.g. evict the account's validation cache
        self.on_removed = on_removed  # e.g. close the account's upstream pools
        #: a service id -> the mapping store's serialized mapping (MappingStore.raw):
        #: runtimes keep that bytes object instead of serializing their own copy
        self.raw_of = raw_of
        self.runtimes: dict[str, AccountRuntime] = {}

    def _raw(self, mapping: pb.ProxyMapping) -> bytes:
        raw = None if self.raw_of is None else self.raw_of(mapping.id)
        return mapping.SerializeToString() if raw is None else raw

    def get(self, account_id: str) -> AccountRuntime | None:
        return self.runtimes.get(account_id)

    def _changed(self, account_id: str) -> None:
        if self.on_change is not None:
            self.on_change(account_id)

    def account_added(self, account_id: str) -> None:
        self.runtimes[account_id] = self.make_runtime(account_id)

    def account_removed(self, account_id: str) -> Deferred | None:
        runtime = self.runtimes.pop(account_id, None)
        self._changed(account_id)
        if runtime is None:
            return None
        d = runtime.stop()
        if self.on_removed is not None:
            d.addBoth(lambda _: self.on_removed(account_id))
        return d

    def mapping_added(self, mapping: pb.ProxyMapping) -> Deferred | None:
        self._changed(mapping.account_id)
        runtime = self.runtimes.get(mapping.account_id)
        return None if runtime is None else runtime.add_service(mapping, self._raw(mapping))

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> Deferred | None:
        self._changed(new.account_id)
        runtime = self.runtimes.get(new.account_id)
        if runtime is not None:
            runtime.services[new.id] = raw = self._raw(new)
            if runtime.state == "failed":
                return runtime.add_service(new, raw)  # a fresh token: retry registration
            if runtime.state in ("registering", "retrying", "connecting"):
                runtime.offer_token(new)  # the next attempt sends the fresh token
            return runtime.service_changed(new)
        return None

    def mapping_refreshed(self, mapping: pb.ProxyMapping) -> Deferred | None:
        runtime = self.runtimes.get(mapping.account_id)
        if runtime is not None and mapping.id in runtime.services:
            # the store replaced its bytes (same content): share the new ones
            runtime.services[mapping.id] = self._raw(mapping)
        if runtime is not None and runtime.state == "failed":
            return runtime.add_service(mapping, self._raw(mapping))
        if runtime is not None and runtime.state in ("registering", "retrying", "connecting"):
            runtime.offer_token(mapping)
        return None

    def mapping_removed(self, mapping: pb.ProxyMapping) -> Deferred | None:
        self._changed(mapping.account_id)
        runtime = self.runtimes.get(mapping.account_id)
        return None if runtime is None else runtime.remove_service(mapping)

    def stop(self) -> Deferred:
        runtimes, self.runtimes = list(self.runtimes.values()), {}
        return DeferredList([r.stop() for r in runtimes], consumeErrors=True)
