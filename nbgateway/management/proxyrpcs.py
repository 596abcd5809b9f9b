"""The unary ProxyService RPCs (everything but the mapping streams).

One handler object per RPC family, each holding only what it uses (the
store, and its own state): :class:`TunnelPeerRpcs`, :class:`SessionRpcs`,
:class:`StatusRpcs` and :class:`AccessLogRpcs`. The servicer
(:class:`~nbgateway.management.proxyservice.ProxyServiceServicer`) builds them
and routes each gRPC method to one; every method receives the decoded
request, the grpc context and the authenticated caller (a
:class:`~nbgateway.management.model.ProxyAccessToken`).

* ValidateTunnelPeer: peer by tunnel IP inside the service's account, its
  *peer* groups against ``access_groups`` (fail closed when empty), owner
  status (pending/blocked/unresolvable) before the group check, session JWT
  with email, groups and group_names on success.
* ValidateSession: the JWT against the service key, then the user (by ``sub``),
  account, status and bearer distribution groups.
* Authenticate: PIN / password / header secrets against argon2id hashes.
* CreateProxyPeer: one-time token, WireGuard key and the ``wireguard_endpoint``
  extension (stored as the proxy peer's endpoint).  A key held by another
  account's peer or a stock peer is ALREADY_EXISTS, answered before the token
  is spent, so the gateway can rotate its key and retry with the same token.
* SendStatusUpdate (+ ``inbound_listener``, an nbgateway extension that is
  stored, and ``nbgw_certificate``: certificate status and private CA, kept by
  ``store.certificates``), SendAccessLog (user groups captured by the store), GetOIDCURL
  (the SSO service's authorization URL; ``UNIMPLEMENTED`` without one), and
  the ``NbgwSendAccessLogBatch`` extension (one
  transaction per batch; a repeated log_id is ignored).

Every denial of the validation RPCs is gRPC OK with a ``denied_reason`` from
upstream's fixed set of reasons; transport-level problems use gRPC status codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC
from typing import Any

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import sessionjwt
from nbgateway.management.accesslogdecode import (
    access_log_record,
    access_log_values,
    canonical_ip_cached,
    decode_batch,
)
from nbgateway.management.authlimit import CLIENT_IP_METADATA
from nbgateway.management.errors import (
    ManagementError,
    NotFound,
    QuotaExceeded,
    ValidationError,
)
from nbgateway.management.grpcloop import RpcAbortError
from nbgateway.management.ipam import canonical_tunnel_ip
from nbgateway.management.model import (
    Peer,
    ProxyAccessToken,
    ProxyInboundListener,
    Service,
    ServiceStatus,
    new_id,
)
from nbgateway.management.oidc import OIDCError
from nbgateway.management.proxymapping import TokenError
from nbgateway.management.statuswriter import StatusWriter
from nbgateway.management.store import _secrets
from nbgateway.management.store._statusreports import CertificateReport, StatusReport

_STATUS_NAMES = list(ServiceStatus)  # ProxyStatus 0..5 in order
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _client_ip(context: grpc.ServicerContext) -> str:
    """The end user's address a gateway named in the call's metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_IP_METADATA and isinstance(value, str):
            return value[:64]
    return ""


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
    return all(_DOMAIN_LABEL.fullmatch(label) for label in labels)  # "$" allows "\n"


def peer_ip(context: grpc.ServicerContext) -> str:
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest or peer


def check_peer_group_access(svc: Service, peer_group_ids: list[str]) -> bool:
    """Fail closed: a private service with no access groups denies everyone."""
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


def status_code(exc: ManagementError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


def enforce_scope(caller: ProxyAccessToken, account_id: str, context: grpc.ServicerContext) -> None:
    """Abort PERMISSION_DENIED when an account-scoped token names another account."""
    if caller.account_id is not None and account_id != caller.account_id:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"account-scoped token cannot access account {account_id}",
        )


def service_by_domain(store: Any, domain: str, context: grpc.ServicerContext) -> Service | None:
    """The service serving ``domain`` (None when there is none); a store error aborts."""
    try:
        return store.services.get_by_domain(domain)
    except ManagementError as exc:
        context.abort(status_code(exc), f"get service by domain: {exc.message}")


