"""The identity record: who is calling, as the auth layer validated it.

Produced by :mod:`nbgateway.auth` (tunnel peers validated by management),
consumed by :mod:`nbgateway.proxy` (``X-NetBird-User`` / ``-Groups``) and the
access log.  Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as validated by the auth layer."""

    user_id: str
    email: str
    group_ids: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    method: str = ""
