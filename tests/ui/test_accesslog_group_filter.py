"""The access log's ``group_id`` filter (store and REST), on SQLite and PostgreSQL.

The dashboard's user-group filter passes it to the REST API, so a filtered page
is a full page of matching entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import AccessLogEntry, AccessLogQuery, Account, Group
from tests.management.conftest import db_dsn, pg_schema_dsn, store_factory  # noqa: F401

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def world(store_factory):  # noqa: F811
    store = store_factory()
    store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    store.accounts.create(Account(id="acct-2", domain="other.test"))
    g = {name: store.groups.create(Group(account_id="acct-1", name=name))
         for name in ("dev", "Dev", "ops", 'q","dev', "x_%")}
    other = store.groups.create(Group(account_id="acct-2", name="dev"))
    captured = [("dev",), ("Dev",), ("ops", "dev"), ('q","dev',), ("x_%",), ("xa%",), (),
                None]
    for i, groups in enumerate(captured * 20):
        store.access_logs.append(AccessLogEntry(
            id=f"e{i}", account_id="acct-1", service_id="svc", host="a.test", path=f"/{i}",
            method="GET", status_code=200, timestamp=T0 + timedelta(seconds=i),
            user_groups=groups if groups is not None else ()))
    return store, g, other


def _page(store, group_id, **kw):
    return store.access_logs.list("acct-1", AccessLogQuery(group_id=group_id, page_size=10,
                                                            **kw))


def test_group_filter_matches_exact_names_and_fills_pages(world):
    store, g, _ = world
    page = _page(store, g["dev"].id)
    # "dev" alone and "ops","dev": 2 of every 8 entries; not "Dev", not 'q","dev'
    assert page.total_records == 40 and len(page.data) == 10, page
    assert all("dev" in e.user_groups for e in page.data)
    assert _page(store, g["Dev"].id).total_records == 20
    assert _page(store, g["ops"].id).total_records == 20
    assert _page(store, g['q","dev'].id).total_records == 20
    # LIKE wildcards in a name are plain characters
    assert _page(store, g["x_%"].id).total_records == 20
    # combined with the other filters and paging
    p4 = _page(store, g["dev"].id, page=4)
    assert len(p4.data) == 10 and p4.total_pages == 4
    assert _page(store, g["dev"].id, page=5).data == ()


def test_unknown_or_foreign_group_is_refused(world):
    store, _, other = world
    with pytest.raises(ValidationError):
        _page(store, other.id)  # another account's group
    with pytest.raises(ValidationError):
        _page(store, "no-such-group")
