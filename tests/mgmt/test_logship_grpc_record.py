"""The gateway's access log (AccessLogger.record: entries built in place, in
slices per reactor turn) through the real gRPC client to a real grpcio server:
every recorded request arrives once, equal to build_entry of its fields, also
when answers are lost and the same request is sent again."""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet import reactor

from nbgateway.observe.accesslog import HTTP_FIELDS, AccessLogger, build_entry, new_log_id
from tests.mgmt.test_client_grpc import wait_for
from tests.mgmt.test_logship_grpc import BatchService, OnlySingle, running  # noqa: F401


def _rows(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    return [(1_700_000_000 + i * 0.001, new_log_id(), "acc1", f"svc{i % 3}",
             rng.choice(("app.example", "app.example:8443")), f"/p/{i}?q={rng.randrange(99)}",
             rng.choice(("GET", "POST")), rng.choice((200, 0, 403, 502)), i % 7,
             "100.64.0.10", rng.choice(("", "oidc")), "u1", i % 5, 100 + i, "")
            for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_recorded_requests_arrive_once_as_built(running) -> None:  # noqa: F811
    svc = BatchService()
    svc.fail_after_store = 1  # one answer lost: that request is sent again
    logger = AccessLogger(running(svc), reactor, max_batch=120, linger=0.01, form_slice=16,
                          backoff_base=0.02)
    rows = _rows(500, 1)
    for f in rows:
        logger.record(f)
    await wait_for(lambda: logger.pending == 0 and logger.stats.sent == 500, "all sent")
    want = {f[1]: build_entry(**dict(zip(HTTP_FIELDS, f, strict=True))) for f in rows}
    assert svc.stored == want and svc.received > 500 and svc.batch_calls >= 5
    assert logger.stats.dropped == 0 and logger.stats.retries == 1


@pytest_twisted.ensureDeferred
async def test_recorded_requests_fall_back_to_one_call_each(running) -> None:  # noqa: F811
    svc = OnlySingle()
    logger = AccessLogger(running(svc), reactor, max_batch=40, linger=0.01, form_slice=16)
    rows = _rows(90, 2)
    for f in rows:
        logger.record(f)
    await wait_for(lambda: logger.pending == 0 and logger.stats.sent == 90, "all sent")
    assert sorted(svc.ids) == sorted(f[1] for f in rows) and not logger.batch_supported


@pytest_twisted.ensureDeferred
async def test_the_built_request_is_sent_as_it_is(running) -> None:  # noqa: F811
    """The real client has send_access_log_batch_request: the logger hands it
    the request its entries were built in (no copy into a new request), and
    the management stores what that request held."""
    svc = BatchService()
    client = running(svc)
    sent: list = []
    real = client.send_access_log_batch_request

    def spy(req):
        sent.append(req)
        return real(req)

    client.send_access_log_batch_request = spy
    copies: list = []
    client.send_access_log_batch = lambda entries: copies.append(entries)  # must not be used
    logger = AccessLogger(client, reactor, max_batch=50, linger=0.01, form_slice=16)
    rows = _rows(120, 2)
    for f in rows:
        logger.record(f)
    await wait_for(lambda: logger.pending == 0 and logger.stats.sent == 120, "all sent")
    assert copies == [] and sent
    assert sorted(e.log_id for req in sent for e in req.logs) == sorted(f[1] for f in rows)
    assert set(svc.stored) == {f[1] for f in rows}
