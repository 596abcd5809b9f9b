"""``/api/reverse-proxies/services``: the reverse-proxy services of an account.

Owns the service CRUD (upstream-shaped: PUT is a full replace, 404 before
validation), the identity assertion key rotation, a service's mTLS client CA
(:mod:`nbgateway.management.clientcerts`), its machine-client tokens
(:mod:`nbgateway.management.servicetokens`; a secret is in the creating answer
only) and ``service-status``, every service's last gateway status.  Every
route is for account admins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nbgateway.management import clientcerts, servicetokens
from nbgateway.management.errors import NotFound
from nbgateway.management.model import Target

from . import mapping as m
from .calls import (
    NOT_FOUND,
    PAGE_DESCRIPTION,
    PAGE_QUERY,
    admin_acct,
    arr,
    fetch_limit,
    page,
    paged,
    q,
    ref,
)
from .framework import Call, Result, Route

SERVICES = "/reverse-proxies/services"


class ServiceHandlers:
    """Handlers of the service routes (a mixin of :class:`.routes.Handlers`)."""

    store: Any

    def list_service_statuses(self, call: Call) -> Result:
        """Every service's last gateway status and message: all accounts for an
        instance admin, the caller's own account for an account admin."""
        account = admin_acct(call)
        assert call.identity is not None
        if call.identity.instance_admin:
            found = self.store.services.list_all()
        else:
            found = self.store.services.list(account)
        wanted = call.query.get("status")
        rows = [m.service_status_to_api(s) for s in found
                if not wanted or str(s.meta.status) == wanted]
        rows.sort(key=lambda r: (r["account_id"], r["domain"]))
        return Result(200, rows)

    def _host_resolver(self, account_id: str) -> Callable[[Target], str]:
        """``peer`` targets read back the peer's tunnel IP ("unknown" if it is gone)."""
        cache: dict[str, str] = {}

        def resolve(t: Target) -> str:
            if t.target_type != "peer":
                return t.host
            if t.target_id not in cache:
                try:
                    cache[t.target_id] = self.store.peers.get(account_id, t.target_id).ip
                except NotFound:
                    cache[t.target_id] = "unknown"
            return cache[t.target_id]

        return resolve

    def _service_result(self, account: str, service: Any) -> Result:
        return Result(200, m.service_to_api(service, self._host_resolver(account)))

    def list_services(self, call: Call) -> Result:
        account = admin_acct(call)
        resolve = self._host_resolver(account)
        limit, after = page(call)
        found = self.store.services.list(account, after=after, limit=fetch_limit(limit))
        return paged(found, limit, [m.service_to_api(s, resolve) for s in found[:limit]],
                     SERVICES)

    def create_service(self, call: Call) -> Result:
        account = admin_acct(call)
        created = self.store.services.create(m.service_from_api(call.body, account_id=account))
        return self._service_result(account, created)

    def get_service(self, call: Call) -> Result:
        account = admin_acct(call)
        return self._service_result(
            account, self.store.services.get(account, call.params["serviceId"]))

    def update_service(self, call: Call) -> Result:
        account = admin_acct(call)
        sid = call.params["serviceId"]
        self.store.services.get(account, sid)  # 404 before validation, like upstream
        updated = self.store.services.update(
            m.service_from_api(call.body, account_id=account, service_id=sid))
        return self._service_result(account, updated)

    def rotate_assertion_key(self, call: Call) -> Result:
        account = admin_acct(call)
        return self._service_result(account, self.store.services.rotate_assertion_key(
            account, call.params["serviceId"]))

    def delete_service(self, call: Call) -> Result:
        self.store.services.delete(admin_acct(call), call.params["serviceId"])
        return Result(200, {})

    # -- mTLS client certificates (clientcerts) -------------------------------

    def get_client_cert_auth(self, call: Call) -> Result:
        s = self.store.services.get(admin_acct(call), call.params["serviceId"])
        auth = s.client_cert_auth
        return Result(200, auth.public() if auth is not None else {"enabled": False})

    def set_client_cert_auth(self, call: Call) -> Result:
        """Upload the client CA bundle and the certificate -> user rule."""
        account = admin_acct(call)
        users = [u.id for u in self.store.users.list(account)]
        auth = clientcerts.validate(call.body, users, time.time())
        s = self.store.services.set_client_cert_auth(account, call.params["serviceId"], auth)
        return Result(200, s.client_cert_auth.public())

    def clear_client_cert_auth(self, call: Call) -> Result:
        self.store.services.set_client_cert_auth(admin_acct(call), call.params["serviceId"],
                                                 None)
        return Result(200, {"enabled": False})

    # -- machine-client service tokens (servicetokens) ------------------------

    def list_service_tokens(self, call: Call) -> Result:
        s = self.store.services.get(admin_acct(call), call.params["serviceId"])
        now = time.time()
        return Result(200, [t.public(now) for t in s.service_tokens])

    def create_service_token(self, call: Call) -> Result:
        """The secret is in this answer only (``secret`` and ``bearer``)."""
        account = admin_acct(call)
        name, expires_in = servicetokens.validate_request(call.body.get("name"),
                                                          call.body.get("expires_in_seconds"))
        _s, rec, secret = self.store.services.create_token(
            account, call.params["serviceId"], name, expires_in)
        out = rec.public(time.time())
        out.update(secret=secret, bearer=f"{rec.id}.{secret}")
        return Result(201, out)

    def revoke_service_token(self, call: Call) -> Result:
        rec = self.store.services.revoke_token(admin_acct(call), call.params["serviceId"],
                                               call.params["tokenId"])
        return Result(200, rec.public(time.time()))


