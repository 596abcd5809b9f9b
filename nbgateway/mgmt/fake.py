"""FakeManagementClient: an in-memory IManagementClient for unit tests.

Records every call, answers from canned responses (fail closed by default:
tunnel peers and sessions are invalid unless configured), can hold calls
open so tests fire them by hand (single-flight, timeouts, cancellation), and
drives an :class:`~nbgateway.interfaces.IMappingStore` like the real mapping
stream does (``connect`` / ``push`` / ``disconnect``), counting acks.

Not for proving wire behaviour: the real client is tested against a real
grpcio server in ``tests/mgmt``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.interfaces import IManagementClient, IMappingStore


@dataclass
class HeldCall:
    """A call the fake is holding open (``hold=True``)."""

    method: str
    kwargs: dict[str, Any]
    deferred: Deferred[Any] = field(repr=False)
    cancelled: bool = False


@implementer(IManagementClient)
class FakeManagementClient:
    """In-memory management.  ``responses[method]`` overrides a method's answer:
    a value, an exception instance (the Deferred fails with it), or a callable
    taking the call's keyword arguments and returning either."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.responses: dict[str, Any] = {}
        #: (tunnel_ip, domain) -> ValidateTunnelPeerResponse
        self.tunnel_peers: dict[tuple[str, str], pb.ValidateTunnelPeerResponse] = {}
        self.hold = False
        self.held: list[HeldCall] = []
        self.connected = False
        self.store: IMappingStore | None = None
        self.acks = 0

    # -- helpers for tests ---------------------------------------------------

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.calls if name == method]

    def allow_tunnel_peer(
        self,
        tunnel_ip: str,
        domain: str,
        *,
        user_id: str = "user",
        user_email: str = "user@example.com",
        session_token: str = "session-jwt",
        groups: Iterable[tuple[str, str]] = (),
    ) -> pb.ValidateTunnelPeerResponse:
        groups = list(groups)
        resp = pb.ValidateTunnelPeerResponse(
            valid=True,
            user_id=user_id,
            user_email=user_email,
            session_token=session_token,
            peer_group_ids=[g for g, _ in groups],
            peer_group_names=[n for _, n in groups],
        )
        self.tunnel_peers[(tunnel_ip, domain)] = resp
        return resp

    def release(self, index: int = 0, result: Any = None) -> None:
        """Fire a held call with ``result`` (an exception instance fails it)."""
        call = self.held.pop(index)
        if isinstance(result, BaseException):
            call.deferred.errback(result)
        else:
            call.deferred.callback(result)

    # -- the interface ---------------------------------------------------------

    def _call(self, method: str, default: Callable[..., Any], **kwargs: Any) -> Deferred[Any]:
        self.calls.append((method, kwargs))
        if self.hold:

            def cancelled(_d: Deferred[Any]) -> None:
                held.cancelled = True
                if held in self.held:
                    self.held.remove(held)

            held = HeldCall(method, kwargs, Deferred(cancelled))
            self.held.append(held)
            return held.deferred
        answer = self.responses.get(method, default)
        d = maybeDeferred(answer, **kwargs) if callable(answer) else succeed(answer)

        def check(value: Any) -> Any:
            if isinstance(value, BaseException):
                return fail(value)
            return value

        return d.addCallback(check)

    def _default_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> pb.ValidateTunnelPeerResponse:
        resp = self.tunnel_peers.get((tunnel_ip, domain))
        if resp is not None:
            return resp
        return pb.ValidateTunnelPeerResponse(valid=False, denied_reason="peer_not_found")

    def validate_tunnel_peer(self, tunnel_ip: str, domain: str,
                             account_id: str = "") -> Deferred[Any]:
        kwargs: dict[str, Any] = {"tunnel_ip": tunnel_ip, "domain": domain}
        if account_id:  # recorded only when asked with an account
            kwargs["account_id"] = account_id
        return self._call("validate_tunnel_peer", self._default_tunnel_peer, **kwargs)

    def validate_session(self, domain: str, session_token: str) -> Deferred[Any]:
        return self._call(
            "validate_session",
            lambda **_: pb.ValidateSessionResponse(valid=False, denied_reason="invalid_token"),
            domain=domain,
            session_token=session_token,
        )

    def authenticate(self, service_id: str, account_id: str, **scheme: Any) -> Deferred[Any]:
        return self._call(
            "authenticate",
            lambda **_: pb.AuthenticateResponse(success=False),
            service_id=service_id,
            account_id=account_id,
            **scheme,
        )

    def create_proxy_peer(
        self,
        service_id: str,
        account_id: str,
        token: str,
        wireguard_public_key: str,
        cluster: str,
        wireguard_endpoint: str = "",
    ) -> Deferred[None]:
        return self._call(
            "create_proxy_peer",
            lambda **_: None,
            service_id=service_id,
            account_id=account_id,
            token=token,
            wireguard_public_key=wireguard_public_key,
            cluster=cluster,
            wireguard_endpoint=wireguard_endpoint,
        )

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
        return self._call(
            "send_status_update",
            lambda **_: None,
            service_id=service_id,
            account_id=account_id,
            status=status,
            certificate_issued=certificate_issued,
            error_message=error_message,
            inbound_listener=inbound_listener,
            certificate=certificate,
        )

    def send_access_log(self, entry: pb.AccessLog) -> Deferred[None]:
        return self._call("send_access_log", lambda **_: None, entry=entry)

    def get_oidc_url(self, service_id: str, account_id: str, redirect_url: str) -> Deferred[str]:
        return self._call(
            "get_oidc_url",
            lambda **_: errors.ManagementUnimplementedError("GetOIDCURL not configured"),
            service_id=service_id,
            account_id=account_id,
            redirect_url=redirect_url,
        )

    # -- mapping stream --------------------------------------------------------

    def subscribe_mappings(self, store: IMappingStore) -> None:
        if self.store is not None:
            raise RuntimeError("mappings already subscribed")
        self.store = store

    def connect(self) -> None:
        """A new mapping stream (reconnect): the store starts a fresh snapshot."""
        assert self.store is not None, "subscribe_mappings first"
        self.connected = True
        self.store.stream_started()

    def push(
        self, mappings: Iterable[pb.ProxyMapping], initial_sync_complete: bool = False
    ) -> Deferred[None]:
        """Deliver one batch; the returned Deferred fires when it is acked."""
        assert self.store is not None and self.connected, "connect() first"
        d = maybeDeferred(self.store.apply_batch, list(mappings), initial_sync_complete)

        def acked(_: object) -> None:
            self.acks += 1

        return d.addCallback(acked)

    def snapshot(self, mappings: Iterable[pb.ProxyMapping]) -> Deferred[None]:
        """connect() + one complete snapshot batch."""
        self.connect()
        return self.push(mappings, initial_sync_complete=True)

    def disconnect(self) -> None:
        assert self.store is not None
        self.connected = False
        self.store.stream_ended()
