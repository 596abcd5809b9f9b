"""A real in-process ProxyService server with canned behaviour, for client tests.

Runs a grpcio server on 127.0.0.1 (ephemeral port, or a given one to simulate
a restart).  Handlers run in grpcio's server threads and record what they saw
in thread-safe lists so tests can assert on the server's view.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc

TOKEN = "nbp_test_token"


def mapping(
    service_id: str,
    domain: str,
    account: str = "acc1",
    kind: int = pb.UPDATE_TYPE_CREATED,
    private: bool = True,
) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        type=kind,
        id=service_id,
        account_id=account,
        domain=domain,
        auth_token=f"tok-{service_id}",
        private=private,
        path=[pb.PathMapping(path="/", target="http://10.0.0.1:8080")],
    )


class CannedProxyService(pb_grpc.ProxyServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, object]] = []
        self.authorization: list[str] = []
        self.inits: list[pb.SyncMappingsInit] = []
        self.gmu_requests: list[pb.GetMappingUpdateRequest] = []
        self.requests: list[object] = []
        self.snapshot: list[list[pb.ProxyMapping]] = [[]]
        self.updates: queue.Queue[pb.SyncMappingsResponse | None] = queue.Queue()
        self.sync_unimplemented = False
        self.blocked_entered = threading.Event()
        self.release_blocked = threading.Event()
        self.blocked_cancelled = threading.Event()
        self.stopping = threading.Event()

    # -- helpers ---------------------------------------------------------------

    def record(self, kind: str, value: object = None) -> None:
        with self.lock:
            self.events.append((kind, value))

    def events_of(self, kind: str) -> list[object]:
        with self.lock:
            return [v for k, v in self.events if k == kind]

    def _check_token(self, context: grpc.ServicerContext) -> None:
        md = dict(context.invocation_metadata())
        auth = md.get("authorization", "")
        with self.lock:
            self.authorization.append(auth)
        if auth != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")

    # -- unary -----------------------------------------------------------------

    def ValidateTunnelPeer(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        if request.domain == "deny.example":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "account-scoped token cannot access account x"
            )
        if request.domain == "block.example":
            context.add_callback(self.blocked_cancelled.set)
            self.blocked_entered.set()
            self.release_blocked.wait(30)
            return pb.ValidateTunnelPeerResponse(valid=False, denied_reason="released")
        if request.tunnel_ip == "100.64.0.10":
            return pb.ValidateTunnelPeerResponse(
                valid=True,
                user_id="u1",
                user_email="alice@example.com",
                session_token="jwt",
                peer_group_ids=["g1", "g2"],
                peer_group_names=["devs", "ops"],
            )
        return pb.ValidateTunnelPeerResponse(valid=False, denied_reason="peer_not_found")

    def ValidateSession(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        return pb.ValidateSessionResponse(valid=request.session_token == "good", user_id="u1")

    def Authenticate(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        ok = request.WhichOneof("request") == "pin" and request.pin.pin == "1234"
        return pb.AuthenticateResponse(success=ok, session_token="jwt" if ok else "")

    def CreateProxyPeer(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        if request.token == "expired":
            return pb.CreateProxyPeerResponse(success=False, error_message="token expired")
        if request.token == "silent":
            return pb.CreateProxyPeerResponse(success=False)
        return pb.CreateProxyPeerResponse(success=True)

    def SendStatusUpdate(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        return pb.SendStatusUpdateResponse()

    def SendAccessLog(self, request, context):
        self._check_token(context)
        self.requests.append(request)
        return pb.SendAccessLogResponse()

    def GetOIDCURL(self, request, context):
        self._check_token(context)
        return pb.GetOIDCURLResponse(url=f"https://idp.example/auth?r={request.redirect_url}")

    # -- streams ---------------------------------------------------------------

    def _wait_update(self, context) -> pb.SyncMappingsResponse | None:
        while context.is_active() and not self.stopping.is_set():
            try:
                return self.updates.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def SyncMappings(self, request_iterator, context):
        if self.sync_unimplemented:
            self.record("sync-called")
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self._check_token(context)
        first = next(request_iterator)
        if first.WhichOneof("msg") != "init":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be init")
        with self.lock:
            self.inits.append(first.init)
        batches = self.snapshot
        for k, batch in enumerate(batches, start=1):
            self.record("sent", k)
            yield pb.SyncMappingsResponse(mapping=batch, initial_sync_complete=k == len(batches))
            ack = next(request_iterator)
            if ack.WhichOneof("msg") != "ack":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected ack")
            self.record("ack", k)
        while True:
            update = self._wait_update(context)
            if update is None:
                return
            self.record("sent-update", len(update.mapping))
            yield update
            next(request_iterator)
            self.record("ack-update", len(update.mapping))

    def GetMappingUpdate(self, request, context):
        self._check_token(context)
        with self.lock:
            self.gmu_requests.append(request)
        batches = self.snapshot
        for k, batch in enumerate(batches, start=1):
            self.record("gmu-sent", k)
            yield pb.GetMappingUpdateResponse(
                mapping=batch, initial_sync_complete=k == len(batches)
            )
        while True:
            update = self._wait_update(context)
            if update is None:
                return
            yield pb.GetMappingUpdateResponse(mapping=update.mapping)


class Server:
    """A started grpc server hosting one servicer."""

    def __init__(self, servicer: CannedProxyService, port: int = 0) -> None:
        self.servicer = servicer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_ProxyServiceServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind 127.0.0.1:{port}")
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.servicer.stopping.set()
        self.servicer.release_blocked.set()
        self.server.stop(grace=None).wait(5)
