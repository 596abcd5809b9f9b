"""NbgwSendAccessLogBatch over a real grpcio server: one call stores the batch,
a repeated batch stores nothing new, malformed entries are skipped, an entry
outside the token's account refuses the whole batch."""

from __future__ import annotations

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import AccessLogQuery, Account
from tests.management import test_grpc_support as support
from tests.management.test_grpc_rpcs import access_log, rpc_error
from tests.management.test_grpc_support import ACCOUNT, Fixture, Harness, md

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def _stored(fx: Fixture) -> set[str]:
    page = fx.store.access_logs.list(ACCOUNT, AccessLogQuery(page_size=100))
    return {e.id for e in page.data}


def test_batch_stored_once_and_retry_is_idempotent(harness: Harness, fx: Fixture) -> None:
    batch = pb.NbgwSendAccessLogBatchRequest(
        logs=[access_log(log_id=f"b-{i}", path=f"/{i}") for i in range(40)]
    )
    resp = harness.stub.NbgwSendAccessLogBatch(batch, metadata=md(fx.token))
    assert resp.stored == 40
    again = harness.stub.NbgwSendAccessLogBatch(batch, metadata=md(fx.token))
    assert again.stored == 0
    assert _stored(fx) == {f"b-{i}" for i in range(40)}
    # the per-entry RPC with an id from the batch does not duplicate it either
    harness.stub.SendAccessLog(pb.SendAccessLogRequest(log=access_log(log_id="b-3")),
                               metadata=md(fx.token))
    assert fx.store.access_logs.count(ACCOUNT) == 40


def test_batch_skips_malformed_entries(harness: Harness, fx: Fixture) -> None:
    batch = pb.NbgwSendAccessLogBatchRequest(logs=[
        access_log(log_id="ok-1"),
        access_log(log_id="bad-ip", source_ip="not-an-ip"),
        access_log(log_id="bad-proto", protocol="gopher"),
        access_log(log_id="ok-2"),
    ])
    resp = harness.stub.NbgwSendAccessLogBatch(batch, metadata=md(fx.token))
    assert resp.stored == 2 and _stored(fx) == {"ok-1", "ok-2"}
    assert harness.servicer.access_log_rejected == 2


def test_batch_with_foreign_account_is_refused_whole(harness: Harness, fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    batch = pb.NbgwSendAccessLogBatchRequest(logs=[
        access_log(log_id="x-1", account_id="acct-b"), access_log(log_id="x-2"),
    ])
    err = rpc_error(harness.stub.NbgwSendAccessLogBatch, batch, metadata=md(token_b))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert fx.store.access_logs.count("acct-b") == 0 and _stored(fx) == set()
    err = rpc_error(harness.stub.NbgwSendAccessLogBatch, batch, metadata=md("nbx_bogus"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
