"""The ProxyService gRPC servicer (management side).

Runs in grpcio's own thread pool and calls the synchronous, thread-safe
:class:`~nbgateway.management.store.Store` directly (no reactor involved).
:mod:`nbgateway.management.grpcserver` wraps it in a Twisted service.

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
  register the proxy (row upserted, superseding an older stream of the same
  proxy id), send the capability-filtered snapshot in batches (SyncMappings:
  the next batch only after the ack of the previous one), then stream
  incremental CREATED/MODIFIED/REMOVED updates from a bounded per-proxy queue;
  a full queue cancels that proxy's stream (it resyncs).  Updates come from
  the store change listener through one dispatcher thread that diffs every
  changed service against the last broadcast version.  Fixes: the whole
  mapping (``private`` included) is copied per proxy; a service that turns
  private is REMOVED for proxies lacking ``supports_private_service`` and
  CREATED again when it turns public.
* **Unary RPCs** are answered by handler objects of
  :mod:`~nbgateway.management.proxyrpcs` the servicer holds and routes to:
  ``tunnel_peers`` (ValidateTunnelPeer, CreateProxyPeer), ``sessions``
  (ValidateSession, Authenticate, GetOIDCURL), ``status`` (SendStatusUpdate)
  and ``access_logs`` (SendAccessLog, NbgwSendAccessLogBatch).

Requests are decoded here (not by grpcio) so an undecodable message is
answered ``INVALID_ARGUMENT``; unknown fields are ignored as proto3 requires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.authlimit import GuessLimiter
from nbgateway.management.errors import ManagementError, NotFound
from nbgateway.management.model import (
    ChangeKind,
    ProxyAccessToken,
    ProxyCapabilities,
    ProxyRecord,
    Service,
    utcnow,
)
from nbgateway.management.proxymapping import (
    CREATED,
    MODIFIED,
    OneTimeTokenStore,
    per_proxy_mapping,
    proxy_accepts_mapping,
    removed_mapping,
    to_proto_mapping,
)
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
QUEUE_SIZE = 100
HEARTBEAT_INTERVAL = 60.0
STALE_CLEANUP_INTERVAL = 300.0
STALE_AFTER = timedelta(hours=1)
AUTH_BURST = 5
AUTH_REFILL_SECONDS = 12.0
AUTH_ENTRY_TTL = 15 * 60.0
AUTH_MAX_ENTRIES = 10_000
TOKEN_CACHE_SECONDS = 10.0
TOKEN_CACHE_MAX = 1024

_SERVICE_KINDS = (
    ChangeKind.SERVICE_CREATED,
    ChangeKind.SERVICE_UPDATED,
    ChangeKind.SERVICE_DELETED,
)


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


# --- connections ----------------------------------------------------------------------------


class ProxyConnection:
    """One live mapping stream of one proxy."""

    def __init__(
        self,
        *,
        proxy_id: str,
        address: str,
        caps: pb.ProxyCapabilities | None,
        token: ProxyAccessToken,
        peer_ip: str,
        context: grpc.ServicerContext,
        queue_size: int,
    ) -> None:
        self.proxy_id = proxy_id
        self.session_id = str(uuid.uuid4())
        self.address = address
        self.caps = caps
        self.token_id = token.id
        self.account_id = token.account_id
        self.peer_ip = peer_ip
        self.context = context
        self.queue: queue.Queue[list[pb.ProxyMapping] | None] = queue.Queue(maxsize=queue_size)
        self.closed = threading.Event()
        self.cancel_reason: str | None = None

    @property
    def supports_private(self) -> bool:
        return bool(
            self.caps is not None
            and self.caps.HasField("supports_private_service")
            and self.caps.supports_private_service
        )

    def wake(self) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)

    def close(self) -> None:
        self.closed.set()
        self.wake()

    def cancel(self, reason: str) -> None:
        """End the stream from any thread (even while it is blocked sending)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            log.info(
                "cancelling mapping stream of proxy {proxy_id}: {reason}",
                proxy_id=self.proxy_id,
                reason=reason,
            )
        self.context.cancel()
        self.close()

    def enqueue(self, mappings: list[pb.ProxyMapping]) -> bool:
        try:
            self.queue.put_nowait(mappings)
            return True
        except queue.Full:
            self.cancel("send queue full, forcing a resync")
            return False


