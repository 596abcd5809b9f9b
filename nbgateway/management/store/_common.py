"""Store part: what the account, user, group and peer repositories share.

The checks every stored name and text goes through (no NUL, which
PostgreSQL text cannot hold; a name is required and at most
:data:`MAX_NAME` bytes), the name of the ``All`` group every account has,
and the account row converter (accounts are read by the peer repository
too). Nothing here touches the database beyond the row it is handed.
"""

from __future__ import annotations

import sqlalchemy as sa

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Account

ALL_GROUP = "All"
MAX_NAME = 255


def check_text(what: str, value: str | None) -> None:
    """NUL cannot be stored in PostgreSQL text: refuse it the same way on every backend."""
    if value is not None and "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")


def check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise ValidationError(f"{what} name is required")
    check_text(f"{what} name", name)
    if len(name.encode()) > MAX_NAME:
        raise ValidationError(f"{what} name exceeds maximum length of {MAX_NAME} characters")


def row_account(r: sa.Row) -> Account:
    return Account(
        id=r.id,
        domain=r.domain,
        network_v4=r.network_v4,
        network_v6=r.network_v6 or "",
        created_at=r.created_at,
        name=r.name or "",
    )
