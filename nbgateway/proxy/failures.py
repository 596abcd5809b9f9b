"""Why an upstream exchange failed, as the client and the access log see it.

:func:`classify_error` picks the error page of a failed exchange (plain or
upgrade), :func:`note_dial_denial` records a refused direct dial as the
request's access-log verdict and reports it, :func:`root_cause` unwraps
twisted.web's client exceptions.  Shared by :mod:`nbgateway.proxy.reverse`
and :mod:`nbgateway.proxy.upgrade` (so neither imports the other's module
for it).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import _WrapperException

from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError
from nbgateway.dial.guard import ACCESS_LOG_REASON
from nbgateway.proxy import pages
from nbgateway.routes.context import RequestContext

log = Logger()


def root_cause(failure: Failure) -> Any:
    """The exception under twisted.web's client wrapper exceptions."""
    exc = failure.value
    seen = 0
    while isinstance(exc, _WrapperException) and exc.reasons and seen < 8:
        reason = exc.reasons[0]
        exc = reason.value if isinstance(reason, Failure) else reason
        seen += 1
    return exc


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


DIRECT_UPSTREAM_DENIED = pages.ErrorPage(
    502, "Destination Not Allowed",
    "This gateway does not connect to the service's upstream address "
    "(direct_upstream target outside the operator's allow-list).")


def note_dial_denial(ctx: RequestContext, exc: BaseException, proxy: Any = None,
                     service: Any = None) -> None:
    """A refused direct dial: the verdict of the request's access-log entry,
    and the proxy's ``on_dial_denied(service, exc)`` hook (status report)."""
    if not isinstance(exc, DirectUpstreamDeniedError):
        return
    ctx.auth_mechanism = ACCESS_LOG_REASON
    hook = getattr(proxy, "on_dial_denied", None)
    if hook is not None and service is not None:
        try:
            hook(service, exc)
        except Exception:
            log.failure("dial denial report failed")


def classify_error(exc: BaseException, timed_out: bool = False) -> pages.ErrorPage:
    """Which error page a failed upstream exchange gets."""
    if isinstance(exc, DirectUpstreamDeniedError):
        return DIRECT_UPSTREAM_DENIED
    if timed_out or isinstance(exc, error.TimeoutError | error.TCPTimedOutError
                               | defer.TimeoutError | TimeoutError):
        return pages.REQUEST_TIMEOUT
    if isinstance(exc, ProxyNotConnectedError):
        return pages.PROXY_NOT_CONNECTED
    if isinstance(exc, error.ConnectionRefusedError | ConnectionRefusedError):
        return pages.SERVICE_UNAVAILABLE
    if isinstance(exc, error.NoRouteError):
        return pages.PEER_NOT_CONNECTED
    os_errno = getattr(exc, "osError", None) or getattr(exc, "errno", None)
    if isinstance(os_errno, int) and os_errno in _UNREACHABLE:
        return pages.PEER_NOT_CONNECTED
    if isinstance(exc, defer.CancelledError):
        return pages.REQUEST_CANCELED
    return pages.CONNECTION_ERROR
