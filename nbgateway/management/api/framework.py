"""The REST plumbing under ``/api``: routing, JSON bodies, auth, error envelope.

Owns the HTTP half of every endpoint and nothing else:

* :class:`BoundedRequest` enforces :data:`MAX_BODY_SIZE` while the body arrives
  (extra bytes are discarded, never buffered; a body larger than
  :data:`HARD_BODY_LIMIT` drops the connection) so the answer is a clean 413.
* :class:`ApiResource` matches ``(method, path)`` against a table of :class:`Route`
  objects (the same table :mod:`.openapi` documents), decodes and type-checks JSON
  bodies against the route's schema, extracts ``Authorization: Token <PAT>``, then
  runs authentication and the handler together in the store's thread pool
  (``deferToThreadPool``): the store is synchronous and never touched from the
  reactor thread.
* Every failure leaves as the NetBird envelope ``{"message": ..., "code": ...}``.

Handlers are plain synchronous callables ``handler(call) -> Result``; they raise
:class:`ApiError` or the store's typed errors, mapped by :func:`error_status`.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from .schemas import TypeMismatchError, check_types

#: Largest accepted request body (documented in the OpenAPI description and README).
MAX_BODY_SIZE = 1024 * 1024
#: Past this many bytes the connection is dropped instead of draining the body.
HARD_BODY_LIMIT = 64 * MAX_BODY_SIZE

PARSE_ERROR = "couldn't parse JSON request"

log = Logger()


class ApiError(Exception):
    """An HTTP-level failure with the envelope's message (already final text)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


#: NetBird's status-type -> HTTP mapping, keyed by error class name so the
#: store's typed errors map without this module importing them.
_STATUS_BY_NAME = {
    "InvalidArgument": 422,
    "ValidationError": 422,
    "AlreadyExists": 409,
    "Conflict": 409,
    "PreconditionFailed": 412,
    "PermissionDenied": 403,
    "NotFound": 404,
    "Unauthorized": 401,
    "Unauthenticated": 401,
    "BadRequest": 400,
    "TooManyRequests": 429,
}


def error_status(exc: BaseException) -> int | None:
    """HTTP status for a typed error, or None for an unexpected exception."""
    if isinstance(exc, ApiError):
        return exc.status
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    for klass in type(exc).__mro__:
        if klass.__name__ in _STATUS_BY_NAME:
            return _STATUS_BY_NAME[klass.__name__]
    return None


def error_message(exc: BaseException, status: int) -> str:
    """NetBird lower-cases the text of status errors; ApiError text is final."""
    if isinstance(exc, ApiError):
        return exc.message
    text = str(getattr(exc, "message", None) or exc) or http.RESPONSES.get(status, b"").decode()
    return text.lower()


@dataclass
class Identity:
    """Who is calling: resolved from the personal access token."""

    account_id: str
    user_id: str
    role: str = "admin"
    #: the operator (bootstrap admin): may create accounts and see every account
    instance_admin: bool = False


@dataclass
class Call:
    """Everything a handler needs; built in the reactor, consumed in the pool."""

    params: dict[str, str]
    query: dict[str, str]
    body: Any
    identity: Identity | None = None


@dataclass
class Result:
    status: int = 200
    body: Any = None
    content_type: str | None = None  # set for non-JSON bodies (body is then bytes)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass
class Route:
    """One operation; also the unit :mod:`.openapi` documents."""

    method: str
    template: str  # relative to /api, e.g. "/reverse-proxies/services/{serviceId}"
    handler: Callable[[Call], Result]
    operation_id: str
    summary: str
    tag: str
    request_schema: str | None = None  # component name
    response_schema: dict[str, Any] | None = None
    response_status: int = 200
    response_content_types: tuple[str, ...] = ("application/json",)
    query: list[QueryParam] = field(default_factory=list)
    errors: tuple[int, ...] = ()
    auth: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        self.segments = tuple(s for s in self.template.split("/") if s)

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        return match_segments(self.segments, segments)


def match_segments(pattern: tuple[str, ...], segments: tuple[str, ...]
                   ) -> dict[str, str] | None:
    """The ``{name}`` parameters of a path's ``segments`` that match a
    template's ``pattern`` segment for segment (a parameter is never empty),
    or None.  Shared by the REST routes and the dashboard's pages."""
    if len(segments) != len(pattern):
        return None
    params = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


#: body types twisted.web decodes into ``request.args`` (the dashboard's forms)
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


class BoundedRequest(server.Request):
    """A Request whose body is held in memory up to :data:`MAX_BODY_SIZE` only.

    twisted.web parses the ``Content-Type`` of every POST with a body through
    :mod:`email`'s header registry to decide whether to decode a form (~0.2 ms,
    a tenth of a REST peer creation); a JSON body is never a form, so only
    the two form types are handed to that parse (:attr:`_parsePOSTFormSubmission`,
    twisted.web's switch for it, read once per request)."""

    body_too_large = False
    _received = 0
    _form_parsing = True

    @property
    def _parsePOSTFormSubmission(self) -> bool:
        if not self._form_parsing:
            return False
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        return bool(ctype) and ctype[0].lstrip().lower().startswith(_FORM_TYPES)

    @_parsePOSTFormSubmission.setter
    def _parsePOSTFormSubmission(self, value: bool) -> None:
        # twisted.web sets the site's choice in ``__init__``
        self._form_parsing = bool(value)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY_SIZE:
            self.body_too_large = True
            if length > HARD_BODY_LIMIT:
                self._abort()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY_SIZE:
            self.body_too_large = True
            if self._received > HARD_BODY_LIMIT:
                self._abort()
            return
        self.content.write(data)

    def _abort(self) -> None:
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()


