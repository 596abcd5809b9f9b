"""Domain types: immutability / deep copies, Go durations, ids."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.management.model import (
    Service,
    Target,
    TargetOptions,
    User,
    format_go_duration,
    new_id,
    parse_go_duration,
)


def test_service_copy_is_independent_acceptance_23():
    headers = {"X-A": "1"}
    groups = ["grp-admins", "grp-ops"]
    original = Service(
        id="svc-1",
        private=True,
        access_groups=groups,
        targets=[Target(options=TargetOptions(custom_headers=headers))],
    )
    # inputs are copied at construction: mutating the caller's objects changes nothing
    groups[0] = "evil"
    headers["X-A"] = "evil"
    assert original.access_groups == ("grp-admins", "grp-ops")
    assert original.targets[0].options.custom_headers == {"X-A": "1"}
    copy = original.copy()
    copy.targets[0].options.custom_headers["X-A"] = "changed"
    mutated = dataclasses.replace(
        copy, private=False, access_groups=("other", *copy.access_groups[1:])
    )
    assert original.private is True
    assert original.access_groups[0] == "grp-admins"
    assert original.targets[0].options.custom_headers == {"X-A": "1"}
    assert mutated.access_groups[0] == "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        original.private = False  # type: ignore[misc]
    assert isinstance(original.access_groups, tuple)


def test_access_groups_none_stays_none():
    assert Service().access_groups is None
    assert Service(access_groups=[]).access_groups == ()


def test_user_status():
    assert User().status == "active"
    assert User(blocked=True).status == "blocked"
    assert User(blocked=True, pending_approval=True).status == "pending"


@pytest.mark.parametrize(
    ("text", "ns", "formatted"),
    [
        ("30s", 30 * 10**9, "30s"),
        ("2m", 120 * 10**9, "2m0s"),
        ("1h", 3600 * 10**9, "1h0m0s"),
        ("300ms", 300 * 10**6, "300ms"),
        ("1.5s", 1_500_000_000, "1.5s"),
        ("1h30m", 5400 * 10**9, "1h30m0s"),
        ("0", 0, "0s"),
        ("1us", 1000, "1µs"),
        ("1µs", 1000, "1µs"),
        ("-2s", -2 * 10**9, "-2s"),
        ("100ns", 100, "100ns"),
    ],
)
def test_go_duration_roundtrip(text, ns, formatted):
    assert parse_go_duration(text) == ns
    assert format_go_duration(ns) == formatted


@pytest.mark.parametrize("bad", ["abc", "", "1", "1x", ".s", "5 s", "s"])
def test_go_duration_rejects(bad):
    with pytest.raises(ValueError, match="time: invalid duration"):
        parse_go_duration(bad)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_go_duration_format_parses_back(ns):
    assert parse_go_duration(format_go_duration(ns)) == ns


def test_new_id_shape_and_uniqueness():
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
