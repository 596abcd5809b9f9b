"""Gateways and credentials: proxy records, clusters, custom domains, proxy
and personal access tokens, and the bootstrap result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from nbgateway.management.l4ports import GatewayPorts
from nbgateway.management.model._accounts import Account, User


@dataclass(frozen=True)
class ProxyCapabilities:
    """Persisted proxy capabilities (``supports_private_service`` is never persisted)."""

    supports_custom_ports: bool | None = None
    require_subdomain: bool | None = None
    supports_crowdsec: bool | None = None
    #: the proxy runs embedded in a netbird client
    private: bool | None = None
    #: nbgateway extension: the host ports public L4 services may bind on
    #: this proxy (``nbgw_l4_public_ports``); None = not advertised
    l4_ports: GatewayPorts | None = None


@dataclass(frozen=True)
class ProxyRecord:
    id: str = ""
    session_id: str = ""
    cluster_address: str = ""
    ip_address: str = ""
    #: set for BYOP (account-scoped token) proxies, None for shared ones
    account_id: str | None = None
    status: str = "connected"
    last_seen: datetime | None = None
    connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    capabilities: ProxyCapabilities = field(default_factory=ProxyCapabilities)


@dataclass(frozen=True)
class ProxyInboundListener:
    """Where a proxy listens inside one account's tunnel (nbgateway extension)."""

    proxy_id: str = ""
    account_id: str = ""
    tunnel_ip: str = ""
    https_port: int = 0
    http_port: int = 0
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Cluster:
    """Aggregated view over ``proxies`` rows visible to an account (not a table)."""

    id: str
    address: str
    #: "account" if any row is account-scoped, else "shared"
    type: str
    online: bool
    connected_proxies: int
    supports_custom_ports: bool | None = None
    require_subdomain: bool | None = None
    supports_crowdsec: bool | None = None
    private: bool | None = None


@dataclass(frozen=True)
class CustomDomain:
    id: str = ""
    account_id: str = ""
    domain: str = ""
    target_cluster: str = ""
    validated: bool = False


class _Revocable:
    """The validity rule of a stored token (``revoked``, ``expires_at``)."""

    revoked: bool
    expires_at: datetime | None

    def is_valid(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class ProxyAccessToken(_Revocable):
    """A proxy token row. Only the hash is stored; the plain text is returned once."""

    id: str = ""
    name: str = ""
    #: base64-std SHA-256 of the plain token
    hashed_token: str = ""
    #: None = management-wide; set = account-scoped (BYOP)
    account_id: str | None = None
    expires_at: datetime | None = None
    created_by: str = ""
    created_at: datetime | None = None
    last_used: datetime | None = None
    revoked: bool = False


@dataclass(frozen=True)
class PersonalAccessToken(_Revocable):
    """A REST API token of a user (``Authorization: Token <plain>``), stored hashed."""

    id: str = ""
    account_id: str = ""
    user_id: str = ""
    name: str = ""
    hashed_token: str = ""
    expires_at: datetime | None = None
    created_by: str = ""
    created_at: datetime | None = None
    last_used: datetime | None = None
    revoked: bool = False


@dataclass(frozen=True)
class Bootstrap:
    """Result of ``Store.ensure_default_account``.

    ``admin_token`` is the plain first admin personal access token; it is set only
    by the call that created it, and ``None`` on every later call.
    """

    account: Account
    admin_user: User
    admin_token: str | None
