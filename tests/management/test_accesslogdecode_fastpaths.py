"""``decode_batch``'s batch-wide shortcuts give what the per-entry path gives.

* the source addresses: one regular-expression match over the batch's
  distinct addresses (``_all_canonical_v4``) must accept exactly the texts
  ``canonical_tunnel_ip`` returns unchanged as IPv4, never a set whose texts
  hold a newline, and leave every other batch to the per-address conversion;
* the failure reasons: written only for the failed entries (a C-computed
  mask), the same text as ``access_log_values`` for every protocol, status
  code and authentication outcome.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from nbgateway.management import accesslogdecode
from nbgateway.management.accesslogdecode import (
    _all_canonical_v4,
    access_log_values,
    decode_batch,
)
from nbgateway.management.ipam import canonical_tunnel_ip
from nbgateway.management.store._accesslog import VALUE_FIELDS
from tests.management.test_accesslog_ingest import message

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SOURCE_IP = VALUE_FIELDS.index("source_ip")
REASON = VALUE_FIELDS.index("reason")


def _texts() -> list[str]:
    """Address-like texts: every octet value in every place, leading zeros,
    signs, spaces, newlines, non-ASCII digits, IPv6 forms, random fuzz."""
    out = []
    for v in [*range(0, 300), 999, 1000, 4096]:
        for place in range(4):
            octets = ["1", "2", "3", "4"]
            octets[place] = str(v)
            out.append(".".join(octets))
            octets[place] = f"0{v}"
            out.append(".".join(octets))
    out += [
        "", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.", "+1.2.3.4", "-1.2.3.4",
        " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "\n1.2.3.4", "1.2.3.4\n5.6.7.8", "1.2.3.4\t",
        "\uff11.2.3.4", "1.2.3.\u0664", "\u0661.2.3.4", "0x1.2.3.4", "1.2.3.4/32",
        "::ffff:1.2.3.4", "::FFFF:10.0.0.1", "2001:db8::1", "2001:DB8::1", "::1", "::",
        "fe80::1%eth0", "100.64.0.10", "255.255.255.255", "0.0.0.0", "00.0.0.0",
        "1.2.3.4\x00", "not-an-ip",
    ]
    rng = random.Random(20)
    alphabet = "0123456789.:\n af"
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 18)))
            for _ in range(3000)]
    return out


def test_the_quad_match_accepts_exactly_the_canonical_ipv4_texts():
    texts = [t for t in _texts() if t]  # the decoder drops empty addresses before the match
    wrong = [t for t in texts if _all_canonical_v4({t}) != (canonical_tunnel_ip(t) == (4, t))]
    assert wrong == []
    assert sum(_all_canonical_v4({t}) for t in texts) > 1000  # both answers are exercised


def test_a_set_is_accepted_only_when_every_text_is_a_canonical_quad():
    assert _all_canonical_v4({"1.2.3.4", "10.0.0.1", "255.255.255.255"})
    assert not _all_canonical_v4({"1.2.3.4", "10.0.0.01"})
    assert not _all_canonical_v4({"1.2.3.4", "::ffff:10.0.0.1"})
    # a text holding a newline would look like two addresses once joined
    assert not _all_canonical_v4({"1.2.3.4\n5.6.7.8"})
    assert not _all_canonical_v4({"1.2.3.4\n5.6.7.8", "9.9.9.9"})
    assert not _all_canonical_v4({"1.2.3.4\n", "5.6.7.8"})
    assert not _all_canonical_v4({"\n1.2.3.4", "5.6.7.8"})


def _expected_columns(logs):
    values = [access_log_values(e) for e in logs]
    cols = [[v[i] for v in values] for i in range(len(VALUE_FIELDS))]
    when = VALUE_FIELDS.index("timestamp")
    cols[when] = [(t - EPOCH) // timedelta(microseconds=1) for t in cols[when]]
    return cols


def _varied(rng: random.Random, n: int, addresses: list[str]) -> list:
    logs = []
    for i in range(n):
        logs.append(message(
            f"acct-{rng.randrange(3)}", f"v-{i}",
            source_ip=rng.choice(addresses),
            protocol=rng.choice(["http", "", "tcp", "udp"]),
            response_code=rng.choice([0, 200, 302, 399, 400, 401, 404, 500, 502]),
            auth_success=rng.random() < 0.8))
    return logs


@pytest.mark.parametrize("seed", range(6))
def test_varied_batches_decode_as_the_per_entry_path(seed):
    rng = random.Random(seed)
    canonical = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
                 for _ in range(300)] + [""]
    converted = ["::ffff:10.1.2.3", "2001:DB8::1", " 10.9.9.9 "]
    for extra in ([], converted):  # the shortcut (all canonical), then conversions
        logs = _varied(rng, 400, canonical)
        logs += [message("acct-1", f"x-{i}", source_ip=ip) for i, ip in enumerate(extra)]
        rng.shuffle(logs)
        got = decode_batch(logs)
        assert got is not None
        want = _expected_columns(logs)
        for name, g, w in zip(VALUE_FIELDS, got, want, strict=True):
            assert list(g) == w, name
    # a converted address really changed, and a failed entry has its reason
    assert {"10.1.2.3", "2001:db8::1", "10.9.9.9"} <= set(got[SOURCE_IP])
    assert {"Request failed", "Authentication failed", ""} <= set(got[REASON])


def test_one_bad_address_among_canonical_ones_leaves_the_batch_to_the_per_entry_path():
    logs = [message("acct-1", f"b-{i}", source_ip=f"10.0.0.{i}") for i in range(50)]
    logs.append(message("acct-1", "bad", source_ip="10.0.0.01"))
    assert decode_batch(logs) is None
    logs[-1] = message("acct-1", "nl", source_ip="10.0.0.1\n10.0.0.2")
    assert decode_batch(logs) is None


def test_canonical_addresses_take_no_per_address_conversion(monkeypatch):
    calls = []

    def counting(text):
        calls.append(text)
        return canonical_tunnel_ip(text)

    monkeypatch.setattr(accesslogdecode, "canonical_ip_cached", counting)
    logs = [message("acct-1", f"c-{i}", source_ip=f"100.64.{i // 250}.{i % 250}")
            for i in range(600)]
    assert decode_batch(logs) is not None
    assert calls == []
    logs.append(message("acct-1", "mapped", source_ip="::ffff:100.64.0.1"))
    columns = decode_batch(logs)
    assert columns is not None and columns[SOURCE_IP][-1] == "100.64.0.1"
    assert "::ffff:100.64.0.1" in calls
