"""Group commit of SendStatusUpdate (issue 18): store batch, writer, RPC, change kinds.

* ``services.apply_status_reports`` applies a batch in one transaction as if
  the reports had been written one by one: latest per service wins, unchanged
  statuses are not written, a missing service or a bad CA fails only its own
  report, listeners are upserted once (SQLite and PostgreSQL);
* :class:`StatusWriter` answers each report after its batch committed, keeps
  arrival order across batches, fails every report of a failed batch, and
  under concurrent submitters stores each service's last report;
* a status-only change is announced as ``SERVICE_STATUS``: the mapping
  dispatcher does not read the service for it;
* over gRPC, concurrent reports share transactions and are all stored.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.errors import NotFound, StoreUnavailable, ValidationError
from nbgateway.management.model import Account, ChangeKind, ProxyInboundListener
from nbgateway.management.statuswriter import StatusQueueFull, StatusWriter, StatusWriterStopped
from nbgateway.management.store import Store
from nbgateway.management.store._statusreports import CertificateReport, StatusReport
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, make_service, md

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def world(store: Store, n: int = 4, account: str = ACCOUNT) -> list[str]:
    store.accounts.create(Account(id=account, domain=f"{account}.test"))
    return [store.services.create(make_service(f"{account}-app{i}", sid=f"{account}-s{i}",
                                               account_id=account)).id for i in range(n)]


def statuses(store: Store, account: str, ids: list[str]) -> list[str]:
    return [store.services.get(account, sid).meta.status for sid in ids]


def changes_of(store: Store) -> list[tuple[ChangeKind, str, tuple[str, ...]]]:
    seen: list[tuple[ChangeKind, str, tuple[str, ...]]] = []
    store.add_listener(lambda k, a, ids: seen.append((k, a, ids)))
    return seen


# --- the store batch (SQLite and PostgreSQL) ---------------------------------------------


def test_batch_latest_wins_and_unchanged_is_not_written(store: Store) -> None:
    ids = world(store)
    seen = changes_of(store)
    res = store.services.apply_status_reports([
        StatusReport(ACCOUNT, ids[0], "error", message="boom"),
        StatusReport(ACCOUNT, ids[1], "active"),
        StatusReport(ACCOUNT, ids[0], "active"),
        StatusReport(ACCOUNT, ids[2], "pending"),  # already pending: not written
    ])
    assert res == [None] * 4
    assert statuses(store, ACCOUNT, ids) == ["active", "active", "pending", "pending"]
    assert store.services.get(ACCOUNT, ids[0]).meta.status_message == ""
    assert seen == [(ChangeKind.SERVICE_STATUS, ACCOUNT, (ids[0], ids[1]))]
    before = store.services.get(ACCOUNT, ids[0]).meta.status_updated_at
    seen.clear()
    assert store.services.apply_status_reports(
        [StatusReport(ACCOUNT, sid, "active") for sid in ids[:2]]) == [None, None]
    assert seen == []  # nothing changed: no write, nothing announced
    assert store.services.get(ACCOUNT, ids[0]).meta.status_updated_at == before


def test_batch_missing_service_fails_only_its_report(store: Store) -> None:
    ids = world(store)
    other = world(store, 1, account="acct-2")
    res = store.services.apply_status_reports([
        StatusReport(ACCOUNT, "nope", "active"),
        StatusReport(ACCOUNT, ids[0], "active"),
        StatusReport(ACCOUNT, other[0], "active"),  # exists, but not in this account
    ])
    assert isinstance(res[0], NotFound) and res[1] is None and isinstance(res[2], NotFound)
    assert statuses(store, ACCOUNT, ids[:1]) == ["active"]
    assert statuses(store, "acct-2", other) == ["pending"]


def test_batch_certificate_issued_stamp_and_records(store: Store) -> None:
    ids = world(store)
    cert = CertificateReport(issuer="CN=ca", not_after=None, source="acme", last_error="",
                             clear_error=True, ca_pem="")
    res = store.services.apply_status_reports([
        StatusReport(ACCOUNT, ids[0], "active", certificate_issued=True, certificate=cert),
        StatusReport(ACCOUNT, ids[0], "active"),
        StatusReport(ACCOUNT, ids[1], "active",
                     certificate=CertificateReport("CN=x", None, "file", "", False,
                                                   "not a pem")),
    ])
    assert res[0] is None and res[1] is None and isinstance(res[2], ValidationError)
    assert store.services.get(ACCOUNT, ids[0]).meta.certificate_issued_at is not None
    assert store.certificates.get(ACCOUNT, ids[0]).issuer == "CN=ca"
    # a bad CA fails its RPC, but the status was stored, as a single write did
    assert statuses(store, ACCOUNT, ids[1:2]) == ["active"]


def test_batch_listener_upserted_once_and_only_when_changed(store: Store) -> None:
    ids = world(store)
    seen = changes_of(store)

    def lst(port: int) -> ProxyInboundListener:
        return ProxyInboundListener(proxy_id="gw-1", account_id=ACCOUNT,
                                    tunnel_ip="100.64.0.9", https_port=port, http_port=80)

    store.services.apply_status_reports(
        [StatusReport(ACCOUNT, sid, "active", listener=lst(443)) for sid in ids])
    assert [(x.proxy_id, x.https_port) for x in store.proxies.list_inbound_listeners(ACCOUNT)] \
        == [("gw-1", 443)]
    assert [k for k, _a, _i in seen].count(ChangeKind.PROXY) == 1
    seen.clear()
    store.services.apply_status_reports(
        [StatusReport(ACCOUNT, ids[0], "active", listener=lst(443))])
    assert seen == []  # same listener, same status: no write at all
    store.services.apply_status_reports(
        [StatusReport(ACCOUNT, ids[0], "active", listener=lst(8443))])
    assert store.proxies.list_inbound_listeners(ACCOUNT)[0].https_port == 8443


def test_batch_spanning_accounts(store: Store) -> None:
    a = world(store, 2, account="acct-a")
    b = world(store, 2, account="acct-b")
    seen = changes_of(store)
    res = store.services.apply_status_reports(
        [StatusReport("acct-b", b[1], "active"), StatusReport("acct-a", a[0], "error")])
    assert res == [None, None]
    assert statuses(store, "acct-a", a) == ["error", "pending"]
    assert statuses(store, "acct-b", b) == ["pending", "active"]
    assert sorted(seen) == [(ChangeKind.SERVICE_STATUS, "acct-a", (a[0],)),
                            (ChangeKind.SERVICE_STATUS, "acct-b", (b[1],))]


# --- the writer ----------------------------------------------------------------------------


def test_writer_keeps_order_across_batches_and_answers_after_commit() -> None:
    applied: list[list[Any]] = []
    gate = threading.Event()

    def apply(batch: Any) -> list[Exception | None]:
        gate.wait(5)
        applied.append(list(batch))
        return [None] * len(batch)

    w = StatusWriter(apply, linger=0, max_batch=3)
    w.start()
    try:
        futs = [w.submit(i) for i in range(8)]
        assert not any(f.done() for f in futs)  # nothing answered before its commit
        gate.set()
        for f in futs:
            assert f.result(5) is None
    finally:
        w.stop()
    flat = [x for b in applied for x in b]
    assert flat == list(range(8)) and all(len(b) <= 3 for b in applied)


def test_writer_failed_batch_fails_each_of_its_reports() -> None:
    calls = 0

    def apply(batch: Any) -> list[Exception | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("store unavailable: disk I/O error")
        return [None if x != "missing" else NotFound("service missing not found")
                for x in batch]

    w = StatusWriter(apply, linger=0)  # not started: each report is its own batch
    f1 = w.submit("a")
    f2, f3 = w.submit("b"), w.submit("missing")
    with pytest.raises(StoreUnavailable):
        f1.result(1)
    assert f2.result(1) is None
    with pytest.raises(NotFound):
        f3.result(1)


def test_writer_cancelled_caller_still_written_and_writer_survives(store: Store) -> None:
    """A report whose RPC was cancelled (deadline) while queued is still written
    (the gateway's latest word) and the writer keeps serving the next ones."""
    ids = world(store, 2)
    gate = threading.Event()
    inner = store.services.apply_status_reports

    def apply(batch: Any) -> list[Exception | None]:
        gate.wait(5)
        return inner(batch)

    w = StatusWriter(apply, linger=0)
    w.start()
    try:
        hold = w.submit(StatusReport(ACCOUNT, ids[1], "error"))
        while w.pending():
            threading.Event().wait(0.001)
        gone = w.submit(StatusReport(ACCOUNT, ids[0], "active"))
        assert gone.cancel()
        gate.set()
        assert hold.result(5) is None
        assert w.submit(StatusReport(ACCOUNT, ids[1], "active")).result(5) is None
    finally:
        w.stop()
    assert statuses(store, ACCOUNT, ids) == ["active", "active"]


def test_writer_refuses_after_stop_and_writes_what_was_queued() -> None:
    applied: list[Any] = []
    w = StatusWriter(lambda b: (applied.extend(b), [None] * len(b))[1], linger=0.05)
    w.start()
    queued = w.submit("queued")
    w.stop()
    assert queued.result(5) is None and applied == ["queued"]
    with pytest.raises(StatusWriterStopped):
        w.submit("late").result(1)
    assert applied == ["queued"]


def test_writer_queue_is_bounded() -> None:
    gate = threading.Event()
    w = StatusWriter(lambda b: (gate.wait(5), [None] * len(b))[1], linger=0, max_queue=2)
    w.start()
    try:
        first = w.submit(0)
        while w.pending():  # the writer holds the first batch
            threading.Event().wait(0.001)
        queued = [w.submit(1), w.submit(2)]
        refused = w.submit(3)
        with pytest.raises(StatusQueueFull):
            refused.result(1)
        gate.set()
        assert first.result(5) is None and [f.result(5) for f in queued] == [None, None]
    finally:
        w.stop()
    assert w.refused == 1


def test_writer_concurrent_submitters_store_each_services_last_report(store: Store) -> None:
    """Eight threads each own two services and report them through the states in
    order, waiting for each answer; the stored status is the last one, and the
    reports shared transactions."""
    ids = world(store, 16)
    w = StatusWriter(store.services.apply_status_reports, linger=0.002)
    w.start()
    sequence = ["pending", "certificate_pending", "error", "active", "tunnel_not_created",
                "active"]
    errors: list[BaseException] = []

    def submitter(mine: list[str]) -> None:
        try:
            for status in sequence:
                fs = [w.submit(StatusReport(ACCOUNT, sid, status, message=status))
                      for sid in mine]
                for f in fs:
                    f.result(30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(ids[2 * k:2 * k + 2],))
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    w.stop()
    assert errors == []
    assert statuses(store, ACCOUNT, ids) == ["active"] * 16
    assert {store.services.get(ACCOUNT, sid).meta.status_message for sid in ids} == {"active"}
    assert w.reports == 16 * len(sequence)
    assert w.batches < w.reports


def test_writer_latest_wins_within_one_batch(store: Store) -> None:
    ids = world(store, 1)
    gate = threading.Event()
    inner = store.services.apply_status_reports
    sizes: list[int] = []

    def apply(batch: Any) -> list[Exception | None]:
        gate.wait(5)
        sizes.append(len(batch))
        return inner(batch)

    w = StatusWriter(apply, linger=0)
    w.start()
    try:
        hold = w.submit(StatusReport(ACCOUNT, ids[0], "pending"))
        while w.pending():
            threading.Event().wait(0.001)
        fs = [w.submit(StatusReport(ACCOUNT, ids[0], s))
              for s in ("error", "active", "certificate_failed", "active")]
        gate.set()
        assert hold.result(5) is None and [f.result(5) for f in fs] == [None] * 4
    finally:
        w.stop()
    assert sizes == [1, 4]
    assert statuses(store, ACCOUNT, ids) == ["active"]


# --- status-only changes skip the mapping dispatcher ---------------------------------------


def test_status_change_is_not_diffed_by_the_dispatcher(harness: Harness, fx: Fixture) -> None:
    streams = harness.servicer.streams
    seen = changes_of(fx.store)
    gets = 0
    real_get = fx.store.services.get

    def counting_get(*a: Any, **kw: Any) -> Any:
        nonlocal gets
        gets += 1
        return real_get(*a, **kw)

    fx.store.services.get = counting_get  # type: ignore[method-assign]
    try:
        harness.stub.SendStatusUpdate(pb.SendStatusUpdateRequest(
            service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ACTIVE),
            metadata=md(fx.token))
        harness.settle()
        assert [k for k, _a, _i in seen] == [ChangeKind.SERVICE_STATUS]
        assert gets == 0 and streams._pending == {}
        # a real change of the same service is still diffed
        svc = real_get(ACCOUNT, "svc-1")
        fx.store.services.update(svc.__class__(**{**svc.__dict__, "name": "renamed"}))
        harness.settle()
        assert gets >= 1
    finally:
        del fx.store.services.get
    assert real_get(ACCOUNT, "svc-1").meta.status == "active"


# --- over gRPC -----------------------------------------------------------------------------


def test_concurrent_rpcs_share_transactions(harness: Harness, fx: Fixture) -> None:
    ids = [fx.store.services.create(make_service(f"bulk{i}", sid=f"bulk-{i}")).id
           for i in range(60)]
    writer = harness.servicer.status.writer
    assert writer.running
    before = writer.batches
    call = harness.stub.SendStatusUpdate.future
    calls = [call(pb.SendStatusUpdateRequest(service_id=sid, account_id=ACCOUNT,
                                             status=pb.PROXY_STATUS_ACTIVE),
                  metadata=md(fx.token)) for sid in ids]
    missing = call(pb.SendStatusUpdateRequest(service_id="nope", account_id=ACCOUNT,
                                              status=pb.PROXY_STATUS_ACTIVE),
                   metadata=md(fx.token))
    for c in calls:
        c.result(timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        missing.result(timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert statuses(fx.store, ACCOUNT, ids) == ["active"] * 60
    assert writer.batches - before < 61  # some reports shared a transaction


def test_rpc_refuses_nul_ids_before_batching(harness: Harness, fx: Fixture) -> None:
    with pytest.raises(grpc.RpcError) as err:
        harness.stub.SendStatusUpdate(pb.SendStatusUpdateRequest(
            service_id="svc\x00-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ACTIVE),
            metadata=md(fx.token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sync_handler_without_lifecycle_writes_inline(fx: Fixture) -> None:
    from nbgateway.management.proxyrpcs import StatusRpcs

    rpcs = StatusRpcs(fx.store, lambda: [])
    assert not rpcs.writer.running

    class Ctx:
        def abort(self, code: Any, details: str) -> None:
            raise RuntimeError(code, details)

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

        def invocation_metadata(self) -> tuple:
            return ()

    caller = fx.store.proxies.verify_token(fx.token)
    rpcs.SendStatusUpdate(pb.SendStatusUpdateRequest(
        service_id="svc-1", account_id=ACCOUNT, status=pb.PROXY_STATUS_ERROR,
        error_message="x"), Ctx(), caller)
    assert fx.store.services.get(ACCOUNT, "svc-1").meta.status == "error"
    with pytest.raises(RuntimeError) as exc:
        rpcs.SendStatusUpdate(pb.SendStatusUpdateRequest(
            service_id="nope", account_id=ACCOUNT, status=pb.PROXY_STATUS_ERROR), Ctx(), caller)
    assert exc.value.args[0] == grpc.StatusCode.NOT_FOUND


def test_cached_token_path_still_refuses_a_revoked_token(harness: Harness, fx: Fixture) -> None:
    """The status handler accepts a recently checked token on the loop (no pool
    hop); a revocation clears that cache, so the next report is refused."""
    req = pb.SendStatusUpdateRequest(service_id="svc-1", account_id=ACCOUNT,
                                     status=pb.PROXY_STATUS_ACTIVE)
    harness.stub.SendStatusUpdate(req, metadata=md(fx.token))
    assert harness.servicer._cached_caller(md(fx.token)) is not None
    fx.store.proxies.revoke_token(None, fx.token_record.id)
    assert harness.servicer._cached_caller(md(fx.token)) is None
    with pytest.raises(grpc.RpcError) as err:
        harness.stub.SendStatusUpdate(req, metadata=md(fx.token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.postgres
def test_status_batch_reaches_another_replica_as_a_status_change(pg_schema_dsn: str) -> None:
    """Replicas: a batch written through one process is announced to the other
    through the change feed as SERVICE_STATUS (so its dispatcher skips it too)."""
    a = Store.open(pg_schema_dsn, known_clusters=[support.CLUSTER])
    b = Store.open(pg_schema_dsn, known_clusters=[support.CLUSTER])
    try:
        feed_b = b.start_change_feed()
        assert feed_b.listening.wait(10)
        ids = world(a, 2)
        got = threading.Event()
        seen: list[tuple[ChangeKind, str, tuple[str, ...]]] = []

        def listener(kind: ChangeKind, account: str, sids: tuple[str, ...]) -> None:
            if kind == ChangeKind.SERVICE_STATUS:
                seen.append((kind, account, sids))
                got.set()

        b.add_listener(listener)
        a.services.apply_status_reports([StatusReport(ACCOUNT, sid, "active") for sid in ids])
        assert got.wait(10)
        assert seen == [(ChangeKind.SERVICE_STATUS, ACCOUNT, tuple(ids))]
    finally:
        a.close()
        b.close()