@dataclasses.dataclass(frozen=True)
class _Known:
    """Last broadcast state of a service (dispatcher cache)."""

    account_id: str
    cluster: str
    live: bool
    private: bool
    blob: bytes
    removed: pb.ProxyMapping


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
        self.batch_size = batch_size or batch_size_from_env()
        self.queue_size = queue_size
        self.heartbeat_interval = heartbeat_interval
        self.tokens = one_time_tokens or OneTimeTokenStore()
        self.limiter = AuthFailureLimiter(clock)
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.Lock()
        self._conns: dict[str, ProxyConnection] = {}
        self._token_cache: OrderedDict[str, tuple[ProxyAccessToken, float]] = OrderedDict()
        self._known: dict[str, _Known] = {}
        self._pending: dict[str, str] = {}
        self._pending_tokens: set[str] = set()
        self._pending_lock = threading.Lock()
        #: change notifications received / fully broadcast (see :meth:`wait_idle`)
        self._seen = 0
        self._done = 0
        self._idle = threading.Condition(self._pending_lock)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None
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

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the broadcast cache, hook the store listener, start the dispatcher."""
        for s in self.store.services.list_all():
            self._remember(self._resolve([s])[0])
        self.store.add_listener(self._on_store_change)
        self._stopping.clear()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="nbmanagement-proxy-broadcast", daemon=True
        )
        self._dispatcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.store.remove_listener(self._on_store_change)
        self._stopping.set()
        self._wakeup.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
            self._dispatcher = None
        for conn in self.connections():
            conn.cancel("management shutting down")

    def connections(self) -> list[ProxyConnection]:
        with self._lock:
            return list(self._conns.values())

    def _event(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, **fields)

    # -- grpc plumbing -------------------------------------------------------------------------

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """Method handlers with raw request bytes (decoded by :meth:`_decode`)."""
        uu = grpc.unary_unary_rpc_method_handler
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name, (fn, req_cls, resp_cls) in self.unary_methods().items():
            handlers[name] = uu(
                self._unary(fn, req_cls),
                response_serializer=resp_cls.SerializeToString,
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
    def _decode(raw: bytes, cls: type, context: grpc.ServicerContext) -> Any:
        try:
            return cls.FromString(raw)
        except (DecodeError, RuntimeError, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {cls.__name__}")

    def _unary(self, fn: Callable[..., Any], req_cls: type) -> Callable[..., Any]:
        def handler(raw: bytes, context: grpc.ServicerContext) -> Any:
            caller = self._authenticate(context)
            request = self._decode(raw, req_cls, context)
            return fn(request, context, caller)

        handler.__name__ = fn.__name__
        return handler

    # -- caller identity (2.0) -----------------------------------------------------------------

    def _authenticate(self, context: grpc.ServicerContext) -> ProxyAccessToken:
        """The caller's token record, or an abort.  Valid tokens are accepted
        whatever the limiter says; only failures consult (and spend) the
        source's failure budget."""
        try:
            return self._verify_caller(context)
        except _AuthFailedError as exc:
            self._auth_fail(context, peer_ip(context), str(exc))
            raise  # not reached: _auth_fail aborts

    def _verify_caller(self, context: grpc.ServicerContext) -> ProxyAccessToken:
        md = context.invocation_metadata() or ()
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
        key = _secrets.hash_token(plain)
        now = self._clock()
        with self._lock:
            cached = self._token_cache.get(key)
        if (
            cached is not None
            and now - cached[1] < TOKEN_CACHE_SECONDS
            and cached[0].is_valid(utcnow())
        ):
            return cached[0]
        try:
            token = self.store.proxies.verify_token(plain)
        except ManagementError as exc:
            if exc.grpc_code == "UNAUTHENTICATED":
                raise _AuthFailedError(exc.message) from None
            context.abort(status_code(exc), f"authenticate: {exc.message}")
        with self._lock:
            self._token_cache[key] = (token, now)
            self._token_cache.move_to_end(key)
            while len(self._token_cache) > TOKEN_CACHE_MAX:
                self._token_cache.popitem(last=False)
        return token

    def _auth_fail(self, context: grpc.ServicerContext, ip: str, message: str) -> None:
        """A failed attempt: ``RESOURCE_EXHAUSTED`` while the source's failure
        budget is empty, else counted and answered ``UNAUTHENTICATED``."""
        if not self.limiter.allowed(ip):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed authentication attempts"
            )
        self.limiter.failed(ip)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # -- mapping streams (2.1 - 2.3) -----------------------------------------------------------

    def _get_mapping_update(self, raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
        caller = self._authenticate(context)
        req = self._decode(raw, pb.GetMappingUpdateRequest, context)
        conn = self._open_stream(req, caller, context)
        yield from self._serve_stream(conn, context, pb.GetMappingUpdateResponse, None)

    def _sync_mappings(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        caller = self._authenticate(context)
        try:
            first = self._decode(next(requests), pb.SyncMappingsRequest, context)
        except StopIteration:
            context.abort(grpc.StatusCode.INTERNAL, "receive init: EOF")
        if first.WhichOneof("msg") != "init":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be init")
        conn = self._open_stream(first.init, caller, context)
        yield from self._serve_stream(conn, context, pb.SyncMappingsResponse, requests)

    def _open_stream(
        self, init: Any, caller: ProxyAccessToken, context: grpc.ServicerContext
    ) -> ProxyConnection:
        if not init.proxy_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is required")
        if len(init.proxy_id) > 255:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is too long")
        if not valid_proxy_address(init.address):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "proxy address is invalid")
        if caller.account_id is not None:
            try:
                in_use = self.store.proxies.cluster_address_in_use(init.address, caller.account_id)
            except Exception as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"check cluster address: {exc}")
            if in_use:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"cluster address {init.address} is already in use",
                )
        caps = None
        if init.HasField("capabilities"):
            caps = pb.ProxyCapabilities()
            caps.CopyFrom(init.capabilities)
        conn = ProxyConnection(
            proxy_id=init.proxy_id,
            address=init.address,
            caps=caps,
            token=caller,
            peer_ip=peer_ip(context),
            context=context,
            queue_size=self.queue_size,
        )
        with self._lock:
            old = self._conns.get(conn.proxy_id)
            self._conns[conn.proxy_id] = conn
        if old is not None:
            old.cancel("superseded by a newer connection of the same proxy")
        context.add_callback(conn.close)

        def opt(name: str) -> bool | None:
            return getattr(caps, name) if caps is not None and caps.HasField(name) else None

        record = ProxyRecord(
            id=conn.proxy_id,
            session_id=conn.session_id,
            cluster_address=conn.address,
            ip_address=conn.peer_ip,
            account_id=caller.account_id,
            capabilities=ProxyCapabilities(
                supports_custom_ports=opt("supports_custom_ports"),
                require_subdomain=opt("require_subdomain"),
                supports_crowdsec=opt("supports_crowdsec"),
                private=opt("private"),
            ),
        )
        try:
            self.store.proxies.register(record)
        except Exception as exc:
            self._unregister(conn)
            what = "failed to register BYOP proxy" if caller.account_id else "register proxy"
            context.abort(grpc.StatusCode.INTERNAL, f"{what} in database: {exc}")
        log.info(
            "proxy {proxy_id} connected for cluster {address}",
            proxy_id=conn.proxy_id,
            address=conn.address,
        )
        return conn

    def _unregister(self, conn: ProxyConnection) -> bool:
        with self._lock:
            if self._conns.get(conn.proxy_id) is conn:
                del self._conns[conn.proxy_id]
                return True
        return False

    def snapshot_mappings(self, conn: ProxyConnection) -> list[pb.ProxyMapping]:
        """Enabled services of the proxy's cluster, capability-filtered."""
        found = self.store.services.list_for_cluster(conn.address, account_id=conn.account_id)
        live = [s for s in found if s.enabled and s.proxy_cluster == conn.address]
        mappings = [to_proto_mapping(s, CREATED) for s in self._resolve(live)]
        return [m for m in mappings if proxy_accepts_mapping(conn.caps, m)]

    def _serve_stream(
        self,
        conn: ProxyConnection,
        context: grpc.ServicerContext,
        resp_cls: type,
        requests: Iterator[bytes] | None,
    ) -> Iterator[Any]:
        try:
            try:
                mappings = self.snapshot_mappings(conn)
            except Exception as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"load snapshot: {exc}")
            n = self.batch_size
            starts = list(range(0, len(mappings), n)) or [0]
            for k, start in enumerate(starts, start=1):
                batch = [
                    per_proxy_mapping(m, self.tokens.issue) for m in mappings[start : start + n]
                ]
                last = k == len(starts)
                self._event("batch-sent", proxy_id=conn.proxy_id, batch=k, size=len(batch))
                yield resp_cls(mapping=batch, initial_sync_complete=last)
                if requests is not None:
                    self._expect_ack(requests, context, conn, k)
            if requests is not None:
                threading.Thread(
                    target=self._drain_acks,
                    args=(requests, conn),
                    name=f"acks-{conn.proxy_id}",
                    daemon=True,
                ).start()
            yield from self._send_updates(conn, context, resp_cls)
        finally:
            self._unregister(conn)
            conn.close()
            try:
                # only touches the row while this session is still the current one
                self.store.proxies.disconnect(conn.proxy_id, conn.session_id)
            except Exception:
                log.failure("marking proxy {proxy_id} disconnected", proxy_id=conn.proxy_id)
            log.info("proxy {proxy_id} mapping stream ended", proxy_id=conn.proxy_id)

    def _expect_ack(
        self,
        requests: Iterator[bytes],
        context: grpc.ServicerContext,
        conn: ProxyConnection,
        k: int,
    ) -> None:
        try:
            raw = next(requests)
        except StopIteration:
            context.abort(grpc.StatusCode.INTERNAL, "receive ack: EOF")
        except Exception as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"receive ack: {exc}")
        msg = self._decode(raw, pb.SyncMappingsRequest, context)
        kind = msg.WhichOneof("msg")
        if kind != "ack":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected ack, got {kind}")
        self._event("ack", proxy_id=conn.proxy_id, batch=k)

    def _drain_acks(self, requests: Iterator[bytes], conn: ProxyConnection) -> None:
        """After the snapshot, acks are read and discarded; EOF ends the stream cleanly."""
        try:
            for _ in requests:
                if conn.closed.is_set():
                    break
        except Exception:
            pass
        conn.close()

    def _send_updates(
        self, conn: ProxyConnection, context: grpc.ServicerContext, resp_cls: type
    ) -> Iterator[Any]:
        next_beat = self._clock() + self.heartbeat_interval
        while not conn.closed.is_set() and context.is_active():
            now = self._clock()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                if not self._heartbeat(conn):
                    return
            try:
                item = conn.queue.get(timeout=max(0.01, min(0.5, next_beat - now)))
            except queue.Empty:
                continue
            if item is None or conn.closed.is_set():
                continue
            yield resp_cls(mapping=item)

    def _heartbeat(self, conn: ProxyConnection) -> bool:
        try:
            self.store.proxies.heartbeat(conn.proxy_id, conn.session_id)
            token = self.store.proxies.get_token(conn.token_id)
        except NotFound:
            conn.cancel("token expired or revoked")
            return False
        except Exception:
            log.failure("proxy heartbeat of {proxy_id}", proxy_id=conn.proxy_id)
            return True
        if not token.is_valid(utcnow()):
            conn.cancel("token expired or revoked")
            return False
        return True

    # -- incremental updates (2.4) -------------------------------------------------------------

    def _on_store_change(self, kind: ChangeKind, account_id: str, ids: tuple[str, ...]) -> None:
        """Store listener (runs after commit in the writer's thread): just record and wake."""
        if kind in _SERVICE_KINDS:
            with self._pending_lock:
                for sid in ids:
                    self._pending[sid] = account_id
                self._seen += 1
            self._wakeup.set()
        elif kind == ChangeKind.PROXY_TOKEN:
            with self._lock:
                self._token_cache.clear()
            with self._pending_lock:
                self._pending_tokens.update(ids)
                self._seen += 1
            self._wakeup.set()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every change notified so far has been broadcast (tests, benches)."""
        with self._idle:
            target = self._seen
            return self._idle.wait_for(lambda: self._done >= target, timeout)

    def _dispatch_loop(self) -> None:
        next_cleanup = self._clock() + STALE_CLEANUP_INTERVAL
        while not self._stopping.is_set():
            self._wakeup.wait(1.0)
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            try:
                self.flush()
            except Exception:
                log.failure("proxy mapping broadcast failed")
            if self._clock() >= next_cleanup:
                next_cleanup = self._clock() + STALE_CLEANUP_INTERVAL
                try:
                    self.store.proxies.delete_stale(utcnow() - STALE_AFTER)
                except Exception:
                    log.failure("stale proxy cleanup failed")

    def flush(self) -> None:
        """Broadcast every pending service change (dispatcher thread)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            revoked, self._pending_tokens = self._pending_tokens, set()
            generation = self._seen
        try:
            self._flush(pending, revoked)
        finally:
            with self._idle:
                self._done = max(self._done, generation)
                self._idle.notify_all()

    def _flush(self, pending: dict[str, str], revoked: set[str]) -> None:
        if revoked:
            for conn in self.connections():
                if conn.token_id in revoked:
                    try:
                        valid = self.store.proxies.get_token(conn.token_id).is_valid(utcnow())
                    except NotFound:
                        valid = False
                    if not valid:
                        conn.cancel("token expired or revoked")
        #: (cluster, mapping, previously private)
        updates: list[tuple[str, pb.ProxyMapping, bool]] = []
        for sid, account_id in pending.items():
            updates.extend(self._diff(sid, account_id))
        if updates:
            self.broadcast(updates)

    def _diff(self, sid: str, account_id: str) -> list[tuple[str, pb.ProxyMapping, bool]]:
        old = self._known.get(sid)
        try:
            svc: Service | None = self.store.services.get(account_id, sid)
        except NotFound:
            svc = None
        if svc is None:
            self._known.pop(sid, None)
            if old is not None and old.live:
                return [(old.cluster, old.removed, old.private)]
            return []
        svc = self._resolve([svc])[0]
        new = self._remember(svc)
        mapping = to_proto_mapping(svc, MODIFIED)
        was_live = old is not None and old.live
        was_private = old.private if old is not None else svc.private
        out: list[tuple[str, pb.ProxyMapping, bool]] = []
        moved = old is not None and (
            old.cluster != new.cluster or old.removed.domain != new.removed.domain
        )
        if was_live and (not new.live or moved):
            # upstream: REMOVED to the old cluster + CREATED to the new one
            out.append((old.cluster, old.removed, old.private))
            was_live = False
        if new.live and not was_live:
            mapping.type = CREATED
            out.append((new.cluster, mapping, was_private))
        elif new.live and old is not None and old.blob != new.blob:
            out.append((new.cluster, mapping, was_private))
        return out

    def _remember(self, svc: Service) -> _Known:
        m = to_proto_mapping(svc, MODIFIED)
        known = _Known(
            account_id=svc.account_id,
            cluster=svc.proxy_cluster,
            live=bool(svc.enabled and svc.proxy_cluster),
            private=svc.private,
            blob=m.SerializeToString(deterministic=True),
            removed=removed_mapping(m),
        )
        self._known[svc.id] = known
        return known

    def broadcast(self, updates: list[tuple[str, pb.ProxyMapping, bool]]) -> None:
        """Queue per-proxy messages (``SendServiceUpdateToCluster`` for each update)."""
        for conn in self.connections():
            out: list[pb.ProxyMapping] = []
            for cluster, m, was_private in updates:
                if cluster and conn.address != cluster:
                    continue
                if conn.account_id is not None and m.account_id != conn.account_id:
                    continue
                if not proxy_accepts_mapping(conn.caps, m):
                    # a public service turned private: the proxy must drop it (S3 fix)
                    if m.type == MODIFIED and m.private and not was_private:
                        out.append(removed_mapping(m))
                    continue
                if m.type == MODIFIED and was_private and not conn.supports_private:
                    # private -> public: this proxy never had it, so it is new here
                    m2 = pb.ProxyMapping()
                    m2.CopyFrom(m)
                    m2.type = CREATED
                    m = m2
                out.append(per_proxy_mapping(m, self.tokens.issue))
            if out and conn.enqueue(out):
                self._event("update-queued", proxy_id=conn.proxy_id, size=len(out))

    # -- store helpers -------------------------------------------------------------------------

    def _resolve(self, services: list[Service]) -> list[Service]:
        """Replace ``peer`` target hosts with the peer IP (``unknown`` when gone), batched."""
        return self.store.services.resolve_services_target_hosts(services)
