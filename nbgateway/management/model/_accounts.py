"""Accounts and their members: :class:`Account`, :class:`User`, :class:`Group`, :class:`Peer`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nbgateway.management.model._conventions import _freeze_tuple

ACCOUNT_DEFAULT_NETWORK_V4 = "100.64.0.0/10"
USER_ROLES = ("owner", "admin", "user")


@dataclass(frozen=True)
class Account:
    id: str = ""
    domain: str = "netbird.selfhosted"
    network_v4: str = ACCOUNT_DEFAULT_NETWORK_V4
    #: per-account ULA /64 (generated at creation when empty)
    network_v6: str = ""
    created_at: datetime | None = None
    #: display name given at creation through the API ("" for the bootstrap account)
    name: str = ""


@dataclass(frozen=True)
class User:
    id: str = ""
    account_id: str = ""
    email: str = ""
    name: str = ""
    role: str = "user"
    is_service_user: bool = False
    #: group ids auto-assigned to peers this user registers (and the SSO/bearer basis)
    auto_groups: tuple[str, ...] = ()
    blocked: bool = False
    #: upstream stores a pending user with both ``blocked`` and ``pending_approval``
    pending_approval: bool = False
    created_at: datetime | None = None
    #: the operator: may create accounts and list every account's services
    #: (set only for the bootstrap admin; never through the users API)
    instance_admin: bool = False

    def __post_init__(self) -> None:
        _freeze_tuple(self, "auto_groups")

    @property
    def status(self) -> str:
        """``pending`` (awaiting approval), ``blocked`` or ``active``."""
        if self.pending_approval:
            return "pending"
        if self.blocked:
            return "blocked"
        return "active"


@dataclass(frozen=True)
class Group:
    id: str = ""
    account_id: str = ""
    name: str = ""
    #: ``api``, ``integration`` or ``jwt``
    issued: str = "api"
    #: member peer ids (order of insertion)
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _freeze_tuple(self, "peers")


@dataclass(frozen=True)
class Peer:
    id: str = ""
    account_id: str = ""
    name: str = ""
    #: WireGuard public key, base64; unique across the installation
    key: str = ""
    #: IPv4 tunnel address (text); "" on create means "allocate"
    ip: str = ""
    #: IPv6 tunnel address; "" on create means "allocate", None means "none"
    ipv6: str | None = ""
    dns_label: str = ""
    #: owning user id; None for machine / setup-key / proxy peers
    user_id: str | None = None
    #: optional static "host:port" endpoint for server peers
    endpoint: str | None = None
    #: ids of the groups containing this peer (derived from group membership)
    groups: tuple[str, ...] = ()
    #: True for an embedded proxy peer (upstream ``proxy_meta_embedded``)
    proxy: bool = False
    #: cluster address a proxy peer serves (upstream ``proxy_meta_cluster``)
    proxy_cluster: str = ""
    connected: bool = False
    ephemeral: bool = False
    #: server-generated WireGuard private key (only when the server made the key pair)
    wg_private_key: str | None = None
    last_seen: datetime | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        _freeze_tuple(self, "groups")
