"""``NbgwSyncMany``: one stream carrying many proxy peers' Sync (an nbgateway
extension of NetBird's ``ManagementService``, field numbers >= 1001).

A gateway carries every account's proxy-peer Sync on one bidi stream
(:class:`SyncMany`) instead of one ``Sync`` per account. Each frame names a
peer and holds an ``EncryptedMessage`` sealed exactly as Sync's, so each peer
authenticates by its seal as on ``Sync``; on top of that the stream needs the
gateway's ProxyService token (checked by
:meth:`~nbgateway.management.peerchannel.ManagementServicer.NbgwSyncMany`),
only proxy peers may be carried, and an account-scoped token only its
account's peers. A peer that cannot be authorized (bad seal, unknown key,
wrong account, no slot, removed later) gets a frame with its status code and
leaves; the other peers are not touched. Each carried peer takes a stream
slot as a ``Sync`` would; the stream's queues are bounded: one pending render
per peer (a dict), frames to write bounded by :data:`MUX_OUTBOX` plus the work
in flight (the reader stops reading requests while it is full; new renders
wait for it to drain), at most :data:`MUX_CONCURRENCY` attaches and renders
in flight, one write at a time (gRPC flow control pushes back).

This module owns the stream's state machine; the servicer
(:mod:`nbgateway.management.peerchannel`) owns authentication, the opening
of a Sync body, map rendering and the update hub it subscribes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway._proto import management_pb2 as pb
from nbgateway.management.errors import NotFound
from nbgateway.management.grpcloop import RpcAbortError, write_or_stop
from nbgateway.management.model import ProxyAccessToken
from nbgateway.management.peerhub import Subscription

if TYPE_CHECKING:
    from nbgateway.management.peerchannel import ManagementServicer

__all__ = ["MUX_CONCURRENCY", "MUX_OUTBOX", "SyncMany"]

log = Logger()

#: refusal/end frames queued on one NbgwSyncMany stream before it stops reading requests
MUX_OUTBOX = 64
#: attaches (seal, store read, connected write) and map renders in flight per
#: NbgwSyncMany stream: a stream of a thousand peers uses the executor as a
#: thousand Sync streams would, within a bound
MUX_CONCURRENCY = 8


class MuxSubscription(Subscription):
    """A peer carried by a :class:`SyncMany`: marks and closes wake the
    stream's writer (no events of its own)."""

    def __init__(self, account_id: str, peer_id: str, key: str, mux: SyncMany) -> None:
        self.account_id = account_id
        self.peer_id = peer_id
        self.key = key
        self.mux = mux
        self._lock = threading.Lock()
        self.dirty = False
        self.closed = False

    def mark(self) -> None:
        self.mux.wake_threadsafe(self)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self.mux.wake_threadsafe(self)


class MuxPeer:
    __slots__ = ("ipv6", "last", "peer_key", "source_prefixes", "sub")

    def __init__(self, sub: MuxSubscription, peer_key: bytes, source_prefixes: bool,
                 ipv6: bool) -> None:
        self.sub = sub
        self.peer_key = peer_key
        self.source_prefixes = source_prefixes
        self.ipv6 = ipv6
        #: fingerprint of the last map sent to the peer
        self.last = b""


def frame_status(key: str, code: grpc.StatusCode, details: str) -> pb.NbgwPeerSyncFrame:
    return pb.NbgwPeerSyncFrame(nbgw_peer=key, nbgw_code=code.value[0], nbgw_details=details,
                                nbgw_leave=True)


