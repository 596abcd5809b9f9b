"""Certificate status on every SendStatusUpdate (nbgateway extension, field 100).

:class:`CertificateReporting` wraps a management client: each
``send_status_update`` that does not already carry one gets an
``NbgwCertificateStatus`` built from ``describe(service_id)`` -- the issuer
and not-after of the certificate the gateway serves for the service's domain,
its source (acme, local-ca, file) and the gateway's private CA certificate --
plus the status's ``error_message`` as ``last_error`` when the status is
``CERTIFICATE_FAILED``.  ``describe`` is injected (the gateway's certificate
store); it returns None for services without a certificate (TCP/UDP, TLS
passthrough, unknown ids).  A failing ``describe`` never blocks the report.
Every other attribute passes through to the wrapped client.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import directlyProvides, providedBy

from nbgateway._proto import proxy_service_pb2 as pb

log = Logger()

MAX_ERROR = 1000
MAX_CA_PEM = 16384


def certificate_status(info: dict[str, Any], last_error: str = "") -> pb.NbgwCertificateStatus:
    """The wire message for ``describe``'s dict (issuer, not_after, source,
    ca_certificate_pem)."""
    msg = pb.NbgwCertificateStatus(
        issuer=str(info.get("issuer", ""))[:1024],
        source=str(info.get("source", ""))[:32],
        last_error=last_error[:MAX_ERROR],
    )
    not_after = info.get("not_after")
    if isinstance(not_after, datetime.datetime):
        msg.not_after.FromDatetime(not_after.astimezone(datetime.UTC).replace(tzinfo=None))
    ca = info.get("ca_certificate_pem") or b""
    if isinstance(ca, bytes):
        ca = ca.decode("ascii", "replace")
    if len(ca) <= MAX_CA_PEM:
        msg.ca_certificate_pem = ca
    return msg


class CertificateReporting:
    """See the module docstring."""

    def __init__(self, client: Any,
                 describe: Callable[[str], dict[str, Any] | None]) -> None:
        self._client = client
        self._describe = describe
        directlyProvides(self, *providedBy(client))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_status_update(self, service_id: str, account_id: str, status: int,
                           **kw: Any) -> Any:
        if kw.get("certificate") is None:
            try:
                info = self._describe(service_id)
            except Exception:
                log.failure("certificate status for {service} unavailable", service=service_id)
                info = None
            if info is not None:
                error = kw.get("error_message") or ""
                kw["certificate"] = certificate_status(
                    info, error if status == pb.PROXY_STATUS_CERTIFICATE_FAILED else "")
        return self._client.send_status_update(service_id, account_id, status, **kw)
