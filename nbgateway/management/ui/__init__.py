"""The management's web UI (dashboard), served under ``/ui/`` on the REST listener.

:func:`build_ui` returns the twisted.web resource.  The package owns the pages,
their Jinja2 templates (autoescaped), the static CSS/JS it ships and the UI
sessions; data comes only through the REST API's own handlers
(:mod:`.bridge`), so authorisation and validation are the API's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nbgateway.management.api.framework import Identity, Route

from .bridge import ApiBridge
from .live import LiveHub, LiveStreams
from .resource import CSP, UiResource
from .sessions import SessionStore
from .sso import DashboardSSO

__all__ = ["CSP", "DashboardSSO", "SessionStore", "UiResource", "build_ui"]


def build_ui(routes: list[Route], schemas: Mapping[str, dict[str, Any]],
             authenticate: Callable[[str], Identity], threadpool: Any,
             reactor: Any, ca_cert_path: str | None = None,
             sso: DashboardSSO | None = None,
             add_store_listener: Callable[[Any], None] | None = None) -> UiResource:
    """The ``/ui`` resource over the API's *routes*; pages run on *threadpool*.
    *ca_cert_path* is accepted for older callers and not read (the peer page
    and ``/ui/ca.crt`` offer the signed-in account's private CA from
    management, ``GET /api/reverse-proxies/ca-certificate``);
    *sso* offers sign-in through the management's OIDC provider;
    *add_store_listener* (the store's ``add_listener``) feeds the live view's
    server-sent events (without it the live view polls)."""
    live = None
    if add_store_listener is not None:
        live = LiveStreams(LiveHub(reactor.seconds), reactor)
        add_store_listener(live.store_listener)
    return UiResource(ApiBridge(routes, schemas, authenticate), threadpool, reactor,
                      ca_cert_path=ca_cert_path, sso=sso, live=live)
