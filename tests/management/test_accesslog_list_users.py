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

import math
from datetime import UTC, datetime, timedelta

from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, User
from nbgateway.management.store import Store

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
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


def _failed(e: AccessLogEntry) -> bool:
    return e.status_code >= 400 or e.reason != ""


def brute(stored: list[AccessLogEntry], q: AccessLogQuery) -> tuple[int, list[str]]:
    """(total, the page's ids) of *q* over *stored*."""
    ids = None
    if q.user_email or q.user_name:
        ids = {u for u, (mail, name) in EMAILS.items()
               if (not q.user_email or q.user_email.lower() in mail.lower())
               and (not q.user_name or q.user_name.lower() in name.lower())}
    s = (q.search or "").lower()
    rows = [e for e in stored
            if (not q.user_id or e.user_id == q.user_id)
            and (ids is None or e.user_id in ids)
            and (not q.service_id or e.service_id == q.service_id)
            and (not q.source_ip or e.source_ip == q.source_ip)
            and (not q.host or q.host.lower() in e.host.lower())
            and (not q.path or q.path.lower() in e.path.lower())
            and (not q.method or e.method == q.method.upper())
            and (q.status_code is None or e.status_code == q.status_code)
            and (q.status != "failed" or _failed(e))
            and (q.status != "success" or not _failed(e))
            and (not s or any(s in v.lower() for v in (e.host, e.path, e.user_id,
                                                       e.source_ip, e.reason)))
            and (q.start_date is None or e.timestamp >= q.start_date)
            and (q.end_date is None or e.timestamp <= q.end_date)]
    key = {"timestamp": lambda e: (e.timestamp,),
           "url": lambda e: (e.host.encode(), e.path.encode()),
           "host": lambda e: (e.host.encode(),), "path": lambda e: (e.path.encode(),),
           "method": lambda e: (e.method, e.timestamp),
           "status_code": lambda e: (e.status_code, e.timestamp),
           "duration": lambda e: (e.duration,), "source_ip": lambda e: (e.source_ip.encode(),),
           "user_id": lambda e: (e.user_id.encode(),),
           "auth_method": lambda e: (e.auth_method_used.encode(),),
           "reason": lambda e: (e.reason.encode(),)}[q.sort_by]
    rows.sort(key=lambda e: (*key(e), e.id), reverse=q.sort_order == "desc")
    lo = (q.page - 1) * q.page_size
    return len(rows), [e.id for e in rows[lo:lo + q.page_size]]


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


def everything(store: Store, account_id: str) -> list[AccessLogEntry]:
    out: list[AccessLogEntry] = []
    p = 1
    while True:
        page = store.access_logs.list(account_id, AccessLogQuery(page=p, page_size=100))
        out.extend(page.data)
        if len(page.data) < 100:
            return out
        p += 1


def check(store: Store, account_id: str) -> None:
    stored = everything(store, account_id)
    assert len(stored) == store.access_logs.count(account_id)
    for _ in range(2):  # twice: psycopg's generic plans answer too
        for q in queries():
            page = store.access_logs.list(account_id, q)
            want_total, want_ids = brute(stored, q)
            assert (page.total_records, [e.id for e in page.data]) == (want_total, want_ids), q
            assert page.total_pages == math.ceil(want_total / q.page_size)


def scenario(store: Store, account: Account) -> None:
    for u, (mail, name) in EMAILS.items():
        store.users.create(User(id=u, account_id=account.id, email=mail, name=name))
    other = store.accounts.create(Account(id="acct-2", domain="other.test"))
    store.access_logs.append_many(entries(account.id, 150) + entries(other.id, 40))
    store.access_logs.append(entries(account.id, 1, start=150)[0])
    store.access_logs.append_many(entries(account.id, 160))  # a retried batch, 9 new
    check(store, account.id)
    while store.access_logs.prune_step(account.id, older_than=NOW - timedelta(days=12),
                                       max_rows=None, limit=11):
        pass
    check(store, account.id)
    while store.access_logs.prune_step(account.id, older_than=None, max_rows=61, limit=8):
        pass
    assert store.access_logs.count(account.id) == 61
    store.accounts.delete(other.id)
    store.access_logs.append_many(entries(account.id, 30, start=400))
    check(store, account.id)


def test_user_lists_match_brute_force(store, account):
    scenario(store, account)


def test_user_entries_span_days():
    """The fixture's point: a user's entries spread over days, with ties."""
    rows = entries("a", 150)
    assert len({e.timestamp.date() for e in rows if e.user_id == "alice"}) > 10
    assert len({e.timestamp for e in rows if e.user_id == "alice"}) < sum(
        e.user_id == "alice" for e in rows)