def service_routes(h: ServiceHandlers) -> list[Route]:
    svc = SERVICES
    w = (400, 403, 404, 409, 412, 413, 422)
    return [
        Route("GET", "/reverse-proxies/service-status", h.list_service_statuses,
              "listServiceStatuses",
              "Each service's last gateway status and message, e.g. why a gateway refused "
              "it (every account for an instance admin)", "Services",
              query=[q("status", enum=["pending", "active", "tunnel_not_created",
                                       "certificate_pending", "certificate_failed", "error"])],
              response_schema=arr("ServiceStatus"), errors=(403,)),
        Route("GET", svc, h.list_services, "listServices", "List services", "Services",
              response_schema=arr("Service"), query=PAGE_QUERY, errors=(422,),
              description=PAGE_DESCRIPTION),
        Route("POST", svc, h.create_service, "createService", "Create a service", "Services",
              request_schema="ServiceRequest", response_schema=ref("Service"), errors=w),
        Route("GET", svc + "/{serviceId}", h.get_service, "getService", "Get a service",
              "Services", response_schema=ref("Service"), errors=NOT_FOUND),
        Route("PUT", svc + "/{serviceId}", h.update_service, "updateService",
              "Replace a service (full replace)", "Services", request_schema="ServiceRequest",
              response_schema=ref("Service"), errors=w),
        Route("DELETE", svc + "/{serviceId}", h.delete_service, "deleteService",
              "Delete a service", "Services", response_schema=ref("Empty"), errors=(403, 404)),
        Route("POST", svc + "/{serviceId}/assertion-key/rotate", h.rotate_assertion_key,
              "rotateAssertionKey", "New identity assertion signing key (the old one stays "
              "in the JWKS until its tokens expired)", "Services",
              response_schema=ref("Service"), errors=(403, 404)),
        Route("GET", svc + "/{serviceId}/client-ca", h.get_client_cert_auth,
              "getClientCertAuth", "A service's mTLS client CA (subjects, expiry, "
              "fingerprints) and certificate -> user rule", "Services",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("PUT", svc + "/{serviceId}/client-ca", h.set_client_cert_auth,
              "setClientCertAuth", "Set a service's mTLS client CA bundle (PEM, CA "
              "certificates only) and how a certificate maps to a user (email or list)",
              "Services", request_schema="ClientCertAuthRequest",
              response_schema=ref("Empty"), errors=w),
        Route("DELETE", svc + "/{serviceId}/client-ca", h.clear_client_cert_auth,
              "clearClientCertAuth", "Remove a service's mTLS client CA (its certificates "
              "stop working with the next mapping update)", "Services",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", svc + "/{serviceId}/tokens", h.list_service_tokens, "listServiceTokens",
              "List a service's machine-client tokens (never the secrets)", "Services",
              response_schema=arr("Empty"), errors=(403, 404)),
        Route("POST", svc + "/{serviceId}/tokens", h.create_service_token,
              "createServiceToken", "Create a machine-client token; the secret is shown "
              "once, in this answer", "Services", request_schema="ServiceTokenRequest",
              response_schema=ref("Empty"), response_status=201, errors=w),
        Route("DELETE", svc + "/{serviceId}/tokens/{tokenId}", h.revoke_service_token,
              "revokeServiceToken", "Revoke a machine-client token (gateways drop it "
              "with the next mapping update)", "Services", response_schema=ref("Empty"),
              errors=(403, 404)),
    ]