class TunnelPeerRpcs:
    """ValidateTunnelPeer and CreateProxyPeer: tunnel peers of an account's services."""

    def __init__(self, store: Any, tokens: Any) -> None:
        self.store = store
        #: the one-time proxy-peer tokens (``OneTimeTokenStore``) CreateProxyPeer consumes
        self.tokens = tokens

    def peer_group_refs(self, account_id: str, peer_id: str) -> list[tuple[str, str]]:
        """``[(group id, group name)]`` of a peer, by group id (no member lists loaded)."""
        return self.store.peers.group_refs_of(account_id, peer_id)

    # -- ValidateTunnelPeer (2.8, 2.9) ---------------------------------------------------------

    def ValidateTunnelPeer(
        self, req: pb.ValidateTunnelPeerRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.ValidateTunnelPeerResponse:
        deny = pb.ValidateTunnelPeerResponse
        if not req.domain or not req.tunnel_ip:
            return deny(denied_reason="missing domain or tunnel_ip")
        if canonical_tunnel_ip(req.tunnel_ip) is None:
            return deny(denied_reason="invalid_tunnel_ip")
        svc = service_by_domain(self.store, req.domain, context)
        if svc is None:
            return deny(denied_reason="service_not_found")
        enforce_scope(caller, svc.account_id, context)
        if req.nbgw_account_id and req.nbgw_account_id != svc.account_id:
            # the gateway asked for a peer of another account's tunnel (our
            # extension: upstream gateways do not set it)
            return deny(denied_reason="account_mismatch")
        try:
            peer: Peer | None = self.store.peers.get_by_ip(svc.account_id, req.tunnel_ip)
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
                user = self.store.users.get(svc.account_id, peer.user_id)
            except NotFound:
                user = None
            except ManagementError as exc:
                context.abort(status_code(exc), f"get user: {exc.message}")
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
                expiry=svc.max_session_age_seconds or sessionjwt.DEFAULT_SESSION_EXPIRY,
            )
        except (sessionjwt.InvalidServiceKeyError, ValueError) as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"sign session token: {exc}")
        return pb.ValidateTunnelPeerResponse(
            valid=True, user_id=principal, user_email=display, session_token=token, **identity
        )

    # -- CreateProxyPeer (2.13) ----------------------------------------------------------------

    def CreateProxyPeer(
        self, req: pb.CreateProxyPeerRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.CreateProxyPeerResponse:
        enforce_scope(caller, req.account_id, context)
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
        key = base64.b64encode(raw_key).decode()
        try:
            existing = self.store.peers.get_by_key(key)
        except ManagementError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"create proxy peer: {exc.message}")
        if existing is not None and (existing.account_id != req.account_id
                                     or not existing.proxy):
            # keys are unique across accounts: a success here would leave the
            # account without its gateway's peer (and the other holder as is).
            # Refused before the token is spent: the gateway rotates its key
            # (another tenant may have registered it first) and retries with it
            context.abort(grpc.StatusCode.ALREADY_EXISTS,
                          "wireguard_public_key belongs to another peer")
        try:
            self.tokens.validate_and_consume(req.token, req.account_id, req.service_id)
        except TokenError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"token validation: {exc}")
        try:
            if existing is not None:
                if (
                    endpoint is not None
                    and existing.proxy
                    and existing.account_id == req.account_id
                    and existing.endpoint != endpoint
                ):
                    self.store.peers.update(dataclasses.replace(existing, endpoint=endpoint))
                return pb.CreateProxyPeerResponse(success=True)
            self.store.peers.create(
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
            raced = self.store.peers.get_by_key(key) if exc.grpc_code == "ALREADY_EXISTS" \
                else None
            if raced is not None and raced.account_id == req.account_id and raced.proxy:
                return pb.CreateProxyPeerResponse(success=True)
            if raced is not None:  # another peer registered the key meanwhile
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              "wireguard_public_key belongs to another peer")
            if isinstance(exc, QuotaExceeded):  # the account's peer quota: not our fault
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"create proxy peer: {exc.message}")
            context.abort(grpc.StatusCode.INTERNAL, f"create proxy peer: {exc.message}")
        return pb.CreateProxyPeerResponse(success=True)


