"""StatusReporting: per-service order, latest wins, bounded in flight, retries.

The last test is the bring-up stall of issue 18 seen from the gateway: a
report that failed transiently (deadline exceeded while management was busy)
was dropped, so the service stayed ``pending`` in management for good.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from nbgateway import errors
from nbgateway.mgmt.statusreport import StatusReporting

ACTIVE, PENDING, ERROR = 1, 0, 5


class Client:
    """A management client whose calls the test answers one by one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, dict[str, Any], Deferred[None]]] = []
        self.other = "passed through"

    def send_status_update(self, service_id: str, account_id: str, status: int,
                           **kw: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append((service_id, account_id, status, kw, d))
        return d

    def open(self) -> list[tuple[str, int]]:
        return [(c[0], c[2]) for c in self.calls if not c[4].called]

    def answer(self, i: int, error: Exception | None = None) -> None:
        d = self.calls[i][4]
        if error is None:
            d.callback(None)
        else:
            d.errback(error)


def reporter(**kw: Any) -> tuple[StatusReporting, Client, task.Clock]:
    client, clock = Client(), task.Clock()
    return StatusReporting(client, clock, **kw), client, clock


def results(ds: list[Deferred[None]]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_other_attributes_pass_through() -> None:
    r, _client, _clock = reporter()
    assert r.other == "passed through"


def test_one_call_per_service_at_a_time_and_latest_wins() -> None:
    r, client, _clock = reporter()
    d1 = r.send_status_update("s1", "a1", PENDING)
    d2 = r.send_status_update("s1", "a1", ERROR, error_message="x")
    d3 = r.send_status_update("s1", "a1", ACTIVE, inbound_listener=("100.64.0.2", 443, 80))
    # only the first is on the wire; the second was replaced by the third
    assert client.open() == [("s1", PENDING)]
    got = results([d1, d2, d3])
    assert got == [None]  # d2 fired at once: superseded
    client.answer(0)
    assert got == [None, None]
    assert client.open() == [("s1", ACTIVE)]
    assert client.calls[1][3] == {"inbound_listener": ("100.64.0.2", 443, 80)}
    client.answer(1)
    assert got == [None, None, None]
    assert r.superseded == 1 and r.sent == 2 and r._entries == {}


def test_services_are_independent_and_in_flight_is_bounded() -> None:
    r, client, _clock = reporter(max_in_flight=3)
    ds = [r.send_status_update(f"s{i}", "a1", ACTIVE) for i in range(10)]
    assert [c[0] for c in client.calls] == ["s0", "s1", "s2"]
    assert r.in_flight == 3 and r.waiting() == 7
    client.answer(1)
    assert [c[0] for c in client.calls] == ["s0", "s1", "s2", "s3"]  # one out, one in
    while any(not c[4].called for c in client.calls):
        assert len(client.open()) <= 3
        for i in range(len(client.calls)):
            if not client.calls[i][4].called:
                client.answer(i)
    assert sorted(c[0] for c in client.calls) == sorted(f"s{i}" for i in range(10))
    assert results(ds) == [None] * 10
    assert r.in_flight == 0 and r._entries == {}


def test_transient_failure_is_retried_with_backoff() -> None:
    r, client, clock = reporter(retry_initial=1.0, retry_max=4.0)
    d = r.send_status_update("s1", "a1", ACTIVE)
    got = results([d])
    client.answer(0, errors.ManagementTimeoutError("deadline exceeded"))
    # the caller sees its first attempt's outcome; the retry carries on
    assert len(got) == 1 and got[0].check(errors.ManagementTimeoutError)
    assert len(client.calls) == 1
    clock.advance(1.0)
    assert client.open() == [("s1", ACTIVE)]
    client.answer(1, errors.ManagementUnavailableError("not running"))
    clock.advance(1.9)
    assert len(client.calls) == 2  # second delay is 2 s
    clock.advance(0.1)
    assert client.open() == [("s1", ACTIVE)]
    client.answer(2, errors.ManagementRateLimitedError("busy"))
    clock.advance(4.0)
    assert len(client.calls) == 4  # capped at retry_max
    client.answer(3)
    assert r.retried == 3 and r._entries == {} and clock.getDelayedCalls() == []


def test_final_failures_are_not_retried() -> None:
    r, client, clock = reporter()
    d = r.send_status_update("gone", "a1", ACTIVE)
    got = results([d])
    client.answer(0, errors.ManagementNotFoundError("service gone not found"))
    assert got[0].check(errors.ManagementNotFoundError)
    clock.advance(100)
    assert len(client.calls) == 1 and r.dropped == 1 and r._entries == {}


def test_attempts_are_bounded() -> None:
    r, client, clock = reporter(max_attempts=3, retry_initial=1.0)
    r.send_status_update("s1", "a1", ACTIVE)
    for i in range(3):
        client.answer(i, errors.ManagementUnavailableError("down"))
        clock.advance(10)
    assert len(client.calls) == 3 and r.dropped == 1 and r._entries == {}


def test_newer_report_replaces_a_failed_one_and_skips_its_backoff() -> None:
    r, client, clock = reporter(retry_initial=10.0)
    r.send_status_update("s1", "a1", PENDING)
    client.answer(0, errors.ManagementTimeoutError("deadline exceeded"))
    assert clock.getDelayedCalls() != []
    r.send_status_update("s1", "a1", ACTIVE)  # made during the backoff: sent now
    assert client.open() == [("s1", ACTIVE)]
    assert clock.getDelayedCalls() == []
    client.answer(1)
    clock.advance(60)
    assert [c[2] for c in client.calls] == [PENDING, ACTIVE]


def test_failure_while_a_newer_report_waits_sends_only_the_newer() -> None:
    r, client, clock = reporter()
    r.send_status_update("s1", "a1", PENDING)
    r.send_status_update("s1", "a1", ACTIVE)
    client.answer(0, errors.ManagementTimeoutError("deadline exceeded"))
    assert client.open() == [("s1", ACTIVE)]
    client.answer(1)
    clock.advance(60)
    assert [c[2] for c in client.calls] == [PENDING, ACTIVE] and r.retried == 0


def test_stop_cancels_retries() -> None:
    r, client, clock = reporter()
    r.send_status_update("s1", "a1", ACTIVE)
    client.answer(0, errors.ManagementUnavailableError("down"))
    r.cancel_retries()
    assert clock.getDelayedCalls() == [] and r._entries == {}
    clock.advance(60)
    assert len(client.calls) == 1


def test_a_burst_that_times_out_is_delivered_in_the_end() -> None:
    """Issue 18 stall: an account's ten ACTIVE reports all hit the deadline while
    management is busy; each is delivered once it answers again (before, all ten
    were dropped and the account stayed pending)."""
    r, client, clock = reporter()
    delivered: dict[str, int] = {}

    def answer_all(error: Exception | None) -> None:
        for i, (sid, _a, status, _kw, d) in enumerate(client.calls):
            if not d.called:
                client.answer(i, error)
                if error is None:
                    delivered[sid] = status

    for i in range(10):
        r.send_status_update(f"svc-{i}", "acct-00636", ACTIVE)
    answer_all(errors.ManagementTimeoutError("Deadline Exceeded"))
    assert delivered == {}
    clock.advance(1.0)
    answer_all(None)
    assert delivered == {f"svc-{i}": ACTIVE for i in range(10)}
