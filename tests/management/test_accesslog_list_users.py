"""Access-log list: a user's entries (``user_id``, e-mail, name) answer as a brute force does.

A regular user's ``GET /api/events/proxy`` is always filtered to its own
``user_id``; admins filter by user id, e-mail or name substring.  Every
sort, with each other filter beside the user, both directions and several
pages (past the end too), is checked against a filter-and-sort of every
stored entry in Python, on both backends, after appends, a retried batch,
retention by age and by row count, and the deletion of another account.
(Written for a per-day user index, measured and not kept: docs/management.md;
it checks whatever answers these shapes.)
"""

from __future__ import annotations

from datetime import timedelta

from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, User
from nbgateway.management.store import Store
from tests.management import _accesslog_scenarios as scenarios
from tests.management._accesslog_scenarios import NOW

USERS = ("alice", "bob", "carol", "")
EMAILS = {"alice": ("alice@one.example", "Alice A"), "bob": ("bob@two.example", "Bob B"),
          "carol": ("carol@one.example", "Carol C")}
IPS = ("203.0.113.7", "10.0.0.1", "2001:db8::1")
METHODS = ("GET", "POST", "DELETE", "GET", "PUT")
HOSTS = ("app.example.test", "api.example.test", "zz.example.test")
DURATIONS = (5_000, 90, 5_000, 1_200_000, 90, 7, 33_000)
SORTS = ("timestamp", "url", "host", "path", "method", "status_code", "duration",
         "source_ip", "user_id", "auth_method", "reason")


def entries(account_id: str, n: int, *, start: int = 0) -> list[AccessLogEntry]:
    """*n* entries 5 hours apart (pairs share a timestamp: several per day,
    over many days), every column varied with ties."""
    return [AccessLogEntry(
        id=f"{account_id}-{i:05d}", account_id=account_id, service_id=f"svc-{i % 3}",
        timestamp=NOW - timedelta(hours=5 * (i // 2), minutes=(i // 2) % 7),
        source_ip=IPS[(i * 7 // 3) % 3], method=METHODS[i % 5], host=HOSTS[(i // 4) % 3],
        path=f"/p{i % 11}", duration=DURATIONS[i % 7], status_code=(200, 404, 302, 500)[i % 4],
        reason="denied" if i % 9 == 0 else "", user_id=USERS[(i * 5 // 6) % 4],
        auth_method_used=("oidc", "pin", "")[i % 3])
        for i in range(start, start + n)]


PAGES = ((1, 7), (3, 5), (40, 3), (1, 100))


def queries() -> list[AccessLogQuery]:
    Q = AccessLogQuery
    since = NOW - timedelta(days=4, hours=3)
    others = (dict(service_id="svc-1"), dict(source_ip=IPS[0]), dict(host="API."),
              dict(path="/p1"), dict(method="get"), dict(status="failed"),
              dict(status="success"), dict(status_code=500), dict(status_code=200),
              dict(start_date=since), dict(start_date=since, end_date=NOW - timedelta(hours=20)),
              dict(search="zz"), dict(status="failed", start_date=since),
              dict(service_id="svc-2", method="POST", status_code=200))
    out = []
    for order in ("desc", "asc"):
        for page, size in PAGES:
            kw = dict(sort_order=order, page=page, page_size=size)
            for user in ("alice", "bob", "nobody"):
                for sort in SORTS:
                    out.append(Q(user_id=user, sort_by=sort, **kw))
            for i, other in enumerate(others):
                for sort in ("timestamp", SORTS[1 + i % 10]):
                    out.append(Q(user_id="alice", sort_by=sort, **kw, **other))
            for users in (dict(user_email="ALICE@"), dict(user_email="@one."),
                          dict(user_name="b b"), dict(user_email="nomatch"),
                          dict(user_email="one", user_name="carol")):
                for sort in ("timestamp", "duration"):
                    out.append(Q(sort_by=sort, **kw, **users))
                out.append(Q(status="failed", start_date=since, **kw, **users))
    return out


def check(store: Store, account_id: str) -> None:
    scenarios.check(store, account_id, queries())


def create_users(store: Store, account_id: str) -> None:
    """:data:`EMAILS`' users, in the account (the other has none: its
    e-mail and name filters match nothing)."""
    for u, (mail, name) in EMAILS.items():
        store.users.create(User(id=u, account_id=account_id, email=mail, name=name))
    # the brute force's users are the store's: these
    assert scenarios.reference(store, account_id).users == EMAILS


def scenario(store: Store, account: Account) -> None:
    scenarios.scenario(store, account, entries, check,
                       prepare=lambda other: create_users(store, account.id))


def test_user_lists_match_brute_force(store, account):
    scenario(store, account)


def test_user_entries_span_days():
    """The fixture's point: a user's entries spread over days, with ties."""
    rows = entries("a", 150)
    assert len({e.timestamp.date() for e in rows if e.user_id == "alice"}) > 10
    assert len({e.timestamp for e in rows if e.user_id == "alice"}) < sum(
        e.user_id == "alice" for e in rows)
