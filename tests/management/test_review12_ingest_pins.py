"""Review of 2a7a40e and d9697a0 (access-log ingest), behaviour pinned:

* ``_all_canonical_v4`` over *sets* of crafted addresses (pairs and triples
  of texts with newlines, spaces, leading zeros, non-ASCII digits, the empty
  text) accepts a set exactly when ``canonical_tunnel_ip`` gives every text
  back unchanged as IPv4: a newline inside one text cannot pose as the
  separator, whatever the set's order;
* ``decode_batch`` of batches holding those texts stores what the per-entry
  path stores (or refuses them as it does);
* the PostgreSQL timestamps (``epoch + 1 us * t``) equal
  ``epoch + timedelta(microseconds=t)`` at zero, negative, the extremes of
  ``datetime`` and past them (the same exception class);
* ``_group_ids`` hands out an immutable tuple of the decoded ids.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest

from nbgateway.management.accesslogdecode import (
    _all_canonical_v4,
    access_log_values,
    decode_batch,
)
from nbgateway.management.ipam import canonical_tunnel_ip
from nbgateway.management.store import _accesslog
from nbgateway.management.store._accesslog import VALUE_FIELDS
from tests.management.test_accesslog_ingest import message

_CRAFTED = [
    "1.2.3.4", "5.6.7.8", "1.2.3.4\n", "\n5.6.7.8", "1.2.3.4\n5.6.7.8", "1.2.3.4 ", " 1.2.3.4",
    "010.1.1.1", "10.1.1.1", "1.2.3.4\r", "1.2.3.4\n\n5.6.7.8", "\u0661.2.3.4", "1.2.3.\uff14",
    "\n", "1.2.3.4\x00", "255.255.255.255", "256.1.1.1", "::ffff:1.2.3.4", "1.2.3.04",
    "0.0.0.0\n0.0.0.0", "0.0.0.0",
]


def _canonical(text: str) -> bool:
    return canonical_tunnel_ip(text) == (4, text)


def test_the_quad_match_of_crafted_sets_is_the_per_address_answer():
    for k in (1, 2, 3):
        for combo in itertools.combinations(_CRAFTED, k):
            assert _all_canonical_v4(set(combo)) == all(map(_canonical, combo)), combo


def test_decode_batch_of_crafted_addresses_is_the_per_entry_path():
    source_ip = VALUE_FIELDS.index("source_ip")
    for a, b in itertools.combinations(["", *_CRAFTED], 2):
        logs = [message("acct-1", f"l{i}", source_ip=ip) for i, ip in enumerate((a, b, a))]
        columns = decode_batch(logs)
        if columns is None:  # refused: the per-entry path skips an entry
            assert any(ip and canonical_tunnel_ip(ip) is None for ip in (a, b)), (a, b)
            continue
        want = [access_log_values(m)[source_ip] for m in logs]
        assert list(columns[source_ip]) == want, (a, b)
        for ip in columns[source_ip]:
            assert ip == "" or canonical_tunnel_ip(ip) is not None


_MAX_US = (datetime.max - datetime(1970, 1, 1)) // timedelta(microseconds=1)
_MIN_US = (datetime.min - datetime(1970, 1, 1)) // timedelta(microseconds=1)


@pytest.mark.parametrize("t", [0, 1, -1, 999_999, -1_000_001, 1_733_000_000_123_456,
                               _MAX_US, _MIN_US, 2**53 + 1, -(2**53) - 1])
def test_postgresql_stamps_are_epoch_plus_timedelta(t):
    got = _accesslog._epoch_stamps([t], "postgresql")
    assert got == [datetime(1970, 1, 1) + timedelta(microseconds=t)]
    assert type(got[0]) is datetime and got[0].tzinfo is None


@pytest.mark.parametrize("t", [_MAX_US + 1, _MIN_US - 1, 10**18, -(10**18), 10**30])
def test_postgresql_stamps_out_of_range_fail_as_before(t):
    with pytest.raises(OverflowError) as old:
        datetime(1970, 1, 1) + timedelta(microseconds=t)
    with pytest.raises(OverflowError) as new:
        _accesslog._epoch_stamps([t], "postgresql")
    assert type(new.value) is type(old.value)


def test_group_ids_are_an_immutable_tuple():
    text = '["g1", "g2"]'
    first = _accesslog._group_ids(text)
    assert first == ("g1", "g2") and isinstance(first, tuple)
    assert _accesslog._group_ids(text) is first  # cached: nothing a caller can change
    assert _accesslog._group_ids(None) == () and _accesslog._group_ids("[]") == ()
