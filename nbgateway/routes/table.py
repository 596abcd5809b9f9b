"""The service table: which service serves this host, or this (account, port).

:class:`ServiceTable` is a mapping-store observer (it implements the
``MappingObserver`` methods of :mod:`nbgateway.store.mappings` without
importing the store) that keeps one :class:`~nbgateway.routes.service.ServiceEntry`
per HTTP domain, keyed by :func:`~nbgateway.routes.hosts.domain_key` (the same
key the mapping store indexes by), and one per L4 ``(account, listen_port)``.
HTTP entries with unusable targets are reported to management as ``ERROR``.

A domain belongs to one account at a time: a mapping of another account for
a domain an entry already serves does not replace it (management refuses
duplicate domains, so only a faulty or foreign management sends one); it is
reported as ``ERROR`` and held back, and installed when the holder's mapping
goes (a domain handed from one account to another may arrive add-first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.hosts import domain_key
from nbgateway.routes.service import (
    ServiceEntry,
    entry_from_mapping,
    is_l4,
    session_key_error,
)

log = Logger()


class ServiceTable:
    """Host -> :class:`ServiceEntry` for HTTP mappings, ``(account, port)`` ->
    :class:`ServiceEntry` for L4 mappings."""

    def __init__(self, mgmt: Any = None,
                 on_domain_gone: Callable[[str], Any] | None = None) -> None:
        self.mgmt = mgmt
        self.on_domain_gone = on_domain_gone
        self.entries: dict[str, ServiceEntry] = {}
        self.ports: dict[tuple[str, int], ServiceEntry] = {}
        #: domain key -> the newest mapping of another account than the
        #: entry's, waiting for the domain (at most one per domain)
        self.held_back: dict[str, pb.ProxyMapping] = {}

    def lookup(self, domain: str) -> ServiceEntry | None:
        """The HTTP service for a host name (any spelling :func:`domain_key` folds).

        A name already in key form (the front resource passes one) is found
        by the first ``get``: the same answer, since ``domain_key`` returns
        such a name unchanged; other spellings are folded first."""
        entries = self.entries
        return entries.get(domain) or entries.get(domain_key(domain))

    def lookup_port(self, account_id: str, port: int) -> ServiceEntry | None:
        """The L4 service listening on ``port`` in ``account_id``'s tunnel."""
        return self.ports.get((account_id, port))

    def _add(self, mapping: pb.ProxyMapping) -> Deferred[Any] | None:
        if is_l4(mapping.mode):
            # not routed over HTTP; the account runtime reports it unsupported
            entry = entry_from_mapping(mapping)
            self.ports[(entry.service.account_id, entry.listen_port)] = entry
            return None
        entry = entry_from_mapping(mapping)
        # keyed by the entry's own domain string (domain_key returns a
        # normalised name as is): no second copy per service
        key = domain_key(entry.service.domain)
        current = self.entries.get(key)
        if current is not None and current.service.account_id != entry.service.account_id:
            self.held_back[key] = mapping
            log.warn("mapping {service} of account {account} not installed: {domain} is "
                     "served for account {holder}", service=mapping.id,
                     account=mapping.account_id, domain=key,
                     holder=current.service.account_id)
            return self._report(mapping, f"domain {key} is served for another account")
        self.entries[key] = entry
        if entry.route_errors:
            return self._report(mapping, "; ".join(entry.route_errors))
        return None

    def _report(self, mapping: pb.ProxyMapping, error: str) -> Deferred[Any] | None:
        if self.mgmt is None:
            return None
        return maybeDeferred(
            self.mgmt.send_status_update, mapping.id, mapping.account_id,
            pb.PROXY_STATUS_ERROR, error_message=error,
        ).addErrback(lambda f: None)

    def _remove(self, mapping: pb.ProxyMapping) -> None:
        if is_l4(mapping.mode):
            key = (mapping.account_id, int(mapping.listen_port))
            l4 = self.ports.get(key)
            if l4 is not None and l4.service.service_id == mapping.id:
                del self.ports[key]
        key = domain_key(mapping.domain)
        waiting = self.held_back.get(key)
        if waiting is not None and waiting.id == mapping.id:
            del self.held_back[key]
        entry = self.entries.get(key)
        if entry is not None and entry.service.account_id != mapping.account_id:
            return  # a held-back mapping went: the holder's connections stay
        if entry is not None and entry.service.service_id == mapping.id:
            del self.entries[key]
        if self.on_domain_gone is not None:
            self.on_domain_gone(mapping.domain)  # e.g. close upgraded connections
        if key not in self.entries:
            waiting = self.held_back.pop(key, None)
            if waiting is not None:  # the domain's next account
                self._add(waiting)

    # -- MappingObserver ---------------------------------------------------

    def account_added(self, account_id: str) -> None:
        return None

    def account_removed(self, account_id: str) -> None:
        return None

    def mapping_added(self, mapping: pb.ProxyMapping) -> Deferred[Any] | None:
        error = None if is_l4(mapping.mode) else session_key_error(mapping)
        if error is not None:  # not installed: its cookies could never verify
            log.warn("mapping {service} not installed: {error}", service=mapping.id, error=error)
            return self._report(mapping, error)
        return self._add(mapping)

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> Deferred[Any] | None:
        error = None if is_l4(new.mode) else session_key_error(new)
        if error is not None:  # a failed update leaves the previous config intact
            log.warn("mapping {service} update not applied: {error}", service=new.id,
                     error=error)
            return self._report(new, error)
        self._remove(old)
        return self._add(new)

    def mapping_refreshed(self, mapping: pb.ProxyMapping) -> None:
        return None

    def mapping_removed(self, mapping: pb.ProxyMapping) -> None:
        self._remove(mapping)

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> None:
        return None
