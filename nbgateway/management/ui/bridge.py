"""The UI's only way to the data: the REST API's own route table, called in-process.

:class:`ApiBridge` finds a :class:`~nbgateway.management.api.framework.Route` by
its OpenAPI operation id, authenticates the session's token with the API's
authenticator, type-checks a body against the route's request schema exactly
like the HTTP layer does, and runs the route's handler.  Authorisation,
validation and the error texts therefore are the REST API's (no second copy of
the rules); a failure comes back as ``(status, message)`` with the API's message.

Runs in the store thread pool (handlers are synchronous and touch the store).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from nbgateway.management.api.framework import (
    PARSE_ERROR,
    ApiError,
    Call,
    Identity,
    Route,
    error_message,
    error_status,
)
from nbgateway.management.api.schemas import TypeMismatchError, check_types

log = Logger()


@dataclass
class Outcome:
    status: int
    body: Any = None
    message: str = ""
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ApiBridge:
    """Calls REST operations by operation id on behalf of a token."""

    def __init__(self, routes: list[Route], schemas: Mapping[str, dict[str, Any]],
                 authenticate: Callable[[str], Identity]):
        self._ops = {r.operation_id: r for r in routes}
        self._schemas = schemas
        self._authenticate = authenticate

    def identity(self, token: str) -> Identity | None:
        """The identity behind *token*, or None when the API would answer 401/403."""
        try:
            return self._authenticate(token)
        except Exception as exc:  # typed store errors: unauthenticated, blocked...
            if error_status(exc) is None:
                log.failure("authenticating a UI session failed")
            return None

    def call(self, identity: Identity, operation_id: str, params: dict[str, str] | None = None,
             query: dict[str, str] | None = None, body: Any = None) -> Outcome:
        route = self._ops[operation_id]
        try:
            if route.request_schema is not None:
                try:
                    check_types(body, self._schemas[route.request_schema], self._schemas)
                except TypeMismatchError as exc:
                    raise ApiError(400, f"{PARSE_ERROR}: {exc}") from None
            result = route.handler(Call(params=dict(params or {}),
                                        query={k: v for k, v in (query or {}).items() if v},
                                        body=body, identity=identity))
        except Exception as exc:
            status = error_status(exc)
            if status is None:
                log.failure("unexpected error in API handler called from the UI")
                return Outcome(500, None, "internal server error")
            return Outcome(status, None, error_message(exc, status))
        return Outcome(result.status, result.body, content_type=result.content_type)
