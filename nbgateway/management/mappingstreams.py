"""The ProxyService mapping streams: live connections, diff, broadcast, resume.

:class:`MappingStreams` owns everything ``GetMappingUpdate`` and
``SyncMappings`` share (the servicer in
:mod:`~nbgateway.management.proxyservice` only authenticates, decodes and
hands over):

* **Connections**: one :class:`ProxyConnection` per proxy id (a newer stream
  of the same proxy cancels the older one); the proxy row is registered in
  the store when a stream opens and marked disconnected when it ends.
* **Dispatch**: the store's after-commit listener records changed service ids
  and wakes one dispatcher thread, which diffs each changed service against
  the last broadcast version (``_known``) and :meth:`broadcast`\\ s
  CREATED/MODIFIED/REMOVED mappings, capability-filtered per proxy (the whole
  mapping, ``private`` included, is copied per proxy; public -> private is
  REMOVED for proxies lacking ``supports_private_service``, private ->
  public CREATED for them).  Token revocations cancel the affected streams.
* **Streams as coroutines**: :meth:`serve` runs on the gRPC server's asyncio
  loop (:mod:`~nbgateway.management.grpcloop`).  It sends the initial
  messages in batches (SyncMappings: the next only after the ack of the
  previous one), then waits on the connection's ``asyncio.Event`` for queued
  updates; the dispatcher thread wakes it with ``call_soon_threadsafe``.  A
  companion task heartbeats the proxy row for the stream's whole life (the
  snapshot included) and ends the stream when its token is revoked.  Each
  connection queue is bounded (``queue_size`` broadcasts); a full queue
  cancels that proxy's stream (it resyncs).  An account-scoped token scope
  holds at most ``max_per_account`` live streams (RESOURCE_EXHAUSTED beyond;
  superseding one of its own proxy ids does not count twice): the server's
  RPC bound is everyone's.  Store work (snapshot, register,
  heartbeat) runs in the loop's small fixed executor.  No thread per stream.
* **Resume by revision** (issue 18): every broadcast gets the next revision
  and is kept in a bounded :class:`~nbgateway.management.changelog.ChangeLog`
  (``log_size`` broadcasts, at most ``log_mappings`` mappings).  Every
  message carries ``nbgw_revision``; a proxy reconnecting with
  ``nbgw_resume_revision`` R receives only the changes after R
  (``nbgw_resumed``) when R is one this process issued and the log still
  holds everything after it, else the full snapshot (see the changelog
  module for why another process's revision is never taken for this one's).
  The log is filtered per proxy by cluster address, account and
  capabilities like a broadcast; a proxy that reconnects with another
  address or other capabilities must not present a revision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import l4ports
from nbgateway.management.changelog import LOG_ITEMS, LOG_SIZE, ChangeLog
from nbgateway.management.errors import Conflict, NotFound
from nbgateway.management.grpcloop import RpcAbortError, race, wake_threadsafe, write_or_stop
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
from nbgateway.management.proxyrpcs import valid_proxy_address

log = Logger()

QUEUE_SIZE = 100
#: live mapping streams one account-scoped (BYOP) token scope may hold: the
#: gRPC server admits a bounded number of RPCs for everyone (shared gateways'
#: ValidateTunnelPeer, peers' Sync), so no tenant may take them all
MAX_STREAMS_PER_ACCOUNT = 64
HEARTBEAT_INTERVAL = 60.0
STALE_CLEANUP_INTERVAL = 300.0
STALE_AFTER = timedelta(hours=1)

#: changes the dispatcher diffs; ``SERVICE_STATUS`` (a gateway's status report,
#: the only change of 10,000 services at a large bring-up) is not one of them:
#: the mapping carries no status, so it cannot differ
_SERVICE_KINDS = (
    ChangeKind.SERVICE_CREATED,
    ChangeKind.SERVICE_UPDATED,
    ChangeKind.SERVICE_DELETED,
)

#: (cluster, mapping, previously private) as diffed from one service change
Update = tuple[str, pb.ProxyMapping, bool]


class ProxyConnection:
    """One live mapping stream of one proxy (thread-safe queue, loop-side events)."""

    def __init__(
        self,
        *,
        proxy_id: str,
        address: str,
        caps: pb.ProxyCapabilities | None,
        token: ProxyAccessToken,
        peer_ip: str,
        queue_size: int,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.proxy_id = proxy_id
        self.session_id = str(uuid.uuid4())
        self.address = address
        self.caps = caps
        self.token_id = token.id
        self.account_id = token.account_id
        self.peer_ip = peer_ip
        self.queue_size = queue_size
        self.loop = loop
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, list[pb.ProxyMapping]]] = deque()
        #: set (on ``loop``) when updates are queued or the stream closes
        self.event = asyncio.Event()
        #: set (on ``loop``) when the stream closes: interrupts reads and writes
        self.stop_event = asyncio.Event()
        self.closed = threading.Event()
        self.cancel_reason: str | None = None
        #: revision the initial messages bring the proxy to
        self.start_revision = 0
        #: changes since the presented revision (None: send the snapshot)
        self.resume: list[tuple[int, list[Update]]] | None = None

    @property
    def supports_private(self) -> bool:
        return bool(
            self.caps is not None
            and self.caps.HasField("supports_private_service")
            and self.caps.supports_private_service
        )

    def close(self) -> None:
        self.closed.set()
        wake_threadsafe(self.loop, self.event)
        wake_threadsafe(self.loop, self.stop_event)

    def cancel(self, reason: str) -> None:
        """End the stream (CANCELLED) from any thread, even while it is blocked sending."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            log.info("cancelling mapping stream of proxy {proxy_id}: {reason}",
                     proxy_id=self.proxy_id, reason=reason)
        self.close()

    def enqueue(self, revision: int, mappings: list[pb.ProxyMapping]) -> bool:
        with self._lock:
            full = len(self._queue) >= self.queue_size
            if not full:
                self._queue.append((revision, mappings))
        if full:
            self.cancel("send queue full, forcing a resync")
            return False
        wake_threadsafe(self.loop, self.event)
        return True

    def drain(self) -> list[tuple[int, list[pb.ProxyMapping]]]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            return items

    def pending(self) -> bool:
        with self._lock:
            return bool(self._queue)


