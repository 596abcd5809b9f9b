"""Domain types of the management service (accounts, users, peers, groups, services).

All types are frozen dataclasses. Sequence fields are normalised to tuples and
mapping fields to a private ``dict`` copy in ``__post_init__``, so an instance
never shares mutable state with its caller or with another instance: "copy"
is ``dataclasses.replace`` (or :meth:`Service.copy`), and mutating a copy can
never leak into the original.

Conventions:

* Datetimes are timezone-aware UTC (``datetime.UTC``); ``None`` means unset.
* Durations are integer nanoseconds (the upstream column format); use
  :func:`parse_go_duration` / :func:`format_go_duration` at the API edge.
* ``id == ""`` on an object passed to a ``Store.create_*`` method means
  "generate one" (an xid-style 20-character id, see :func:`new_id`).
* Secrets (password, PIN, header values) are plain text on the way in and
  argon2id PHC strings once stored; API responses must blank them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ACCOUNT_DEFAULT_NETWORK_V4",
    "DEFAULT_SESSION_MAX_AGE_SECONDS",
    "AccessLogEntry",
    "AccessLogPage",
    "AccessLogQuery",
    "AccessRestrictions",
    "Account",
    "AuthConfig",
    "BearerAuth",
    "Bootstrap",
    "ChangeKind",
    "Cluster",
    "CustomDomain",
    "Group",
    "HeaderAuth",
    "LoadBalancing",
    "PasswordAuth",
    "Peer",
    "PersonalAccessToken",
    "PinAuth",
    "ProxyAccessToken",
    "ProxyCapabilities",
    "ProxyInboundListener",
    "ProxyRecord",
    "Service",
    "ServiceMeta",
    "ServiceStatus",
    "Target",
    "TargetOptions",
    "User",
    "format_go_duration",
    "new_id",
    "parse_go_duration",
    "utcnow",
]

ACCOUNT_DEFAULT_NETWORK_V4 = "100.64.0.0/10"
DEFAULT_SESSION_MAX_AGE_SECONDS = 86400

MODES = ("http", "tcp", "udp", "tls")
TARGET_TYPES = ("peer", "host", "domain", "subnet", "cluster")
TARGET_PROTOCOLS = ("http", "https", "tcp", "udp")
#: a target's ``upstream_protocol`` (nbgateway extension): "" / "http1" is
#: HTTP/1.1, "h2" HTTP/2 (h2c for http targets, ALPN h2 for https; gRPC)
UPSTREAM_PROTOCOLS = ("", "http1", "h2")
USER_ROLES = ("owner", "admin", "user")


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- ids --------------------------------------------------------------------

_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_xid_lock = threading.Lock()
_xid_counter = int.from_bytes(os.urandom(3), "big")
_xid_machine = os.urandom(3)


def new_id() -> str:
    """Return a new xid-style id: 20 lowercase base32hex characters, time-ordered."""
    global _xid_counter
    with _xid_lock:
        _xid_counter = (_xid_counter + 1) & 0xFFFFFF
        counter = _xid_counter
    raw = (
        int(time.time()).to_bytes(4, "big")
        + _xid_machine
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + counter.to_bytes(3, "big")
    )
    n = int.from_bytes(raw, "big") << 4  # 96 bits -> 100 bits = 20 x 5
    return "".join(_XID_ALPHABET[(n >> (5 * i)) & 31] for i in range(19, -1, -1))


# --- Go durations -------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION = (1 << 63) - 1


def parse_go_duration(text: str) -> int:
    """Parse a Go ``time.ParseDuration`` string ("300ms", "1.5s", "1h30m") to nanoseconds.

    Raises ``ValueError`` with Go's wording (``time: invalid duration "abc"``).
    """
    if not isinstance(text, str):
        raise ValueError(f"time: invalid duration {text!r}")
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        number, unit = m.group(1), m.group(2)
        whole, _, frac = number.partition(".")
        scale = _DURATION_UNITS[unit]
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_DURATION:
            raise ValueError(f'time: invalid duration "{text}"')
        pos = m.end()
    return sign * total


def _fmt_frac(v: int, prec: int) -> str:
    whole, frac = divmod(v, 10**prec)
    digits = f"{frac:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def format_go_duration(ns: int) -> str:
    """Format nanoseconds like Go's ``Duration.String()`` (30s, 2m0s, 1h0m0s, 1.5s, 300ms)."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        if u < 1_000:
            out = f"{u}ns"
        elif u < 1_000_000:
            out = _fmt_frac(u, 3) + "µs"
        else:
            out = _fmt_frac(u, 6) + "ms"
    else:
        secs_ns = u % 60_000_000_000
        mins_total = u // 60_000_000_000
        out = _fmt_frac(secs_ns, 9) + "s"
        if mins_total:
            hours, mins = divmod(mins_total, 60)
            out = f"{mins}m" + out
            if hours:
                out = f"{hours}h" + out
    return "-" + out if neg else out


