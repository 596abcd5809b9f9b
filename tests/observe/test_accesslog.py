"""The asynchronous, bounded access-log pipeline and entry field rules."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from nbgateway.observe.accesslog import AccessLogger, build_entry, new_log_id, should_log


class Client:
    def __init__(self, mode="ok"):
        self.mode = mode
        self.sent = []
        self.pending: list[Deferred] = []

    def send_access_log(self, entry):
        self.sent.append(entry)
        if self.mode == "ok":
            return succeed(None)
        if self.mode == "raise":
            raise RuntimeError("broken")
        d = Deferred()
        self.pending.append(d)
        return d


def entry(**kw):
    args = dict(now=1000.5, log_id=new_log_id(), account_id="a", service_id="s",
                host="app.example:8443", path="/x", method="GET", response_code=200,
                duration_ms=3, source_ip="100.64.0.10")
    args.update(kw)
    return build_entry(**args)


def test_private_success_fields_b63():
    e = entry(auth_mechanism="oidc", user_id="u1")
    assert e.host == "app.example" and e.protocol == "http"
    assert e.auth_success and e.user_id == "u1" and e.auth_mechanism == "oidc"
    assert e.timestamp.seconds == 1000 and len(e.log_id) == 20


def test_target_used_is_named():
    assert entry(target="http://10.0.0.6:8080").nbgw_target == "http://10.0.0.6:8080"
    assert entry().nbgw_target == ""


def test_private_denial_fields_b64():
    e = entry(response_code=403, user_id="u1")
    assert not e.auth_success and e.user_id == "" and e.auth_mechanism == ""
    assert not entry(response_code=401).auth_success
    assert entry(response_code=0).response_code == 200


def test_l4_entries_never_auth_success():
    assert not entry(protocol="tcp").auth_success


def test_internal_paths_not_logged_b65():
    assert not should_log("/__netbird__/assets/x.js")
    assert should_log("/api")


class BatchClient(Client):
    """A client with the batch extension; ``mode`` "hang" holds each batch."""

    def __init__(self, mode="ok"):
        super().__init__(mode)
        self.batches: list[list] = []

    def send_access_log_batch(self, entries):
        self.batches.append(list(entries))
        if self.mode == "ok":
            return succeed(len(entries))
        if self.mode == "raise":
            raise RuntimeError("broken")
        d = Deferred()
        self.pending.append(d)
        return d


def test_entries_linger_and_go_out_as_one_batch():
    clock = Clock()
    client = BatchClient()
    logger = AccessLogger(client, clock, linger=0.05)
    for _ in range(10):
        logger.log(entry())  # no call, no timer per entry
    assert client.batches == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0.05)
    assert [len(b) for b in client.batches] == [10] and client.sent == []
    assert logger.stats.sent == 10 and logger.pending == 0 and logger.stats.batches == 1


def test_full_batch_goes_at_once_and_one_batch_is_in_flight():
    clock = Clock()
    client = BatchClient(mode="hang")
    logger = AccessLogger(client, clock, max_batch=4, linger=10)
    for _ in range(11):
        logger.log(entry())
    assert [len(b) for b in client.batches] == [4]  # the rest waits for the answer
    client.pending.pop(0).callback(4)
    assert [len(b) for b in client.batches] == [4, 4]
    client.pending.pop(0).callback(4)
    assert [len(b) for b in client.batches] == [4, 4]  # 3 left: they linger
    clock.advance(10)
    assert [len(b) for b in client.batches] == [4, 4, 3]
    client.pending.pop(0).callback(3)
    assert logger.stats.sent == 11 and logger.pending == 0


def test_slow_management_never_blocks_and_queue_is_bounded():
    clock = Clock()
    client = BatchClient(mode="hang")
    logger = AccessLogger(client, clock, max_queue=100, max_batch=10, linger=0,
                          send_timeout=10)
    for _ in range(1000):
        logger.log(entry())  # returns immediately every time
    assert len(client.pending) == 1  # one batch (the first entry) in flight
    # one account: at most half the queue (past its share only while the
    # queue is under half full; review19 F1)
    half = logger.max_queue // 2
    assert logger.account_share < half and logger.pending == half + 1
    assert logger.stats.dropped == 999 - half and logger.stats.queued == half + 1


def test_failed_batch_is_retried_with_backoff_then_dropped():
    clock = Clock()
    client = BatchClient(mode="raise")
    logger = AccessLogger(client, clock, linger=0, max_attempts=3, backoff_base=1.0)
    logger.log(entry())
    assert len(client.batches) == 1 and logger.stats.retries == 1
    clock.advance(0.9)
    assert len(client.batches) == 1
    clock.advance(0.1)  # 1 s, then 2 s
    assert len(client.batches) == 2
    clock.advance(2)
    assert len(client.batches) == 3
    assert logger.stats.dropped == 1 and logger.pending == 0 and logger.stats.retries == 2
    # the same entry (same log_id) every time: the idempotency key for management
    assert {b[0].log_id for b in client.batches} == {client.batches[0][0].log_id}


def test_permanent_refusal_is_not_retried():
    from nbgateway import errors

    clock = Clock()
    client = BatchClient(mode="hang")
    logger = AccessLogger(client, clock, linger=0)
    logger.log(entry())
    client.pending.pop().errback(errors.ManagementInvalidArgumentError("bad", code="X"))
    clock.advance(100)
    assert len(client.batches) == 1 and logger.stats.failed == 1 and logger.pending == 0


def test_client_without_batch_call_sends_per_entry():
    client = Client()
    logger = AccessLogger(client, Clock(), linger=0)
    for _ in range(10):
        logger.log(entry())
    assert len(client.sent) == 10 and logger.stats.sent == 10 and logger.pending == 0


def test_unimplemented_switches_to_per_entry_and_retries_only_failures():
    from nbgateway import errors

    class NoBatch(BatchClient):
        def send_access_log_batch(self, entries):
            super().send_access_log_batch(entries)
            d = Deferred()
            d.errback(errors.ManagementUnimplementedError("", code="UNIMPLEMENTED"))
            return d

    clock = Clock()
    client = NoBatch()
    calls = {"n": 0}
    real = client.send_access_log

    def flaky(e):
        calls["n"] += 1
        if calls["n"] == 2:
            d = Deferred()
            d.errback(errors.ManagementUnavailableError("down"))
            return d
        return real(e)

    client.send_access_log = flaky
    logger = AccessLogger(client, clock, linger=0, backoff_base=1.0)
    a, b, c = entry(), entry(), entry()
    logger.log(a)
    assert not logger.batch_supported and len(client.sent) == 1
    logger.log(b)  # its call fails: retried alone after the backoff
    logger.log(c)
    clock.advance(1)
    assert [e.log_id for e in client.sent] == [a.log_id, b.log_id, c.log_id]
    assert len(client.batches) == 1  # never asked again
    assert logger.stats.sent == 3 and logger.pending == 0


def test_stop_flushes_within_bound():
    clock = Clock()
    client = BatchClient(mode="hang")
    logger = AccessLogger(client, clock, max_batch=1, linger=0)
    for _ in range(3):
        logger.log(entry())
    done = []
    logger.stop(timeout=5).addCallback(done.append)
    client.pending[0].callback(1)
    assert done == []
    clock.advance(5)
    assert done == [None]
    logger.log(entry())  # after stop: dropped
    assert logger.stats.dropped == 3  # one unanswered in flight, one queued, one late


def test_stop_sends_lingering_entries_at_once():
    clock = Clock()
    client = BatchClient()
    logger = AccessLogger(client, clock, linger=30)
    logger.log(entry())
    done = []
    logger.stop(timeout=5).addCallback(done.append)
    assert done == [None] and logger.stats.sent == 1


def test_stop_when_idle():
    logger = AccessLogger(Client(), Clock())
    done = []
    logger.stop().addCallback(done.append)
    assert done == [None]


def test_recorded_fields_become_the_same_entries_when_the_batch_forms():
    """record() queues one tuple per request; the AccessLog message is built
    when the batch is formed and equals build_entry of the same fields."""
    from nbgateway.observe.accesslog import HTTP_FIELDS

    clock = Clock()
    client = BatchClient()
    logger = AccessLogger(client, clock, linger=0.05)
    rows = []
    for i in range(5):
        fields = (1000.25 + i, new_log_id(), "a", "s", "app.example:8443", f"/p{i}", "GET",
                  [200, 403, 0, 502, 200][i], i, "100.64.0.10", ["", "oidc"][i % 2],
                  "u1", i * 10, i * 100, ["", "http://10.0.0.6:8080"][i % 2])
        assert len(fields) == len(HTTP_FIELDS)
        rows.append(fields)
        logger.record(fields)
    assert all(type(x) is tuple for x in logger._queue)  # nothing built yet
    logger.log(entry(path="/built"))  # built entries still pass as they are
    clock.advance(0.05)
    [batch] = client.batches
    want = [build_entry(**dict(zip(HTTP_FIELDS, f, strict=True))) for f in rows]
    assert batch[:5] == want and batch[5].path == "/built"
    assert batch[1].auth_mechanism == "oidc" and batch[1].user_id == "u1"
    assert not batch[1].auth_success and batch[2].response_code == 200
    assert logger.stats.sent == 6 and logger.stats.dropped == 0


def test_a_record_that_cannot_be_built_is_dropped_and_counted_not_the_batch():
    clock = Clock()
    client = BatchClient()
    logger = AccessLogger(client, clock, linger=0)
    logger.record(("not", "enough", "fields"))
    assert client.batches == [] and logger.stats.dropped == 1 and logger.pending == 0
    good = (1.0, new_log_id(), "a", "s", "h", "/", "GET", 200, 1, "100.64.0.10", "", "",
            0, 5, "")
    logger.record(good)
    assert [len(b) for b in client.batches] == [1] and logger.stats.sent == 1
