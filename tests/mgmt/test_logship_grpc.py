"""Access-log shipping through the real gRPC client to real grpcio servers.

* a server with the NbgwSendAccessLogBatch extension: entries arrive in
  batches, none lost; answers lost after storing (the server stores, then
  fails the call) are retried and the log_id keeps them single;
* a server implementing only SendAccessLog (the generated base answers
  UNIMPLEMENTED for the extension): the shipper falls back to one call per
  entry, remembers that, and still delivers every entry exactly once.
"""

from __future__ import annotations

import threading

import grpc
import pytest
import pytest_twisted
from twisted.internet import reactor

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.client import GrpcManagementClient
from nbgateway.mgmt.logship import LogShipper
from nbgateway.mgmt.reconnect import Backoff
from tests.mgmt.servicer import TOKEN, CannedProxyService, Server
from tests.mgmt.test_client_grpc import wait_for


class BatchService(CannedProxyService):
    """Stores by log_id (idempotent, as our management); can fail calls after
    storing them (a lost answer) or before (management down)."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, pb.AccessLog] = {}
        self.received = 0
        self.batch_calls = 0
        self.single_calls = 0
        self.fail_after_store = 0
        self.fail_before_store = 0
        self.mutex = threading.Lock()

    def _store(self, logs, context) -> int:
        with self.mutex:
            if self.fail_before_store:
                self.fail_before_store -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "try later")
            new = 0
            for e in logs:
                self.received += 1
                if e.log_id not in self.stored:
                    self.stored[e.log_id] = e
                    new += 1
            if self.fail_after_store:
                self.fail_after_store -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost")
            return new

    def NbgwSendAccessLogBatch(self, request, context):
        self._check_token(context)
        with self.mutex:
            self.batch_calls += 1
        return pb.NbgwSendAccessLogBatchResponse(stored=self._store(request.logs, context))

    def SendAccessLog(self, request, context):
        self._check_token(context)
        with self.mutex:
            self.single_calls += 1
        self._store([request.log], context)
        return pb.SendAccessLogResponse()


class OnlySingle(CannedProxyService):
    """A management without the extension: only SendAccessLog."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.mutex = threading.Lock()

    def SendAccessLog(self, request, context):
        self._check_token(context)
        with self.mutex:
            self.ids.append(request.log.log_id)
        return pb.SendAccessLogResponse()


def _entries(n: int, prefix: str = "e") -> list[pb.AccessLog]:
    return [pb.AccessLog(log_id=f"{prefix}-{i}", account_id="acc1", path=f"/{i}")
            for i in range(n)]


@pytest.fixture
def running():
    cleanups: list = []

    def start(servicer):
        server = Server(servicer)
        cleanups.append(server.stop)
        client = GrpcManagementClient(reactor, server.url, TOKEN, address="cluster.example",
                                      private=True, backoff=Backoff(initial=0.02,
                                                                    max_interval=0.1))
        client.startService()
        cleanups.append(client.stopService)
        return client

    yield start
    for c in reversed(cleanups):
        c()


@pytest_twisted.ensureDeferred
async def test_batches_deliver_every_entry_once(running) -> None:
    svc = BatchService()
    shipper = LogShipper(running(svc), reactor, max_batch=100, linger=0.02)
    for e in _entries(1000):
        shipper.submit(e)
    await wait_for(lambda: shipper.pending == 0 and shipper.stats.sent == 1000, "all sent")
    assert set(svc.stored) == {f"e-{i}" for i in range(1000)} and svc.received == 1000
    assert svc.single_calls == 0 and 10 <= svc.batch_calls <= 20  # batches, not 1000 calls
    assert shipper.stats.dropped == 0 and shipper.batch_supported


@pytest_twisted.ensureDeferred
async def test_lost_answers_are_retried_without_duplicates(running) -> None:
    svc = BatchService()
    svc.fail_after_store = 2  # stored, but the gateway sees UNAVAILABLE twice
    svc.fail_before_store = 1
    shipper = LogShipper(running(svc), reactor, max_batch=50, linger=0.01,
                         backoff_base=0.02, max_attempts=6)
    for e in _entries(200):
        shipper.submit(e)
    await wait_for(lambda: shipper.pending == 0 and shipper.stats.sent == 200, "all sent")
    assert len(svc.stored) == 200
    assert svc.received > 200  # some entries really were sent twice ...
    assert shipper.stats.retries == 3 and shipper.stats.dropped == 0  # ... and stored once


@pytest_twisted.ensureDeferred
async def test_unimplemented_falls_back_to_one_call_per_entry(running) -> None:
    svc = OnlySingle()
    shipper = LogShipper(running(svc), reactor, max_batch=40, linger=0.01)
    for e in _entries(120):
        shipper.submit(e)
    await wait_for(lambda: shipper.pending == 0 and shipper.stats.sent == 120, "all sent")
    assert not shipper.batch_supported  # remembered: later batches go per entry at once
    for e in _entries(30, prefix="late"):
        shipper.submit(e)
    await wait_for(lambda: shipper.stats.sent == 150, "late ones sent")
    assert sorted(svc.ids) == sorted([f"e-{i}" for i in range(120)]
                                     + [f"late-{i}" for i in range(30)])
    assert shipper.stats.dropped == shipper.stats.failed == 0


@pytest_twisted.ensureDeferred
async def test_unreachable_management_drops_after_bounded_retries(running) -> None:
    svc = BatchService()
    svc.fail_before_store = 10**6
    shipper = LogShipper(running(svc), reactor, max_batch=10, linger=0.01,
                         backoff_base=0.01, max_attempts=3)
    for e in _entries(25):
        shipper.submit(e)
    await wait_for(lambda: shipper.stats.dropped == 25, "dropped after retries")
    assert shipper.pending == 0 and shipper.stats.sent == 0 and svc.stored == {}
    assert shipper.stats.retries == 2 * 3  # three batches, two retries each
