"""The ProxyService gRPC servicer (management side; spec management.md section 2).

Runs in grpcio's own thread pool and calls the synchronous, thread-safe
:class:`~nbgateway.management.store.Store` directly (no reactor involved).
:mod:`nbgateway.management.grpcserver` wraps it in a Twisted service.

What it owns:

* **Caller identity** (2.0): every method needs ``authorization: Bearer
  <proxy token>``; failures are ``UNAUTHENTICATED`` with the upstream texts,
  failed attempts are rate limited per client IP (burst 5, one token per 12 s,
  ``RESOURCE_EXHAUSTED``); account-scoped (BYOP) tokens only reach their
  account (``PERMISSION_DENIED``).
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
* **Unary RPCs**: ValidateTunnelPeer, ValidateSession, Authenticate,
  CreateProxyPeer (stores the ``wireguard_endpoint`` extension),
  SendStatusUpdate (stores ``inbound_listener``, an nbgateway extension),
  SendAccessLog, and GetOIDCURL (``UNIMPLEMENTED``).

Requests are decoded here (not by grpcio) so an undecodable message is
answered ``INVALID_ARGUMENT``; unknown fields are ignored as proto3 requires.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import os
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import sessionjwt
from nbgateway.management.errors import ManagementError, NotFound
from nbgateway.management.ipam import canonical_tunnel_ip
from nbgateway.management.model import (
    AccessLogEntry,
    ChangeKind,
    Peer,
    ProxyAccessToken,
    ProxyCapabilities,
    ProxyInboundListener,
    ProxyRecord,
    Service,
    ServiceStatus,
    new_id,
    utcnow,
)
from nbgateway.management.proxymapping import (
    CREATED,
    MODIFIED,
    OneTimeTokenStore,
    TokenError,
    per_proxy_mapping,
    proxy_accepts_mapping,
    removed_mapping,
    to_proto_mapping,
)
from nbgateway.management.store import _secrets
from nbgateway.management.store.schema import group_peers, groups, peers

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

_STATUS_NAMES = list(ServiceStatus)  # ProxyStatus 0..5 in order
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
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


def valid_proxy_address(address: str) -> bool:
    """An IP address or a valid DNS name (what a proxy reports as its cluster)."""
    if not address or len(address) > 253:
        return False
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        pass
    labels = address.lower().rstrip(".").split(".")
    return all(_DOMAIN_LABEL.match(label) for label in labels)


def _peer_ip(context: grpc.ServicerContext) -> str:
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest or peer


# --- failed-authentication limiter ------------------------------------------------------


class AuthFailureLimiter:
    """Token bucket per client IP: burst 5, one token back every 12 s (spec 2.0)."""

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
    ) -> None:
        self.store = store
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

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the broadcast cache, hook the store listener, start the dispatcher."""
        for s in self.store.list_all_services():
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
        unary = {
            "SendAccessLog": (pb.SendAccessLogRequest, pb.SendAccessLogResponse),
            "Authenticate": (pb.AuthenticateRequest, pb.AuthenticateResponse),
            "SendStatusUpdate": (pb.SendStatusUpdateRequest, pb.SendStatusUpdateResponse),
            "CreateProxyPeer": (pb.CreateProxyPeerRequest, pb.CreateProxyPeerResponse),
            "GetOIDCURL": (pb.GetOIDCURLRequest, pb.GetOIDCURLResponse),
            "ValidateSession": (pb.ValidateSessionRequest, pb.ValidateSessionResponse),
            "ValidateTunnelPeer": (pb.ValidateTunnelPeerRequest, pb.ValidateTunnelPeerResponse),
        }
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name, (req_cls, resp_cls) in unary.items():
            handlers[name] = uu(
                self._unary(getattr(self, name), req_cls),
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
        ip = _peer_ip(context)
        if not self.limiter.allowed(ip):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed authentication attempts"
            )
        md = context.invocation_metadata() or ()
        if not md:
            self._auth_fail(context, ip, "missing metadata")
        values = [v for k, v in md if k.lower() == "authorization"]
        if not values:
            self._auth_fail(context, ip, "missing authorization header")
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        if not value.startswith("Bearer "):
            self._auth_fail(context, ip, "invalid authorization format")
        plain = value[len("Bearer ") :].strip()
        if not _secrets.token_format_ok(plain, _secrets.PROXY_TOKEN_PREFIX):
            self._auth_fail(context, ip, "invalid token format")
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
            token = self.store.verify_proxy_token(plain)
        except ManagementError as exc:
            if exc.grpc_code == "UNAUTHENTICATED":
                self._auth_fail(context, ip, exc.message)
            context.abort(_code(exc), f"authenticate: {exc.message}")
        with self._lock:
            self._token_cache[key] = (token, now)
            self._token_cache.move_to_end(key)
            while len(self._token_cache) > TOKEN_CACHE_MAX:
                self._token_cache.popitem(last=False)
        return token

    def _auth_fail(self, context: grpc.ServicerContext, ip: str, message: str) -> None:
        self.limiter.failed(ip)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    @staticmethod
    def _enforce_scope(
        caller: ProxyAccessToken, account_id: str, context: grpc.ServicerContext
    ) -> None:
        if caller.account_id is not None and account_id != caller.account_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"account-scoped token cannot access account {account_id}",
            )

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
                in_use = self.store.cluster_address_in_use(init.address, caller.account_id)
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
            peer_ip=_peer_ip(context),
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
            self.store.register_proxy(record)
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
        """Spec 2.3: enabled services of the proxy's cluster, capability-filtered."""
        found = self.store.list_services_for_cluster(conn.address, account_id=conn.account_id)
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
                self.store.disconnect_proxy(conn.proxy_id, conn.session_id)
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
            self.store.heartbeat_proxy(conn.proxy_id, conn.session_id)
            token = self.store.get_proxy_token(conn.token_id)
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
                    self.store.delete_stale_proxies(utcnow() - STALE_AFTER)
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
                        valid = self.store.get_proxy_token(conn.token_id).is_valid(utcnow())
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
            svc: Service | None = self.store.get_service(account_id, sid)
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
        if was_live and (not new.live or old.cluster != new.cluster):
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
        wanted: dict[str, set[str]] = {}
        for s in services:
            for t in s.targets:
                if t.target_type == "peer":
                    wanted.setdefault(s.account_id, set()).add(t.target_id)
        if not wanted:
            return services
        ips: dict[tuple[str, str], str] = {}
        with self.store._read() as conn:
            for account_id, ids in wanted.items():
                id_list = sorted(ids)
                for i in range(0, len(id_list), 500):
                    q = sa.select(peers.c.id, peers.c.ip).where(
                        peers.c.account_id == account_id, peers.c.id.in_(id_list[i : i + 500])
                    )
                    for pid, ip in conn.execute(q):
                        ips[(account_id, pid)] = ip
        out = []
        for s in services:
            if any(t.target_type == "peer" for t in s.targets):
                s = dataclasses.replace(
                    s,
                    targets=tuple(
                        dataclasses.replace(t, host=ips.get((s.account_id, t.target_id), "unknown"))
                        if t.target_type == "peer"
                        else t
                        for t in s.targets
                    ),
                )
            out.append(s)
        return out

    def peer_group_refs(self, account_id: str, peer_id: str) -> list[tuple[str, str]]:
        """``[(group id, group name)]`` of a peer, by group id (no member lists loaded)."""
        q = (
            sa.select(groups.c.id, groups.c.name)
            .join(group_peers, group_peers.c.group_id == groups.c.id)
            .where(group_peers.c.peer_id == peer_id, groups.c.account_id == account_id)
            .order_by(groups.c.id)
        )
        with self.store._read() as conn:
            return [(gid, name) for gid, name in conn.execute(q)]

    # -- ValidateTunnelPeer (2.8, 2.9) ---------------------------------------------------------

    def ValidateTunnelPeer(
        self, req: pb.ValidateTunnelPeerRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.ValidateTunnelPeerResponse:
        deny = pb.ValidateTunnelPeerResponse
        if not req.domain or not req.tunnel_ip:
            return deny(denied_reason="missing domain or tunnel_ip")
        if canonical_tunnel_ip(req.tunnel_ip) is None:
            return deny(denied_reason="invalid_tunnel_ip")
        svc = self._service_by_domain(req.domain, context)
        if svc is None:
            return deny(denied_reason="service_not_found")
        self._enforce_scope(caller, svc.account_id, context)
        try:
            peer: Peer | None = self.store.get_peer_by_ip(svc.account_id, req.tunnel_ip)
        except Exception:
            peer = None
        if peer is None:
            return deny(denied_reason="peer_not_found")
        try:
            refs = self.peer_group_refs(svc.account_id, peer.id)
        except Exception:
            return deny(denied_reason="peer_not_found")
        gids = [g for g, _ in refs]
        names = [n for _, n in refs]
        principal, display = peer.id, peer.name
        identity = {"peer_group_ids": gids, "peer_group_names": names}
        if peer.user_id:
            principal = peer.user_id
            try:
                user = self.store.get_user(svc.account_id, peer.user_id)
            except NotFound:
                user = None
            except ManagementError as exc:
                context.abort(_code(exc), f"get user: {exc.message}")
            if user is None:
                return deny(denied_reason="user_not_found", user_id=principal,
                            user_email=display, **identity)
            display = user.email or peer.name
            if user.pending_approval:
                return deny(denied_reason="pending_approval", user_id=principal,
                            user_email=display, **identity)
            if user.blocked:
                return deny(denied_reason="user_blocked", user_id=principal,
                            user_email=display, **identity)
        if not check_peer_group_access(svc, gids):
            return deny(denied_reason="not_in_group", user_id=principal, user_email=display,
                        **identity)
        if not svc.session_private_key:
            return deny(denied_reason="invalid_service_config")
        try:
            token = sessionjwt.sign_session(
                svc.session_private_key,
                subject=principal,
                domain=svc.domain,
                method="oidc",
                email=display,
                groups=gids,
                group_names=names,
            )
        except (sessionjwt.InvalidServiceKeyError, ValueError) as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"sign session token: {exc}")
        return pb.ValidateTunnelPeerResponse(
            valid=True, user_id=principal, user_email=display, session_token=token, **identity
        )

    def _service_by_domain(self, domain: str, context: grpc.ServicerContext) -> Service | None:
        try:
            return self.store.get_service_by_domain(domain)
        except ManagementError as exc:
            context.abort(_code(exc), f"get service by domain: {exc.message}")

    # -- ValidateSession (2.7) -----------------------------------------------------------------

    def ValidateSession(
        self, req: pb.ValidateSessionRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.ValidateSessionResponse:
        deny = pb.ValidateSessionResponse
        if not req.domain or not req.session_token:
            return deny(denied_reason="missing domain or session_token")
        svc = self._service_by_domain(req.domain, context)
        if svc is None:
            return deny(denied_reason="service_not_found")
        self._enforce_scope(caller, svc.account_id, context)
        try:
            claims = sessionjwt.verify_session(
                req.session_token, svc.session_public_key, svc.domain
            )
        except sessionjwt.InvalidServiceKeyError:
            return deny(denied_reason="invalid_service_config")
        except sessionjwt.InvalidSessionTokenError:
            return deny(denied_reason="invalid_token")
        try:
            user = self.store.find_user(claims.subject)
        except ManagementError as exc:
            context.abort(_code(exc), f"get user: {exc.message}")
        if user is None:
            return deny(denied_reason="user_not_found")
        if not user.account_id or not svc.account_id or user.account_id != svc.account_id:
            return deny(denied_reason="account_mismatch")
        ident = {"user_id": user.id, "user_email": user.email}
        if user.pending_approval:
            return deny(denied_reason="pending_approval", **ident)
        if user.blocked:
            return deny(denied_reason="user_blocked", **ident)
        resolved = self.store.resolve_groups(svc.account_id, list(user.auto_groups))
        groups_ = {"peer_group_ids": [g.id for g in resolved],
                   "peer_group_names": [g.name for g in resolved]}
        bearer = svc.auth.bearer_auth
        if (
            bearer is not None
            and bearer.enabled
            and bearer.distribution_groups
            and not set(bearer.distribution_groups) & set(user.auto_groups)
        ):
            return deny(denied_reason="not_in_group", **ident, **groups_)
        return pb.ValidateSessionResponse(valid=True, **ident, **groups_)

    # -- Authenticate (2.6) --------------------------------------------------------------------

    def Authenticate(
        self, req: pb.AuthenticateRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.AuthenticateResponse:
        self._enforce_scope(caller, req.account_id, context)
        try:
            svc = self.store.get_service(req.account_id, req.id)
        except ManagementError as exc:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"get service from store: {exc.message}"
            )
        a = svc.auth
        which = req.WhichOneof("request")
        principal = method = ""
        if which == "pin" and a.pin_auth is not None and a.pin_auth.enabled:
            if a.pin_auth.pin and _secrets.verify_secret(a.pin_auth.pin, req.pin.pin):
                principal, method = "pin-user", "pin"
        elif which == "password" and a.password_auth is not None and a.password_auth.enabled:
            pw = a.password_auth.password
            if pw and _secrets.verify_secret(pw, req.password.password):
                principal, method = "password-user", "password"
        elif which == "header_auth":
            wanted = req.header_auth.header_name.strip().lower()
            for h in a.header_auths:
                if not h.enabled or not h.value:
                    continue
                if wanted and h.header.strip().lower() != wanted:
                    continue
                if _secrets.verify_secret(h.value, req.header_auth.header_value):
                    principal, method = "header-user", "header"
                    break
        if not principal:
            return pb.AuthenticateResponse(success=False)
        token = ""
        if svc.session_private_key:
            try:
                token = sessionjwt.sign_session(
                    svc.session_private_key, subject=principal, domain=svc.domain, method=method
                )
            except (sessionjwt.InvalidServiceKeyError, ValueError) as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"sign session token: {exc}")
        return pb.AuthenticateResponse(success=True, session_token=token)

    # -- CreateProxyPeer (2.13) ----------------------------------------------------------------

    def CreateProxyPeer(
        self, req: pb.CreateProxyPeerRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.CreateProxyPeerResponse:
        self._enforce_scope(caller, req.account_id, context)
        if not req.service_id or not req.account_id or not req.token:
            return pb.CreateProxyPeerResponse(
                success=False,
                error_message="missing required fields: service_id, account_id, "
                "and token are required",
            )
        try:
            raw_key = base64.b64decode(req.wireguard_public_key, validate=True)
        except (binascii.Error, ValueError):
            raw_key = b""
        if len(raw_key) != 32:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "wireguard_public_key must be a base64 32-byte key",
            )
        endpoint = req.wireguard_endpoint.strip() or None
        if endpoint is not None and not valid_endpoint(endpoint):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"wireguard_endpoint {req.wireguard_endpoint!r} is not HOST:PORT",
            )
        if req.cluster and not valid_proxy_address(req.cluster):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cluster address is invalid")
        try:
            self.tokens.validate_and_consume(req.token, req.account_id, req.service_id)
        except TokenError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token validation: {exc}")
        key = base64.b64encode(raw_key).decode()
        try:
            existing = self.store.get_peer_by_key(key)
            if existing is not None:
                if (
                    endpoint is not None
                    and existing.proxy
                    and existing.account_id == req.account_id
                    and existing.endpoint != endpoint
                ):
                    self.store.update_peer(dataclasses.replace(existing, endpoint=endpoint))
                return pb.CreateProxyPeerResponse(success=True)
            self.store.create_peer(
                Peer(
                    account_id=req.account_id,
                    name=f"proxy-{new_id()}",
                    key=key,
                    endpoint=endpoint,
                    proxy=True,
                    proxy_cluster=req.cluster,
                    ephemeral=True,
                )
            )
        except ManagementError as exc:
            if exc.grpc_code == "ALREADY_EXISTS" and self.store.get_peer_by_key(key) is not None:
                return pb.CreateProxyPeerResponse(success=True)
            context.abort(grpc.StatusCode.INTERNAL, f"create proxy peer: {exc.message}")
        return pb.CreateProxyPeerResponse(success=True)

    # -- SendStatusUpdate (2.12) ---------------------------------------------------------------

    def SendStatusUpdate(
        self, req: pb.SendStatusUpdateRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.SendStatusUpdateResponse:
        self._enforce_scope(caller, req.account_id, context)
        if not req.service_id or not req.account_id:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "service_id and account_id are required"
            )
        listener = None
        if req.HasField("inbound_listener"):
            il = req.inbound_listener
            canon = canonical_tunnel_ip(il.tunnel_ip)
            if canon is None:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "inbound_listener: invalid tunnel_ip"
                )
            if il.https_port > 65535 or il.http_port > 65535:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inbound_listener: invalid port")
            listener = ProxyInboundListener(
                proxy_id=self._caller_proxy_id(caller, context),
                account_id=req.account_id,
                tunnel_ip=canon[1],
                https_port=il.https_port,
                http_port=il.http_port,
            )
        status = _STATUS_NAMES[req.status] if 0 <= req.status < len(_STATUS_NAMES) else "error"
        try:
            self.store.set_service_status(
                req.account_id, req.service_id, status, certificate_issued=req.certificate_issued
            )
        except NotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"service {req.service_id} not found")
        except ManagementError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"update service status: {exc.message}")
        if listener is not None:
            try:
                self.store.set_inbound_listener(listener)
            except ManagementError as exc:
                context.abort(_code(exc), f"store inbound listener: {exc.message}")
        return pb.SendStatusUpdateResponse()

    def _caller_proxy_id(self, caller: ProxyAccessToken, context: grpc.ServicerContext) -> str:
        """The proxy id of the caller: its mapping stream with the same token (and IP)."""
        ip = _peer_ip(context)
        same_token = [c for c in self.connections() if c.token_id == caller.id]
        same_ip = [c for c in same_token if c.peer_ip == ip]
        if len(same_ip) == 1:
            return same_ip[0].proxy_id
        if len(same_token) == 1:
            return same_token[0].proxy_id
        return f"token-{caller.id}"

    # -- SendAccessLog (2.14) ------------------------------------------------------------------

    def SendAccessLog(
        self, req: pb.SendAccessLogRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.SendAccessLogResponse:
        if not req.HasField("log"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log is required")
        entry = req.log
        self._enforce_scope(caller, entry.account_id, context)
        if not entry.account_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log.account_id is required")
        source_ip = ""
        if entry.source_ip:
            canon = canonical_tunnel_ip(entry.source_ip)
            if canon is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log.source_ip is not an IP")
            source_ip = canon[1]
        if entry.protocol not in ("", "http", "tcp", "udp"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log.protocol is invalid")
        reason = ""
        if entry.protocol in ("", "http"):
            if not entry.auth_success:
                reason = "Authentication failed"
            elif entry.response_code >= 400:
                reason = "Request failed"
        ts = (
            entry.timestamp.ToDatetime(tzinfo=UTC) if entry.HasField("timestamp") else utcnow()
        )
        record = AccessLogEntry(
            id=entry.log_id,
            account_id=entry.account_id,
            service_id=entry.service_id,
            timestamp=ts,
            source_ip=source_ip,
            method=entry.method,
            host=entry.host,
            path=entry.path,
            duration=entry.duration_ms * 1_000_000,
            status_code=entry.response_code,
            reason=reason,
            user_id=entry.user_id,
            auth_method_used=entry.auth_mechanism,
            bytes_upload=entry.bytes_upload,
            bytes_download=entry.bytes_download,
            protocol=entry.protocol,
            metadata=dict(entry.metadata),
            agent_network=entry.agent_network,
        )
        try:
            self.store.append_access_log(record)
        except ManagementError as exc:
            context.abort(_code(exc), f"save access log: {exc.message}")
        return pb.SendAccessLogResponse()

    # -- GetOIDCURL (2.15) ---------------------------------------------------------------------

    def GetOIDCURL(
        self, req: pb.GetOIDCURLRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.GetOIDCURLResponse:
        self._enforce_scope(caller, req.account_id, context)
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "GetOIDCURL is not implemented by nbgateway management: OIDC/SSO login is not "
            "supported; private services authenticate tunnel peers with ValidateTunnelPeer",
        )


def check_peer_group_access(svc: Service, peer_group_ids: list[str]) -> bool:
    """Spec 2.9, fail closed: a private service with no access groups denies everyone."""
    have = set(peer_group_ids)
    if svc.private:
        return bool(svc.access_groups) and bool(have & set(svc.access_groups or ()))
    bearer = svc.auth.bearer_auth
    if bearer is not None and bearer.enabled and bearer.distribution_groups:
        return bool(have & set(bearer.distribution_groups))
    return True


def valid_endpoint(endpoint: str) -> bool:
    """``host:port`` / ``[v6]:port`` with a DNS name or IP host and a port 1-65535."""
    if len(endpoint) > 300:
        return False
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
        if not sep:
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
    else:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not valid_proxy_address(host) or ":" in host:
            return False
    return port.isdigit() and 0 < int(port) < 65536


def _code(exc: ManagementError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