# --- helpers ------------------------------------------------------------------


def _freeze_tuple(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is not None and not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(value))


def _freeze_dict(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    object.__setattr__(obj, name, dict(value) if value is not None else {})


class ServiceStatus(enum.StrEnum):
    """``meta.status`` values; proto ``ProxyStatus`` 0..5 map onto them in order."""

    PENDING = "pending"
    ACTIVE = "active"
    TUNNEL_NOT_CREATED = "tunnel_not_created"
    CERTIFICATE_PENDING = "certificate_pending"
    CERTIFICATE_FAILED = "certificate_failed"
    ERROR = "error"


class ChangeKind(enum.StrEnum):
    """First argument of a store change listener ``(kind, account_id, ids)``."""

    ACCOUNT = "account"
    USER = "user"
    GROUP = "group"
    PEER = "peer"
    SERVICE_CREATED = "service.created"
    SERVICE_UPDATED = "service.updated"
    SERVICE_DELETED = "service.deleted"
    #: only ``meta.status`` (and its message / certificate time) changed: the
    #: mapping and network maps cannot differ, so their listeners skip it
    SERVICE_STATUS = "service.status"
    PROXY = "proxy"
    DOMAIN = "domain"
    PROXY_TOKEN = "proxy_token"
    PERSONAL_ACCESS_TOKEN = "personal_access_token"


# --- account, users, groups, peers ---------------------------------------------


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


# --- services ------------------------------------------------------------------


@dataclass(frozen=True)
class TargetOptions:
    skip_tls_verify: bool = False
    #: nanoseconds, 0 = unset
    request_timeout: int = 0
    #: nanoseconds, 0 = unset
    session_idle_timeout: int = 0
    #: "" or "preserve"
    path_rewrite: str = ""
    custom_headers: Mapping[str, str] = field(default_factory=dict)
    #: dial the target through the host network stack, not the tunnel
    direct_upstream: bool = False
    #: "" (HTTP/1.1), "http1" or "h2" (see UPSTREAM_PROTOCOLS)
    upstream_protocol: str = ""

    def __post_init__(self) -> None:
        _freeze_dict(self, "custom_headers")

    def is_default(self) -> bool:
        return self == TargetOptions()


@dataclass(frozen=True)
class Target:
    #: database id (autoincrement); None before storing
    id: int | None = None
    #: HTTP only; None means "/"
    path: str | None = None
    host: str = ""
    port: int = 0
    protocol: str = "http"
    #: peer id, network resource id, or cluster address
    target_id: str = ""
    #: peer, host, domain, subnet or cluster
    target_type: str = "peer"
    enabled: bool = True
    proxy_protocol: bool = False
    options: TargetOptions = field(default_factory=TargetOptions)


LB_POLICIES = ("round_robin", "least_conn")


@dataclass(frozen=True)
class LoadBalancing:
    """How gateways spread an HTTP service's requests over the targets of a
    path and judge their health (nbgateway extension, issue 16); every path
    of the service uses the same settings.  0 / "" means the gateway default
    (round robin, eject after 3 consecutive failures, 10 s back-off doubling
    up to 300 s, no active checks; checks every 10 s with a 5 s timeout,
    any 2xx/3xx healthy)."""

    policy: str = "round_robin"
    max_failures: int = 0
    backoff_seconds: int = 0
    max_backoff_seconds: int = 0
    #: active HTTP health check path ("" = none)
    health_path: str = ""
    health_interval_seconds: int = 0
    health_timeout_seconds: int = 0
    health_status: int = 0

    def is_default(self) -> bool:
        return self == LoadBalancing()


@dataclass(frozen=True)
class PasswordAuth:
    enabled: bool = False
    password: str = ""


@dataclass(frozen=True)
class PinAuth:
    enabled: bool = False
    pin: str = ""


@dataclass(frozen=True)
class BearerAuth:
    enabled: bool = False
    distribution_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _freeze_tuple(self, "distribution_groups")


@dataclass(frozen=True)
class HeaderAuth:
    enabled: bool = False
    header: str = ""
    value: str = ""


@dataclass(frozen=True)
class AuthConfig:
    password_auth: PasswordAuth | None = None
    pin_auth: PinAuth | None = None
    bearer_auth: BearerAuth | None = None
    header_auths: tuple[HeaderAuth, ...] = ()

    def __post_init__(self) -> None:
        _freeze_tuple(self, "header_auths")

    @property
    def bearer_enabled(self) -> bool:
        return bool(self.bearer_auth and self.bearer_auth.enabled)


@dataclass(frozen=True)
class AccessRestrictions:
    allowed_cidrs: tuple[str, ...] = ()
    blocked_cidrs: tuple[str, ...] = ()
    allowed_countries: tuple[str, ...] = ()
    blocked_countries: tuple[str, ...] = ()
    #: "", "off", "enforce" or "observe"
    crowdsec_mode: str = ""

    def __post_init__(self) -> None:
        for name in ("allowed_cidrs", "blocked_cidrs", "allowed_countries", "blocked_countries"):
            _freeze_tuple(self, name)

    def is_empty(self) -> bool:
        return self == AccessRestrictions()


@dataclass(frozen=True)
class ServiceMeta:
    created_at: datetime | None = None
    certificate_issued_at: datetime | None = None
    status: str = ServiceStatus.PENDING
    last_renewed_at: datetime | None = None
    #: ``error_message`` of the last gateway status update ("" when none) and when
    status_message: str = ""
    status_updated_at: datetime | None = None


@dataclass(frozen=True)
class Service:
    id: str = ""
    account_id: str = ""
    name: str = ""
    #: service FQDN without trailing dot; unique across all accounts
    domain: str = ""
    #: derived from the domain by the store on create/update
    proxy_cluster: str = ""
    targets: tuple[Target, ...] = ()
    enabled: bool = True
    terminated: bool = False
    pass_host_header: bool = False
    rewrite_redirects: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    restrictions: AccessRestrictions = field(default_factory=AccessRestrictions)
    meta: ServiceMeta = field(default_factory=ServiceMeta)
    #: base64 of Go's 64-byte Ed25519 private key (seed || public); never exposed
    session_private_key: str = ""
    #: base64 of the 32-byte Ed25519 public key; shipped to proxies in mappings
    session_public_key: str = ""
    #: "permanent" (API) or "ephemeral" (peer expose)
    source: str = "permanent"
    source_peer: str = ""
    #: http, tcp, udp or tls ("" is defaulted to http by validation)
    mode: str = "http"
    listen_port: int = 0
    port_auto_assigned: bool = False
    #: NetBird-only service (HTTP only, >= 1 access group, no bearer auth)
    private: bool = False
    #: allow-list of group ids; None = not set (stored as SQL NULL)
    access_groups: tuple[str, ...] | None = None
    #: X-NetBird-Jwt-Assertion: "off", "on" or "required" (issue 16)
    assertion_mode: str = "off"
    #: the service's assertion key pairs (assertionkeys.AssertionKey; secret seeds)
    assertion_keys: tuple[Any, ...] = field(default=(), repr=False)
    #: session cookie/JWT lifetime in seconds; 0 = DEFAULT_SESSION_MAX_AGE_SECONDS
    max_session_age_seconds: int = 0
    #: machine-client tokens (servicetokens.ServiceToken; digests only), written
    #: only by store.services.create_token/revoke_token
    service_tokens: tuple[Any, ...] = field(default=(), repr=False)
    #: unix seconds; nb_session cookies issued before are refused (0 = never);
    #: written only by store.services.revoke_sessions
    sessions_not_before: int = 0
    #: several targets per path: policy and health checks (HTTP only)
    load_balancing: LoadBalancing = field(default_factory=LoadBalancing)
    #: mTLS client certificates (clientcerts.ClientCertAuth; None = off), written
    #: only by store.services.set_client_cert_auth
    client_cert_auth: Any = field(default=None, repr=False)
    #: the client_cert_auth rule resolved against the account's users for a
    #: mapping (clientcerts.resolve_rows; never stored)
    client_cert_rows: tuple[Any, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _freeze_tuple(self, "targets")
        _freeze_tuple(self, "access_groups")

    def copy(self) -> Service:
        """Deep copy (all nested values are immutable or freshly copied)."""
        return dataclasses.replace(
            self,
            targets=tuple(
                dataclasses.replace(t, options=dataclasses.replace(t.options)) for t in self.targets
            ),
        )


# --- proxies, clusters, domains, tokens ------------------------------------------


@dataclass(frozen=True)
class ProxyCapabilities:
    """Persisted proxy capabilities (``supports_private_service`` is never persisted)."""

    supports_custom_ports: bool | None = None
    require_subdomain: bool | None = None
    supports_crowdsec: bool | None = None
    #: the proxy runs embedded in a netbird client
    private: bool | None = None


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


@dataclass(frozen=True)
class ProxyAccessToken:
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

    def is_valid(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class PersonalAccessToken:
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

    def is_valid(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Bootstrap:
    """Result of ``Store.ensure_default_account``.

    ``admin_token`` is the plain first admin personal access token; it is set only
    by the call that created it, and ``None`` on every later call.
    """

    account: Account
    admin_user: User
    admin_token: str | None


# --- access logs ----------------------------------------------------------------


@dataclass(frozen=True)
class AccessLogEntry:
    id: str = ""
    account_id: str = ""
    service_id: str = ""
    timestamp: datetime | None = None
    source_ip: str = ""
    country_code: str = ""
    city_name: str = ""
    geo_name_id: int = 0
    subdivision_code: str = ""
    method: str = ""
    host: str = ""
    path: str = ""
    #: nanoseconds
    duration: int = 0
    status_code: int = 0
    reason: str = ""
    user_id: str = ""
    auth_method_used: str = ""
    bytes_upload: int = 0
    bytes_download: int = 0
    #: http, tcp or udp
    protocol: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    agent_network: bool = False
    #: nbgateway extension: group names captured at write time; None = not resolved
    user_groups: tuple[str, ...] | None = None
    #: nbgateway extension: the upstream target that served the request
    #: (``scheme://host:port``, "" when none was dialed)
    upstream_target: str = ""

    def __post_init__(self) -> None:
        _freeze_dict(self, "metadata")
        _freeze_tuple(self, "user_groups")


ACCESS_LOG_SORT_FIELDS = (
    "timestamp",
    "url",
    "host",
    "path",
    "method",
    "status_code",
    "duration",
    "source_ip",
    "user_id",
    "auth_method",
    "reason",
)


@dataclass(frozen=True)
class AccessLogQuery:
    """Filters and paging for ``Store.list_access_logs`` (GET /api/events/proxy)."""

    page: int = 1
    page_size: int = 50
    sort_by: str = "timestamp"
    sort_order: str = "desc"
    #: substring over host, path, user id, source ip, reason
    search: str | None = None
    service_id: str | None = None
    source_ip: str | None = None
    host: str | None = None
    path: str | None = None
    user_id: str | None = None
    user_email: str | None = None
    user_name: str | None = None
    method: str | None = None
    #: "success" (< 400 and no failure reason) or "failed"
    status: str | None = None
    status_code: int | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    #: entries whose captured ``user_groups`` name this group of the account
    group_id: str | None = None


@dataclass(frozen=True)
class AccessLogPage:
    data: tuple[AccessLogEntry, ...]
    page: int
    page_size: int
    total_records: int
    total_pages: int
