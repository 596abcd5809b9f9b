"""Access logs: :class:`AccessLogEntry`, the list query and its page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nbgateway.management.model._conventions import _freeze_dict, _freeze_tuple


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
