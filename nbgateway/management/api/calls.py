"""What every ``/api`` handler reads from a :class:`~.framework.Call`, and the
pieces every route table shares.

* the caller: its account, the admin / instance-admin checks, a regular user's
  view of peers (its own only);
* keyset pagination: the ``limit``/``cursor`` query, opaque cursors and the
  ``X-Next-Cursor``/``Link`` headers of a page;
* typed query parameters (integers, RFC 3339 timestamps) and the
  :class:`~.framework.QueryParam` / schema-reference shorthands the route
  tables use.

Nothing here touches the store.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from nbgateway.management.errors import NotFound, ValidationError
from nbgateway.management.model import Peer

from .framework import ApiError, Call, QueryParam, Result

ADMIN_ROLES = ("owner", "admin")

# --- the caller ---------------------------------------------------------------------


def acct(call: Call) -> str:
    """The caller's account id."""
    assert call.identity is not None
    return call.identity.account_id


def is_admin(call: Call) -> bool:
    assert call.identity is not None
    return call.identity.role in ADMIN_ROLES


def require_admin(call: Call) -> None:
    """403 unless the caller is an owner or admin of its account."""
    if not is_admin(call):
        raise ApiError(403, "user has no permission to perform this action")


def admin_acct(call: Call) -> str:
    """The caller's account id, after :func:`require_admin`."""
    require_admin(call)
    return acct(call)


def require_instance_admin(call: Call) -> None:
    assert call.identity is not None
    if not call.identity.instance_admin:
        raise ApiError(403, "only an instance admin may perform this action")


def own_peer(call: Call, peer: Peer) -> Peer:
    """A regular user reaches only the peers it owns; others do not exist for it."""
    assert call.identity is not None
    if not is_admin(call) and peer.user_id != call.identity.user_id:
        raise NotFound("peer not found")
    return peer


def fqdn(value: str) -> str:
    """A domain name from a request body: trimmed, lower case, no trailing dot."""
    return value.strip().lower().rstrip(".")


# --- keyset pagination --------------------------------------------------------------

#: largest page a client may ask for with ``limit``
PAGE_MAX = 1000
_CURSOR_PREFIX = "c1."


def encode_cursor(last_id: str) -> str:
    """Opaque cursor naming the last row of a page (keyset pagination by id)."""
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor names; 422 for anything :func:`encode_cursor` did not make."""
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 200:
        raise ValidationError("invalid cursor")
    body = cursor[len(_CURSOR_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        last_id = raw.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("invalid cursor") from None
    if not last_id or not all(c.isalnum() or c in "-_" for c in last_id):
        raise ValidationError("invalid cursor")
    return last_id


def page(call: Call) -> tuple[int | None, str | None]:
    """``(limit, after id)`` of a list call; ``(None, None)`` without ``limit`` and
    ``cursor`` (the whole list, the original response). ``cursor`` alone pages by
    100."""
    raw, cursor = call.query.get("limit"), call.query.get("cursor")
    if raw is None and cursor is None:
        return None, None
    limit = 100
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
            raise ValidationError(f"limit must be an integer from 1 to {PAGE_MAX}")
        limit = int(raw)
    return limit, decode_cursor(cursor) if cursor else None


def fetch_limit(limit: int | None) -> int | None:
    """What to ask the store for: one row more than the page, to know if more follow."""
    return None if limit is None else limit + 1


def paged(rows: list[Any], limit: int | None, body: list[Any], path: str) -> Result:
    """Result of a page fetched with ``limit + 1``: the first ``limit`` rows, and
    ``X-Next-Cursor`` plus a ``Link: rel="next"`` when more follow."""
    if limit is None or len(rows) <= limit:
        return Result(200, body)
    nxt = encode_cursor(rows[limit - 1].id)
    return Result(200, body[:limit], headers={
        "X-Next-Cursor": nxt, "Link": f'</api{path}?limit={limit}&cursor={nxt}>; rel="next"'})


# --- typed query parameters -----------------------------------------------------------


def int_query(call: Call, name: str, default: int | None) -> int | None:
    raw = call.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"invalid {name}: {raw!r} is not an integer") from None


def date_query(call: Call, name: str) -> datetime | None:
    raw = call.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"invalid {name}: expected an RFC 3339 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- route table shorthands -----------------------------------------------------------

#: the errors of a read by id
NOT_FOUND = (404,)


def q(name: str, kind: str = "string", description: str = "", **extra: Any) -> QueryParam:
    return QueryParam(name, {"type": kind, **extra}, description)


def ref(name: str) -> dict[str, Any]:
    """A response schema: the component *name*."""
    return {"$ref": f"#/components/schemas/{name}"}


def arr(name: str) -> dict[str, Any]:
    """A response schema: an array of the component *name*."""
    return {"type": "array", "items": ref(name)}


PAGE_QUERY = [
    q("limit", "integer", "page size; without it (and without cursor) the whole list",
      minimum=1, maximum=PAGE_MAX),
    q("cursor", description="opaque cursor from the previous page's X-Next-Cursor header"),
]
PAGE_DESCRIPTION = (
    "Keyset pagination: with `limit` the body is the first page (same element shape) and, "
    "when more follow, the `X-Next-Cursor` header (and a `Link` rel=\"next\") names the "
    "cursor for the next page. Pages are ordered by id, so rows created meanwhile are "
    "neither skipped nor repeated before the cursor.")
