"""GrpcManagementClient: the gateway's ProxyService client.

A Twisted Service.  The constructor only records configuration; the gRPC
channel, the bridge and the mapping worker start in :meth:`startService` and
stop in :meth:`stopService` (nothing live before fork).

* Transport: ``https://host[:port]`` uses TLS (system roots or
  ``root_certificates``); ``http://host[:port]`` is plaintext and, like
  upstream's ``NB_PROXY_ALLOW_INSECURE`` rule, only accepted for loopback
  hosts unless ``allow_insecure`` is set.  Keepalive 20 s / 10 s, pings
  without calls allowed.
* Every RPC carries metadata ``authorization: Bearer <token>``.
* Unary RPCs return Deferreds (bridge), with upstream's timeouts.
* Mapping worker: SyncMappings with an init (all five capability fields
  explicitly present; ``supports_private_service`` always true; with
  ``l4_public_ports`` also the nbgateway extension ``nbgw_l4_public_ports``:
  the host ports public L4 services may bind, so management can refuse the
  others at create time) and one ack per
  message, sent only after the store applied the batch; on UNIMPLEMENTED it
  switches to GetMappingUpdate for the rest of the process lifetime.  Any end
  of a stream (including a clean close by the server) reconnects with
  jittered exponential backoff (:mod:`nbgateway.mgmt.reconnect`).  Each batch
  is applied under a watchdog; a stalled batch ends the stream to resync.
  The store keeps serving its last known mappings while disconnected.

The channel, bridge, reconnect loop and current stream are one
:class:`~nbgateway.mgmt.session.ManagedChannel` (``self.session``), shared in
shape with the peer-channel client; other gateway code that needs a unary
ProxyService call on the current channel uses ``_unary``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.interfaces import IManagementClient, IMappingStore
from nbgateway.mgmt._grpcbridge import StreamCall
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.mgmt.session import ManagedChannel, ManagementTarget, SessionOwner

log = Logger()

#: RPC timeouts (seconds).  CreateProxyPeer and SendAccessLog as upstream;
#: the validation RPCs are only bounded by the request upstream, we bound them.
CREATE_PROXY_PEER_TIMEOUT = 30.0
ACCESS_LOG_TIMEOUT = 10.0
DEFAULT_RPC_TIMEOUT = 10.0
#: Default watchdog for applying one mapping batch (NB_PROXY_MAPPING_BATCH_WATCHDOG).
BATCH_WATCHDOG = 120.0
#: Largest message accepted from management (snapshot batches of 500 mappings).
MAX_RECEIVE_BYTES = 16 * 1024 * 1024


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class _StreamEnded(errors.ManagementStreamClosedError):
    pass


@implementer(IManagementClient)
class GrpcManagementClient(SessionOwner, service.Service):
    """IManagementClient over grpcio (see module docstring)."""

    name = "management-client"

    def __init__(
        self,
        reactor: Any,
        url: str,
        token: str,
        *,
        address: str,
        proxy_id: str | None = None,
        version: str = "dev",
        private: bool = False,
        supports_custom_ports: bool = True,
        require_subdomain: bool = False,
        supports_crowdsec: bool = False,
        l4_public_ports: Iterable[tuple[int, int]] | None = None,
        l4_tls_port: int = 0,
        allow_insecure: bool = False,
        root_certificates: bytes | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        batch_watchdog: float = BATCH_WATCHDOG,
        backoff: Backoff | None = None,
        started_at: float | None = None,
        channel_factory: Callable[[], grpc.Channel] | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = ManagementTarget(url, allow_insecure=allow_insecure)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.address = address
        self.proxy_id = proxy_id or f"netbird-proxy-{uuid.uuid4()}"
        self.version = version
        self.started_at = time.time() if started_at is None else started_at
        self.capabilities: dict[str, Any] = {
            "supports_custom_ports": supports_custom_ports,
            "require_subdomain": require_subdomain,
            "supports_crowdsec": supports_crowdsec,
            "private": private,
            "supports_private_service": True,
        }
        if l4_public_ports is not None:
            # None: not advertised (management imposes nothing); () advertises no port
            self.capabilities["nbgw_l4_public_ports"] = pb.NbgwL4Ports(
                ranges=[pb.NbgwPortRange(first=lo, last=hi) for lo, hi in l4_public_ports],
                tls_port=l4_tls_port,
            )
        self.root_certificates = root_certificates
        self.rpc_timeout = rpc_timeout
        self.batch_watchdog = batch_watchdog
        #: channel, bridge, reconnect loop and current stream (mgmt.session)
        self.session = ManagedChannel(
            reactor,
            self.target,
            pb_grpc.ProxyServiceStub,
            name="management",
            root_certificates=root_certificates,
            max_receive_bytes=MAX_RECEIVE_BYTES,
            channel_factory=channel_factory,
            backoff=backoff,
            on_state=self._state_changed,
            # one client per gateway: its unary calls (auth checks among
            # them) keep gRPC's transparent retry; the peer channels do not
            transparent_retries=True,
        )
        self._store: IMappingStore | None = None
        #: False once SyncMappings answered UNIMPLEMENTED (sticky).
        self.sync_supported = True
        #: Called with True/False when the mapping stream (dis)connects (health).
        self.on_connection_state: Callable[[bool], None] | None = None
        #: nbgw_revision of the last message applied after a complete snapshot (or
        #: resume): presented on reconnect so the management may send only the
        #: changes since (nbgw_resumed); 0 = none, take the snapshot
        self.revision = 0

    def set_token(self, token: str) -> None:
        """Replace the proxy access token (the embedded management creates one
        at start, before any RPC)."""
        self._metadata = (("authorization", f"Bearer {token}"),)

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata that carries the proxy access token (current: it
        follows :meth:`set_token`); shared with the peer channel's stream."""
        return self._metadata

    # -- service -------------------------------------------------------------

    @property
    def _channel(self) -> grpc.Channel | None:
        return self.session.channel

    def _state_changed(self, value: bool) -> None:
        if self.on_connection_state is not None:
            self.on_connection_state(value)

    def startService(self) -> None:
        super().startService()
        self.session.open()
        if self._store is not None:
            self._start_worker()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.session.close()
        return None

    # -- unary RPCs ----------------------------------------------------------

    def _unary(self, method: str, request: Any, timeout: float | None,
               extra_metadata: tuple[tuple[str, str], ...] = ()) -> Deferred[Any]:
        """Call ProxyService ``method`` on the current channel with the token."""
        if not self.running or not self.session.is_open:
            d: Deferred[Any] = Deferred()
            d.errback(errors.ManagementUnavailableError("management client not running"))
            return d
        return self.session.unary(method, request, timeout=timeout,
                                  metadata=self._metadata + extra_metadata)

    def validate_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> Deferred[Any]:
        req = pb.ValidateTunnelPeerRequest(tunnel_ip=tunnel_ip, domain=domain,
                                           nbgw_account_id=account_id)
        return self._unary("ValidateTunnelPeer", req, self.rpc_timeout)

    def validate_session(self, domain: str, session_token: str) -> Deferred[Any]:
        req = pb.ValidateSessionRequest(domain=domain, session_token=session_token)
        return self._unary("ValidateSession", req, self.rpc_timeout)

    def authenticate(
        self,
        service_id: str,
        account_id: str,
        *,
        password: str | None = None,
        pin: str | None = None,
        header_value: str | None = None,
        header_name: str | None = None,
        client_ip: str = "",
    ) -> Deferred[Any]:
        """``client_ip``: the end user's address, sent as ``x-nbgw-client-ip``
        metadata so management can bound guesses per address."""
        req = pb.AuthenticateRequest(id=service_id, account_id=account_id)
        chosen = [x is not None for x in (password, pin, header_value)]
        if sum(chosen) != 1:
            d: Deferred[Any] = Deferred()
            d.errback(ValueError("authenticate needs exactly one of password, pin, header"))
            return d
        if password is not None:
            req.password.password = password
        elif pin is not None:
            req.pin.pin = pin
        else:
            req.header_auth.header_value = header_value or ""
            req.header_auth.header_name = header_name or ""
        extra = (("x-nbgw-client-ip", client_ip),) if client_ip else ()
        return self._unary("Authenticate", req, self.rpc_timeout, extra)

    def create_proxy_peer(
        self,
        service_id: str,
        account_id: str,
        token: str,
        wireguard_public_key: str,
        cluster: str,
        wireguard_endpoint: str = "",
    ) -> Deferred[None]:
        req = pb.CreateProxyPeerRequest(
            service_id=service_id,
            account_id=account_id,
            token=token,
            wireguard_public_key=wireguard_public_key,
            cluster=cluster,
            wireguard_endpoint=wireguard_endpoint,
        )
        d = self._unary("CreateProxyPeer", req, CREATE_PROXY_PEER_TIMEOUT)

        def check(resp: pb.CreateProxyPeerResponse) -> None:
            if not resp.success:
                reason = resp.error_message if resp.HasField("error_message") else ""
                raise errors.ManagementRejectedError(
                    f"proxy peer authentication failed: {reason or 'unknown error'}"
                )

        return d.addCallback(check)

    def send_status_update(
        self,
        service_id: str,
        account_id: str,
        status: int,
        *,
        certificate_issued: bool = False,
        error_message: str | None = None,
        inbound_listener: tuple[str, int, int] | None = None,
        certificate: pb.NbgwCertificateStatus | None = None,
    ) -> Deferred[None]:
        req = pb.SendStatusUpdateRequest(
            service_id=service_id,
            account_id=account_id,
            status=status,
            certificate_issued=certificate_issued,
        )
        if error_message is not None:
            req.error_message = error_message
        if inbound_listener is not None:
            tunnel_ip, https_port, http_port = inbound_listener
            req.inbound_listener.tunnel_ip = tunnel_ip
            req.inbound_listener.https_port = https_port
            req.inbound_listener.http_port = http_port
        if certificate is not None:  # nbgateway extension (field 100)
            req.nbgw_certificate.CopyFrom(certificate)
        return self._unary("SendStatusUpdate", req, self.rpc_timeout).addCallback(lambda _: None)

    def send_access_log(self, entry: pb.AccessLog) -> Deferred[None]:
        req = pb.SendAccessLogRequest(log=entry)
        return self._unary("SendAccessLog", req, ACCESS_LOG_TIMEOUT).addCallback(lambda _: None)

    def send_access_log_batch(self, entries: list[pb.AccessLog]) -> Deferred[int]:
        """nbgateway extension: entries in one call (fires with how many were new);
        ManagementUnimplementedError from a management without it (see
        :mod:`nbgateway.mgmt.logship`)."""
        return self.send_access_log_batch_request(pb.NbgwSendAccessLogBatchRequest(logs=entries))

    def send_access_log_batch_request(self, req: pb.NbgwSendAccessLogBatchRequest
                                      ) -> Deferred[int]:
        """:meth:`send_access_log_batch` for a request the caller built (the
        access log fills its entries straight into one): sent as it is, no
        copy of its entries."""
        d = self._unary("NbgwSendAccessLogBatch", req, ACCESS_LOG_TIMEOUT)
        return d.addCallback(lambda r: r.stored)

    def get_oidc_url(self, service_id: str, account_id: str, redirect_url: str) -> Deferred[str]:
        req = pb.GetOIDCURLRequest(id=service_id, account_id=account_id, redirect_url=redirect_url)
        return self._unary("GetOIDCURL", req, self.rpc_timeout).addCallback(lambda r: r.url)

    # -- mapping worker -------------------------------------------------------

    def capabilities_message(self) -> pb.ProxyCapabilities:
        """All five fields explicitly present (an absent optional field reads as
        false), plus ``nbgw_l4_public_ports`` when the gateway was given its ports."""
        return pb.ProxyCapabilities(**self.capabilities)

    def subscribe_mappings(self, store: IMappingStore) -> None:
        if self._store is not None:
            raise RuntimeError("mappings already subscribed")
        self._store = store
        if self.running:
            self._start_worker()

    def _start_worker(self) -> None:
        self.session.supervise(self._attempt)

    def _set_connected(self, value: bool) -> None:
        self.session.set_connected(value)

    def _attempt(self) -> Deferred[object]:
        """One connection: SyncMappings (or GetMappingUpdate) until it ends."""
        if self.sync_supported:
            d = self._run_stream(sync=True)

            def maybe_fallback(reason: Failure) -> Deferred[object] | Failure:
                if reason.check(errors.ManagementUnimplementedError):
                    log.warn(
                        "management does not support SyncMappings, falling back to GetMappingUpdate"
                    )
                    self.sync_supported = False
                    return self._run_stream(sync=False)
                return reason

            return d.addErrback(maybe_fallback)
        return self._run_stream(sync=False)

    def _run_stream(self, *, sync: bool) -> Deferred[object]:
        bridge, stub = self.session.bridge, self.session.stub
        assert bridge is not None and stub is not None and self._store is not None
        store = self._store
        state = {"connected": False}
        stream_holder: list[StreamCall] = []
        store.stream_started()

        # kept until this stream brings a newer one: the log entries after it carry
        # whole mapping states in order, so they also repair a half-applied snapshot
        resume_from = self.revision

        def on_message(msg: Any) -> Deferred[None]:
            if not state["connected"]:
                state["connected"] = True
                self._set_connected(True)
            # a resumed stream's first messages are changes, not a snapshot to reconcile
            snapshot_end = msg.initial_sync_complete and not msg.nbgw_resumed
            d = maybeDeferred(store.apply_batch, list(msg.mapping), snapshot_end)
            if self.batch_watchdog > 0:
                d.addTimeout(self.batch_watchdog, self.reactor)
            d.addErrback(_stalled, self.batch_watchdog)

            def applied(_: object) -> None:
                if msg.initial_sync_complete:
                    state["synced"] = True
                if state.get("synced") and msg.nbgw_revision:
                    self.revision = msg.nbgw_revision

            d.addCallback(applied)
            if sync:
                d.addCallback(lambda _: stream_holder[0].send(_ACK))
            return d

        kind = "SyncMappings" if sync else "GetMappingUpdate"
        # SyncMappingsInit and GetMappingUpdateRequest carry the same hello
        hello: dict[str, Any] = {
            "proxy_id": self.proxy_id,
            "version": self.version,
            "started_at": _timestamp(self.started_at),
            "address": self.address,
            "capabilities": self.capabilities_message(),
            "nbgw_resume_revision": resume_from,
        }
        if sync:
            stream = bridge.bidi_stream(
                stub.SyncMappings,
                on_message,
                metadata=self._metadata,
                name=kind,
                first=pb.SyncMappingsRequest(init=pb.SyncMappingsInit(**hello)),
            )
        else:
            req = pb.GetMappingUpdateRequest(**hello)
            stream = bridge.server_stream(
                stub.GetMappingUpdate, req, on_message, metadata=self._metadata, name=kind
            )
        stream_holder.append(stream)

        def ended(result: object) -> Failure:
            store.stream_ended()
            self._set_connected(False)
            if isinstance(result, Failure):
                exc = result.value
                if isinstance(exc, errors.ManagementUnimplementedError):
                    # Reachable server: counts as connected for the backoff.
                    exc.connected = True  # type: ignore[attr-defined]
                    return result
                if isinstance(exc, BaseException):
                    exc.connected = state["connected"]  # type: ignore[attr-defined]
                return result
            err = _StreamEnded("stream closed by server")
            err.connected = state["connected"]  # type: ignore[attr-defined]
            return Failure(err)

        return self.session.watch(stream, ended)


_ACK = pb.SyncMappingsRequest(ack=pb.SyncMappingsAck())


def _stalled(reason: Failure, watchdog: float) -> Failure:
    if reason.check(DeferredTimeoutError):
        log.error(
            "processing mapping batch exceeded {d}s, cancelling and reconnecting to resync",
            d=watchdog,
        )
        msg = f"mapping batch processing stalled after {watchdog}s"
        return Failure(errors.ManagementStreamClosedError(msg))
    return reason


__all__ = ["GrpcManagementClient", "ManagementTarget"]
