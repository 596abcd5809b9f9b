"""Store part: many gateway status reports written in one transaction.

:func:`apply_status_reports` is the store side of the management's group
commit of ``SendStatusUpdate`` (:mod:`nbgateway.management.statuswriter`):
a batch of :class:`StatusReport` in arrival order is applied as if each had
been written on its own, one after the other, but in one write transaction:

* per service the **latest report wins** (status, message); a
  ``certificate_issued`` report anywhere in the batch stamps
  ``meta_certificate_issued_at`` as its own write would have;
* a service whose stored status and message already equal the result is
  **not written** (no row update, no change announced); the others are
  announced as :attr:`ChangeKind.SERVICE_STATUS` (a status-only change: the
  mapping dispatcher and the peer channel skip it, the live view shows it);
* inbound listeners (``proxy_inbound_listeners``) are upserted once per
  (proxy, account) with the latest value, and only when it differs;
* certificate reports are recorded in order (``store.certificates``).

The result is one entry per report, ``None`` or the exception that report's
RPC fails with (``NotFound`` for a service not in the account, the CA's
``ValidationError``); a report's failure never fails the others.  A failure
of the transaction itself (store unavailable, retries exhausted) raises, and
nothing of the batch is stored.

On PostgreSQL the transaction takes the advisory lock of every account it
touches (and of the proxy rows' scope when a listener changes) in sorted
order, as each single write would have taken its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from nbgateway.management.errors import NotFound
from nbgateway.management.model import ChangeKind, ProxyInboundListener, ServiceStatus, utcnow
from nbgateway.management.store._base import _XACT_LOCK, Tx, _lock_key
from nbgateway.management.store._certificates import parse_ca
from nbgateway.management.store.schema import proxy_inbound_listeners as listeners_t
from nbgateway.management.store.schema import services

if TYPE_CHECKING:
    from nbgateway.management.store import Store

#: ids per ``IN (...)`` query
CHUNK = 500
#: the proxy rows' lock scope (store._proxies.PROXY_SCOPE)
PROXY_SCOPE = "proxies"


#: longest gateway status message kept per service
MAX_STATUS_MESSAGE = 1024


def clean_status_message(message: str) -> str:
    """A gateway-supplied message made safe to store and show: control characters
    (and NUL, which PostgreSQL text cannot hold) become spaces, length is capped."""
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in message or "")
    return text.strip()[:MAX_STATUS_MESSAGE]


@dataclass(frozen=True)
class CertificateReport:
    """The ``nbgw_certificate`` part of a report (see ``certificates.record``)."""

    issuer: str
    not_after: datetime | None
    source: str
    last_error: str
    clear_error: bool
    ca_pem: str


@dataclass(frozen=True)
class StatusReport:
    """One ``SendStatusUpdate``, validated (status is a ``ServiceStatus`` value,
    message already cleaned by the caller or cleaned here)."""

    account_id: str
    service_id: str
    status: str
    message: str = ""
    certificate_issued: bool = False
    listener: ProxyInboundListener | None = None
    certificate: CertificateReport | None = None


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def apply_status_reports(store: Store, reports: Sequence[StatusReport],
                         now: datetime | None = None) -> list[Exception | None]:
    """Write ``reports`` (arrival order) in one transaction; see the module docstring."""
    if not reports:
        return []
    cleaned = [
        (r, str(r.status) if r.status in set(ServiceStatus) else str(ServiceStatus.ERROR),
         clean_status_message(r.message))
        for r in reports
    ]
    accounts = sorted({r.account_id for r in reports})
    parsed_cas: dict[str, Any] = {}
    ca_errors: dict[int, Exception] = {}
    for i, r in enumerate(reports):
        c = r.certificate
        if c is not None and c.ca_pem and c.ca_pem not in parsed_cas:
            try:
                parsed_cas[c.ca_pem] = parse_ca(c.ca_pem)
            except Exception as exc:  # ValidationError: this report's RPC fails
                ca_errors[i] = exc
    has_listener = any(r.listener is not None for r in reports)
    scopes = sorted(set(accounts) | ({PROXY_SCOPE} if has_listener else set()))

    def run(tx: Tx) -> list[Exception | None]:
        conn = tx.conn
        stamp = now or utcnow()
        if store.dialect == "postgresql":
            for scope in scopes[1:]:  # the first one is taken by _write
                _XACT_LOCK.run(conn, key=_lock_key("acct:" + scope))
        ids = sorted({r.service_id for r in reports})
        stored: dict[str, tuple[str, str, str]] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(
                sa.select(services.c.id, services.c.account_id, services.c.meta_status,
                          services.c.meta_status_message).where(services.c.id.in_(chunk))
            ):
                stored[row.id] = (row.account_id, row.meta_status or "",
                                  row.meta_status_message or "")
        results: list[Exception | None] = [None] * len(reports)
        final: dict[str, tuple[str, str, str]] = {}  # sid -> (account, status, message)
        issued: set[str] = set()
        latest_listener: dict[tuple[str, str], ProxyInboundListener] = {}
        for i, (r, status, message) in enumerate(cleaned):
            row = stored.get(r.service_id)
            if row is None or row[0] != r.account_id:
                results[i] = NotFound(f"service {r.service_id} not found")
                continue
            final[r.service_id] = (r.account_id, status, message)
            if r.certificate_issued:
                issued.add(r.service_id)
            if r.listener is not None:
                latest_listener[(r.listener.proxy_id, r.listener.account_id)] = r.listener
        changed: dict[str, list[str]] = {}
        for sid, (account_id, status, message) in final.items():
            if sid not in issued and stored[sid][1:] == (status, message):
                continue
            values: dict[str, Any] = {
                "meta_status": status,
                "meta_status_message": message or None,
                "meta_status_updated_at": stamp,
            }
            if sid in issued:
                values["meta_certificate_issued_at"] = stamp
            conn.execute(sa.update(services).where(services.c.id == sid).values(**values))
            changed.setdefault(account_id, []).append(sid)
        for account_id in sorted(changed):
            tx.changed(ChangeKind.SERVICE_STATUS, account_id, *changed[account_id])
        if latest_listener:
            _upsert_listeners(tx, list(latest_listener.values()), stamp)
        for i, (r, _status, _message) in enumerate(cleaned):
            c = r.certificate
            if c is None or results[i] is not None:
                continue
            if i in ca_errors:
                results[i] = ca_errors[i]
                continue
            store.certificates.record_in(
                conn, r.account_id, r.service_id, issuer=c.issuer, not_after=c.not_after,
                source=c.source, last_error=c.last_error, clear_error=c.clear_error,
                ca_pem=c.ca_pem, ca=parsed_cas.get(c.ca_pem) if c.ca_pem else None, now=stamp)
        return results

    return store._write(scopes[0], run)


def _upsert_listeners(tx: Tx, found: list[ProxyInboundListener], stamp: datetime) -> None:
    """Insert or update each listener that differs from its row (one SELECT)."""
    t = listeners_t
    conn = tx.conn
    keys = {(x.proxy_id, x.account_id) for x in found}
    accounts = sorted({a for _, a in keys})
    rows: dict[tuple[str, str], tuple[str, int, int]] = {}
    for chunk in _chunks(accounts):
        for row in conn.execute(sa.select(t.c.proxy_id, t.c.account_id, t.c.tunnel_ip,
                                          t.c.https_port, t.c.http_port)
                                .where(t.c.account_id.in_(chunk))):
            if (row.proxy_id, row.account_id) in keys:
                rows[(row.proxy_id, row.account_id)] = (row.tunnel_ip, row.https_port,
                                                        row.http_port)
    for x in sorted(found, key=lambda x: (x.proxy_id, x.account_id)):
        key = (x.proxy_id, x.account_id)
        value = (x.tunnel_ip, x.https_port, x.http_port)
        old = rows.get(key)
        if old == value:
            continue
        values = {"tunnel_ip": x.tunnel_ip, "https_port": x.https_port,
                  "http_port": x.http_port, "updated_at": x.updated_at or stamp}
        if old is None:
            conn.execute(sa.insert(t).values(proxy_id=x.proxy_id, account_id=x.account_id,
                                             **values))
        else:
            conn.execute(sa.update(t).where(t.c.proxy_id == x.proxy_id,
                                            t.c.account_id == x.account_id).values(**values))
        tx.changed(ChangeKind.PROXY, x.account_id, x.proxy_id)
