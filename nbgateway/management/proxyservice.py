"""The ProxyService gRPC servicer (management side): thin handlers.

Served by a ``grpc.aio`` server on one loop thread
(:mod:`~nbgateway.management.grpcloop`); unary handlers are synchronous and
run in the loop's small fixed thread pool, the two mapping streams are
coroutines holding no thread.  Everything calls the synchronous, thread-safe
:class:`~nbgateway.management.store.Store` (from the pool, never from the
loop; no reactor involved).  :mod:`nbgateway.management.grpcserver` wraps it
in a Twisted service.

What it owns:

* **Caller identity** (2.0): every method needs ``authorization: Bearer
  <proxy token>``; failures are ``UNAUTHENTICATED`` with the upstream texts,
  failed attempts are rate limited per client IP (burst 5, one token per 12 s,
  ``RESOURCE_EXHAUSTED``); account-scoped (BYOP) tokens only reach their
  account (``PERMISSION_DENIED``).  The token is checked *before* the limiter
  is consulted, and a valid token never consults it: the limiter only decides
  how a failure is answered, so garbage sent from a gateway's address cannot
  lock that gateway out (only failures spend a source's budget).
* **Mapping streams** (2.1-2.4): ``GetMappingUpdate`` and ``SyncMappings``
  authenticate, decode the init message and hand over to
  :class:`~nbgateway.management.mappingstreams.MappingStreams` (``streams``),
  which owns the connections, the snapshot or resume-by-revision, the
  batches and acks, the dispatcher that diffs and broadcasts store changes,
  heartbeats and cancellation.
* **Unary RPCs** are answered by handler objects of
  :mod:`~nbgateway.management.proxyrpcs` the servicer holds and routes to:
  ``tunnel_peers`` (ValidateTunnelPeer, CreateProxyPeer), ``sessions``
  (ValidateSession, Authenticate, GetOIDCURL), ``status`` (SendStatusUpdate)
  and ``access_logs`` (SendAccessLog, NbgwSendAccessLogBatch).

Requests are decoded here (not by grpcio) so an undecodable message is
answered ``INVALID_ARGUMENT``; unknown fields are ignored as proto3 requires.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.authlimit import GuessLimiter
from nbgateway.management.errors import ManagementError
from nbgateway.management.grpcloop import RpcAbortError
from nbgateway.management.mappingstreams import (
    HEARTBEAT_INTERVAL,
    QUEUE_SIZE,
    MappingStreams,
    ProxyConnection,
    Update,
)
from nbgateway.management.model import ProxyAccessToken, utcnow
from nbgateway.management.proxymapping import OneTimeTokenStore
from nbgateway.management.proxyrpcs import (
    AccessLogRpcs,
    SessionRpcs,
    StatusRpcs,
    TunnelPeerRpcs,
    check_peer_group_access,
    peer_ip,
    status_code,
    valid_endpoint,
    valid_proxy_address,
)
from nbgateway.management.store import _secrets

__all__ = [
    "AuthFailureLimiter",
    "ProxyConnection",
    "ProxyServiceServicer",
    "batch_size_from_env",
    "check_peer_group_access",
    "valid_endpoint",
    "valid_proxy_address",
]

log = Logger()

SERVICE_NAME = "management.ProxyService"
DEFAULT_BATCH_SIZE = 500
AUTH_BURST = 5
AUTH_REFILL_SECONDS = 12.0
AUTH_ENTRY_TTL = 15 * 60.0
AUTH_MAX_ENTRIES = 10_000
TOKEN_CACHE_SECONDS = 10.0
TOKEN_CACHE_MAX = 1024


def batch_size_from_env(environ: dict[str, str] | None = None) -> int:
    """``NB_PROXY_SNAPSHOT_BATCH_SIZE``; non-numeric or <= 0 means 500."""
    raw = (environ if environ is not None else os.environ).get("NB_PROXY_SNAPSHOT_BATCH_SIZE", "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_BATCH_SIZE
    return value if value > 0 else DEFAULT_BATCH_SIZE


# --- failed-authentication limiter ------------------------------------------------------


class AuthFailureLimiter:
    """Token bucket per client IP: burst 5, one token back every 12 s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: ip -> (tokens, last refill, last failure)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def _current(self, ip: str, now: float) -> float:
        entry = self._buckets.get(ip)
        if entry is None:
            return float(AUTH_BURST)
        tokens, last, last_fail = entry
        if now - last_fail > AUTH_ENTRY_TTL:
            del self._buckets[ip]
            return float(AUTH_BURST)
        return min(float(AUTH_BURST), tokens + (now - last) / AUTH_REFILL_SECONDS)

    def allowed(self, ip: str) -> bool:
        with self._lock:
            return self._current(ip, self._clock()) >= 1.0

    def failed(self, ip: str) -> None:
        now = self._clock()
        with self._lock:
            tokens = max(0.0, self._current(ip, now) - 1.0)
            self._buckets[ip] = (tokens, now, now)
            self._buckets.move_to_end(ip)
            while len(self._buckets) > AUTH_MAX_ENTRIES:
                self._buckets.popitem(last=False)


