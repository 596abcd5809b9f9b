"""Access-log list: the ``path`` substring's page read day by day (PostgreSQL).

On PostgreSQL a ``path`` substring alone is counted per day in revision
0024's per-day URL index (index-only), and its page sorted by time reads
only the days the page falls in (there, index-only too), then fetches the
page's rows; with long URLs among the matches (not in that index) the page
is planned as before.  Checked on both backends (SQLite counts and pages as
before) against a filter-and-sort in Python: several terms (ids sharing
prefixes, case, LIKE metacharacters, multi-byte text, long paths, a term only
another account has, none), both directions, pages within one day, across
days and past the end, after appends, a retried batch, retention by age and
by rows and another account's deletion; one account's paths never count or
show in another's; the page statement reads only the needed days.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from nbgateway.management.model import AccessLogEntry, AccessLogQuery
from nbgateway.management.store import Store, _accesslog_query
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW

HOSTS = ("app1.example.test", "App2.example.test", "b.test")
BASES = ("/api/v1/items", "/login", "/API/Orders", "/static/app.js", "/x_%y", "/é/ü")
LONG = "/" + "z" * 2100  # too long for the per-day URL index and the dictionary
TERMS = ("/42", "login", "LOGIN", "orders", "items/4", "7", "é", "_%", "z" * 50, "nomatch",
         "secret", "/", "app")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 3 hours apart (pairs share a timestamp), paths with ids
    (some sharing prefixes such as ``/42`` and ``/420``), mixed case, LIKE
    metacharacters, multi-byte text, long paths; the same paths in every
    account, plus one only the other account has."""
    out = []
    for i in range(start, start + n):
        base = BASES[i % len(BASES)]
        path = (LONG + str(i % 2) if i % 17 == 3
                else f"{base}/{(i * 7) % 500}" if i % 3 else base)
        if account_id == scenarios.OTHER.id and i % 5 == 0:
            path = f"/secret/{i}"
        out.append(AccessLogEntry(
            id=f"{account_id}-{i:05d}", account_id=account_id, service_id=f"svc-{i % 2}",
            timestamp=NOW - timedelta(hours=3 * (i // 2), minutes=i % 5),
            source_ip="10.0.0.1", method="GET", host=HOSTS[i % 3], path=path,
            status_code=(200, 404)[i % 2]))
    return out


def queries() -> list[AccessLogQuery]:
    Q = AccessLogQuery
    out = []
    for order in ("desc", "asc"):
        for page, size in ((1, 7), (3, 5), (2, 1), (1, 100), (9, 9), (90, 3)):
            for term in TERMS:
                out.append(Q(path=term, sort_order=order, page=page, page_size=size))
    return out


def check(store: Store, account_id: str) -> None:
    scenarios.check(store, account_id, queries())


def test_path_filter_matches_brute_force(store, account):
    scenarios.scenario(store, account, entries, check)


def test_without_the_per_day_reads_the_same_answers(store, account, monkeypatch):
    """Counted and paged as before (past :data:`MAX_DAYS`): the same answers."""
    monkeypatch.setattr(_accesslog_query, "MAX_DAYS", 0)
    scenarios.scenario(store, account, entries, check)


def test_another_accounts_paths_never_match(store, account):
    """Account B's paths count and show nowhere in A: a term only B has is 0
    in A, and a term both have gives A's entries only."""
    other = store.accounts.create(scenarios.OTHER)
    store.access_logs.append_many(entries(account.id, 60) + entries(other.id, 60))
    assert store.access_logs.list(other.id, AccessLogQuery(path="secret")).total_records > 0
    mine = store.access_logs.list(account.id, AccessLogQuery(path="secret"))
    assert (mine.total_records, mine.data) == (0, ())
    stored = scenarios.everything(store, account.id)
    for term in TERMS:
        for order in ("desc", "asc"):
            q = AccessLogQuery(path=term, page_size=100, sort_order=order)
            page = store.access_logs.list(account.id, q)
            assert (page.total_records, [e.id for e in page.data]) == scenarios.brute(stored, q)
            assert all(e.account_id == account.id for e in page.data)


@pytest.mark.parametrize("db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_the_page_reads_only_the_days_it_needs(store, account):
    """PostgreSQL: one statement counts the days, and the page reads the days
    it falls in (one here: entries of one day, page 1), in the URL index; a
    long URL among the matches: the page is planned as before."""
    day = [AccessLogEntry(**{**e.__dict__, "path": f"/login/{i}",
                             "timestamp": NOW - timedelta(minutes=i)})
           for i, e in enumerate(entries(account.id, 30)) if i % 17 != 3]
    store.access_logs.append_many(entries(account.id, 80, start=100) + day)
    with scenarios.statements(store) as seen:
        page = store.access_logs.list(account.id, AccessLogQuery(path="login", page_size=5))
        assert [e.path for e in page.data] == [f"/login/{i}" for i in (0, 1, 2, 4, 5)]
        paged = [s for s in seen if "date_trunc('day', access_log_entries.timestamp) IN" in s]
        assert len(paged) == 1 and "OFFSET 0" in paged[0]
        seen.clear()
        long = store.access_logs.list(account.id, AccessLogQuery(path="z"))
        assert long.total_records > 0 and long.data
        assert not [s for s in seen if "date_trunc('day', access_log_entries.timestamp) IN" in s]


def test_caseless_terms_are_matched_without_lower(store, account):
    """A term of ASCII digits and punctuation is matched on the stored text
    (no ``lower()`` per entry), any other with ``lower()``; both answer as
    the brute force (``TERMS`` above hold both kinds)."""
    assert [_accesslog_query._caseless(t) for t in ("/42", "203.0.7", "_%", "", "a1", "É",
                                                     "\u201342", "K")] == [
        True, True, True, True, False, False, False, False]
    store.access_logs.append_many(entries(account.id, 40))
    with scenarios.statements(store) as seen:
        store.access_logs.list(account.id, AccessLogQuery(path="/42", search="/4"))
        assert seen and not [s for s in seen if "lower(" in s]
        seen.clear()
        store.access_logs.list(account.id, AccessLogQuery(path="Login"))
        assert [s for s in seen if "lower(access_log_entries.path)" in s]
    check(store, account.id)
