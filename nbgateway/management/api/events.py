"""``/api/events/proxy``: the gateways' reverse-proxy access log, paginated and filtered.

Owns the query (page, sort, the filters, RFC 3339 date bounds) and who reads
what: an admin reads the account's whole log, a regular user its own requests
only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import AccessLogQuery

from . import mapping as m
from .calls import acct, date_query, int_query, is_admin, q, ref
from .framework import Call, Result, Route

LOG_QUERY = [
    q("page", "integer", "page number (>= 1)", minimum=1, default=1),
    q("page_size", "integer", "entries per page", minimum=1, maximum=100, default=50),
    q("sort_by", description="sort field", enum=[
        "timestamp", "url", "host", "path", "method", "status_code", "duration", "source_ip",
        "user_id", "auth_method", "reason"]),
    q("sort_order", enum=["asc", "desc"], default="desc"),
    q("search", description="substring over host, path, user id, source ip, reason"),
    q("service_id"), q("source_ip"), q("host"), q("path"), q("user_id"),
    q("user_email"), q("user_name"), q("method"),
    q("status", enum=["success", "failed"]),
    q("status_code", "integer", minimum=100, maximum=599),
    q("start_date", format="date-time"), q("end_date", format="date-time"),
    q("group_id", description="entries whose user was in this group when logged"),
]

#: the string filters, passed on as given (empty = no filter)
_TEXT_FILTERS = ("search", "service_id", "source_ip", "host", "path", "user_id", "user_email",
                 "user_name", "method", "status", "group_id")


class EventHandlers:
    """Handler of the access-log route (a mixin of :class:`.routes.Handlers`)."""

    store: Any

    def list_access_logs(self, call: Call) -> Result:
        status_code = int_query(call, "status_code", None)
        query = AccessLogQuery(
            page=int_query(call, "page", 1), page_size=int_query(call, "page_size", 50),
            sort_by=call.query.get("sort_by") or "timestamp",
            sort_order=call.query.get("sort_order") or "desc",
            status_code=status_code, start_date=date_query(call, "start_date"),
            end_date=date_query(call, "end_date"),
            **{name: call.query.get(name) or None for name in _TEXT_FILTERS})
        assert call.identity is not None
        if not is_admin(call):  # a regular user reads its own requests only
            query = dataclasses.replace(query, user_id=call.identity.user_id)
        if query.status not in (None, "success", "failed"):
            raise ValidationError(f"invalid status {query.status!r}: use success or failed")
        page = self.store.access_logs.list(acct(call), query)
        return Result(200, {"data": [m.access_log_to_api(e) for e in page.data],
                            "page": page.page, "page_size": page.page_size,
                            "total_records": page.total_records,
                            "total_pages": page.total_pages})


def event_routes(h: EventHandlers) -> list[Route]:
    return [
        Route("GET", "/events/proxy", h.list_access_logs, "listProxyEvents",
              "Paginated, filterable reverse-proxy access log", "Events", query=LOG_QUERY,
              response_schema=ref("ProxyAccessLogsResponse"), errors=(422,)),
    ]
