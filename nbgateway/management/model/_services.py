"""Services: :class:`Service` and what it is made of (targets and their
options, load balancing, authentication, access restrictions, status meta)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nbgateway.management.model._conventions import _freeze_dict, _freeze_tuple

DEFAULT_SESSION_MAX_AGE_SECONDS = 86400

MODES = ("http", "tcp", "udp", "tls")
TARGET_TYPES = ("peer", "host", "domain", "subnet", "cluster")
TARGET_PROTOCOLS = ("http", "https", "tcp", "udp")
#: a target's ``upstream_protocol`` (nbgateway extension): "" / "http1" is
#: HTTP/1.1, "h2" HTTP/2 (h2c for http targets, ALPN h2 for https; gRPC)
UPSTREAM_PROTOCOLS = ("", "http1", "h2")


class ServiceStatus(enum.StrEnum):
    """``meta.status`` values; proto ``ProxyStatus`` 0..5 map onto them in order."""

    PENDING = "pending"
    ACTIVE = "active"
    TUNNEL_NOT_CREATED = "tunnel_not_created"
    CERTIFICATE_PENDING = "certificate_pending"
    CERTIFICATE_FAILED = "certificate_failed"
    ERROR = "error"


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
