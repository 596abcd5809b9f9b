"""The ACME manager on a task.Clock with a fake account: orders per public
mapping without blocking, atomic files picked up at once, the old certificate
serving until a new one exists, backoff and Retry-After, status updates,
metrics, restart without reorders, corrupt files skipped, an unreachable
server failing cleanly."""

from __future__ import annotations

import os
import stat
import time

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.acme.challenges import ChallengeResponder
from nbgateway.acme.client import AcmeAccount, AcmeError, Issued
from nbgateway.acme.manager import AcmeManager
from nbgateway.acme.schedule import RenewalSchedule
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.tls.certstore import CertificateStore, LocalCA

NAME = "pub.example.test"


class FakeAccount:
    """Issues from a throwaway CA (``days`` lifetime) or fails as told."""

    def __init__(self, tmp: str) -> None:
        self.ca = LocalCA(os.path.join(tmp, "issuer"), "fake ACME CA")
        self.orders: list[str] = []
        self.errors: list[Exception] = []
        self.days = 90
        self.renew_at = None

    def issue(self, domain, publish, unpublish) -> Issued:
        self.orders.append(domain)
        if self.errors:
            raise self.errors.pop(0)
        ck = self.ca.issue(domain, days=self.days)
        key = ck.key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        return Issued(ck.cert_pem(), key, self.renew_at)


def _run_now(f, *a):
    try:
        return succeed(f(*a))
    except Exception as exc:
        return fail(exc)


def _mapping(domain: str = NAME, *, private: bool = False, sid: str = "svc-1"):
    return pb.ProxyMapping(id=sid, account_id="acct", domain=domain, private=private)


@pytest.fixture
def world(tmp_path):
    clock = task.Clock()
    clock.advance(time.time())
    cert_dir = str(tmp_path / "certs")
    store = CertificateStore(cert_dir, None, str(tmp_path / "data"), serves=lambda n: True)
    account = FakeAccount(str(tmp_path))
    mgmt = FakeManagementClient()
    manager = AcmeManager(account, store, ChallengeResponder(), clock=clock, cert_dir=cert_dir,
                          mgmt=mgmt, run_in_thread=_run_now,
                          schedule=RenewalSchedule(backoff_base=60.0, rand=lambda: 0.5))
    manager.start()
    return clock, store, account, mgmt, manager, cert_dir


def _issuer(store, name=NAME) -> str:
    return store.certificate_for(name).cert.issuer.rfc4514_string()


def test_order_per_public_mapping_written_and_served(world):
    clock, store, account, mgmt, manager, cert_dir = world
    assert manager.mapping_added(_mapping()) is None
    manager.mapping_added(_mapping("private.example.test", private=True, sid="svc-2"))
    assert account.orders == []  # nothing happens inside mapping application
    clock.advance(0)
    assert account.orders == [NAME]
    assert "fake ACME CA" in _issuer(store)
    for suffix in (".crt", ".key"):
        path = os.path.join(cert_dir, f"acme_{NAME}{suffix}")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    issued = [c for c in mgmt.calls_to("send_status_update") if c.get("certificate_issued")]
    assert issued and issued[0]["status"] == pb.PROXY_STATUS_ACTIVE
    registry = CollectorRegistry()
    registry.register(manager.stats)
    text = generate_latest(registry).decode()
    assert 'nbgateway_acme_orders_total{result="issued"} 1.0' in text


def test_no_order_for_an_ip_literal_domain(world):
    clock, _store, account, _mgmt, manager, _cert_dir = world
    for i, ip in enumerate(("192.0.2.7", "2001:db8::7")):
        manager.mapping_added(_mapping(ip, sid=f"svc-ip{i}"))
    manager.mapping_added(_mapping())
    clock.advance(0)
    assert account.orders == [NAME]


