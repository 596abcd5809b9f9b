"""Access-log batches formed in place and in bounded slices per reactor turn
(nbgateway.mgmt.logship.LogShipper._form, AccessLogger.new_batch/add_to_batch/
batch_call): the wire bytes equal protobuf's own encoding of build_entry's
entries, no turn builds more than ``form_slice`` entries, nothing is lost or
sent twice, and a client that takes the built request gets it as it is."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.observe.accesslog import (
    ACCESS_LOG_LINGER,
    HTTP_FIELDS,
    AccessLogger,
    build_entry,
    new_log_id,
)


def fields(rng: random.Random, i: int) -> tuple:
    auth, user = rng.choice((("", ""), ("oidc", "u1"), ("token", "token:t1"), ("mtls", "cn"),
                             ("password", "x")))
    return (1_700_000_000 + rng.random() * 1e6, new_log_id(), rng.choice(("a", "b")),
            f"s{rng.randrange(3)}", rng.choice(("app.example", "app.example:8443", "x.test")),
            rng.choice(("/", f"/p/{i}?q={rng.randrange(1000)}",
                        "/ünï/" + "z" * rng.randrange(300))),
            rng.choice(("GET", "POST", "DELETE")), rng.choice((200, 0, 301, 401, 403, 502)),
            rng.choice((0, 1, 12345)), rng.choice(("100.64.0.10", "fd00::1")), auth, user,
            rng.choice((0, 1, 1 << 40)), rng.choice((0, 7, 1 << 33)),
            rng.choice(("", "http://10.0.0.6:8080", "https://u.example:443")))


def want(rows: list[tuple]) -> list[pb.AccessLog]:
    return [build_entry(**dict(zip(HTTP_FIELDS, f, strict=True))) for f in rows]


class BatchClient:
    """Records every batch call; answers at once, or holds it (``hang``)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.batches: list[list[pb.AccessLog]] = []
        self.pending: list[Deferred] = []
        self.sent: list[pb.AccessLog] = []

    def _answer(self, n: int) -> Deferred:
        if not self.hang:
            return succeed(n)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def send_access_log_batch(self, entries):
        self.batches.append([pb.AccessLog.FromString(e.SerializeToString()) for e in entries])
        return self._answer(len(self.batches[-1]))

    def send_access_log(self, entry):
        self.sent.append(entry)
        return succeed(None)


