"""The descriptor budget (nbgateway.dial.fdbudget): one account's share of
the soft RLIMIT_NOFILE, and twistd's raise of the soft limit to the hard one."""

from __future__ import annotations

import resource

import pytest

from nbgateway.dial import fdbudget


@pytest.fixture
def limits(monkeypatch):
    state = {"soft": 1024, "hard": 4096, "set": [], "refuse": False}

    def getrlimit(which):
        assert which == resource.RLIMIT_NOFILE
        return state["soft"], state["hard"]

    def setrlimit(which, value):
        assert which == resource.RLIMIT_NOFILE
        if state["refuse"]:
            raise ValueError("not permitted")
        state["set"].append(value)
        state["soft"] = value[0]

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def test_a_quarter_of_the_soft_limit_per_account(limits):
    assert fdbudget.descriptor_budget() == 1024
    assert fdbudget.account_share() == 256
    assert fdbudget.account_share(per_item=2) == 128
    assert fdbudget.account_share(fraction=8) == 128
    limits["soft"] = 100
    assert fdbudget.account_share(per_item=2) == fdbudget.MIN_SHARE  # never below the floor


def test_unlimited_means_no_bound(limits):
    limits["soft"] = resource.RLIM_INFINITY
    assert fdbudget.descriptor_budget() == 0
    assert fdbudget.account_share() == 0


def test_the_soft_limit_is_raised_to_the_hard_one(limits):
    assert fdbudget.raise_descriptor_limit() == (1024, 4096)
    assert limits["set"] == [(4096, 4096)]
    assert fdbudget.account_share() == 1024
    # already there: nothing set again
    assert fdbudget.raise_descriptor_limit() == (4096, 4096)
    assert len(limits["set"]) == 1


def test_an_unlimited_hard_limit_is_capped(limits):
    limits["hard"] = resource.RLIM_INFINITY
    assert fdbudget.raise_descriptor_limit() == (1024, fdbudget.MAX_RAISED)
    assert limits["set"] == [(fdbudget.MAX_RAISED, resource.RLIM_INFINITY)]


def test_a_refused_raise_keeps_the_limit(limits):
    limits["refuse"] = True
    assert fdbudget.raise_descriptor_limit() == (1024, 1024)
    assert fdbudget.account_share() == 256
