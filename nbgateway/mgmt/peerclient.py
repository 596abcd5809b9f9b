"""PeerChannelClient: the proxy peer's side of NetBird's ``ManagementService``.

One client per account: it holds the account's WireGuard private key (the
proxy peer registered with ``CreateProxyPeer``) and, while started, keeps
one connection cycle running (:class:`~nbgateway.mgmt.reconnect.Reconnector`,
jittered exponential backoff):

1. ``GetServerKey`` -> the management's WireGuard public key (must be a
   valid 32-byte base64 key, else the attempt fails with
   :class:`PeerChannelError` ``bad_server_key``);
2. ``Login`` with an ``EncryptedMessage`` (NaCl box between our key and the
   server key, :mod:`nbgateway.peerbox`) holding a
   ``LoginRequest`` with ``meta`` (upstream refuses a login without the
   system info: hostname, goOS, kernel, platform, OS, versions, flags and
   the peer capabilities) and ``peerKeys.wgPubKey``; the decrypted
   ``LoginResponse`` goes to ``on_login`` (optional);
3. ``Sync`` (server stream): every message is opened; whether it holds a
   ``NetworkMap`` and the map's ``Serial`` are read from the wire
   (:func:`peek_sync_map`), and the message is parsed as a ``SyncResponse``
   only when its map's turn comes; the ``NetworkMap`` is handed to
   ``on_network_map(network_map_pb)`` on the reactor thread, one at a time
   (the bridge reads the next message only when the callback returned or
   its Deferred fired: bounded memory, gRPC flow control pushes back).
   A map whose ``Serial`` is lower than the last one applied on the same
   stream is skipped (upstream's "outdated NetworkMap" rule).  Maps are
   coalesced: a map is applied ``coalesce_delay`` (50 ms) after it arrives,
   and one superseded before then (or while the previous application's
   Deferred is pending) is never applied, since each map is the whole
   network: a peer storm costs one application per interval, not per peer.

With ``mux_metadata`` (the gateway's ProxyService token metadata, or a
callable giving it) and ``NBGW_PEER_CHANNEL_MUX`` not ``0``, step 3 goes
through the process's one ``NbgwSyncMany`` stream for this management and
token (:mod:`nbgateway.mgmt.peermux`) instead of a ``Sync`` stream of its
own: the same sealed request and responses, the same handling of each map;
an error for this peer only (or the shared stream's end) ends the cycle as
the stream's end would. When the management does not implement it (or
refuses the token) the cycle opens its own ``Sync`` at once.

Any error (transport, status, a body that does not open or parse, a server
key that changed under us, a clean end of the stream) ends the cycle and the
next one starts after a backoff delay, from ``GetServerKey`` again; the
backoff resets after a cycle that had received a map.  Errors are counted in
:attr:`PeerChannelClient.errors` by reason, the last one is kept in
:attr:`PeerChannelClient.last_error` and given to ``on_error`` (optional);
nothing raises into the reactor, and an exception from ``on_network_map``
is logged and counted without ending the stream.

Nothing is live before :meth:`start`: the constructor only records
configuration; :meth:`start` creates the channel and the thread bridge,
:meth:`stop` cancels the cycle, stops the bridge (bounded thread joins) and
closes the channel (unless it was supplied by the caller). Channel, bridge,
reconnect loop and current stream are one
:class:`~nbgateway.mgmt.session.ManagedChannel` (``self.session``), the same
lifecycle the ProxyService client uses.
"""

from __future__ import annotations

import platform
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from nacl.public import PrivateKey
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway import errors
from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.mgmt import peermux
from nbgateway.mgmt._grpcbridge import StreamCall
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.mgmt.session import ManagedChannel, ManagementTarget, SessionOwner, chain_to
from nbgateway.peerbox import (
    BoxError,
    decode_wg_key,
    encode_wg_key,
    open_message,
    open_raw,
    seal_message,
)

__all__ = ["MAX_RECEIVE_BYTES", "PeerChannelClient", "PeerChannelError", "peek_sync_map",
           "system_meta"]

log = Logger()

DEFAULT_RPC_TIMEOUT = 10.0
#: a received map waits this long for a newer one before it is applied
DEFAULT_COALESCE_DELAY = 0.05
#: largest network map accepted from management
MAX_RECEIVE_BYTES = 16 * 1024 * 1024


