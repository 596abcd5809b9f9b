"""The gateway's own observers of the :class:`~nbgateway.store.mappings.MappingStore`
(besides routing, accounts, L4 and health checks, which own theirs):

* :class:`SyncHealth`: startup is complete once a full snapshot was applied
  (the readiness check waits for it);
* :class:`CAConstraints`: the local CA's (the mapping's account's CA)
  name constraints widen to a mapped domain when its mapping arrives, before
  any status report or handshake; an account leaving the gateway drops its
  CA from memory.
"""

from __future__ import annotations

from typing import Any

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.observe.health import HealthState
from nbgateway.store.mappings import MappingObserver


class SyncHealth(MappingObserver):
    """Marks startup complete once a full snapshot was applied."""

    def __init__(self, health: HealthState) -> None:
        self.health = health

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> None:
        self.health.mark_initial_sync_complete()


class CAConstraints(MappingObserver):
    """Widens the local CA's name constraints to a mapped domain when the
    mapping arrives, before any status report or handshake (nbgateway.tls.ca)."""

    def __init__(self, certificates: Any) -> None:
        self.certificates = certificates

    def mapping_added(self, mapping: pb.ProxyMapping) -> None:
        # TCP/UDP relays and TLS passthrough never get a certificate from us
        if mapping.domain and mapping.mode not in ("tcp", "udp", "tls") \
                and hasattr(self.certificates, "permit"):
            self.certificates.permit([mapping.domain], mapping.account_id)

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> None:
        self.mapping_added(new)

    def account_removed(self, account_id: str) -> None:
        # its CA object goes; its directory stays (a re-added account keeps
        # the CA its peers trust): nbgateway.tls.certstore
        if hasattr(self.certificates, "forget_account"):
            self.certificates.forget_account(account_id)
