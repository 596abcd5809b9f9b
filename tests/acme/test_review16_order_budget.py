"""Review 16: one ACME account is shared by every tenant of a gateway, and so
are the CA's per-account limits (Let's Encrypt: 300 new orders per account
per 3 hours).  The schedule takes owners in turn for the order slot and
backs a failing domain off, but nothing bounds how many orders one owner
makes: an account whose names never validate (public services on a custom
domain it never pointed at the gateway) re-orders each of them on the
backoff ladder (1, 2, 4, ... minutes) and spends the whole shared budget,
so another account's new service gets ``rateLimited`` and keeps the
fallback certificate.

Manager and schedule as ``attach_acme`` builds them (default schedule,
``--acme-retry-base`` 1 m), a task.Clock, and a fake CA with that limit.
"""

from __future__ import annotations

import os
import time
from collections import deque

from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.internet.defer import fail, succeed

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.acme.challenges import ChallengeResponder
from nbgateway.acme.client import AcmeError, Issued
from nbgateway.acme.manager import AcmeManager
from nbgateway.acme.schedule import RenewalSchedule
from nbgateway.tls.certstore import CertificateStore, LocalCA

#: Let's Encrypt "New Orders per Account": 300 per 3 hours (sliding window)
CA_ORDERS = 300
CA_WINDOW = 3 * 3600.0


class RateLimitedCA:
    """An ACME account whose CA counts new orders over a sliding window;
    names in ``unreachable`` fail validation."""

    def __init__(self, tmp: str, clock: task.Clock, unreachable: set[str]) -> None:
        self.ca = LocalCA(os.path.join(tmp, "issuer"), "fake ACME CA")
        self.clock = clock
        self.unreachable = unreachable
        self.window: deque[float] = deque()
        self.orders: list[str] = []
        self.rate_limited: list[str] = []

    def issue(self, domain, publish, unpublish) -> Issued:
        now = self.clock.seconds()
        while self.window and self.window[0] <= now - CA_WINDOW:
            self.window.popleft()
        if len(self.window) >= CA_ORDERS:
            self.rate_limited.append(domain)
            raise AcmeError("rateLimited: too many new orders recently",
                            retry_after=self.window[0] + CA_WINDOW)
        self.window.append(now)
        self.orders.append(domain)
        if domain in self.unreachable:
            raise AcmeError(f"unauthorized: invalid response from http://{domain}/")
        ck = self.ca.issue(domain, days=90)
        key = ck.key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        return Issued(ck.cert_pem(), key)


def _run_now(f, *a):
    try:
        return succeed(f(*a))
    except Exception as exc:
        return fail(exc)


def test_one_account_cannot_spend_the_shared_acme_order_budget(tmp_path):
    clock = task.Clock()
    clock.advance(time.time())
    cert_dir = str(tmp_path / "certs")
    store = CertificateStore(cert_dir, None, str(tmp_path / "data"), serves=lambda n: True)
    # B's 100 public services sit on a custom domain it never pointed here
    b_names = [f"s{i}.b-corp.test" for i in range(100)]
    ca = RateLimitedCA(str(tmp_path), clock, set(b_names))
    manager = AcmeManager(ca, store, ChallengeResponder(), clock=clock, cert_dir=cert_dir,
                          run_in_thread=_run_now,
                          schedule=RenewalSchedule(backoff_base=60.0, rand=lambda: 0.5))
    manager.start()
    for i, name in enumerate(b_names):
        manager.mapping_added(pb.ProxyMapping(id=f"b{i}", account_id="B", domain=name))
    for _ in range(2 * 360):  # two hours of B's retries
        clock.advance(10)
    a_name = "shop.a-corp.test"
    manager.mapping_added(pb.ProxyMapping(id="a1", account_id="A", domain=a_name))
    clock.advance(0)
    for _ in range(60):
        clock.advance(10)
    assert a_name not in ca.rate_limited, (
        f"B made {sum(1 for d in ca.orders if d in ca.unreachable)} orders; "
        f"A's new service was refused by the CA's account-wide limit")
    assert a_name in ca.orders
    assert "fake ACME CA" in store.certificate_for(a_name).cert.issuer.rfc4514_string()