class SessionRpcs:
    """ValidateSession, Authenticate and GetOIDCURL: end-user sessions of a service."""

    def __init__(self, store: Any, *, guesses: Any = None, sso: Any = None) -> None:
        self.store = store
        #: Authenticate's per-(service, end-user address) bound on secret guesses (or None)
        self.guesses = guesses
        #: SSO for public services (management.sso.SSO); None: GetOIDCURL is UNIMPLEMENTED
        self.sso = sso

    # -- ValidateSession (2.7) -----------------------------------------------------------------

    def ValidateSession(
        self, req: pb.ValidateSessionRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.ValidateSessionResponse:
        deny = pb.ValidateSessionResponse
        if not req.domain or not req.session_token:
            return deny(denied_reason="missing domain or session_token")
        svc = service_by_domain(self.store, req.domain, context)
        if svc is None:
            return deny(denied_reason="service_not_found")
        enforce_scope(caller, svc.account_id, context)
        try:
            claims = sessionjwt.verify_session(
                req.session_token, svc.session_public_key, svc.domain
            )
        except sessionjwt.InvalidServiceKeyError:
            return deny(denied_reason="invalid_service_config")
        except sessionjwt.InvalidSessionTokenError:
            return deny(denied_reason="invalid_token")
        try:
            user = self.store.users.find(claims.subject)
        except ManagementError as exc:
            context.abort(status_code(exc), f"get user: {exc.message}")
        if user is None:
            return deny(denied_reason="user_not_found")
        if not user.account_id or not svc.account_id or user.account_id != svc.account_id:
            return deny(denied_reason="account_mismatch")
        ident = {"user_id": user.id, "user_email": user.email}
        if user.pending_approval:
            return deny(denied_reason="pending_approval", **ident)
        if user.blocked:
            return deny(denied_reason="user_blocked", **ident)
        resolved = self.store.groups.resolve(svc.account_id, list(user.auto_groups))
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
        enforce_scope(caller, req.account_id, context)
        try:
            svc = self.store.services.get(req.account_id, req.id)
        except ManagementError as exc:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"get service from store: {exc.message}"
            )
        a = svc.auth
        which = req.WhichOneof("request")
        principal = method = ""
        guesses = self.guesses
        who = _client_ip(context) or f"proxy:{getattr(caller, 'id', '')}"
        guessed = guesses is not None and which in ("pin", "password", "header_auth")
        if guessed:
            if not guesses.reserve(svc.id, who):
                return pb.AuthenticateResponse(success=False)  # locked: no argon2 work
        elif guesses is not None and guesses.locked(svc.id, who):
            return pb.AuthenticateResponse(success=False)
        try:
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
        finally:  # answers the reservation whatever the verification did
            if guessed:
                guesses.record(svc.id, who, bool(principal), reserved=True)
        if not principal:
            return pb.AuthenticateResponse(success=False)
        token = ""
        if svc.session_private_key:
            try:
                token = sessionjwt.sign_session(
                    svc.session_private_key, subject=principal, domain=svc.domain, method=method,
                    expiry=svc.max_session_age_seconds or sessionjwt.DEFAULT_SESSION_EXPIRY,
                )
            except (sessionjwt.InvalidServiceKeyError, ValueError) as exc:
                context.abort(grpc.StatusCode.INTERNAL, f"sign session token: {exc}")
        return pb.AuthenticateResponse(success=True, session_token=token)

    # -- GetOIDCURL (2.15) ---------------------------------------------------------------------

    def GetOIDCURL(
        self, req: pb.GetOIDCURLRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.GetOIDCURLResponse:
        enforce_scope(caller, req.account_id, context)
        sso = self.sso
        if sso is None:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "GetOIDCURL is not implemented without SSO: configure --oidc-issuer and "
                "--oidc-client-id (private services authenticate tunnel peers with "
                "ValidateTunnelPeer)",
            )
        try:
            url = sso.oidc_url(req.account_id, req.redirect_url)
        except OIDCError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (OSError, ValueError) as exc:  # discovery: the provider did not answer
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"identity provider unavailable: {type(exc).__name__}")
        return pb.GetOIDCURLResponse(url=url)