def test_order_that_never_answers_blocks_nothing(world, tmp_path):
    clock, store, _account, _mgmt, manager, _cert_dir = world
    manager.run_in_thread = lambda f, *a: Deferred()  # an ACME server that never answers
    manager.mapping_added(_mapping())
    clock.advance(0)
    manager.mapping_added(_mapping("two.example.test", sid="svc-2"))
    assert "local CA" in _issuer(store)  # the fallback serves meanwhile


def test_failure_keeps_fallback_reports_and_backs_off(world):
    clock, store, account, mgmt, manager, _cert_dir = world
    account.errors = [AcmeError("connection refused"), AcmeError("again")]
    manager.mapping_added(_mapping())
    clock.advance(0)
    assert "local CA" in _issuer(store)
    failed = [c for c in mgmt.calls_to("send_status_update")
              if c["status"] == pb.PROXY_STATUS_CERTIFICATE_FAILED]
    assert failed and "connection refused" in failed[0]["error_message"]
    clock.advance(59)
    assert len(account.orders) == 1
    clock.advance(1)
    assert len(account.orders) == 2  # after 60 s
    clock.advance(119)
    assert len(account.orders) == 2
    clock.advance(1)
    assert len(account.orders) == 3  # after another 120 s: success
    assert "fake ACME CA" in _issuer(store)
    assert manager.stats.orders == {"failed": 2, "issued": 1}


def test_retry_after_respected(world):
    clock, _store, account, _mgmt, manager, _cert_dir = world
    account.errors = [AcmeError("rateLimited", retry_after=clock.seconds() + 3600)]
    manager.mapping_added(_mapping())
    clock.advance(0)
    clock.advance(3599)
    assert len(account.orders) == 1
    clock.advance(1)
    assert len(account.orders) == 2


def test_renewal_at_two_thirds_old_certificate_serves_until_new(world):
    clock, store, account, _mgmt, manager, _cert_dir = world
    account.days = 3
    manager.mapping_added(_mapping())
    clock.advance(0)
    first = store.certificate_for(NAME).cert
    # LocalCA backdates by 1 h: lifetime 3 d + 1 h, renewal at two thirds
    lifetime = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
    renew_at = first.not_valid_before_utc.timestamp() + lifetime * 2 / 3
    held: list[Deferred] = []
    manager.run_in_thread = lambda f, *a: held.append(Deferred()) or held[-1]
    clock.advance(renew_at - clock.seconds() - 1)
    assert held == []
    clock.advance(1)
    assert len(held) == 1
    assert store.certificate_for(NAME).cert == first  # still the old one
    account.orders.clear()
    held[0].callback(account.issue(NAME, None, None))
    assert store.certificate_for(NAME).cert != first


def test_restart_reuses_stored_certificate(world, tmp_path):
    clock, _store, account, _mgmt, manager, cert_dir = world
    manager.mapping_added(_mapping())
    clock.advance(0)
    manager.stop()
    store2 = CertificateStore(cert_dir, None, str(tmp_path / "data"), serves=lambda n: True)
    again = AcmeManager(account, store2, ChallengeResponder(), clock=clock, cert_dir=cert_dir,
                        run_in_thread=_run_now)
    again.start()
    again.mapping_added(_mapping())
    clock.advance(3600)
    assert account.orders == [NAME]


def test_removed_mapping_stops_orders(world):
    clock, _store, account, _mgmt, manager, _cert_dir = world
    account.errors = [AcmeError("x")]
    manager.mapping_added(_mapping())
    clock.advance(0)
    manager.mapping_removed(_mapping())
    clock.advance(3600)
    assert account.orders == [NAME]


