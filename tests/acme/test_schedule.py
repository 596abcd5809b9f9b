"""The sans-IO renewal schedule: due times, two-thirds renewal, backoff with
jitter, Retry-After, concurrency, bounds."""

from __future__ import annotations

from nbgateway.acme.schedule import RenewalSchedule


def _schedule(**kw) -> RenewalSchedule:
    kw.setdefault("rand", lambda: 0.5)  # no jitter
    return RenewalSchedule(**kw)


def test_new_domain_is_due_at_once_and_only_once_in_flight():
    s = _schedule()
    s.want("a.example", 100.0)
    assert s.due(100.0) == ["a.example"]
    assert s.due(100.0) == []  # in flight
    assert s.next_wakeup() is None


def test_renewal_at_two_thirds_of_the_lifetime():
    s = _schedule()
    s.want("a.example", 0.0)
    s.due(0.0)
    s.succeeded("a.example", not_before=1000.0, not_after=1900.0)
    assert s.next_wakeup() == 1600.0
    assert s.due(1599.0) == []
    assert s.due(1600.0) == ["a.example"]


def test_existing_certificate_is_not_reordered():
    s = _schedule()
    s.want("a.example", 10.0)
    s.have_certificate("a.example", 0.0, 3000.0)
    assert s.due(10.0) == []
    assert s.next_wakeup() == 2000.0


def test_ari_window_overrides_two_thirds():
    s = _schedule()
    s.want("a.example", 0.0)
    s.have_certificate("a.example", 0.0, 3000.0, renew_at=2500.0)
    assert s.next_wakeup() == 2500.0


def test_exponential_backoff_capped():
    s = _schedule(backoff_base=10.0, backoff_cap=50.0)
    s.want("a.example", 0.0)
    delays = []
    now = 0.0
    for _ in range(5):
        assert s.due(now) == ["a.example"]
        when = s.failed("a.example", now, "boom")
        delays.append(when - now)
        now = when
    assert delays == [10.0, 20.0, 40.0, 50.0, 50.0]
    assert s.domains["a.example"].last_error == "boom"


def test_jitter_spreads_retries():
    low = _schedule(backoff_base=100.0, jitter=0.2, rand=lambda: 0.0)
    high = _schedule(backoff_base=100.0, jitter=0.2, rand=lambda: 1.0)
    for s in (low, high):
        s.want("a", 0.0)
        s.due(0.0)
    assert low.failed("a", 0.0, "x") == 80.0
    assert high.failed("a", 0.0, "x") == 120.0


def test_retry_after_is_respected():
    s = _schedule(backoff_base=10.0)
    s.want("a", 0.0)
    s.due(0.0)
    assert s.failed("a", 0.0, "rateLimited", retry_after=3600.0) == 3600.0
    assert s.due(3599.0) == []


def test_success_resets_failures():
    s = _schedule(backoff_base=10.0)
    s.want("a", 0.0)
    s.due(0.0)
    s.failed("a", 0.0, "x")
    s.due(10.0)
    s.succeeded("a", 10.0, 100.0)
    assert s.domains["a"].failures == 0 and s.domains["a"].last_error == ""


def test_concurrency_and_order():
    s = _schedule(concurrency=2)
    for name in ("c", "a", "b"):
        s.want(name, 0.0)
    assert s.due(0.0) == ["a", "b"]
    assert s.due(0.0) == []
    s.succeeded("a", 0.0, 300.0)
    assert s.due(0.0) == ["c"]


def test_dropped_domain_is_forgotten_and_results_ignored():
    s = _schedule()
    s.want("a", 0.0)
    s.due(0.0)
    s.drop("a")
    assert s.failed("a", 0.0, "x") is None
    s.succeeded("a", 0.0, 1.0)
    assert s.domains == {} and s.next_wakeup() is None


def test_bounded():
    s = _schedule(max_domains=2)
    assert s.want("a", 0.0) and s.want("b", 0.0)
    assert not s.want("c", 0.0)
    assert set(s.domains) == {"a", "b"}


def test_certificate_already_due_is_not_reordered_back_to_back():
    s = _schedule(min_interval=10.0)
    s.want("a", 0.0)
    s.due(0.0)
    s.succeeded("a", not_before=-300.0, not_after=3.0, now=0.0)  # two thirds already past
    assert s.next_wakeup() == 10.0


def test_one_owner_cannot_take_every_domain_slot():
    s = _schedule(max_domains=8)  # a named owner's share: a quarter
    assert all(s.want(f"a{i}", 0.0, owner="A") for i in range(2))
    assert not s.want("a2", 0.0, owner="A")
    assert s.want("b0", 0.0, owner="B")
    s.drop("a0")
    assert s.want("a2", 0.0, owner="A") and s.owned == {"A": 2, "B": 1}


def test_due_takes_owners_in_turn_so_a_new_tenant_does_not_wait_behind_another():
    """Account A has 50 domains that keep failing, due before B's new one;
    one order slot: B's domain is ordered at the next free slot, not after
    A's 50.  Before, due() took the earliest due domains whoever owned them."""
    s = _schedule(max_domains=1000)
    for i in range(50):
        s.want(f"a{i:02}", 0.0, owner="A")
    assert s.due(0.0) == ["a00"]
    s.want("b.example", 5.0, owner="B")
    s.failed("a00", 10.0, "boom")
    assert s.due(10.0) == ["b.example"]  # B never served: before A's 49 waiting
    s.succeeded("b.example", 0.0, 90 * 86400.0, now=20.0)
    assert s.due(20.0) == ["a01"]


def test_due_interleaves_owners_within_the_concurrency():
    s = _schedule(concurrency=4)
    for name in ("a1", "a2", "a3"):
        s.want(name, 0.0, owner="A")
    for name in ("b1", "b2"):
        s.want(name, 1.0, owner="B")
    assert s.due(1.0) == ["a1", "b1", "a2", "b2"]
