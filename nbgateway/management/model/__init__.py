"""Domain types of the management service (accounts, users, peers, groups, services).

All types are frozen dataclasses. Sequence fields are normalised to tuples and
mapping fields to a private ``dict`` copy in ``__post_init__``, so an instance
never shares mutable state with its caller or with another instance: "copy"
is ``dataclasses.replace`` (or :meth:`Service.copy`), and mutating a copy can
never leak into the original.

Conventions (:mod:`._conventions`):

* Datetimes are timezone-aware UTC (``datetime.UTC``); ``None`` means unset.
* Durations are integer nanoseconds (the upstream column format); use
  :func:`parse_go_duration` / :func:`format_go_duration` at the API edge.
* ``id == ""`` on an object passed to a ``Store.create_*`` method means
  "generate one" (an xid-style 20-character id, see :func:`new_id`).
* Secrets (password, PIN, header values) are plain text on the way in and
  argon2id PHC strings once stored; API responses must blank them.

The types live in :mod:`._accounts` (accounts, users, groups, peers),
:mod:`._services` (services and their parts), :mod:`._proxies` (gateways,
domains, tokens) and :mod:`._accesslog`; this package re-exports them all and
owns :class:`ChangeKind`, the store's change-listener vocabulary.
"""

from __future__ import annotations

import enum

from nbgateway.management.model._accesslog import (
    ACCESS_LOG_SORT_FIELDS,
    AccessLogEntry,
    AccessLogPage,
    AccessLogQuery,
)
from nbgateway.management.model._accounts import (
    ACCOUNT_DEFAULT_NETWORK_V4,
    USER_ROLES,
    Account,
    Group,
    Peer,
    User,
)
from nbgateway.management.model._conventions import (
    format_go_duration,
    new_id,
    parse_go_duration,
    utcnow,
)
from nbgateway.management.model._proxies import (
    Bootstrap,
    Cluster,
    CustomDomain,
    PersonalAccessToken,
    ProxyAccessToken,
    ProxyCapabilities,
    ProxyInboundListener,
    ProxyRecord,
)
from nbgateway.management.model._services import (
    DEFAULT_SESSION_MAX_AGE_SECONDS,
    LB_POLICIES,
    MODES,
    TARGET_PROTOCOLS,
    TARGET_TYPES,
    UPSTREAM_PROTOCOLS,
    AccessRestrictions,
    AuthConfig,
    BearerAuth,
    HeaderAuth,
    LoadBalancing,
    PasswordAuth,
    PinAuth,
    Service,
    ServiceMeta,
    ServiceStatus,
    Target,
    TargetOptions,
)

__all__ = [
    "ACCESS_LOG_SORT_FIELDS",
    "ACCOUNT_DEFAULT_NETWORK_V4",
    "DEFAULT_SESSION_MAX_AGE_SECONDS",
    "LB_POLICIES",
    "MODES",
    "TARGET_PROTOCOLS",
    "TARGET_TYPES",
    "UPSTREAM_PROTOCOLS",
    "USER_ROLES",
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