def test_corrupt_certificate_file_skipped_others_serve(world):
    clock, store, _account, _mgmt, manager, cert_dir = world
    manager.mapping_added(_mapping())
    clock.advance(0)
    with open(os.path.join(cert_dir, "acme_broken.example.test.crt"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with open(os.path.join(cert_dir, "acme_broken.example.test.key"), "w") as f:
        f.write("garbage")
    store.reload()
    assert "fake ACME CA" in _issuer(store)
    assert "local CA" in _issuer(store, "broken.example.test")


def test_unreachable_server_is_a_clean_acme_error(tmp_path):
    account = AcmeAccount("http://127.0.0.1:9/directory", str(tmp_path / "acme"), timeout=2)
    assert stat.S_IMODE(os.stat(account.key_path).st_mode) == 0o600
    with pytest.raises(AcmeError):
        account.issue(NAME, lambda *a: None, lambda *a: None)
    # the key is created once and kept
    with open(account.key_path, "rb") as f:
        key = f.read()
    with open(AcmeAccount("http://127.0.0.1:9/d", str(tmp_path / "acme")).key_path, "rb") as f:
        assert f.read() == key


class _RecordingReactor:
    def __init__(self) -> None:
        import threading

        self.calls: list = []
        self.done = threading.Event()

    def callFromThread(self, f, *a):
        self.calls.append((f, a))
        self.done.set()


def test_orders_run_on_daemon_threads_results_via_the_reactor():
    import threading

    from nbgateway.acme.manager import in_daemon_thread

    seen = {}

    def work(x):
        seen["daemon"] = threading.current_thread().daemon
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        if x == "boom":
            raise AcmeError("boom")
        return x * 2

    for arg, expect_error in ((21, False), ("boom", True)):
        reactor = _RecordingReactor()
        d = in_daemon_thread(reactor, work, arg)
        assert reactor.done.wait(5)
        assert not d.called  # nothing fires off the reactor thread
        f, a = reactor.calls[0]
        f(*a)
        results = []
        d.addBoth(results.append)
        if expect_error:
            assert results[0].check(AcmeError)
        else:
            assert results == [42]
        assert seen == {"daemon": True, "thread": True}


def test_responder_publishes_without_the_reactor(world):
    """publish/unpublish from an order are direct calls on the thread-safe
    responder (a reactor that is stopping can never wedge an order)."""
    _clock, _store, _account, _mgmt, manager, _cert_dir = world
    manager._publish("tls-alpn-01", NAME, "t.k")
    assert manager.responder.has_tls_alpn01(NAME)
    manager._unpublish("tls-alpn-01", NAME, "t.k")
    assert not manager.responder.has_tls_alpn01(NAME)


def test_ari_renewal_time_used_when_offered(world):
    clock, _store, account, _mgmt, manager, _cert_dir = world
    account.renew_at = clock.seconds() + 7200  # well before two thirds of 90 days
    manager.mapping_added(_mapping())
    clock.advance(0)
    assert manager.schedule.next_wakeup() == account.renew_at
    account.renew_at = clock.seconds()  # a time already due: ignored, no order loop
    clock.advance(7200)
    assert account.orders == [NAME, NAME]
    st = manager.schedule.domains[NAME]
    assert st.next_at == manager.schedule.renewal_time(st.not_before, st.not_after)


def test_ari_time_after_expiry_ignored(world):
    clock, _store, account, _mgmt, manager, _cert_dir = world
    account.renew_at = clock.seconds() + 200 * 86400
    manager.mapping_added(_mapping())
    clock.advance(0)
    st = manager.schedule.domains[NAME]
    assert st.next_at == manager.schedule.renewal_time(st.not_before, st.not_after)


def test_one_account_cannot_take_every_acme_slot(world):
    """The manager names each domain's account to the schedule: account A
    at its share (a quarter of max_domains) gets no more orders, account B's
    domain is still ordered."""
    clock, _store, account, _mgmt, manager, _cert_dir = world
    manager.schedule.max_domains, manager.schedule.max_per_owner = 8, 2
    for i in range(3):
        manager.mapping_added(pb.ProxyMapping(id=f"a{i}", account_id="A",
                                              domain=f"a{i}.example.test"))
    manager.mapping_added(pb.ProxyMapping(id="b0", account_id="B", domain="b0.example.test"))
    assert manager.schedule.owned == {"A": 2, "B": 1}
    clock.advance(0)
    clock.advance(20)
    clock.advance(20)
    assert sorted(account.orders) == ["a0.example.test", "a1.example.test", "b0.example.test"]
