"""The gateway side of ``direct_upstream`` dials (host network, no tunnel):

* :func:`direct_dialer`: the dialer with its policy: the operator's
  ``--direct-upstream-allow`` list (plus loopback for the embedded default's
  own account), never this gateway's listeners;
* :func:`own_listeners`: this gateway's own TCP listeners on the host, the
  dial guard's deny set (:class:`~nbgateway.dial.guard.DialPolicy`
  ``listeners``): a ``direct_upstream`` target must never reach the gateway
  itself.  Evaluated at each dial, so listeners bound later (the public port's
  real address, L4 host ports, the embedded management's) count as soon as
  they exist.  Reads the configuration and the bound ports' addresses,
  resolves no name;
* :func:`report_dial_denied`: a refused dial becomes the service's status
  (ERROR with the reason), at most once a minute per service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.direct import DenialReports, DirectDialer, DirectDialStats, is_host_address
from nbgateway.dial.guard import DialPolicy, Listener, parse_allow_list

log = Logger(namespace="nbgateway.service")  # one namespace for the package


def direct_dialer(reactor: Any, config: Any, embedded: Any, stats: DirectDialStats,
                  listeners: Callable[[], list[Listener]]) -> DirectDialer:
    """The ``direct_upstream`` dialer: only where ``--direct-upstream-allow``
    (plus the embedded management's own rules) allows, never to
    ``listeners()`` on any of this host's addresses (:mod:`nbgateway.dial.guard`)."""
    rules = parse_allow_list(getattr(config, "direct_upstream_allow", "") or "")
    if embedded is not None and hasattr(embedded, "direct_upstream_rules"):
        rules += embedded.direct_upstream_rules()
    return DirectDialer(reactor, stats=stats, policy=DialPolicy(
        rules, listeners=listeners, is_local=is_host_address))


def own_listeners(config: Any, public_port: Any, l4: Any, embedded: Any) -> list[Listener]:
    """The configured listen addresses (``--addr``, ``--health-addr``), the bound
    public port, the L4 host ports, the embedded management's listeners and a
    management on this host (``--mgmt``); entries that are not addresses
    (a host name) are left out."""
    found: list[tuple[str, int]] = []
    for addr in (config.addr, config.health_addr):
        if addr is not None and addr.port:
            found.append((addr.host, addr.port))
    if public_port is not None:
        bound = public_port.getHost()
        found.append((getattr(bound, "host", ""), int(getattr(bound, "port", 0))))
    found.extend((l4.bind_host, port) for port in l4.public)  # L4 host ports
    if embedded is not None and hasattr(embedded, "listeners"):
        found.extend(embedded.listeners())
    if config.mgmt:  # a management on this host (loopback --mgmt)
        parts = urlsplit(config.mgmt if "://" in config.mgmt else f"https://{config.mgmt}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        if parts.hostname and port:
            found.append((parts.hostname, port))
    out = []
    for host, port in found:
        try:
            out.append(Listener.of(host, port))
        except ValueError:
            continue
    return out


def report_dial_denied(reports: DenialReports, mgmt: Any, clock: Any, service: Any,
                       exc: Any) -> None:
    """A refused direct dial (``exc``, a dial-guard refusal) becomes
    ``service``'s status (ERROR with the reason) through ``mgmt``, at most
    once a minute per service (``reports`` keeps the times and the reasons)."""
    if not service.service_id:
        return
    reports.record(service.service_id, DenialReports.message(exc))
    if not reports.due(service.service_id, clock.seconds()):
        return
    log.warn("direct_upstream dial refused for account {account} service {service}: "
             "{host}:{port} ({address}) {reason}", account=service.account_id,
             service=service.service_id, host=exc.host, port=exc.port,
             address=exc.address, reason=exc.reason)
    if mgmt is None:
        return
    maybeDeferred(
        mgmt.send_status_update, service.service_id, service.account_id,
        pb.PROXY_STATUS_ERROR, error_message=DenialReports.message(exc),
    ).addErrback(lambda f: log.debug("status report failed: {err}",
                                     err=f.getErrorMessage()))