class ApiSite(server.Site):
    """Site using :class:`BoundedRequest`; the per-request access line is ours."""

    requestFactory = BoundedRequest

    def log(self, request: server.Request) -> None:  # structured log in ApiResource
        pass


_SEGMENT_OK = re.compile(r"^[^\x00-\x1f]*$")


class ApiResource(Resource):
    """Routes ``/api/...`` to handlers running in the store thread pool."""

    isLeaf = True

    def __init__(self, routes: list[Route], schemas: Mapping[str, dict[str, Any]],
                 authenticate: Callable[[str], Identity], threadpool: Any, reactor: Any,
                 prefix: str = "/api"):
        super().__init__()
        self._routes = routes
        self._schemas = schemas
        self._authenticate = authenticate
        self._pool = threadpool
        self._reactor = reactor
        self._prefix = tuple(s for s in prefix.split("/") if s)

    # -- reactor thread ---------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        started = time.monotonic()
        try:
            route, call, token = self._prepare(request)
        except ApiError as exc:
            return self._finish_now(request, exc.status, {"message": exc.message,
                                                          "code": exc.status}, exc.headers)
        d = deferToThreadPool(self._reactor, self._pool, self._run, route, call, token)
        d.addErrback(self._failure_result)
        d.addCallback(self._write, request, started)
        d.addErrback(lambda f: log.failure("writing API response failed", f))
        return server.NOT_DONE_YET

    def _prepare(self, request: server.Request) -> tuple[Route, Call, str | None]:
        raw_path = request.path.decode("latin-1")
        try:
            segments = tuple(unquote(s, errors="strict") for s in raw_path.split("/") if s)
        except UnicodeDecodeError:
            raise ApiError(404, "not found") from None
        if segments[: len(self._prefix)] != self._prefix:
            raise ApiError(404, "not found")
        segments = segments[len(self._prefix):]
        if not all(_SEGMENT_OK.fullmatch(s) for s in segments):
            # no object id contains control characters (and NUL would upset the database)
            raise ApiError(404, "not found")
        method = request.method.decode("latin-1").upper()
        allowed = []
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            break
        else:
            if allowed:
                raise ApiError(405, "method not allowed", {"Allow": ", ".join(allowed)})
            raise ApiError(404, "not found")
        if getattr(request, "body_too_large", False):
            raise ApiError(413, f"request body exceeds the limit of {MAX_BODY_SIZE} bytes",
                           {"Connection": "close"})
        token = None
        if route.auth:
            token = _token_from(request)
        query = {}
        for param in route.query:  # undeclared parameters are ignored
            values = request.args.get(param.name.encode())
            if not values:
                continue
            try:
                value = values[-1].decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, f"query parameter {param.name} is not UTF-8") from None
            if "\x00" in value or len(value) > 4096:
                raise ApiError(422, f"query parameter {param.name} is invalid") from None
            query[param.name] = value
        body = None
        if route.request_schema is not None:
            body = _decode_json(request.content.getvalue())
            try:
                check_types(body, self._schemas[route.request_schema], self._schemas)
            except TypeMismatchError as exc:
                raise ApiError(400, f"{PARSE_ERROR}: {exc}") from None
        return route, Call(params=params, query=query, body=body), token

    def _finish_now(self, request: server.Request, status: int, body: Any,
                    headers: Mapping[str, str]) -> bytes:
        self._log(request, status, 0.0)
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k, v)
        return _json_bytes(request, body)

    # -- thread pool ------------------------------------------------------

    def _run(self, route: Route, call: Call, token: str | None) -> Result:
        if route.auth:
            if token is None:
                raise ApiError(401, "no valid authentication provided")
            call.identity = self._authenticate(token)
        return route.handler(call)

    # -- back in the reactor ----------------------------------------------

    def _failure_result(self, failure: Failure) -> Result:
        exc = failure.value
        status = error_status(exc) if isinstance(exc, Exception) else None
        if status is None:
            log.failure("unexpected error in API handler", failure)
            status, message = 500, "internal server error"
        else:
            message = error_message(exc, status)
        headers = getattr(exc, "headers", None) or {}
        return Result(status, {"message": message, "code": status}, headers=dict(headers))

    def _write(self, result: Result, request: server.Request, started: float) -> None:
        if request._disconnected or request.finished:
            return
        self._log(request, result.status, time.monotonic() - started)
        request.setResponseCode(result.status)
        for k, v in result.headers.items():
            request.setHeader(k, v)
        if result.content_type is not None:
            request.setHeader("Content-Type", result.content_type)
            data = result.body
        else:
            data = _json_bytes(request, result.body)
        request.write(data)
        request.finish()

    def _log(self, request: server.Request, status: int, seconds: float) -> None:
        log.debug("{method} {path} -> {status} in {ms:.1f} ms",
                  method=request.method.decode("latin-1"),
                  path=request.path.decode("latin-1")[:200], status=status, ms=seconds * 1e3)


def _token_from(request: server.Request) -> str:
    header = request.getHeader("authorization")
    if not header:
        raise ApiError(401, "no valid authentication provided")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "token" or not value.strip():
        raise ApiError(401, "no valid authentication provided")
    return value.strip()


def _decode_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, PARSE_ERROR) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_bytes(request: server.Request, body: Any) -> bytes:
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    return json.dumps({} if body is None else body, separators=(",", ":")).encode() + b"\n"
