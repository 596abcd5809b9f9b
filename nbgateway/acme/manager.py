"""The Twisted adapter around the ACME schedule: which domains, when, and
what happens with the result.

:class:`AcmeManager` observes the mapping store: a public HTTP mapping makes
its domain wanted (a certificate already in the certificate directory counts,
so a restart orders nothing new), a removed one drops it.  A timer on the
injected clock wakes at the schedule's next due time; each due order runs
:meth:`AcmeAccount.issue` on a worker thread (a daemon thread by default),
so neither mapping application nor startup ever waits for the ACME server.
Challenge answers go straight into the thread-safe responder.

On success the chain and key are written atomically (mode 0600, key first) as
``acme_<domain>.crt``/``.key`` into the certificate directory and the
certificate store reloads at once; until then the previous certificate (or
the local CA's fallback) keeps serving.  The next renewal is due at two
thirds of the lifetime, or at the time the server's ARI window suggests when
it offers one.  The mapping's services get an ACTIVE status update with
``certificate_issued``.  On failure the schedule backs off (respecting
Retry-After), the services get ``CERTIFICATE_FAILED`` with the
error, and ``nbgateway_acme_orders_total{result="failed"}`` counts it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.acme.challenges import ChallengeResponder
from nbgateway.acme.client import HTTP_01, AcmeError, Issued, write_private
from nbgateway.acme.schedule import RenewalSchedule
from nbgateway.store.mappings import MappingObserver
from nbgateway.tls.certstore import is_ip_literal, valid_hostname
from nbgateway.tls.certstore import normalize_name as normalise_domain

log = Logger()

FILE_PREFIX = "acme_"
#: an ARI renewal time sooner than this after issuance is ignored (no loops)
MIN_ARI_DELAY = 60.0
L4_MODES = ("tcp", "udp", "tls")


class AcmeStats:
    """Prometheus collector: orders by result and domains currently failing."""

    def __init__(self, schedule: RenewalSchedule) -> None:
        self.schedule = schedule
        self.orders: Counter[str] = Counter()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fam = CounterMetricFamily("nbgateway_acme_orders",
                                  "ACME certificate orders by result", labels=["result"])
        for result in ("issued", "failed"):
            fam.add_metric([result], self.orders.get(result, 0))
        yield fam
        failing = GaugeMetricFamily(
            "nbgateway_acme_domains_failing",
            "domains whose last ACME order failed (served with the fallback or the "
            "previous certificate)")
        failing.add_metric([], sum(1 for s in self.schedule.domains.values() if s.failures))
        yield failing

    def describe(self) -> list[Any]:
        return []


class AcmeManager(MappingObserver):
    """See the module docstring."""

    def __init__(self, account: Any, certificates: Any, responder: ChallengeResponder, *,
                 clock: Any, cert_dir: str, mgmt: Any = None,
                 schedule: RenewalSchedule | None = None,
                 run_in_thread: Callable[..., Deferred] | None = None,
                 call_from_thread: Callable[..., Any] | None = None) -> None:
        self.account = account
        self.certificates = certificates
        self.responder = responder
        self.clock = clock
        self.cert_dir = cert_dir
        self.mgmt = mgmt
        self.schedule = schedule if schedule is not None else RenewalSchedule()
        self.stats = AcmeStats(self.schedule)
        self.run_in_thread = run_in_thread or (lambda f, *a: in_daemon_thread(clock, f, *a))
        #: the responder is thread-safe: orders publish directly, never
        #: waiting for the reactor (which may be stopping)
        self.call_from_thread = call_from_thread or (lambda f, *a: f(*a))
        #: domain -> {service id: account id}
        self.services: dict[str, dict[str, str]] = {}
        self._call: Any = None
        self.running = False

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._arm()

    def stop(self) -> None:
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    # -- the mappings ---------------------------------------------------------
    def mapping_added(self, mapping: pb.ProxyMapping) -> None:
        domain = normalise_domain(mapping.domain)
        if mapping.private or mapping.mode in L4_MODES or not valid_hostname(domain) \
                or is_ip_literal(domain):
            return
        ours = self._existing(domain)
        if ours is False:
            return  # the certificate directory already serves it
        self.services.setdefault(domain, {})[mapping.id] = mapping.account_id
        if not self.schedule.want(domain, self.clock.seconds(), owner=mapping.account_id):
            log.warn("acme: too many domains (of all accounts, or of account {account}); "
                     "{domain} keeps its fallback certificate", domain=domain,
                     account=mapping.account_id)
            return
        if ours is not None:
            nb, na = ours
            self.schedule.have_certificate(domain, nb, na)
        self._arm()

    def mapping_changed(self, old: pb.ProxyMapping, new: pb.ProxyMapping) -> None:
        if normalise_domain(old.domain) != normalise_domain(new.domain) or \
                old.private != new.private:
            self.mapping_removed(old)
        self.mapping_added(new)

    def mapping_removed(self, mapping: pb.ProxyMapping) -> None:
        domain = normalise_domain(mapping.domain)
        ids = self.services.get(domain)
        if ids is None:
            return
        ids.pop(mapping.id, None)
        if not ids:
            del self.services[domain]
            self.schedule.drop(domain)
            self._arm()

    def _existing(self, domain: str) -> tuple[float, float] | bool | None:
        """Our certificate's validity; False when another file serves the
        domain; None when nothing does."""
        ck = self.certificates.static_for(domain)
        if ck is None:
            return None
        if not os.path.basename(ck.source).startswith(FILE_PREFIX):
            return False
        return (ck.cert.not_valid_before_utc.timestamp(), ck.cert.not_valid_after_utc.timestamp())

    # -- the timer -------------------------------------------------------------
    def _arm(self) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        wake = self.schedule.next_wakeup()
        if wake is not None:
            self._call = self.clock.callLater(max(0.0, wake - self.clock.seconds()), self._run)

    def _run(self) -> None:
        self._call = None
        for domain in self.schedule.due(self.clock.seconds()):
            log.info("acme: ordering a certificate for {domain}", domain=domain)
            d = self.run_in_thread(self.account.issue, domain, self._publish, self._unpublish)
            d.addCallbacks(self._issued, self._failed, callbackArgs=(domain,),
                           errbackArgs=(domain,))
        self._arm()

    # -- challenge answers (called from the worker thread) ------------------------
    def _publish(self, kind: str, what: str, keyauth: str) -> None:
        add = self.responder.add_http01 if kind == HTTP_01 else self.responder.add_tls_alpn01
        if not self.call_from_thread(add, what, keyauth):
            raise AcmeError("too many pending challenges")

    def _unpublish(self, kind: str, what: str, keyauth: str) -> None:
        rm = self.responder.remove_http01 if kind == HTTP_01 else \
            self.responder.remove_tls_alpn01
        self.call_from_thread(rm, what)

    # -- results ---------------------------------------------------------------
    def _issued(self, issued: Issued, domain: str) -> None:
        try:
            cert = x509.load_pem_x509_certificates(issued.fullchain_pem)[0]
            os.makedirs(self.cert_dir, exist_ok=True)
            base = os.path.join(self.cert_dir, FILE_PREFIX + domain)
            write_private(base + ".key", issued.key_pem)
            write_private(base + ".crt", issued.fullchain_pem)
            self.certificates.reload()
        except (OSError, ValueError) as exc:
            self._failed_with(domain, f"storing the certificate: {exc}", None)
            return
        nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        renew_at = issued.renew_at
        if renew_at is not None and not (self.clock.seconds() + MIN_ARI_DELAY < renew_at < na):
            renew_at = None  # an ARI time already past or after expiry: two thirds
        self.schedule.succeeded(domain, nb, na, renew_at, now=self.clock.seconds())
        self.stats.orders["issued"] += 1
        log.info("acme: certificate for {domain} issued, valid until {not_after}",
                 domain=domain, not_after=cert.not_valid_after_utc.isoformat())
        self._report(domain, pb.PROXY_STATUS_ACTIVE, certificate_issued=True)
        self._arm()

    def _failed(self, failure: Any, domain: str) -> None:
        exc = failure.value
        retry_after = getattr(exc, "retry_after", None)
        self._failed_with(domain, str(exc) or type(exc).__name__, retry_after)

    def _failed_with(self, domain: str, error: str, retry_after: float | None) -> None:
        when = self.schedule.failed(domain, self.clock.seconds(), error, retry_after)
        self.stats.orders["failed"] += 1
        log.warn("acme: order for {domain} failed: {error}; next attempt in {delay:.0f}s",
                 domain=domain, error=error,
                 delay=(when or 0.0) - self.clock.seconds())
        self._report(domain, pb.PROXY_STATUS_CERTIFICATE_FAILED,
                     error_message=f"certificate: {error}"[:1000])
        self._arm()

    def _report(self, domain: str, status: int, **kw: Any) -> None:
        if self.mgmt is None:
            return
        for service_id, account_id in list(self.services.get(domain, {}).items()):
            maybeDeferred(self.mgmt.send_status_update, service_id, account_id, status,
                          **kw).addErrback(lambda f: None)


def in_daemon_thread(reactor: Any, f: Callable[..., Any], *args: Any) -> Deferred:
    """Run ``f(*args)`` on a new daemon thread; the result arrives on the
    reactor thread.  Unlike the reactor's thread pool, a slow ACME server
    never holds up the process's shutdown (the thread is abandoned)."""
    d: Deferred = Deferred()

    def work() -> None:
        try:
            result = f(*args)
        except BaseException as exc:
            failure = Failure(exc)
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=work, name="nbgateway-acme", daemon=True).start()
    return d