class _AuthFailedError(Exception):
    """A caller presented no valid token (the message is the gRPC status text)."""


# --- the servicer ---------------------------------------------------------------------------


class ProxyServiceServicer:
    """ProxyService over a synchronous store (see module docstring)."""

    def __init__(
        self,
        store: Any,
        *,
        batch_size: int | None = None,
        queue_size: int = QUEUE_SIZE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        one_time_tokens: OneTimeTokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[..., None] | None = None,
        sso: Any = None,
    ) -> None:
        self.store = store
        #: Authenticate's per-(service, end-user address) bound on secret guesses
        self.guesses = GuessLimiter(clock)
        self.tokens = one_time_tokens or OneTimeTokenStore()
        self.limiter = AuthFailureLimiter(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._token_cache: OrderedDict[str, tuple[ProxyAccessToken, float]] = OrderedDict()
        #: bumped by every clear: a check that read the store before a
        #: revocation does not cache what it read after the clear
        self._token_generation = 0
        #: the mapping streams: connections, dispatch, broadcast, resume
        self.streams = MappingStreams(
            store, self.tokens, batch_size=batch_size or batch_size_from_env(),
            queue_size=queue_size, heartbeat_interval=heartbeat_interval, clock=clock,
            on_event=on_event)
        self.streams.on_token_change = self._clear_token_cache
        # the unary RPC families, each an object with its own state
        self.tunnel_peers = TunnelPeerRpcs(store, self.tokens)
        self.sessions = SessionRpcs(store, guesses=self.guesses, sso=sso)
        self.status = StatusRpcs(store, self.connections)
        self.access_logs = AccessLogRpcs(store)

    @property
    def sso(self) -> Any:
        """SSO for public services (management.sso.SSO); None: GetOIDCURL is UNIMPLEMENTED."""
        return self.sessions.sso

    @property
    def access_log_rejected(self) -> int:
        """Malformed entries skipped from NbgwSendAccessLogBatch calls."""
        return self.access_logs.rejected

    @property
    def batch_size(self) -> int:
        return self.streams.batch_size

    def unary_methods(self) -> dict[str, tuple[Callable[..., Any], type, type]]:
        """``{gRPC method: (handler, request class, response class)}`` of the unary RPCs."""
        tp, se, st, al = self.tunnel_peers, self.sessions, self.status, self.access_logs
        return {
            "SendAccessLog": (al.SendAccessLog, pb.SendAccessLogRequest,
                              pb.SendAccessLogResponse),
            "NbgwSendAccessLogBatch": (al.NbgwSendAccessLogBatch,
                                       pb.NbgwSendAccessLogBatchRequest,
                                       pb.NbgwSendAccessLogBatchResponse),
            "Authenticate": (se.Authenticate, pb.AuthenticateRequest, pb.AuthenticateResponse),
            "SendStatusUpdate": (st.SendStatusUpdate, pb.SendStatusUpdateRequest,
                                 pb.SendStatusUpdateResponse),
            "CreateProxyPeer": (tp.CreateProxyPeer, pb.CreateProxyPeerRequest,
                                pb.CreateProxyPeerResponse),
            "GetOIDCURL": (se.GetOIDCURL, pb.GetOIDCURLRequest, pb.GetOIDCURLResponse),
            "ValidateSession": (se.ValidateSession, pb.ValidateSessionRequest,
                                pb.ValidateSessionResponse),
            "ValidateTunnelPeer": (tp.ValidateTunnelPeer, pb.ValidateTunnelPeerRequest,
                                   pb.ValidateTunnelPeerResponse),
        }

    # -- lifecycle and the mapping streams' surface ---------------------------------------------

    def start(self) -> None:
        """Load the broadcast cache, hook the store listener, start the dispatcher
        and the status writer."""
        self.streams.start()
        self.status.writer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Detach from the store, cancel every live mapping stream, write the
        queued status reports."""
        self.streams.stop(timeout)
        self.status.writer.stop(timeout)

    def connections(self) -> list[ProxyConnection]:
        return self.streams.connections()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every change notified so far has been broadcast (tests, benches)."""
        return self.streams.wait_idle(timeout)

    def flush(self) -> None:
        self.streams.flush()

    def broadcast(self, updates: list[Update]) -> int:
        return self.streams.broadcast(updates)

    def snapshot_mappings(self, conn: Any) -> list[pb.ProxyMapping]:
        return self.streams.snapshot_mappings(conn)

    # -- grpc plumbing -------------------------------------------------------------------------

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """Method handlers with raw request bytes (decoded by the handlers).

        Unary handlers are synchronous (run in the server's thread pool); the
        streams are coroutines (on its loop), so a ``grpc.aio`` server is needed.
        """
        uu = grpc.unary_unary_rpc_method_handler
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name, (fn, req_cls, resp_cls) in self.unary_methods().items():
            handlers[name] = uu(
                self._unary(fn, req_cls),
                response_serializer=resp_cls.SerializeToString,
            )
        # group-committed status reports: a coroutine, waiting without a thread
        handlers["SendStatusUpdate"] = uu(
            self._unary_async(self.status.send_status_update_async, pb.SendStatusUpdateRequest),
            response_serializer=pb.SendStatusUpdateResponse.SerializeToString,
        )
        handlers["GetMappingUpdate"] = grpc.unary_stream_rpc_method_handler(
            self._get_mapping_update,
            response_serializer=pb.GetMappingUpdateResponse.SerializeToString,
        )
        handlers["SyncMappings"] = grpc.stream_stream_rpc_method_handler(
            self._sync_mappings,
            response_serializer=pb.SyncMappingsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    @staticmethod
    def _parse(raw: bytes, cls: type) -> Any:
        try:
            return cls.FromString(raw)
        except (DecodeError, RuntimeError, ValueError):
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"malformed {cls.__name__}") from None

    @classmethod
    def _decode(cls, raw: bytes, req_cls: type, context: grpc.ServicerContext) -> Any:
        try:
            return cls._parse(raw, req_cls)
        except RpcAbortError as exc:
            context.abort(exc.code, exc.details)

    def _unary(self, fn: Callable[..., Any], req_cls: type) -> Callable[..., Any]:
        def handler(raw: bytes, context: grpc.ServicerContext) -> Any:
            caller = self._authenticate(context)
            request = self._decode(raw, req_cls, context)
            return fn(request, context, caller)

        handler.__name__ = fn.__name__
        return handler

    def _unary_async(self, fn: Callable[..., Any], req_cls: type) -> Callable[..., Any]:
        """A coroutine handler: authenticate, decode, ``await fn`` (which raises
        :class:`RpcAbortError` to refuse)."""
        async def handler(raw: bytes, context: Any) -> Any:
            # a token checked within TOKEN_CACHE_SECONDS is accepted on the loop;
            # anything else (a miss, a failure) takes the pool path with its limiter
            caller = self._cached_caller(context.invocation_metadata() or ())
            if caller is None:
                caller = await self._authenticate_async(context)
            try:
                return await fn(self._parse(raw, req_cls), context, caller)
            except RpcAbortError as exc:
                await context.abort(exc.code, exc.details)

        handler.__name__ = fn.__name__
        return handler

    # -- caller identity (2.0) -----------------------------------------------------------------

    def _authenticate(self, context: grpc.ServicerContext) -> ProxyAccessToken:
        """The caller's token record, or an abort (synchronous handlers)."""
        try:
            return self._check_caller(context.invocation_metadata() or (), peer_ip(context))
        except RpcAbortError as exc:
            context.abort(exc.code, exc.details)
            raise  # not reached: abort raises

    async def _authenticate_async(self, context: Any) -> ProxyAccessToken:
        """:meth:`_authenticate` for coroutine handlers (the check runs in the pool)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, self._check_caller, context.invocation_metadata() or (), peer_ip(context))
        except RpcAbortError as exc:
            await context.abort(exc.code, exc.details)
            raise  # not reached: abort raises

    def _check_caller(self, md: Any, ip: str) -> ProxyAccessToken:
        """The caller's token record, or :class:`RpcAbortError`.  Valid tokens are
        accepted whatever the limiter says; only failures consult (and spend) the
        source's failure budget: ``RESOURCE_EXHAUSTED`` while it is empty, else
        counted and ``UNAUTHENTICATED``."""
        try:
            return self._verify_caller(md)
        except _AuthFailedError as exc:
            if not self.limiter.allowed(ip):
                raise RpcAbortError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "too many failed authentication attempts") from None
            self.limiter.failed(ip)
            raise RpcAbortError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None

    @staticmethod
    def _bearer(md: Any) -> str:
        """The proxy token of the call's metadata, or :class:`_AuthFailedError`."""
        if not md:
            raise _AuthFailedError("missing metadata")
        values = [v for k, v in md if k.lower() == "authorization"]
        if not values:
            raise _AuthFailedError("missing authorization header")
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        if not value.startswith("Bearer "):
            raise _AuthFailedError("invalid authorization format")
        plain = value[len("Bearer ") :].strip()
        if not _secrets.token_format_ok(plain, _secrets.PROXY_TOKEN_PREFIX):
            raise _AuthFailedError("invalid token format")
        return plain

    def _cached(self, key: str, now: float) -> ProxyAccessToken | None:
        with self._lock:
            cached = self._token_cache.get(key)
        if (
            cached is not None
            and now - cached[1] < TOKEN_CACHE_SECONDS
            and cached[0].is_valid(utcnow())
        ):
            return cached[0]
        return None

    def _cached_caller(self, md: Any) -> ProxyAccessToken | None:
        """The caller's token when its check is cached and still valid (no store
        access: safe on the loop), else None."""
        try:
            plain = self._bearer(md)
        except _AuthFailedError:
            return None
        return self._cached(_secrets.hash_token(plain), self._clock())

    def _verify_caller(self, md: Any) -> ProxyAccessToken:
        plain = self._bearer(md)
        key = _secrets.hash_token(plain)
        now = self._clock()
        cached = self._cached(key, now)
        if cached is not None:
            return cached
        with self._lock:
            generation = self._token_generation
        try:
            token = self.store.proxies.verify_token(plain)
        except ManagementError as exc:
            if exc.grpc_code == "UNAUTHENTICATED":
                raise _AuthFailedError(exc.message) from None
            raise RpcAbortError(status_code(exc), f"authenticate: {exc.message}") from None
        with self._lock:
            if generation != self._token_generation:
                return token  # a token changed meanwhile: this answer is not kept
            self._token_cache[key] = (token, now)
            self._token_cache.move_to_end(key)
            while len(self._token_cache) > TOKEN_CACHE_MAX:
                self._token_cache.popitem(last=False)
        return token

    def _clear_token_cache(self) -> None:
        with self._lock:
            self._token_generation += 1
            self._token_cache.clear()

    # -- mapping streams (2.1 - 2.4): coroutines on the server's loop ---------------------------

    async def _get_mapping_update(self, raw: bytes, context: Any) -> None:
        caller = await self._authenticate_async(context)
        try:
            req = self._parse(raw, pb.GetMappingUpdateRequest)
        except RpcAbortError as exc:
            await context.abort(exc.code, exc.details)
        conn = await self._open(req, caller, context)
        await self.streams.serve(conn, context, pb.GetMappingUpdateResponse, None)

    async def _sync_mappings(self, requests: Any, context: Any) -> None:
        caller = await self._authenticate_async(context)
        try:
            raw = await requests.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INTERNAL, "receive init: EOF")
        try:
            first = self._parse(raw, pb.SyncMappingsRequest)
        except RpcAbortError as exc:
            await context.abort(exc.code, exc.details)
        if first.WhichOneof("msg") != "init":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be init")
        conn = await self._open(first.init, caller, context)
        await self.streams.serve(conn, context, pb.SyncMappingsResponse, requests)

    async def _open(self, init: Any, caller: ProxyAccessToken, context: Any) -> ProxyConnection:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, self.streams.open, init, caller, peer_ip(context), loop)
        except RpcAbortError as exc:
            await context.abort(exc.code, exc.details)
            raise  # not reached: abort raises
