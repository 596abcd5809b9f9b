"""Per-account runtime: one tunnel identity per account.

An :class:`AccountRuntime` owns, for one account: a WireGuard device in the
gateway's shared :class:`~nbgateway.wireguard.mux.DeviceMux` (one UDP port for
all accounts), the netstack on the account's tunnel address, the inbound
listeners (HTTP, HTTPS, DNS) and the peer-channel session that keeps the
account's network map (roster, packet filter, DNS zone).
:class:`AccountRegistry` is the mapping-store observer that creates runtimes
on the first mapping of an account and tears them down with its last one.
Everything I/O-ish is injected (peer channel, inbound listeners, key
generation), so the package is tested with fakes and ``task.Clock``.

Modules:

* :mod:`._runtime`: :class:`AccountSettings`, :class:`AccountStats` (key
  rotations, refused endpoints) and :class:`AccountRuntime` (its slots,
  services, status reports and teardown);
* :mod:`._registration`: CreateProxyPeer, its back-off, the key rotation
  after a squatted key and the peer-login probe after a lost answer (the
  lifecycle is described there);
* :mod:`._network`: applying network maps (roster, filter, netstack, listeners);
* :mod:`._registry`: :class:`AccountRegistry`.
"""

from __future__ import annotations

from nbgateway.accounts._registration import (
    MAX_KEY_ROTATIONS,
    RETRY_INITIAL,
    RETRY_JITTER,
    RETRY_MAX,
)
from nbgateway.accounts._registry import AccountRegistry
from nbgateway.accounts._runtime import (
    ACTIVE,
    ERROR,
    TUNNEL_NOT_CREATED,
    AccountRuntime,
    AccountSettings,
    AccountStats,
)

__all__ = [
    "ACTIVE",
    "ERROR",
    "MAX_KEY_ROTATIONS",
    "RETRY_INITIAL",
    "RETRY_JITTER",
    "RETRY_MAX",
    "TUNNEL_NOT_CREATED",
    "AccountRegistry",
    "AccountRuntime",
    "AccountSettings",
    "AccountStats",
]
