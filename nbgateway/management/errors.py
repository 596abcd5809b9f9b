"""Typed errors raised by the management store and validation.

Every error carries the exact message text (upstream casing; the REST layer
lower-cases it for the ``{"message", "code"}`` envelope) and
the HTTP status and gRPC status-code name it maps to, so the REST API and the
ProxyService gRPC server translate them without string matching.
"""

# ruff: noqa: N818  (names follow the gRPC/HTTP status vocabulary)
from __future__ import annotations


class ManagementError(Exception):
    """Base class. ``message`` is the human text, ``http_status`` the REST code."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ValidationError(ManagementError):
    """Invalid input (upstream ``InvalidArgument``): HTTP 422."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"


class BadRequest(ManagementError):
    """Request refused as malformed or inconsistent: HTTP 400."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class GroupInUse(BadRequest):
    """A group cannot be deleted while a service references it (HTTP 400 upstream)."""


class NotFound(ManagementError):
    """Unknown or foreign id: HTTP 404."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(ManagementError):
    """Uniqueness violation (upstream ``AlreadyExists``): HTTP 409."""

    http_status = 409
    grpc_code = "ALREADY_EXISTS"


class AddressExhausted(Conflict):
    """No free tunnel address is left in the account network."""


class PreconditionFailed(ManagementError):
    """E.g. no cluster can be derived from a service domain: HTTP 412."""

    http_status = 412
    grpc_code = "FAILED_PRECONDITION"


class PermissionDenied(ManagementError):
    """E.g. updating a terminated service: HTTP 403."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class Unauthenticated(ManagementError):
    """Bad, unknown, revoked or expired token: HTTP 401."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class StoreUnavailable(ManagementError):
    """The database could not be reached or a transaction kept failing."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class QuotaExceeded(PreconditionFailed):
    """An account is at one of its quotas (:mod:`nbgateway.management.quotas`).

    HTTP 412 like its parent: the precondition "the account has a free slot"
    fails, waiting does not change that (unlike 429, which clients retry), and
    clients that already handle NetBird's ``PreconditionFailed`` keep working.
    gRPC callers (a gateway registering a proxy peer) get RESOURCE_EXHAUSTED."""

    grpc_code = "RESOURCE_EXHAUSTED"
