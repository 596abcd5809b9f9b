"""REST API of the management service (twisted.web), mounted at ``/api``.

:func:`build_site` wires the route table (:mod:`.routes`) over a Store into an
:class:`~.framework.ApiSite`; the OpenAPI document (:mod:`.openapi`) is built
from the same table and served at ``GET /api/openapi.json`` without auth.
Constructing the site opens no socket and starts no thread.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.web.resource import Resource

from .framework import MAX_BODY_SIZE, ApiError, ApiResource, ApiSite, Call, Result, Route
from .openapi import build_document
from .routes import Handlers, build_routes
from .schemas import COMPONENTS

#: Seconds an idle (or trickling) client connection is kept open.
IDLE_TIMEOUT = 60

__all__ = ["IDLE_TIMEOUT", "MAX_BODY_SIZE", "ApiError", "ApiSite", "build_openapi", "build_site"]


def _version() -> str:
    try:
        from nbgateway import __version__
    except ImportError:  # pragma: no cover
        return "0"
    return str(__version__)


def build_openapi(routes: list[Route] | None = None) -> dict[str, Any]:
    """The OpenAPI document for *routes* (default: the full table, store-less)."""
    if routes is None:
        routes = build_routes(Handlers(store=None))
    return build_document([r for r in routes if r.operation_id != "getOpenAPI"], COMPONENTS,
                          version=_version())


def limit_routes(routes: list[Route], limiter: Any) -> list[Route]:
    """The routes with each authenticated handler asking *limiter* (an
    :class:`~nbgateway.management.ratelimit.AccountRateLimit`) first: HTTP 429
    with ``Retry-After`` when the caller's account is over its rate.  Routes
    without auth (the OpenAPI document) are left as they are; None: unchanged."""
    if limiter is None:
        return routes
    from nbgateway.management.ratelimit import retry_after

    def wrap(route: Route) -> Route:
        inner, method = route.handler, route.method

        def handler(call: Call) -> Result:
            if call.identity is not None:
                wait = limiter.admit(call.identity.account_id, method)
                if wait:
                    raise ApiError(429, "too many requests for this account, retry later",
                                   {"Retry-After": retry_after(wait)})
            return inner(call)

        return dataclasses.replace(route, handler=handler)

    return [wrap(r) if r.auth else r for r in routes]


def build_site(store: Any, threadpool: Any, reactor: Any,
               ca_cert_path: str | None = None, sso: Any = None,
               rate_limit: Any = None) -> ApiSite:
    """An HTTP site serving the API over *store*; handlers run on *threadpool*.

    *ca_cert_path*: where a co-located gateway keeps its CA certificate (the
    dashboard offers it to peers when the file exists).  *sso*: a
    :class:`~nbgateway.management.sso.SSO` serves ``GET /reverse-proxy/callback``.
    *rate_limit*: an :class:`~nbgateway.management.ratelimit.AccountRateLimit`
    every authenticated route (REST and dashboard alike) checks first."""
    handlers = Handlers(store)
    routes = build_routes(handlers)
    document = build_openapi(routes)
    routes = limit_routes(routes, rate_limit)

    def openapi(call: Call) -> Result:
        return Result(200, document)

    routes.append(Route("GET", "/openapi.json", openapi, "getOpenAPI",
                        "This OpenAPI document", "Meta", auth=False))
    resource = ApiResource(routes, COMPONENTS, handlers.authenticate, threadpool, reactor)
    from nbgateway.management.ui import build_ui  # the dashboard under /ui/

    dashboard_sso = None
    if sso is not None:  # the dashboard signs in through the same provider
        import time

        from nbgateway.management.sso import http_fetch_json, http_post_form
        from nbgateway.management.ui.sso import DashboardSSO

        dashboard_sso = DashboardSSO.from_settings(
            sso.flow.settings, lambda: store, fetch_json=http_fetch_json,
            post_form=http_post_form, clock=time.time)
    ui = build_ui(routes, COMPONENTS, handlers.authenticate, threadpool, reactor,
                  ca_cert_path=ca_cert_path, sso=dashboard_sso,
                  add_store_listener=getattr(store, "add_listener", None))
    callback = None
    if sso is not None:
        from nbgateway.management.sso import CallbackResource

        callback = CallbackResource(sso, threadpool, reactor)
    from nbgateway.management.assertionkeys import jwks_route

    wellknown = ApiResource([jwks_route(store)], COMPONENTS, handlers.authenticate, threadpool,
                            reactor, prefix="/.well-known/nbgateway")
    site = ApiSite(_Root(resource, ui, callback, wellknown), timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False
    return site


class _Root(Resource):
    """``/ui/...`` goes to the dashboard; every other path to the API (as before)."""

    def __init__(self, api: Resource, ui: Resource, callback: Resource | None = None,
                 wellknown: Resource | None = None):
        super().__init__()
        self._api, self._ui, self._callback = api, ui, callback
        self._wellknown = wellknown

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"reverse-proxy" and self._callback is not None:
            return self._callback  # the OIDC callback (not under /api)
        if path == b".well-known" and self._wellknown is not None:
            return self._wellknown  # /.well-known/nbgateway/jwks.json (no auth)
        return self._ui if path == b"ui" else self._api

    def render(self, request: Any) -> Any:
        return self._api.render(request)


# re-exported for embedding callers
__all__ += ["ApiError", "ApiResource", "Call", "Handlers", "Result", "Route", "limit_routes"]