class SyncMany:
    """One ``NbgwSyncMany`` stream: the peers it carries, its pending renders
    (one per peer at most) and its bounded outbox. Everything here runs on
    the server's loop thread except :meth:`wake_threadsafe` and
    :meth:`stop_threadsafe`."""

    def __init__(self, servicer: ManagementServicer, caller: ProxyAccessToken, context: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = servicer
        self.caller = caller
        self.context = context
        self.loop = loop
        self.peers: dict[str, MuxPeer] = {}
        #: keys whose map is to be rendered (an ordered set: each key once)
        self.ready: dict[str, None] = {}
        self.outbox: deque[pb.NbgwPeerSyncFrame] = deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.stop = asyncio.Event()
        #: attach tasks in flight by key (a key's frames are handled in order)
        self.attaching: dict[str, asyncio.Task[None]] = {}
        self.attach_slots = asyncio.Semaphore(MUX_CONCURRENCY)
        #: keys being rendered, and those marked again meanwhile
        self.rendering: set[str] = set()
        self.again: set[str] = set()
        #: keys with a change waiting for coalesce_delay
        self.delayed: set[str] = set()
        #: the stream's token was revoked (it ends UNAUTHENTICATED)
        self.revoked = False

    # -- any thread ---------------------------------------------------------------------

    def wake_threadsafe(self, sub: MuxSubscription) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the stream is gone
            self.loop.call_soon_threadsafe(self._woken, sub)

    def stop_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._stop)

    def recheck_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._recheck()))

    async def _recheck(self) -> None:
        valid = await self.loop.run_in_executor(None, self.servicer._token_valid,
                                                self.caller.id)
        if not valid:
            self.revoked = True
            self._stop()

    # -- loop thread -------------------------------------------------------------------

    def _stop(self) -> None:
        self.stop.set()
        self.wake.set()
        self.room.set()

    def _woken(self, sub: MuxSubscription) -> None:
        st = self.peers.get(sub.key)
        if st is None or st.sub is not sub:
            return
        key = sub.key
        if sub.closed:  # superseded by a newer stream of the key, or the service stops
            self._drop(key, pb.NbgwPeerSyncFrame(nbgw_peer=key, nbgw_leave=True))
        elif key not in self.delayed:
            # let the rest of a burst land: one render per peer per coalesce_delay
            delay = self.servicer.coalesce_delay
            if delay > 0:
                self.delayed.add(key)
                self.loop.call_later(delay, self._due, key)
            else:
                self._due(key)

    def _due(self, key: str) -> None:
        self.delayed.discard(key)
        if key not in self.peers:
            return
        if key in self.rendering:
            self.again.add(key)  # rendered again once the render in flight is done
        else:
            self.ready[key] = None
            self.wake.set()

    def reader_done(self, task: asyncio.Future[None]) -> None:
        # a clean end of the requests (half-close) keeps the maps flowing; an
        # error or cancellation of the call ends the stream
        if task.cancelled() or task.exception() is not None:
            self._stop()

    def _refuse(self, key: str, code: grpc.StatusCode, details: str) -> None:
        self.outbox.append(frame_status(key, code, details))
        self.wake.set()

    def _drop(self, key: str, frame: pb.NbgwPeerSyncFrame | None = None) -> None:
        """Stop carrying ``key`` (and queue ``frame`` for it, if given)."""
        st = self.peers.pop(key, None)
        self.ready.pop(key, None)
        self.again.discard(key)
        if st is not None:
            sub = st.sub
            sub.closed = True
            servicer = self.servicer
            if servicer.hub.unsubscribe(sub):
                self.loop.run_in_executor(None, servicer._mark_disconnected, sub)
            servicer._slots.release(sub.account_id, True)
        if frame is not None:
            self.outbox.append(frame)
            self.wake.set()

    def drop_all(self) -> None:
        for task in list(self.attaching.values()):
            task.cancel()
        for key in list(self.peers):
            self._drop(key)

    async def read(self, requests: AsyncIterator[pb.NbgwPeerSyncFrame]) -> None:
        async for frame in requests:
            while len(self.outbox) >= MUX_OUTBOX and not self.stop.is_set():
                self.room.clear()
                await self.room.wait()  # backpressure: the writer drains first
            if self.stop.is_set():
                return
            key = frame.nbgw_peer
            previous = self.attaching.get(key)
            if previous is not None:  # this key's frames in order
                await asyncio.wait({previous})
            await self.attach_slots.acquire()
            if self.stop.is_set():
                self.attach_slots.release()
                return
            task = asyncio.ensure_future(self._attach(frame))
            self.attaching[key] = task
            task.add_done_callback(functools.partial(self._attached, key))

    def _attached(self, key: str, task: asyncio.Task[None]) -> None:
        self.attach_slots.release()
        if self.attaching.get(key) is task:
            del self.attaching[key]
        if not task.cancelled() and task.exception() is not None:
            log.failure("attaching peer {key} failed", Failure(task.exception()), key=key)
            self._refuse(key, grpc.StatusCode.INTERNAL, "attach failed")

    async def _attach(self, frame: pb.NbgwPeerSyncFrame) -> None:
        key = frame.nbgw_peer
        self._drop(key)
        if frame.nbgw_leave:
            return
        servicer, loop = self.servicer, self.loop
        if len(self.peers) >= servicer.max_streams:
            self._refuse(key, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many peers on one stream")
            return
        message = frame.nbgw_message
        if message.wgPubKey != key:
            self._refuse(key, grpc.StatusCode.INVALID_ARGUMENT,
                         "frame and message name different peers")
            return
        try:
            peer_key, peer, sync = await loop.run_in_executor(None, servicer._sync_open, message)
        except RpcAbortError as exc:
            self._refuse(key, exc.code, exc.details)
            return
        if not peer.proxy:
            self._refuse(key, grpc.StatusCode.PERMISSION_DENIED,
                         "only proxy peers may share a stream; use Sync")
            return
        if self.caller.account_id is not None and peer.account_id != self.caller.account_id:
            self._refuse(key, grpc.StatusCode.PERMISSION_DENIED,
                         f"account-scoped token cannot access account {peer.account_id}")
            return
        if not servicer._slots.acquire(peer.account_id, True):
            self._refuse(key, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         "too many concurrent sync requests, please try again later")
            return
        if self.stop.is_set():
            servicer._slots.release(peer.account_id, True)
            return
        # carried from here on: _drop (a refusal, the stream's end, a
        # cancellation) gives back the slot and marks the peer disconnected
        sub = MuxSubscription(peer.account_id, peer.id, peer.key, self)
        st = self.peers[key] = MuxPeer(
            sub, peer_key, pb.PeerCapabilitySourcePrefixes in sync.meta.capabilities,
            pb.PeerCapabilityIPv6Overlay in sync.meta.capabilities)
        servicer.hub.subscribe(sub)
        try:
            await loop.run_in_executor(None, functools.partial(
                servicer.store.peers.set_connected, peer.account_id, peer.id, True,
                reload=False))
        except NotFound:
            if self.peers.get(key) is st:
                self._drop(key, frame_status(key, grpc.StatusCode.PERMISSION_DENIED,
                                              "peer is not registered"))
            return
        if self.peers.get(key) is st:
            self._due(key)  # the initial map

    async def write_loop(self) -> None:
        context = self.context
        while not self.stop.is_set():
            if self.outbox:
                frame = self.outbox.popleft()
                self.room.set()
                if not await write_or_stop(context, frame, self.stop):
                    return
                continue
            if self.ready and len(self.rendering) < MUX_CONCURRENCY:
                key = next(iter(self.ready))
                del self.ready[key]
                self.rendering.add(key)
                task = asyncio.ensure_future(self._render(key, self.peers[key]))
                task.add_done_callback(functools.partial(self._rendered, key))
                continue
            self.wake.clear()
            await self.wake.wait()

    def _rendered(self, key: str, task: asyncio.Task[None]) -> None:
        self.rendering.discard(key)
        if key in self.again:
            self.again.discard(key)
            if key in self.peers:
                self.ready[key] = None
        self.wake.set()

    async def _render(self, key: str, st: MuxPeer) -> None:
        """Render ``key``'s map (executor) and queue it, or its end."""
        try:
            out = await self.loop.run_in_executor(
                None, self.servicer._render, st.sub, st.peer_key, st.source_prefixes,
                st.ipv6, st.last)
        except NotFound:  # the account went away
            out = None
        except Exception:
            log.failure("rendering the map of peer {peer_id} failed", peer_id=st.sub.peer_id)
            if self.peers.get(key) is st:
                self._drop(key, frame_status(key, grpc.StatusCode.INTERNAL,
                                              "network map failed"))
            return
        if self.peers.get(key) is not st:
            return  # left or replaced meanwhile
        if out is None:
            log.info("sync of removed peer {peer_id} ends", peer_id=st.sub.peer_id)
            self._drop(key, frame_status(key, grpc.StatusCode.PERMISSION_DENIED,
                                          "peer is not registered"))
            return
        fp, sealed = out
        if sealed is not None:
            st.last = fp
            self.outbox.append(pb.NbgwPeerSyncFrame(nbgw_peer=key, nbgw_message=sealed))
