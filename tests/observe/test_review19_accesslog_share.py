"""review19 F1: every account's access-log entries share one bounded queue
(``max_queue``, 20,000, drop-tail).  While one batch is in flight (management
answers slowly, or retries with backoff) the entries of one account that
serves a flood of requests (its clients, or its admin's own load generator
against its own service) fill the whole queue, and every other account's
entries are dropped: their audit trail has holes they did not cause.  One
account should hold at most a share of the queue, so another account's
entries are still queued and shipped."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from nbgateway.observe.accesslog import AccessLogger, build_entry, new_log_id


class HangingBatchClient:
    """Management whose batch calls are answered only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[Deferred] = []
        self.batches: list[list] = []

    def send_access_log(self, entry):  # pragma: no cover - the batch call is used
        raise AssertionError("batch call expected")

    def send_access_log_batch(self, entries):
        self.batches.append(list(entries))
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


def fields(account: str, log_id: str) -> tuple:
    # HTTP_FIELDS order
    return (1000.0, log_id, account, f"svc-{account}", f"{account}.example", "/", "GET",
            200, 1, "198.51.100.7", "", "", 0, 0, "")


def drain(logger: AccessLogger, client: HangingBatchClient, clock: Clock) -> None:
    for _ in range(1000):
        clock.advance(1.0)
        if not client.pending:
            if logger.pending == 0:
                return
            continue
        d = client.pending.pop(0)
        d.callback(None)
    raise AssertionError("the access log never drained")


def sent_ids(client: HangingBatchClient) -> set[str]:
    return {e.log_id for batch in client.batches for e in batch}


def test_one_accounts_flood_does_not_drop_another_accounts_entries():
    clock = Clock()
    client = HangingBatchClient()
    logger = AccessLogger(client, clock, max_queue=2000, max_batch=100, linger=0.25)
    # a first entry of A starts a batch that management holds for now
    logger.record(fields("A", new_log_id()))
    clock.advance(0.3)
    assert len(client.pending) == 1
    # A's flood meanwhile: far more entries than the queue holds
    for _ in range(10 * logger.max_queue):
        logger.record(fields("A", new_log_id()))
    # B's few requests in the same second
    b_ids = [new_log_id() for _ in range(5)]
    for log_id in b_ids:
        logger.record(fields("B", log_id))
    drain(logger, client, clock)
    shipped = sent_ids(client)
    assert set(b_ids) <= shipped, "B's entries were dropped because A filled the queue"
    assert logger.stats.dropped > 0  # A's excess is still dropped (the queue stays bounded)


def test_a_built_entry_of_another_account_is_not_dropped_either():
    """The L4 relays log built ``AccessLog`` messages (``log``), not tuples."""
    clock = Clock()
    client = HangingBatchClient()
    logger = AccessLogger(client, clock, max_queue=2000, max_batch=100, linger=0.25)
    logger.record(fields("A", new_log_id()))
    clock.advance(0.3)
    for _ in range(3 * logger.max_queue):
        logger.record(fields("A", new_log_id()))
    entry = build_entry(now=1000.0, log_id=new_log_id(), account_id="B", service_id="l4",
                        host="b.example", path="", method="", response_code=0,
                        duration_ms=10, source_ip="198.51.100.8", protocol="tcp")
    logger.log(entry)
    drain(logger, client, clock)
    assert entry.log_id in sent_ids(client)


def test_a_single_account_alone_still_queues_a_share_and_the_queue_stays_bounded():
    clock = Clock()
    client = HangingBatchClient()
    logger = AccessLogger(client, clock, max_queue=2000, max_batch=100, linger=0.25)
    logger.record(fields("A", new_log_id()))
    clock.advance(0.3)
    for _ in range(3 * logger.max_queue):
        logger.record(fields("A", new_log_id()))
    assert 0 < len(logger._queue) <= logger.max_queue
    drain(logger, client, clock)
    assert logger.pending == 0
