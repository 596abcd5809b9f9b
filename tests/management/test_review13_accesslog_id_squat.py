"""Review 13 (finding): a tenant's own gateway stores, first, the access-log
ids another gateway will give other tenants' entries, and those entries are
dropped; over real gRPC, SQLite and PostgreSQL.

``access_log_entries.id`` is the gateways' ``log_id``, the idempotency key
of retried batches, unique management-wide: an entry whose id is already
stored is silently ignored, whichever account stored it.  Any tenant admin
can mint an account-scoped proxy token and send access-log entries of its
own account with any ``log_id``.  Upstream NetBird proxies use xids (time,
machine id, process id, a counter): a tenant reading the ids of its own
requests through a shared gateway can predict the ids that gateway gives the
next requests of every other tenant, store them first, and the victims'
entries (their audit trail) are then dropped without an error --
``SendAccessLog`` answers OK, the batch RPC counts them as duplicates.
(nbgateway's own gateway draws 65 random bits per id: no guess there.)

Expected: an account-scoped gateway's ids cannot collide with anyone
else's (the proposed fix stores them under the account's prefix); retries
stay idempotent for both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import AccessLogQuery, Account
from tests.management.test_grpc_support import ACCOUNT, DOMAIN, Fixture, Harness, md

EVIL = "acct-evil"


@pytest.fixture
def world(store) -> Iterator[tuple[Harness, Fixture, str]]:
    fx = Fixture(store)
    store.accounts.create(Account(id=EVIL, domain="evil.test"))
    _, evil_token = store.proxies.create_token("evil", account_id=EVIL)
    h = Harness(store, heartbeat_interval=0.2)
    try:
        yield h, fx, evil_token
    finally:
        h.close()


def _log(account: str, log_id: str, path: str) -> pb.AccessLog:
    return pb.AccessLog(log_id=log_id, account_id=account, service_id="svc-1", host=DOMAIN,
                        path=path, method="GET", response_code=200, auth_success=True,
                        source_ip="198.51.100.7", protocol="http")


def _paths(fx: Fixture, account: str) -> list[str]:
    page = fx.store.access_logs.list(account, AccessLogQuery(page=1, page_size=50))
    return sorted(e.path for e in page.data)


def test_a_scoped_gateways_ids_never_swallow_another_accounts_entries(world) -> None:
    h, fx, evil_token = world
    guessed = ["ctq4k1r2c3d4e5f6g7h8", "ctq4k1r2c3d4e5f6g7h9"]
    # the hostile tenant's own gateway stores the predicted ids first
    h.stub.SendAccessLog(pb.SendAccessLogRequest(log=_log(EVIL, guessed[0], "/squat")),
                         metadata=md(evil_token))
    h.stub.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(
        logs=[_log(EVIL, guessed[1], "/squat-batch")]), metadata=md(evil_token))
    # the shared gateway then sends the victim's entries under those ids
    h.stub.SendAccessLog(pb.SendAccessLogRequest(log=_log(ACCOUNT, guessed[0], "/login")),
                         metadata=md(fx.token))
    r = h.stub.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(
        logs=[_log(ACCOUNT, guessed[1], "/admin")]), metadata=md(fx.token))
    assert r.stored == 1  # today: 0, the victim's entry counted as a duplicate
    assert _paths(fx, ACCOUNT) == ["/admin", "/login"]
    assert _paths(fx, EVIL) == ["/squat", "/squat-batch"]
    # retries are still ignored, for both gateways
    r = h.stub.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(
        logs=[_log(ACCOUNT, guessed[1], "/admin")]), metadata=md(fx.token))
    assert r.stored == 0
    r = h.stub.NbgwSendAccessLogBatch(pb.NbgwSendAccessLogBatchRequest(
        logs=[_log(EVIL, guessed[1], "/squat-batch")]), metadata=md(evil_token))
    assert r.stored == 0
    h.stub.SendAccessLog(pb.SendAccessLogRequest(log=_log(EVIL, guessed[0], "/squat")),
                         metadata=md(evil_token))
    assert _paths(fx, EVIL) == ["/squat", "/squat-batch"]