class RequestClient(BatchClient):
    """A client that takes the built request (no copy of its entries)."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__(hang)
        self.requests: list[pb.NbgwSendAccessLogBatchRequest] = []

    def send_access_log_batch_request(self, req):
        self.requests.append(req)
        self.batches.append(list(pb.NbgwSendAccessLogBatchRequest.FromString(
            req.SerializeToString()).logs))
        return self._answer(len(req.logs))


class TurnClock(Clock):
    """A Clock whose ``advance`` is one reactor turn: like the reactor, a call
    scheduled while the turn runs (``callLater(0)``) waits for the next turn
    (task.Clock would run it in the same ``advance``)."""

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class Counting(AccessLogger):
    """Counts the entries built (per reactor turn: a TurnClock ``advance``)."""

    built = 0

    def add_to_batch(self, batch, item):
        self.built += 1
        super().add_to_batch(batch, item)


def test_batch_wire_bytes_equal_protobufs_own_encoding_of_the_entries():
    rng = random.Random(20)
    clock = Clock()
    client = RequestClient()
    logger = AccessLogger(client, clock, linger=0.05, max_batch=1000, form_slice=1000)
    rows = [fields(rng, i) for i in range(300)]
    for f in rows:
        logger.record(f)
    extra = build_entry(now=5.5, log_id=new_log_id(), account_id="a", service_id="s",
                        host="h", path="/l4", method="", response_code=0, duration_ms=9,
                        source_ip="100.64.0.7", protocol="tcp", metadata={"k": "v"})
    logger.log(extra)  # a built entry (L4) goes into the same request
    clock.advance(0.05)
    [req] = client.requests
    expect = pb.NbgwSendAccessLogBatchRequest(logs=[*want(rows), extra])
    assert req.SerializeToString(deterministic=True) == expect.SerializeToString(
        deterministic=True)
    assert pb.NbgwSendAccessLogBatchRequest.FromString(req.SerializeToString()) == expect
    # a repeated message field is length-delimited records: the request's bytes
    # are each entry's own encoding behind its tag and length
    body = b"".join(b"\x0a" + _varint(len(b)) + b
                    for b in (e.SerializeToString() for e in expect.logs))
    assert req.SerializeToString() == body
    assert logger.stats.sent == 301 and logger.stats.dropped == 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_no_reactor_turn_builds_more_than_form_slice_entries():
    rng = random.Random(1)
    clock = TurnClock()
    client = BatchClient()
    logger = Counting(client, clock, linger=0.05, max_batch=1000, form_slice=16)
    rows = [fields(rng, i) for i in range(100)]
    for f in rows:
        logger.record(f)
    assert logger.built == 0  # record() only queues
    per_turn = []
    clock.advance(0.05)
    while True:
        per_turn.append(logger.built)
        logger.built = 0
        if client.batches:
            break
        clock.advance(0)
    assert per_turn == [16] * 6 + [4]  # 100 entries, 16 per turn, sent with the last
    [batch] = client.batches
    assert batch == want(rows) and logger.pending == 0 and logger.stats.sent == 100


def test_entries_recorded_while_a_batch_forms_are_sent_once_in_the_next():
    rng = random.Random(2)
    clock = TurnClock()
    client = BatchClient(hang=True)
    logger = AccessLogger(client, clock, linger=0.01, max_batch=50, form_slice=8)
    rows = []
    for _turn in range(200):
        for _ in range(rng.randrange(4)):
            rows.append(fields(rng, len(rows)))
            logger.record(rows[-1])
        clock.advance(rng.choice((0, 0, 0.002, 0.01)))
        if client.pending and rng.random() < 0.3:
            client.pending.pop(0).callback(None)
    for _ in range(1000):
        if logger.pending == 0 and not client.pending:
            break
        while client.pending:
            client.pending.pop(0).callback(None)
        clock.advance(0.01)
    sent = [e.log_id for b in client.batches for e in b]
    assert sorted(sent) == sorted(f[1] for f in rows)  # each exactly once
    assert all(len(b) <= 50 for b in client.batches)
    assert logger.stats.sent == len(rows) == logger.stats.queued and logger.stats.dropped == 0


def test_a_bad_record_leaves_no_hole_in_the_request_being_built():
    rng = random.Random(3)
    clock = Clock()
    client = RequestClient()
    logger = AccessLogger(client, clock, linger=0.01, form_slice=4)
    good = [fields(rng, i) for i in range(6)]
    for f in good[:3]:
        logger.record(f)
    logger.record(("not", "enough"))
    logger.record((*good[3][:9], object(), *good[3][10:]))  # a source_ip protobuf refuses
    for f in good[3:]:
        logger.record(f)
    clock.advance(0.01)
    clock.advance(0)
    clock.advance(0)
    [req] = client.requests
    assert list(req.logs) == want(good)
    assert logger.stats.dropped == 2 and logger.stats.sent == 6 and logger.pending == 0


def test_the_built_request_is_sent_as_it_is_and_again_on_retry():
    clock = Clock()
    client = RequestClient(hang=True)
    logger = AccessLogger(client, clock, linger=0, backoff_base=1.0)
    rows = [fields(random.Random(4), 0)]
    logger.record(rows[0])
    [req] = client.requests
    client.pending.pop().errback(errors.ManagementUnavailableError("down"))
    clock.advance(1)
    assert client.requests == [req, req] and client.requests[1] is req  # same entries, ids
    client.pending.pop().callback(1)
    assert logger.stats.sent == 1 and logger.stats.retries == 1 and logger.pending == 0


def test_unimplemented_on_the_request_path_falls_back_to_one_call_per_entry():
    class Old(RequestClient):
        def send_access_log_batch_request(self, req):
            super().send_access_log_batch_request(req)
            d: Deferred = Deferred()
            d.errback(errors.ManagementUnimplementedError("", code="UNIMPLEMENTED"))
            return d

    clock = Clock()
    client = Old()
    logger = AccessLogger(client, clock, linger=0.01)
    rows = [fields(random.Random(5), i) for i in range(5)]
    for f in rows:
        logger.record(f)
    clock.advance(0.01)
    assert not logger.batch_supported and client.sent == want(rows)
    assert logger.stats.sent == 5 and logger.pending == 0


def test_stop_timeout_while_a_batch_forms_counts_each_entry_once():
    rng = random.Random(6)
    clock = TurnClock()
    client = BatchClient()
    logger = AccessLogger(client, clock, linger=10, max_batch=1000, form_slice=10)
    for i in range(35):
        logger.record(fields(rng, i))
    done = []
    logger.stop(timeout=0).addCallback(done.append)  # forms 10 at once
    assert len(logger._batch) == 10 and done == []
    clock.advance(0)  # 10 more, then the timeout gives up
    assert done == [None]
    clock.advance(1)
    assert client.batches == [] and logger.pending == 0
    assert logger.stats.dropped == 35 and logger.stats.sent == 0


def test_the_gateways_entries_linger_a_quarter_second_a_few_rpcs_per_second():
    """At 3,000 requests/s for 2 s: one batch call per 0.25 s (8), not one per
    0.05 s (40): each call is ~0.5 ms of GIL-holding grpc.aio work."""
    rng = random.Random(7)
    clock = TurnClock()
    client = BatchClient()
    logger = AccessLogger(client, clock)
    assert logger.linger == ACCESS_LOG_LINGER == 0.25 and logger.max_batch == 1000
    rows = []
    for _ in range(2000):  # 1 ms turns, 3 requests each
        for _ in range(3):
            rows.append(fields(rng, len(rows)))
            logger.record(rows[-1])
        clock.advance(0.001)
    for _ in range(100):
        clock.advance(0.01)
    assert len(client.batches) <= 9 and logger.stats.batches == len(client.batches)
    assert sorted(e.log_id for b in client.batches for e in b) == sorted(f[1] for f in rows)


def test_record_is_submit_itself_one_call_per_request():
    assert AccessLogger.record is AccessLogger.submit


def test_the_batch_loop_builds_what_fill_entry_builds_and_drops_bad_items():
    """AccessLogger.take (fill_entry inline, one loop per slice) against
    fill_entry and build_entry, over template hits and misses, with built
    entries (log()) and records that cannot be built in between."""
    from collections import deque

    from nbgateway.observe.accesslog import fill_entry

    rng = random.Random(11)
    logger = AccessLogger(BatchClient(), Clock())
    items: deque = deque()
    good: list = []
    for i in range(400):
        k = rng.randrange(20)
        if k == 0:
            items.append(("short",))
        elif k == 1:
            items.append((*fields(rng, i)[:9], 5, *fields(rng, i)[10:]))  # an int source_ip
        elif k == 2:
            e = build_entry(**dict(zip(HTTP_FIELDS, fields(rng, i), strict=True)))
            items.append(e)
            good.append(e)
        else:
            f = fields(rng, i)
            items.append(f)
            one = pb.AccessLog()
            fill_entry(one, f)
            assert one == want([f])[0]
            good.append(one)
    batch = logger.new_batch()
    bad = 0
    while items:
        bad += logger.take(batch, items, min(64, len(items)))
    assert list(batch) == good and bad == 400 - len(good) > 0
    assert pb.NbgwSendAccessLogBatchRequest(logs=good).SerializeToString() == (
        logger._request.SerializeToString())


def test_no_entry_waits_without_a_timer_or_a_batch_whatever_happens():
    """The shipper acts on a record only when the queue reaches ``_kick``:
    after any sequence of records, answers, failures, retries and turns, a
    queued entry always has a linger (or retry) timer or a batch in flight
    ahead of it, and every entry is sent exactly once."""
    for seed in range(30):
        rng = random.Random(100 + seed)
        clock = TurnClock()
        client = BatchClient(hang=True)
        logger = AccessLogger(client, clock, linger=rng.choice((0, 0.01, 0.05)),
                              max_batch=rng.choice((1, 5, 20)), form_slice=rng.choice((1, 3, 8)),
                              max_attempts=50, backoff_base=0.01, backoff_max=0.02)
        rows = []
        for _turn in range(150):
            for _ in range(rng.choice((0, 0, 1, 3, 25))):
                rows.append(fields(rng, len(rows)))
                logger.record(rows[-1])
            if client.pending and rng.random() < 0.4:
                d = client.pending.pop(0)
                if rng.random() < 0.3:
                    client.batches.pop(len(client.batches) - 1 - len(client.pending))
                    d.errback(errors.ManagementUnavailableError("down"))
                else:
                    d.callback(None)
            clock.advance(rng.choice((0, 0, 0.005, 0.02)))
            if logger._queue and not logger._inflight and not logger._batch:
                assert logger._timer is not None, (seed, _turn)
        for _ in range(2000):
            if logger.pending == 0 and not client.pending:
                break
            while client.pending:
                client.pending.pop(0).callback(None)
            clock.advance(0.02)
        sent = [e.log_id for b in client.batches for e in b]
        assert sorted(sent) == sorted(f[1] for f in rows), seed  # each exactly once
        assert logger.stats.sent == len(rows) == logger.stats.queued, seed
        assert logger.stats.dropped == 0 and logger.pending == 0, seed


def test_the_batch_loop_keeps_build_entrys_time_within_and_across_seconds(monkeypatch):
    """take's timestamps: times within a second, across seconds, going
    back, on a whole second (nanoseconds 0), before 1970, and more template
    keys than the templates' bound give build_entry's timestamps."""
    from collections import deque

    from nbgateway.observe import accesslog

    monkeypatch.setattr(accesslog, "_TEMPLATES_MAX", 4)
    rng = random.Random(12)
    t0 = 1_765_000_000.0
    times = ([t0 + k * 0.0037 for k in range(300)]  # 1.1 s in small steps
             + [t0 + 0.5, t0 - 3.25, t0, t0 + 1.0, t0 + 1.0, 0.0, -1.5, -0.999999,
                t0 + 0.999999999, t0 + 1 - 1e-7, 1e-9])
    rows = []
    for i, now in enumerate(times):
        f = list(fields(rng, i))
        f[0] = now
        f[3] = f"s{i % 7}"  # more template keys than the bound
        rows.append(tuple(f))
    logger = AccessLogger(BatchClient(), Clock())
    batch = logger.new_batch()
    queue = deque(rows)
    while queue:
        assert logger.take(batch, queue, min(50, len(queue))) == 0
    assert list(batch) == want(rows)
    assert [(e.timestamp.seconds, e.timestamp.nanos) for e in batch] == [
        divmod(int(now * 1e9), 1_000_000_000) for now in times]
