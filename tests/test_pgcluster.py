"""tests/pgcluster.py: where the PostgreSQL tests get their server from."""

from __future__ import annotations

import os
import pwd

import pytest

from tests import pgcluster


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(pgcluster, "_state", {})
    monkeypatch.delenv("NBGW_TEST_PG_DSN", raising=False)


def test_an_explicit_dsn_wins(fresh_state, monkeypatch):
    monkeypatch.setenv("NBGW_TEST_PG_DSN", "postgresql://u@db.invalid/x")
    monkeypatch.setattr(pgcluster, "_start", lambda: pytest.fail("must not start a cluster"))
    assert pgcluster.dsn() == "postgresql://u@db.invalid/x"
    assert pgcluster.unavailable_reason() is None


def test_without_binaries_there_is_a_reason_not_a_cluster(fresh_state, monkeypatch):
    monkeypatch.setattr(pgcluster, "_bindir", lambda: None)
    monkeypatch.setattr(pgcluster, "_start", lambda: pytest.fail("must not start a cluster"))
    assert pgcluster.dsn() is None
    reason = pgcluster.unavailable_reason()
    assert "NBGW_TEST_PG_DSN" in reason and "apt-get install postgresql" in reason


def test_a_failed_start_is_reported_once_and_not_retried(fresh_state, monkeypatch):
    calls = []

    def boom():
        calls.append(1)
        raise RuntimeError("initdb failed: no space")

    monkeypatch.setattr(pgcluster, "_bindir", lambda: "/nonexistent")
    monkeypatch.setattr(pgcluster, "_start", boom)
    assert pgcluster.dsn() is None
    assert pgcluster.dsn() is None
    assert calls == [1]
    assert "initdb failed: no space" in pgcluster.unavailable_reason()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has to hand the cluster to a user")
def test_as_root_the_server_runs_as_an_unprivileged_user():
    uid, _gid = pgcluster._run_as()
    assert uid != 0
    assert pwd.getpwuid(uid).pw_name in ("postgres", "nobody")


@pytest.mark.postgres
def test_the_session_cluster_answers():
    dsn = pgcluster.dsn()
    if dsn is None:
        pytest.skip(pgcluster.unavailable_reason() or "no PostgreSQL")
    import psycopg

    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
