"""Review 16: custom-domain claims of two accounts at the same moment (PostgreSQL).

``check_domain_claim`` refuses a name equal to, under or covering another
account's custom domain, but a write transaction on PostgreSQL is serialised
only with the same account's writers (one advisory lock per account, READ
COMMITTED): account A registering ``x.test`` and account B registering
``app.x.test`` at once each check before the other commits, and both names
are stored -- B then holds a subtree of A's domain (A's services under it are
refused), which the check exists to prevent.  (Equal names are caught by the
unique index; overlapping ones are not.)  On SQLite one process-wide write
lock serialises every writer.

The checks are held at a barrier so both run before either commits; a store
that serialises claims lets the second wait for the first (the barrier times
out and the first commits alone).
"""

from __future__ import annotations

import contextlib
import threading

import pytest

from nbgateway.management.errors import Conflict
from nbgateway.management.model import Account, CustomDomain
from nbgateway.management.store import _domains

from .conftest import CLUSTER


@pytest.mark.parametrize("db_dsn", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_overlapping_custom_domains_of_two_accounts_at_once(store_factory, monkeypatch):
    store = store_factory()
    a = store.accounts.create(Account(id="acct-a"))
    b = store.accounts.create(Account(id="acct-b"))
    barrier = threading.Barrier(2, timeout=3.0)
    real = _domains.check_domain_claim

    def held(conn, known, account_id, name):
        real(conn, known, account_id, name)
        # both checked, neither committed; broken: the other claim waits for
        # this one, which goes on alone
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    monkeypatch.setattr(_domains, "check_domain_claim", held)
    results: dict[str, object] = {}

    def claim(account_id: str, name: str) -> None:
        try:
            results[name] = store.domains.create(
                CustomDomain(account_id=account_id, domain=name, target_cluster=CLUSTER))
        except Exception as exc:  # recorded and asserted below
            results[name] = exc

    threads = [threading.Thread(target=claim, args=(a.id, "x.review16.test")),
               threading.Thread(target=claim, args=(b.id, "app.x.review16.test"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stored = {d.domain for acct in (a.id, b.id) for d in store.domains.list(acct)}
    assert stored != {"x.review16.test", "app.x.review16.test"}, (
        "both accounts hold overlapping custom domains")
    assert sum(isinstance(r, Conflict) for r in results.values()) == 1, results
