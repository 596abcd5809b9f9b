"""Access log entries: building them (field rules follow upstream NetBird's
access log) and handing them to the shipper.

Requests never wait for management: :meth:`AccessLogger.log` only appends to a
bounded queue (full -> the entry is dropped and counted); entries are shipped
in batches with one call in flight, retried without duplicates and with a
fallback to one ``SendAccessLog`` per entry (:mod:`nbgateway.mgmt.logship`).
:meth:`AccessLogger.stop` flushes what it can within a bound.
"""

from __future__ import annotations

import base64
import os

from google.protobuf.timestamp_pb2 import Timestamp
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.logship import LogShipper, ShipperStats
from nbgateway.routes.hosts import host_without_port

log = Logger()

INTERNAL_PREFIX = "/__netbird__/"


def new_log_id() -> str:
    """A 20-character, URL-safe, random request id (xid-sized)."""
    return base64.b32hexencode(os.urandom(15)).decode("ascii").lower()[:20]


#: the counters behind ``nbgateway_access_log_entries_total``
AccessLogStats = ShipperStats


def build_entry(
    *,
    now: float,
    log_id: str,
    account_id: str,
    service_id: str,
    host: str,
    path: str,
    method: str,
    response_code: int,
    duration_ms: int,
    source_ip: str,
    auth_mechanism: str = "",
    user_id: str = "",
    bytes_upload: int = 0,
    bytes_download: int = 0,
    protocol: str = "http",
    metadata: dict[str, str] | None = None,
    target: str = "",
) -> pb.AccessLog:
    ts = Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    code = response_code or 200
    return pb.AccessLog(
        timestamp=ts,
        log_id=log_id,
        account_id=account_id,
        service_id=service_id,
        host=host_without_port(host),
        path=path,
        duration_ms=duration_ms,
        method=method,
        response_code=code,
        source_ip=source_ip,
        auth_mechanism=auth_mechanism,
        # users (OIDC, mTLS client certificates) and service tokens ("token:<id>") are named
        user_id=user_id if auth_mechanism in ("oidc", "token", "mtls") else "",
        auth_success=code not in (401, 403) if protocol == "http" else False,
        bytes_upload=bytes_upload,
        bytes_download=bytes_download,
        protocol=protocol,
        metadata=metadata or {},
        # the upstream target used (scheme://host:port), nbgateway extension
        nbgw_target=target,
    )


def should_log(path: str) -> bool:
    return not path.startswith(INTERNAL_PREFIX)


class AccessLogger(LogShipper):
    """The gateway's access log: :meth:`log` hands an entry to the batching
    shipper (:class:`nbgateway.mgmt.logship.LogShipper`); it never blocks and
    never raises, a full queue drops the entry and counts it."""

    def log(self, entry: pb.AccessLog) -> None:
        """Enqueue one entry; never blocks, never raises."""
        self.submit(entry)
