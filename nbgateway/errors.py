"""Exception families shared across layers.

Each layer raises its own family so callers can fail closed on a whole family
(``except ManagementError``) without knowing transport details.  Sections are
appended by the layer that owns them.
"""

from __future__ import annotations


class NBGatewayError(Exception):
    """Root of every nbgateway-specific error."""


# ---------------------------------------------------------------------------
# Management client (nbgateway.mgmt).  Raised by IManagementClient Deferreds.
# ``code`` is the gRPC status name ("UNAVAILABLE", ...) or "" when the error did
# not come from a gRPC status; ``details`` is the server's status message.
# ---------------------------------------------------------------------------


class ManagementError(NBGatewayError):
    """A management RPC failed.  Every caller treats this as "deny"/"retry"."""

    code: str = ""

    def __init__(self, details: str = "", code: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.code:
            return f"{self.code}: {self.details}" if self.details else self.code
        return self.details


class ManagementUnavailableError(ManagementError):
    """Management could not be reached (UNAVAILABLE), or the client is stopped."""

    code = "UNAVAILABLE"


class ManagementTimeoutError(ManagementError):
    """The RPC deadline passed (DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


class ManagementCancelledError(ManagementError):
    """The call was cancelled (CANCELLED), e.g. by the server or on shutdown."""

    code = "CANCELLED"


class ManagementUnauthenticatedError(ManagementError):
    """The proxy token was missing, wrong, expired or revoked (UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class ManagementPermissionDeniedError(ManagementError):
    """An account-scoped token acted outside its account (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class ManagementNotFoundError(ManagementError):
    code = "NOT_FOUND"


class ManagementInvalidArgumentError(ManagementError):
    code = "INVALID_ARGUMENT"


class ManagementRateLimitedError(ManagementError):
    """Too many failed authentication attempts (RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class ManagementUnimplementedError(ManagementError):
    """The server does not implement the RPC (UNIMPLEMENTED)."""

    code = "UNIMPLEMENTED"


class ManagementRejectedError(ManagementError):
    """The RPC succeeded but management refused the request
    (e.g. ``CreateProxyPeerResponse.success == false``)."""


class ManagementStreamClosedError(ManagementError):
    """A mapping stream ended: cleanly closed by the server (still an error,
    so the worker reconnects) or a batch could not be applied in time."""
