"""REST for certificates (nbgateway extension): each service's certificate
status as its gateway last reported it, and the account's private CA
certificate(s) for peers to trust.

* ``GET /api/reverse-proxies/certificates``: issuer, not-after, source
  (acme, local-ca, file) and last error per service (admins; every account for
  an instance admin);
* ``GET /api/reverse-proxies/services/{serviceId}/certificate``: one service's;
* ``GET /api/reverse-proxies/ca-certificate``: the PEM of the private CA(s) the
  account's gateways reported (one per gateway CA key, newest copy; any user
  of the account: it is what a peer must trust).  404 until a gateway has
  reported one.
"""

from __future__ import annotations

from typing import Any

from nbgateway.management.errors import NotFound
from nbgateway.management.store._certificates import CertificateStatus

from .framework import Call, Result, Route

_TS = {"type": "string", "format": "date-time"}
CERTIFICATE_STATUS: dict[str, Any] = {
    "type": "object",
    "required": ["service_id", "account_id", "domain", "issuer", "source", "last_error"],
    "properties": {
        "service_id": {"type": "string"}, "account_id": {"type": "string"},
        "domain": {"type": "string"},
        "issuer": {"type": "string", "description": "issuer DN of the served certificate"},
        "not_after": _TS,
        "source": {"type": "string", "enum": ["acme", "local-ca", "file"]},
        "last_error": {"type": "string", "description": "last error obtaining a certificate"},
        "private_ca_key_id": {"type": "string"},
        "updated_at": _TS,
    },
}


def _ts(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def status_to_api(s: CertificateStatus) -> dict[str, Any]:
    return {"service_id": s.service_id, "account_id": s.account_id, "domain": s.domain,
            "issuer": s.issuer, "not_after": _ts(s.not_after), "source": s.source,
            "last_error": s.last_error, "private_ca_key_id": s.ca_key_id,
            "updated_at": _ts(s.updated_at)}


class CertificateHandlers:
    """Handlers over ``store.certificates``; ``require_admin`` is the API's check."""

    def __init__(self, store: Any, require_admin: Any) -> None:
        self.store = store
        self.require_admin = require_admin

    def list_certificates(self, call: Call) -> Result:
        self.require_admin(call)
        assert call.identity is not None
        account = None if call.identity.instance_admin else call.identity.account_id
        rows = [status_to_api(s) for s in self.store.certificates.list(account)]
        return Result(200, rows)

    def get_certificate(self, call: Call) -> Result:
        self.require_admin(call)
        assert call.identity is not None
        status = self.store.certificates.get(call.identity.account_id, call.params["serviceId"])
        return Result(200, status_to_api(status))

    def ca_certificate(self, call: Call) -> Result:
        assert call.identity is not None
        found = self.store.certificates.private_cas(call.identity.account_id)
        if not found:
            raise NotFound("no gateway has reported a private CA for this account yet")
        body = "".join(ca.pem if ca.pem.endswith("\n") else ca.pem + "\n" for ca in found)
        return Result(200, body.encode("ascii"),
                      content_type="application/x-pem-file",
                      headers={"Content-Disposition": 'attachment; filename="nbgateway-ca.crt"',
                               "X-Nbgw-CA-Fingerprints":
                               ",".join(ca.fingerprint for ca in found)})


def certificate_routes(store: Any, require_admin: Any) -> list[Route]:
    h = CertificateHandlers(store, require_admin)
    rp = "/reverse-proxies"
    return [
        Route("GET", rp + "/certificates", h.list_certificates, "listCertificateStatuses",
              "Each service's certificate as its gateway last reported it (issuer, "
              "not-after, source, last error)", "Certificates",
              response_schema={"type": "array", "items": CERTIFICATE_STATUS}, errors=(403,)),
        Route("GET", rp + "/services/{serviceId}/certificate", h.get_certificate,
              "getServiceCertificateStatus", "One service's certificate status",
              "Certificates", response_schema=CERTIFICATE_STATUS, errors=(403, 404)),
        Route("GET", rp + "/ca-certificate", h.ca_certificate, "getPrivateCACertificate",
              "PEM of the account's private CA certificate(s): trust it once on a peer to "
              "reach private services with verified TLS", "Certificates",
              response_content_types=("application/x-pem-file",), errors=(404,)),
    ]
