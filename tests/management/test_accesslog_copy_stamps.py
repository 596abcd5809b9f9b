"""PostgreSQL's batch COPY sends timestamps as the int8 of their binary form.

``_batch_rows`` turns the batch's epoch microseconds into microseconds since
2000-01-01 (``_pg_copy_stamps``) and the ``COPY`` declares that column
``int8``: the server reads the same eight bytes psycopg writes for the naive
``datetime`` the other paths make.  Checked: the bytes themselves, the
stored values at the edges of a ``datetime``'s range, before 1970 and 2000,
and past the range the same ``OverflowError`` (the store's 422) as before,
on the batch path of both backends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Account
from nbgateway.management.store import _accesslog
from nbgateway.management.store._accesslog import VALUE_FIELDS
from nbgateway.management.store.schema import access_log_entries as ale

_EPOCH = datetime(1970, 1, 1)
_MAX_US = (datetime.max - _EPOCH) // timedelta(microseconds=1)
_MIN_US = (datetime.min - _EPOCH) // timedelta(microseconds=1)
EDGES = [0, 1, -1, 999_999, -1_000_001, 946_684_800_000_000, 946_684_799_999_999,
         1_733_000_000_123_456, _MAX_US, _MIN_US, 2**53 + 1, -(2**53) - 1]


def test_the_int8_is_the_timestamps_binary_form():
    from psycopg import postgres
    from psycopg.pq import Format

    def dumper(name: str, cls: type):  # what the COPY's set_types picks
        return postgres.adapters.get_dumper_by_oid(postgres.types[name].oid, Format.BINARY)(cls)

    stamp, int8 = dumper("timestamp", datetime), dumper("int8", int)
    got = _accesslog._pg_copy_stamps(EDGES)
    for t, value in zip(EDGES, got, strict=True):
        assert int8.dump(value) == stamp.dump(_EPOCH + timedelta(microseconds=t)), t


@pytest.mark.parametrize("t", [_MAX_US + 1, _MIN_US - 1, 10**18, -(10**18)])
def test_out_of_range_fails_as_the_datetime_did(t):
    with pytest.raises(OverflowError):
        _accesslog._epoch_stamps([t], "postgresql")
    with pytest.raises(OverflowError):
        _accesslog._pg_copy_stamps([0, t])


def _columns(stamps: list[int], prefix: str) -> list[list]:
    n = len(stamps)
    row = {"account_id": "acct-1", "service_id": "svc", "source_ip": "", "country_code": "",
           "city_name": "", "geo_name_id": 0, "subdivision_code": "", "method": "GET",
           "host": "h", "path": "/", "duration": 0, "status_code": 200, "reason": "",
           "user_id": "", "auth_method_used": "", "bytes_upload": 0, "bytes_download": 0,
           "protocol": "http", "metadata": None, "agent_network": False,
           "upstream_target": "", "user_groups": None}
    cols = []
    for f in VALUE_FIELDS:
        if f == "id":
            cols.append([f"{prefix}-{i}" for i in range(n)])
        elif f == "timestamp":
            cols.append(list(stamps))
        else:
            cols.append([row[f]] * n)
    return cols


def test_batch_stores_the_edges(store):
    store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    stamps = EDGES * 2  # more rows than one INSERT ... VALUES takes
    assert store.access_logs.append_columns(_columns(stamps, "e")) == len(stamps)
    with store._read() as conn:
        got = dict(conn.execute(sa.select(ale.c.id, ale.c.timestamp)).all())
    for i, t in enumerate(stamps):
        value = got[f"e-{i}"]
        assert value.replace(tzinfo=None) == _EPOCH + timedelta(microseconds=t), (i, t)


@pytest.mark.parametrize("t", [_MAX_US + 1, _MIN_US - 1])
def test_batch_past_the_range_is_a_422(store, t):
    store.accounts.create(Account(id="acct-1", domain="netbird.test"))
    with pytest.raises(ValidationError):
        store.access_logs.append_columns(_columns([0] * 20 + [t], "o"))
    assert store.access_logs.count("acct-1") == 0