@dataclasses.dataclass(frozen=True)
class _Known:
    """Last broadcast state of a service (dispatcher cache)."""

    account_id: str
    cluster: str
    live: bool
    private: bool
    blob: bytes
    removed: pb.ProxyMapping


class MappingStreams:
    """See the module docstring."""

    def __init__(
        self,
        store: Any,
        tokens: OneTimeTokenStore,
        *,
        batch_size: int,
        queue_size: int = QUEUE_SIZE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[..., None] | None = None,
        log_size: int = LOG_SIZE,
        log_mappings: int = LOG_ITEMS,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.heartbeat_interval = heartbeat_interval
        #: live streams per account-scoped scope (management-wide tokens: unbounded)
        self.max_per_account = MAX_STREAMS_PER_ACCOUNT
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.Lock()
        self._conns: dict[str, ProxyConnection] = {}
        #: broadcasts by revision, for resuming proxies (guarded by ``_lock``)
        self.changes: ChangeLog[Update] = ChangeLog(size=log_size, items=log_mappings)
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
        #: token revocations seen (the servicer clears its token cache on them)
        self.on_token_change: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

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

    @property
    def revision(self) -> int:
        """The revision of the last broadcast."""
        with self._lock:
            return self.changes.revision

    def _event(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, **fields)

    # -- opening a stream (executor thread) ----------------------------------------------------

    def open(self, init: Any, caller: ProxyAccessToken, peer_ip: str,
             loop: asyncio.AbstractEventLoop | None) -> ProxyConnection:
        """Validate ``init``, register the connection and the proxy row (blocking)."""
        if not init.proxy_id:
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is required")
        if len(init.proxy_id) > 255:
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT, "proxy_id is too long")
        if not valid_proxy_address(init.address):
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT, "proxy address is invalid")
        if caller.account_id is not None:
            try:
                in_use = self.store.proxies.cluster_address_in_use(init.address, caller.account_id)
            except Exception as exc:
                raise RpcAbortError(grpc.StatusCode.INTERNAL,
                                    f"check cluster address: {exc}") from None
            if in_use:
                raise RpcAbortError(grpc.StatusCode.ALREADY_EXISTS,
                                    f"cluster address {init.address} is already in use")
        caps = None
        if init.HasField("capabilities"):
            caps = pb.ProxyCapabilities()
            caps.CopyFrom(init.capabilities)
        conn = ProxyConnection(proxy_id=init.proxy_id, address=init.address, caps=caps,
                               token=caller, peer_ip=peer_ip, queue_size=self.queue_size,
                               loop=loop)
        resume_from = init.nbgw_resume_revision
        with self._lock:
            old = self._conns.get(conn.proxy_id)
            if old is not None and old.account_id != conn.account_id:
                # a proxy id is its scope's: another account's (or a shared)
                # gateway is not superseded by this token
                raise RpcAbortError(grpc.StatusCode.ALREADY_EXISTS,
                                    f"proxy_id {conn.proxy_id} is in use by another "
                                    "account's gateway")
            if old is None and conn.account_id is not None and sum(
                    c.account_id == conn.account_id
                    for c in self._conns.values()) >= self.max_per_account:
                raise RpcAbortError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"too many mapping streams of account {conn.account_id} "
                                    f"(at most {self.max_per_account})")
            self._conns[conn.proxy_id] = conn
            conn.start_revision = self.changes.revision
            if resume_from:
                conn.resume = self.changes.since(resume_from)
        if old is not None:
            old.cancel("superseded by a newer connection of the same proxy")

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
                l4_ports=(l4ports.from_proto(caps.nbgw_l4_public_ports)
                          if caps is not None and caps.HasField("nbgw_l4_public_ports")
                          else None),
            ),
        )
        try:
            self.store.proxies.register(record)
        except Conflict as exc:  # the stored row is another scope's (another replica)
            self._unregister(conn)
            raise RpcAbortError(grpc.StatusCode.ALREADY_EXISTS, exc.message) from None
        except Exception as exc:
            self._unregister(conn)
            what = "failed to register BYOP proxy" if caller.account_id else "register proxy"
            raise RpcAbortError(grpc.StatusCode.INTERNAL,
                                f"{what} in database: {exc}") from None
        log.info("proxy {proxy_id} connected for cluster {address}{resumed}",
                 proxy_id=conn.proxy_id, address=conn.address,
                 resumed=" (resuming)" if conn.resume is not None else "")
        return conn

    def _unregister(self, conn: ProxyConnection) -> bool:
        with self._lock:
            if self._conns.get(conn.proxy_id) is conn:
                del self._conns[conn.proxy_id]
                return True
        return False

    def snapshot_mappings(self, conn: Any) -> list[pb.ProxyMapping]:
        """Enabled services of the proxy's cluster, capability-filtered."""
        found = self.store.services.list_for_cluster(conn.address, account_id=conn.account_id)
        live = [s for s in found if s.enabled and s.proxy_cluster == conn.address]
        mappings = [to_proto_mapping(s, CREATED) for s in self._resolve(live)]
        return [m for m in mappings if proxy_accepts_mapping(conn.caps, m)]

    def _initial(self, conn: ProxyConnection) -> list[pb.ProxyMapping]:
        """The snapshot, or the resumed changes filtered for ``conn`` (executor)."""
        if conn.resume is None:
            return self.snapshot_mappings(conn)
        out: list[pb.ProxyMapping] = []
        for _rev, updates in conn.resume:
            out.extend(self._for_conn(conn, updates, issue=False))
        return out

    def _issue(self, mappings: list[pb.ProxyMapping]) -> list[pb.ProxyMapping]:
        return [per_proxy_mapping(m, self.tokens.issue) for m in mappings]

    # -- serving a stream (loop coroutine) -----------------------------------------------------

    async def serve(self, conn: ProxyConnection, context: Any, resp_cls: type,
                    requests: Any | None) -> None:
        """Initial messages, then queued updates and heartbeats, until the stream ends."""
        loop = asyncio.get_running_loop()
        acks: asyncio.Future[None] | None = None
        beats = asyncio.ensure_future(self._heartbeats(conn))
        try:
            try:
                mappings = await loop.run_in_executor(None, self._initial, conn)
            except Exception as exc:
                await context.abort(grpc.StatusCode.INTERNAL, f"load snapshot: {exc}")
            resumed = conn.resume is not None
            n = self.batch_size
            starts = list(range(0, len(mappings), n)) or [0]
            for k, start in enumerate(starts, start=1):
                batch = await loop.run_in_executor(None, self._issue, mappings[start:start + n])
                self._event("batch-sent", proxy_id=conn.proxy_id, batch=k, size=len(batch))
                msg = resp_cls(mapping=batch, initial_sync_complete=k == len(starts),
                               nbgw_revision=conn.start_revision, nbgw_resumed=resumed)
                if not await write_or_stop(context, msg, conn.stop_event):
                    break
                if requests is not None and not await self._expect_ack(requests, context,
                                                                        conn, k):
                    break
            else:
                if requests is not None:
                    acks = asyncio.ensure_future(self._drain_acks(requests, conn))
                await self._send_updates(conn, context, resp_cls)
            if conn.cancel_reason is not None:
                await context.abort(grpc.StatusCode.CANCELLED, conn.cancel_reason)
        finally:
            beats.cancel()
            if acks is not None:
                acks.cancel()
            self._unregister(conn)
            conn.close()
            loop.run_in_executor(None, self._disconnected, conn)

    def _disconnected(self, conn: ProxyConnection) -> None:
        try:
            # only touches the row while this session is still the current one
            self.store.proxies.disconnect(conn.proxy_id, conn.session_id)
        except Exception:
            log.failure("marking proxy {proxy_id} disconnected", proxy_id=conn.proxy_id)
        log.info("proxy {proxy_id} mapping stream ended", proxy_id=conn.proxy_id)

    async def _expect_ack(self, requests: Any, context: Any, conn: ProxyConnection,
                          k: int) -> bool:
        """The ack of batch ``k``; False when the stream was closed meanwhile."""
        try:
            done, raw = await race(requests.__anext__(), conn.stop_event)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INTERNAL, "receive ack: EOF")
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"receive ack: {exc}")
        if not done:
            return False
        try:
            msg = pb.SyncMappingsRequest.FromString(raw)
        except Exception:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed SyncMappingsRequest")
        kind = msg.WhichOneof("msg")
        if kind != "ack":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected ack, got {kind}")
        self._event("ack", proxy_id=conn.proxy_id, batch=k)
        return True

    async def _drain_acks(self, requests: Any, conn: ProxyConnection) -> None:
        """After the initial messages acks are read and discarded; EOF ends the stream."""
        try:
            async for _ in requests:
                if conn.closed.is_set():
                    break
        except Exception:
            pass
        conn.close()

    async def _send_updates(self, conn: ProxyConnection, context: Any, resp_cls: type) -> None:
        while not conn.closed.is_set():
            for revision, mappings in conn.drain():
                if conn.closed.is_set():
                    return
                msg = resp_cls(mapping=mappings, nbgw_revision=revision)
                if not await write_or_stop(context, msg, conn.stop_event):
                    return
            conn.event.clear()
            if conn.pending() or conn.closed.is_set():
                continue
            await conn.event.wait()

    async def _heartbeats(self, conn: ProxyConnection) -> None:
        """Refresh the proxy row every ``heartbeat_interval`` for the stream's whole
        life, the initial snapshot included (a gateway busy applying a large snapshot
        must not look inactive), and end the stream once its token is revoked."""
        loop = asyncio.get_running_loop()
        while not conn.closed.is_set():
            await race(asyncio.sleep(self.heartbeat_interval), conn.stop_event)
            if conn.closed.is_set():
                return
            if not await loop.run_in_executor(None, self._heartbeat, conn):
                return

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

    # -- incremental updates (dispatcher thread) -----------------------------------------------

    def _on_store_change(self, kind: ChangeKind, account_id: str, ids: tuple[str, ...]) -> None:
        """Store listener (runs after commit in the writer's thread): just record and wake."""
        if kind in _SERVICE_KINDS:
            with self._pending_lock:
                for sid in ids:
                    self._pending[sid] = account_id
                self._seen += 1
            self._wakeup.set()
        elif kind == ChangeKind.PROXY_TOKEN:
            if self.on_token_change is not None:
                self.on_token_change()
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
        updates: list[Update] = []
        for sid, account_id in pending.items():
            updates.extend(self._diff(sid, account_id))
        if updates:
            self.broadcast(updates)

    def _diff(self, sid: str, account_id: str) -> list[Update]:
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
        out: list[Update] = []
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

    def broadcast(self, updates: list[Update]) -> int:
        """Log ``updates`` under the next revision and queue them, filtered, to every
        proxy (``SendServiceUpdateToCluster`` for each update); the revision."""
        with self._lock:
            revision = self.changes.append(updates)
            conns = list(self._conns.values())
        for conn in conns:
            out = self._for_conn(conn, updates)
            if out and conn.enqueue(revision, out):
                self._event("update-queued", proxy_id=conn.proxy_id, size=len(out))
        return revision

    def _for_conn(self, conn: ProxyConnection, updates: list[Update], *,
                  issue: bool = True) -> list[pb.ProxyMapping]:
        """The messages ``conn`` must see of ``updates`` (cluster, account, capabilities)."""
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
            out.append(per_proxy_mapping(m, self.tokens.issue) if issue else m)
        return out

    # -- store helpers -------------------------------------------------------------------------

    def _resolve(self, services: list[Service]) -> list[Service]:
        """Replace ``peer`` target hosts with the peer IP (``unknown`` when gone), batched."""
        resolved = self.store.services.resolve_services_target_hosts(services)
        # mTLS: the certificate -> user table the mappings carry (client_cert_rows)
        return self.store.services.resolve_client_cert_rows(resolved)