class StatusRpcs:
    """SendStatusUpdate: service status, inbound listeners and certificate status.

    Reports are group-committed (:mod:`~nbgateway.management.statuswriter`):
    the server's handler is the coroutine :meth:`send_status_update_async`,
    which validates the request, queues it on ``writer`` and answers once the
    batch holding it has committed; :meth:`SendStatusUpdate` is the same for
    a synchronous caller (it blocks on the batch)."""

    #: longest a synchronous caller waits for its batch
    SYNC_WAIT = 60.0

    def __init__(self, store: Any, connections: Callable[[], list[Any]]) -> None:
        self.store = store
        #: the live mapping streams (to name the calling proxy of an inbound listener)
        self.connections = connections
        self.writer = StatusWriter(store.services.apply_status_reports)

    # -- SendStatusUpdate (2.12) ---------------------------------------------------------------

    def report(self, req: pb.SendStatusUpdateRequest, caller: Any,
               context: grpc.ServicerContext) -> StatusReport:
        """The validated report of ``req``; :class:`RpcAbortError` when it is refused."""
        if caller.account_id is not None and req.account_id != caller.account_id:
            raise RpcAbortError(grpc.StatusCode.PERMISSION_DENIED,
                                f"account-scoped token cannot access account {req.account_id}")
        if not req.service_id or not req.account_id:
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                "service_id and account_id are required")
        if "\x00" in req.service_id or "\x00" in req.account_id:
            # refused before it joins a batch (PostgreSQL would fail the whole batch)
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                "invalid input: NUL in service_id or account_id")
        listener = None
        if req.HasField("inbound_listener"):
            il = req.inbound_listener
            canon = canonical_ip_cached(il.tunnel_ip)
            if canon is None:
                raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                    "inbound_listener: invalid tunnel_ip")
            if il.https_port > 65535 or il.http_port > 65535:
                raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                    "inbound_listener: invalid port")
            listener = ProxyInboundListener(
                proxy_id=self._caller_proxy_id(caller, context),
                account_id=req.account_id,
                tunnel_ip=canon[1],
                https_port=il.https_port,
                http_port=il.http_port,
            )
        certificate = None
        if req.HasField("nbgw_certificate"):  # nbgateway extension: certificate status
            c = req.nbgw_certificate
            certificate = CertificateReport(
                issuer=c.issuer,
                not_after=c.not_after.ToDatetime(tzinfo=UTC) if c.HasField("not_after") else None,
                source=c.source, last_error=c.last_error, clear_error=req.certificate_issued,
                ca_pem=c.ca_certificate_pem,
            )
        status = _STATUS_NAMES[req.status] if 0 <= req.status < len(_STATUS_NAMES) else "error"
        return StatusReport(
            account_id=req.account_id, service_id=req.service_id, status=status,
            message=req.error_message if req.HasField("error_message") else "",
            certificate_issued=req.certificate_issued, listener=listener,
            certificate=certificate,
        )

    @staticmethod
    def _failure(req: pb.SendStatusUpdateRequest, exc: BaseException) -> RpcAbortError:
        """The RPC error for a report the store refused (upstream's texts)."""
        if isinstance(exc, NotFound):
            return RpcAbortError(grpc.StatusCode.NOT_FOUND, f"service {req.service_id} not found")
        if isinstance(exc, ValidationError):
            return RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"nbgw_certificate: {exc.message}")
        if isinstance(exc, ManagementError):
            return RpcAbortError(status_code(exc), f"update service status: {exc.message}")
        return RpcAbortError(grpc.StatusCode.INTERNAL,
                             f"update service status: {type(exc).__name__}")

    async def send_status_update_async(
        self, req: pb.SendStatusUpdateRequest, context: Any, caller: Any
    ) -> pb.SendStatusUpdateResponse:
        """The server's handler (on the gRPC loop): no thread is held while the
        report waits for its batch.  Raises :class:`RpcAbortError`."""
        report = self.report(req, caller, context)
        try:
            await asyncio.wrap_future(self.writer.submit(report))
        except Exception as exc:
            raise self._failure(req, exc) from None
        return pb.SendStatusUpdateResponse()

    def SendStatusUpdate(
        self, req: pb.SendStatusUpdateRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.SendStatusUpdateResponse:
        try:
            report = self.report(req, caller, context)
            try:
                self.writer.submit(report).result(self.SYNC_WAIT)
            except Exception as exc:
                raise self._failure(req, exc) from None
        except RpcAbortError as exc:
            context.abort(exc.code, exc.details)
        return pb.SendStatusUpdateResponse()

    def _caller_proxy_id(self, caller: ProxyAccessToken, context: grpc.ServicerContext) -> str:
        """The proxy id of the caller: its mapping stream with the same token (and IP)."""
        ip = peer_ip(context)
        same_token = [c for c in self.connections() if c.token_id == caller.id]
        same_ip = [c for c in same_token if c.peer_ip == ip]
        if len(same_ip) == 1:
            return same_ip[0].proxy_id
        if len(same_token) == 1:
            return same_token[0].proxy_id
        return f"token-{caller.id}"


def scoped_log_id(scope: str | None, log_id: str) -> str:
    """The stored id of an entry an account-scoped (BYOP) gateway sent: its
    ``log_id`` under the account's prefix.  Ids are the idempotency key and
    unique management-wide, so a tenant's own gateway must not be able to
    store, first, the ids another gateway will give other tenants' entries
    (upstream's xids are predictable); management-wide gateways keep theirs."""
    if scope is None or not log_id:
        return log_id
    return f"{scope}~{log_id}"


class AccessLogRpcs:
    """SendAccessLog and the NbgwSendAccessLogBatch extension."""

    #: most entries accepted in one NbgwSendAccessLogBatch call
    MAX_ACCESS_LOG_BATCH = 5000

    def __init__(self, store: Any) -> None:
        self.store = store
        #: malformed entries skipped from NbgwSendAccessLogBatch calls
        self.rejected = 0

    # -- SendAccessLog (2.14) ------------------------------------------------------------------

    def SendAccessLog(
        self, req: pb.SendAccessLogRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.SendAccessLogResponse:
        if not req.HasField("log"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log is required")
        enforce_scope(caller, req.log.account_id, context)
        try:
            record = access_log_record(req.log)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if caller.account_id is not None:
            record = dataclasses.replace(record, id=scoped_log_id(caller.account_id, record.id))
        try:
            self.store.access_logs.append(record)
        except ManagementError as exc:
            context.abort(status_code(exc), f"save access log: {exc.message}")
        return pb.SendAccessLogResponse()

    def NbgwSendAccessLogBatch(
        self, req: pb.NbgwSendAccessLogBatchRequest, context: grpc.ServicerContext, caller: Any
    ) -> pb.NbgwSendAccessLogBatchResponse:
        """nbgateway extension: a batch stored in one transaction.  Every entry
        must be in the caller's scope (else the whole batch is refused);
        malformed entries are skipped and counted, the rest stored; a log_id
        already stored is ignored, so a retried batch never duplicates."""
        if len(req.logs) > self.MAX_ACCESS_LOG_BATCH:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {self.MAX_ACCESS_LOG_BATCH} entries per batch",
            )
        logs = req.logs
        columns = decode_batch(logs)  # None: an entry is malformed
        scoped = caller.account_id
        if scoped is not None:
            accounts = columns[1] if columns is not None else [e.account_id for e in logs]
            for account_id in dict.fromkeys(accounts):  # in order: the first foreign one
                if account_id != scoped:
                    enforce_scope(caller, account_id, context)  # aborts: the whole batch
        try:
            if columns is not None:
                if scoped is not None:
                    columns[0] = [scoped_log_id(scoped, i) for i in columns[0]]
                stored = self.store.access_logs.append_columns(columns)
            else:
                values = []
                rejected = 0
                for entry in logs:
                    try:
                        v = access_log_values(entry)
                    except ValueError:
                        rejected += 1
                        continue
                    values.append((scoped_log_id(scoped, v[0]), *v[1:]))
                self.rejected += rejected
                stored = self.store.access_logs.append_values(values)
        except ManagementError as exc:
            context.abort(status_code(exc), f"save access log: {exc.message}")
        return pb.NbgwSendAccessLogBatchResponse(stored=stored)

