"""Quotas and rate limits end to end: a real ``twistd nbmanagement`` configured by
its ``NB_MANAGEMENT_*`` variables (SQLite and PostgreSQL), over HTTP.

The refusal is NetBird's JSON envelope with status 412; the other account is
unaffected; the rate limit answers 429 with Retry-After.
"""

from __future__ import annotations

import pytest

from tests.management.apiserver import BACKENDS, running_server, uniq


@pytest.mark.parametrize("backend", BACKENDS)
def test_rest_quota_412_envelope_other_account_unaffected(tmp_path_factory, monkeypatch,
                                                          backend: str) -> None:
    monkeypatch.setenv("NB_MANAGEMENT_QUOTA_GROUPS", "3")
    monkeypatch.setenv("NB_MANAGEMENT_QUOTA_PEERS", "2")
    with running_server(tmp_path_factory, backend) as srv:
        before = srv.ok("GET", "/api/groups")
        made = []
        while len(before) + len(made) < 3:
            made.append(srv.ok("POST", "/api/groups", {"name": uniq("g")}))
        r = srv.post("/api/groups", {"name": "one-too-many"})
        assert r.status == 412, r
        assert r.json == {"message": "quota exceeded: at most 3 groups per account "
                                     "(delete some first, or ask the operator for more)",
                          "code": 412}
        assert len(srv.ok("GET", "/api/groups")) == 3
        for i in range(2):
            srv.ok("POST", "/api/peers", {"name": f"p{i}"})
        r = srv.post("/api/peers", {"name": "p2"})
        assert r.status == 412 and r.json["message"].startswith("quota exceeded: at most 2 peers")
        assert len(srv.ok("GET", "/api/peers")) == 2
        # another account (made by the operator) has its own count
        other = srv.ok("POST", "/api/accounts", {"name": "tenant-b"}, status=201)
        auth = f"Token {other['token']}"
        for _ in range(2):
            assert srv.request("POST", "/api/groups", {"name": uniq("b")}, auth=auth).status == 200
        assert srv.request("POST", "/api/peers", {"name": "b0"}, auth=auth).status == 200
        # deleting makes room again
        srv.ok("DELETE", f"/api/groups/{made[0]['id']}")
        srv.ok("POST", "/api/groups", {"name": "fits-now"})


def test_rest_rate_limit_429(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("NB_MANAGEMENT_API_WRITE_RATE", "0.01/3")
    with running_server(tmp_path_factory, "sqlite") as srv:
        for i in range(3):
            srv.ok("POST", "/api/groups", {"name": f"g{i}"})
        r = srv.post("/api/groups", {"name": "g3"})
        assert r.status == 429, r
        assert int(r.headers["retry-after"]) >= 60
        assert r.json["code"] == 429
        assert srv.get("/api/groups").status == 200  # reads: their own budget
