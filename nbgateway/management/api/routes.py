"""The ``/api`` operations: one synchronous handler per route, over the Store.

Handlers run in the store thread pool (see :mod:`.framework`); they translate a
:class:`~.framework.Call` into store calls and the result back into JSON with
:mod:`.mapping`. :func:`build_routes` returns the route table that both the
dispatcher and the OpenAPI document use, so the document lists exactly what is
served.

This module owns the composition: :class:`Handlers` (the bearer-token
authentication plus one handler mixin per resource family) and the order of
the table.  The families live beside it: :mod:`.accounts`, :mod:`.services`,
:mod:`.gateways` (clusters, proxies, domains, proxy tokens), :mod:`.events`
(the access log), :mod:`.users` (users, their tokens, groups), :mod:`.peers`
and :mod:`.certificates`; what every handler reads from a call (caller checks,
paging, typed query parameters) is in :mod:`.calls`.
"""

from __future__ import annotations

from typing import Any

from .accounts import AccountHandlers, account_routes
from .calls import ADMIN_ROLES, PAGE_MAX, decode_cursor, encode_cursor, require_admin
from .certificates import certificate_routes
from .events import EventHandlers, event_routes
from .framework import Identity, Route
from .gateways import GatewayHandlers, gateway_routes
from .peers import PeerHandlers, peer_routes
from .services import ServiceHandlers, service_routes
from .users import UserHandlers, user_routes

__all__ = ["PAGE_MAX", "Handlers", "build_routes", "decode_cursor", "encode_cursor"]


class Handlers(AccountHandlers, ServiceHandlers, GatewayHandlers, EventHandlers, UserHandlers,
               PeerHandlers):
    """Route handlers bound to one Store."""

    def __init__(self, store: Any):
        self.store = store

    def authenticate(self, token: str) -> Identity:
        user, _pat = self.store.users.authenticate_token(token)
        return Identity(account_id=user.account_id, user_id=user.id, role=user.role,
                        instance_admin=user.instance_admin and user.role in ADMIN_ROLES)


def build_routes(h: Handlers) -> list[Route]:
    """The route table: dispatch order and the OpenAPI document both come from it."""
    return [
        *account_routes(h),
        *service_routes(h),
        *gateway_routes(h),
        *event_routes(h),
        *user_routes(h),
        *peer_routes(h),
        *certificate_routes(h.store, require_admin),
    ]
