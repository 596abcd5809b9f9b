"""HTML error pages of the reverse proxy.

Status/title parity with upstream; the page embeds a small JSON blob
(``window.__DATA__`` with ``page:"error"`` and an ``error`` object) like the
upstream web bundle does.  Every interpolated value is escaped.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorPage:
    code: int
    title: str
    message: str


SERVICE_NOT_FOUND = ErrorPage(404, "Service Not Found",
                              "The requested service is not available on this gateway.")
LOOP_DETECTED = ErrorPage(421, "Loop Detected",
                          "The request would be proxied back to the peer it came from.")
REQUEST_TIMEOUT = ErrorPage(504, "Request Timeout",
                            "The upstream service did not answer in time.")
REQUEST_CANCELED = ErrorPage(502, "Request Canceled", "The request was canceled.")
CONFIGURATION_ERROR = ErrorPage(500, "Configuration Error",
                                "The service is not configured correctly.")
PROXY_NOT_CONNECTED = ErrorPage(502, "Proxy Not Connected",
                                "The gateway is not connected to the service's network.")
SERVICE_OVERLOADED = ErrorPage(503, "Service Overloaded",
                               "Too many requests are in flight; try again later.")
SERVICE_UNAVAILABLE = ErrorPage(502, "Service Unavailable",
                                "The upstream service refused the connection.")
PEER_NOT_CONNECTED = ErrorPage(502, "Peer Not Connected",
                               "The peer hosting the service is not reachable.")
CONNECTION_ERROR = ErrorPage(502, "Connection Error",
                             "The gateway could not talk to the upstream service.")
FORBIDDEN = ErrorPage(403, "Forbidden", "You are not allowed to access this service.")
ASSERTION_UNAVAILABLE = ErrorPage(503, "Identity Assertion Unavailable",
                                  "The service requires a signed identity the gateway "
                                  "cannot issue right now.")

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{code} {title}</title>
<script>window.__DATA__ = {data};</script>
</head><body>
<main><h1>{title}</h1><p>{message}</p>{details}</main>
</body></html>
"""


def render_page(page: ErrorPage, *, destination: str = "", request_id: str = "",
                proxy: str = "nbgateway") -> bytes:
    data = {"page": "error", "error": {
        "code": page.code, "title": page.title, "message": page.message,
        "proxy": proxy, "destination": destination, "requestId": request_id,
    }}
    # JSON inside <script>: escape '<' so no '</script>' can end the block.
    blob = json.dumps(data).replace("<", "\\u003c")
    details = f"<p><small>Request ID: {html.escape(request_id)}</small></p>" if request_id else ""
    return _TEMPLATE.format(code=page.code, title=html.escape(page.title), data=blob,
                            message=html.escape(page.message), details=details).encode("utf-8")


def send_page(request: Any, page: ErrorPage, **kw: Any) -> None:
    """Write ``page`` as the complete response to a twisted.web request
    (no-op for the body on HEAD, handled by twisted.web)."""
    body = render_page(page, **kw)
    request.setResponseCode(page.code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