class PeerChannelError(errors.ManagementError):
    """A peer-channel message could not be used; ``reason`` names why
    (``bad_server_key``, ``undecryptable``, ``server_key_changed``, ...)."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(details or reason)
        self.reason = reason


#: SyncResponse.NetworkMap and NetworkMap.Serial field numbers
_SYNC_NETWORK_MAP = 5
_MAP_SERIAL = 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]  # IndexError past the end
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def peek_sync_map(plain: bytes) -> tuple[bool, int] | None:
    """(has a NetworkMap, its Serial) of a serialized ``SyncResponse``, read
    from the wire format without parsing it; None when the peek cannot say
    (malformed, groups, the map field twice, or a map whose first field is
    not ``Serial``: the caller parses the message).

    Encoders write fields in number order (Go, C++, upb), so ``Serial``
    (field 1, absent only when 0) is the map's first field: the peek reads
    the response's few top-level fields and the map's first one, whatever the
    map's size."""
    try:
        pos, end = 0, len(plain)
        found: tuple[int, int] | None = None
        while pos < end:
            tag, pos = _varint(plain, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(plain, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(plain, pos)
                if number == _SYNC_NETWORK_MAP:
                    if found is not None:
                        return None  # repeated: the parser merges them
                    found = (pos, pos + size)
                pos += size
            else:
                return None
            if number == 0 or pos > end:
                return None
        if found is None:
            return False, 0
        start, stop = found
        if start == stop:
            return True, 0  # an empty map: Serial 0
        tag, pos = _varint(plain, start)
        if tag != _MAP_SERIAL << 3:  # Serial as a varint, first
            return None
        serial, pos = _varint(plain, pos)
        return (True, serial) if pos <= stop else None
    except (IndexError, ValueError):
        return None


def system_meta(hostname: str, version: str) -> pb.PeerSystemMeta:
    """The ``PeerSystemMeta`` a NetBird client sends (upstream ``system.GetInfo``)."""
    uname = platform.uname()
    return pb.PeerSystemMeta(
        hostname=hostname,
        goOS=uname.system.lower() or "linux",
        kernel=uname.system or "Linux",
        core=uname.release,
        platform=uname.machine,
        OS=uname.system or "Linux",
        OSVersion=uname.release,
        kernelVersion=uname.release,
        netbirdVersion=f"nbgateway-{version}",
        flags=pb.Flags(),
        # IPv6Overlay: the netstack serves the tunnel IPv6 address too (issue 11.7)
        capabilities=[pb.PeerCapabilitySourcePrefixes, pb.PeerCapabilityIPv6Overlay],
    )


#: parsed ``--mgmt`` targets by (URL, allow_insecure): every account's client
#: shares one (a parse keeps a list, tuples and strings per account otherwise);
#: bounded, cleared when full
_targets: dict[tuple[str, bool], ManagementTarget] = {}
_MAX_TARGETS = 16


def _shared_target(url: str, allow_insecure: bool) -> ManagementTarget:
    key = (url, allow_insecure)
    target = _targets.get(key)
    if target is None:
        target = ManagementTarget(url, allow_insecure=allow_insecure)  # ValueError: refused
        if len(_targets) >= _MAX_TARGETS:
            _targets.clear()
        _targets[key] = target
    return target


class _Cycle:
    """One connection cycle's state while it runs (most of an idle account's
    life: its Sync share is open). One small slotted object with bound
    methods, not a dict, two lists and three closures per account."""

    __slots__ = ("broken", "client", "connected", "last_serial", "lifetime")

    def __init__(self, client: PeerChannelClient) -> None:
        self.client = client
        #: True once a message arrived on this cycle's stream (resets the backoff)
        self.connected = False
        #: the error a message raised: the stream is cancelled, the cycle fails with it
        self.broken: PeerChannelError | None = None
        #: Serial of the last map taken on the current stream
        self.last_serial = -1
        #: the current stream's lifetime (mux share) or call (own Sync)
        self.lifetime: Deferred[object] | StreamCall | None = None

    def new_stream(self, lifetime: Deferred[object] | StreamCall | None) -> None:
        self.broken = None
        self.last_serial = -1
        self.lifetime = lifetime

    def cancel(self, _d: object = None) -> None:
        if self.lifetime is not None:
            self.lifetime.cancel()

    def on_message(self, enc: pb.EncryptedMessage) -> Deferred[Any] | None:
        """One sealed SyncResponse of this cycle (own stream or shared)."""
        client = self.client
        try:
            plain = client._open_plain(enc)
            peeked = peek_sync_map(plain)
            item: bytes | pb.NetworkMap = plain
            if peeked is None:  # not what the peek reads: parse it now
                resp = client._parse_sync(plain)
                has_map = resp.HasField("NetworkMap")
                item = resp.NetworkMap
                peeked = (has_map, item.Serial if has_map else 0)
        except PeerChannelError as exc:  # end the stream; the cycle fails with exc
            self.broken = exc
            self.cancel()
            return None
        if not self.connected:
            self.connected = True
            client._set_connected(True)
        has_map, serial = peeked
        if not has_map:
            return None
        if serial < self.last_serial:
            client.errors["outdated_map"] += 1
            return None
        self.last_serial = serial
        client.serial = serial
        client.maps_received += 1
        client._offer_map(item)
        return None


class PeerChannelClient(SessionOwner):
    """The peer channel of one proxy peer; see the module docstring.

    Slotted (32 attributes: past the 30 for which CPython shares a class's
    instance-dict keys, a private ~1.6 KiB dict per account)."""

    __slots__ = (
        "_apply_call", "_applying", "_pending_map", "_private", "coalesce_delay", "errors",
        "hostname", "last_error", "logins", "maps_applied", "maps_coalesced", "maps_parsed",
        "maps_received", "mux", "mux_metadata", "name", "on_error", "on_login",
        "on_network_map", "on_state", "public_key", "reactor", "root_certificates",
        "rpc_timeout", "running", "serial", "server_key", "session", "syncs_muxed",
        "syncs_own", "target", "version",
    )

    def __init__(
        self,
        reactor: Any,
        target: str,
        private_key: bytes,
        on_network_map: Callable[[pb.NetworkMap], Any],
        *,
        on_login: Callable[[pb.LoginResponse], Any] | None = None,
        on_error: Callable[[Failure], Any] | None = None,
        on_state: Callable[[bool], Any] | None = None,
        hostname: str | None = None,
        version: str = "dev",
        allow_insecure: bool = False,
        root_certificates: bytes | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        backoff: Backoff | None = None,
        channel: grpc.Channel | None = None,
        name: str = "peer-channel",
        coalesce_delay: float = DEFAULT_COALESCE_DELAY,
        mux_metadata: tuple[tuple[str, str], ...] | Callable[[], tuple[tuple[str, str], ...]]
        | None = None,
    ) -> None:
        if len(private_key) != 32:
            raise ValueError("private key must be 32 bytes")
        self.reactor = reactor
        self.target = _shared_target(target, allow_insecure)
        self._private = bytes(private_key)
        self.public_key = encode_wg_key(bytes(PrivateKey(self._private).public_key))
        self.on_network_map = on_network_map
        self.on_login = on_login
        self.on_error = on_error
        self.on_state = on_state
        self.hostname = hostname or socket.gethostname()
        self.version = version
        self.root_certificates = root_certificates
        self.rpc_timeout = rpc_timeout
        self.name = name
        #: the ProxyService token metadata for NbgwSyncMany (None: own Sync stream)
        self.mux_metadata = mux_metadata
        #: the shared NbgwSyncMany stream while started (None: own Sync stream)
        self.mux: peermux.PeerSyncMux | None = None
        #: Sync cycles carried by the shared stream / by a Sync of their own
        self.syncs_muxed = 0
        self.syncs_own = 0
        #: channel, bridge, reconnect loop and current stream (mgmt.session)
        self.session = ManagedChannel(
            reactor,
            self.target,
            pb_grpc.ManagementServiceStub,
            name=name,
            root_certificates=root_certificates,
            max_receive_bytes=MAX_RECEIVE_BYTES,
            channel_factory=(lambda: channel) if channel is not None else None,
            owns_channel=channel is None,
            backoff=backoff,
            on_state=self._state_changed,
        )
        self.server_key: bytes | None = None
        self.running = False
        self.serial = 0
        self.maps_received = 0
        #: maps handed to on_network_map, and maps skipped because a newer one
        #: arrived before their turn
        self.maps_applied = 0
        self.maps_coalesced = 0
        #: SyncResponses parsed (a map skipped before its turn is not)
        self.maps_parsed = 0
        self.coalesce_delay = coalesce_delay
        #: the map to apply next: the opened SyncResponse bytes (parsed at its
        #: turn), or a NetworkMap the peek could not read
        self._pending_map: pb.NetworkMap | bytes | None = None
        self._apply_call: Any = None
        self._applying = False
        self.logins = 0
        self.errors: Counter[str] = Counter()
        self.last_error: Failure | None = None

    # -- lifecycle --------------------------------------------------------------------

    def _state_changed(self, value: bool) -> None:
        if self.on_state is not None:
            self.on_state(value)

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self.session.open()
        metadata = self.mux_metadata() if callable(self.mux_metadata) else self.mux_metadata
        key = self.session.shared_key
        if metadata and key is not None and peermux.enabled():
            self.mux = peermux.acquire(self.reactor, key, self.session.stub, metadata)
        self.session.supervise(self._attempt)

    def stop(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        self.running = False
        if self._apply_call is not None and self._apply_call.active():
            self._apply_call.cancel()
        self._apply_call = None
        self._pending_map = None
        self.session.close()  # cancels the cycle: a shared-stream share leaves
        mux, self.mux = self.mux, None
        if mux is not None:
            peermux.release(mux)
        return succeed(None)

    # -- one connection cycle -----------------------------------------------------------

    def _attempt(self) -> Deferred[object]:
        cycle = _Cycle(self)
        d = self._get_server_key()
        d.addCallback(self._login)
        d.addCallback(self._sync, cycle)
        d.addErrback(self._cycle_failed, cycle)
        return d

    def _cycle_failed(self, reason: Failure, cycle: _Cycle) -> Failure:
        self._set_connected(False)
        if self.mux is not None:  # the next cycle asks for the server key again
            self.mux.forget_server_key()
        exc = reason.value
        if isinstance(exc, PeerChannelError):
            key = exc.reason
        elif isinstance(exc, errors.ManagementError):
            key = exc.code or type(exc).__name__
        else:
            key = type(exc).__name__
        if self.running:  # a cancellation by stop() is not an error
            self.errors[key] += 1
            self.last_error = reason
            if self.on_error is not None:
                try:
                    self.on_error(reason)
                except Exception:
                    log.failure("{name}: on_error raised", name=self.name)
        if isinstance(exc, BaseException):
            exc.connected = cycle.connected  # type: ignore[attr-defined]
        return reason

    def _get_server_key(self) -> Deferred[None]:
        """GetServerKey: the mux's one call for every client sharing it (see
        :meth:`~nbgateway.mgmt.peermux.PeerSyncMux.server_key`), else our own."""
        if self.mux is not None:
            return self.mux.server_key(self.rpc_timeout).addCallback(self._got_server_key)
        d = self.session.unary("GetServerKey", pb.Empty(), timeout=self.rpc_timeout)
        return d.addCallback(_key_of).addCallback(self._got_server_key)

    def _got_server_key(self, text: str) -> None:
        try:
            key = decode_wg_key(text)
        except BoxError:
            raise PeerChannelError("bad_server_key",
                                   "management sent an invalid server key") from None
        # the same bytes as the last cycle's when unchanged (one object kept)
        self.server_key = self.server_key if key == self.server_key else key

    def _seal(self, message: Any) -> pb.EncryptedMessage:
        assert self.server_key is not None
        return pb.EncryptedMessage(
            wgPubKey=self.public_key,
            body=seal_message(message, self.server_key, self._private),
        )

    def _open(self, enc: pb.EncryptedMessage, into: Any) -> Any:
        assert self.server_key is not None
        if enc.wgPubKey and enc.wgPubKey != encode_wg_key(self.server_key):
            raise PeerChannelError("server_key_changed", "message sealed by another server key")
        try:
            return open_message(enc.body, into, self.server_key, self._private)
        except BoxError as exc:
            raise PeerChannelError("undecryptable", f"cannot open management message: {exc}") \
                from None

    def _open_plain(self, enc: pb.EncryptedMessage) -> bytes:
        assert self.server_key is not None
        if enc.wgPubKey and enc.wgPubKey != encode_wg_key(self.server_key):
            raise PeerChannelError("server_key_changed", "message sealed by another server key")
        try:
            return open_raw(enc.body, self.server_key, self._private)
        except BoxError as exc:
            raise PeerChannelError("undecryptable", f"cannot open management message: {exc}") \
                from None

    def _parse_sync(self, plain: bytes) -> pb.SyncResponse:
        self.maps_parsed += 1
        try:
            return pb.SyncResponse.FromString(plain)
        except (DecodeError, RuntimeError, ValueError):
            raise PeerChannelError("undecryptable", "invalid sync message") from None

    def _login(self, _: object = None) -> Deferred[None]:
        req = pb.LoginRequest(
            meta=system_meta(self.hostname, self.version),
            peerKeys=pb.PeerKeys(wgPubKey=self.public_key.encode("ascii")),
        )
        d = self.session.unary("Login", self._seal(req), timeout=self.rpc_timeout)

        def got(enc: pb.EncryptedMessage) -> Deferred[Any] | None:
            resp = self._open(enc, pb.LoginResponse())
            self.logins += 1
            log.info("{name}: logged in as {key} ({address})", name=self.name,
                     key=self.public_key, address=resp.peerConfig.address)
            if self.on_login is not None:
                return maybeDeferred(self.on_login, resp)
            return None

        return d.addCallback(got)

    def _sync(self, _: object, cycle: _Cycle) -> Deferred[object]:
        mux = self.mux
        if mux is None or not mux.usable():
            return self._sync_own(cycle)
        self.syncs_muxed += 1
        cycle.new_stream(None)
        lifetime = mux.attach(self.public_key, self._seal(self._sync_request()),
                              cycle.on_message)
        cycle.lifetime = lifetime
        d: Deferred[object] = Deferred(cycle.cancel)
        lifetime.addErrback(self._share_ended, cycle, mux).addBoth(chain_to, d)
        return d

    def _share_ended(self, reason: Failure, cycle: _Cycle,
                     mux: peermux.PeerSyncMux) -> Deferred[object] | Failure:
        if cycle.broken is not None:
            return Failure(cycle.broken)
        if self.running and not cycle.connected and not mux.usable():
            # the management has no NbgwSyncMany (or refused the token):
            # this cycle opens a Sync of its own right away
            return self._sync_own(cycle)
        return reason

    def _sync_request(self) -> pb.SyncRequest:
        return pb.SyncRequest(meta=system_meta(self.hostname, self.version))

    def _sync_own(self, cycle: _Cycle) -> Deferred[object]:
        bridge, stub = self.session.bridge, self.session.stub
        if bridge is None or stub is None:
            return _failed(errors.ManagementUnavailableError(f"{self.name}: not running"))
        self.syncs_own += 1
        cycle.new_stream(None)
        stream = bridge.server_stream(stub.Sync, self._seal(self._sync_request()),
                                      cycle.on_message, name=f"{self.name}-Sync")
        cycle.lifetime = stream

        def ended(result: object) -> Failure:
            if cycle.broken is not None:
                return Failure(cycle.broken)
            if isinstance(result, Failure):
                return result
            return Failure(errors.ManagementStreamClosedError("Sync stream closed by server"))

        return self.session.watch(stream, ended)

    # -- coalescing: only the latest map is applied ---------------------------------------

    def _offer_map(self, nm: pb.NetworkMap | bytes) -> None:
        """Keep ``nm`` as the map to apply next, replacing one not yet applied.

        Each map is the account's whole network, so a map superseded before
        its turn is skipped: a peer storm (a map per created peer) costs one
        application per ``coalesce_delay`` (and per application still
        running), not one per change. ``nm`` is normally the opened
        ``SyncResponse`` bytes, parsed only when its turn comes (a skipped
        map is never parsed: no protobuf arena per received map). Memory:
        one pending map."""
        if self._pending_map is not None:
            self.maps_coalesced += 1
        self._pending_map = nm
        self._schedule_apply()

    def _schedule_apply(self) -> None:
        if self._apply_call is not None or self._applying or self._pending_map is None:
            return
        self._apply_call = self.reactor.callLater(self.coalesce_delay, self._apply_pending)

    def _apply_pending(self) -> None:
        self._apply_call = None
        item, self._pending_map = self._pending_map, None
        if item is None or not self.running:
            return
        if isinstance(item, bytes):
            try:
                nm = self._parse_sync(item).NetworkMap
            except PeerChannelError:
                # the top level read well but the map does not parse: dropped,
                # the map applied before stays (fail closed)
                self.errors["bad_map"] += 1
                log.warn("{name}: a network map from management does not parse",
                         name=self.name)
                self._schedule_apply()
                return
        else:
            nm = item
        self._applying = True
        self.maps_applied += 1
        d = maybeDeferred(self.on_network_map, nm)
        d.addErrback(self._handler_failed)

        def done(_: object) -> None:
            self._applying = False
            self._schedule_apply()

        d.addBoth(done)

    def _handler_failed(self, reason: Failure) -> None:
        self.errors["handler"] += 1
        log.failure("{name}: on_network_map failed", reason, name=self.name)

    def _set_connected(self, value: bool) -> None:
        self.session.set_connected(value)


def _key_of(resp: pb.ServerKeyResponse) -> str:
    return resp.key


def _failed(exc: Exception) -> Deferred[object]:
    d: Deferred[object] = Deferred()
    d.errback(exc)
    return d
