"""REST list pagination (limit + opaque cursor) against a real ``twistd nbmanagement``.

Without ``limit`` the old response (the whole list, no cursor header) stays;
with it, pages follow ``X-Next-Cursor`` until it is absent, every row exactly
once and in the same order as the whole list; rows created between pages
after the cursor still appear; bad limits and forged cursors are 422.
"""

from __future__ import annotations

import pytest

from .apiserver import BACKENDS, running_server

CLUSTER = "eu.proxy.test"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        srv.add_domain("apps.test", CLUSTER)
        yield srv


def walk(server, path: str, limit: int) -> tuple[list[dict], int]:
    out: list[dict] = []
    pages = 0
    url = f"{path}?limit={limit}"
    while True:
        r = server.get(url)
        assert r.status == 200, r
        assert len(r.json) <= limit
        out += r.json
        pages += 1
        cursor = r.headers.get("x-next-cursor")
        if not cursor:
            assert "link" not in r.headers
            return out, pages
        assert r.headers["link"] == f'<{path}?limit={limit}&cursor={cursor}>; rel="next"'
        url = f"{path}?limit={limit}&cursor={cursor}"


def test_peers_paged_every_row_once_in_list_order(server):
    for i in range(23):
        server.ok("POST", "/api/peers", {"name": f"page-{i}"})
    whole = server.get("/api/peers")
    assert whole.status == 200 and "x-next-cursor" not in whole.headers
    paged, pages = walk(server, "/api/peers", 10)
    assert [p["id"] for p in paged] == [p["id"] for p in whole.json]
    assert paged == whole.json  # same element shape, group names and counts included
    assert pages == -(-len(whole.json) // 10)
    assert len({p["id"] for p in paged}) == len(paged) >= 23
    assert all(g["peers_count"] >= 23 for p in paged for g in p["groups"] if g["name"] == "All")


def test_rows_created_between_pages_are_not_lost(server):
    first = server.get("/api/peers?limit=5")
    cursor = first.headers["x-next-cursor"]
    new = server.ok("POST", "/api/peers", {"name": "late"})
    rest, _ = walk(server, "/api/peers", 1000)
    ids_after = [p["id"] for p in rest if p["id"] > first.json[-1]["id"]]
    second = server.get(f"/api/peers?limit=1000&cursor={cursor}")
    assert [p["id"] for p in second.json] == ids_after
    assert new["id"] in {p["id"] for p in rest}


def test_services_paged(server):
    gid = server.ok("POST", "/api/groups", {"name": "pagers"})["id"]
    for i in range(7):
        server.ok("POST", "/api/reverse-proxies/services", {
            "name": f"pg-{i}", "domain": f"pg-{i}.apps.test", "enabled": True,
            "private": True, "access_groups": [gid],
            "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
                         "host": f"b{i}.lan", "port": 80, "enabled": True,
                         "options": {"direct_upstream": True}}]})
    whole = server.ok("GET", "/api/reverse-proxies/services")
    paged, pages = walk(server, "/api/reverse-proxies/services", 3)
    assert paged == whole and len(paged) >= 7 and pages >= 3


@pytest.mark.parametrize("query", [
    "limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=1.5",
    "limit=5&cursor=nonsense", "limit=5&cursor=c1.%00", "limit=5&cursor=c1.Jycg",
    "cursor=" + "c1." + "A" * 300,
])
def test_bad_limit_or_cursor_is_422(server, query):
    r = server.get(f"/api/peers?{query}")
    assert r.status == 422, r
    assert server.get(f"/api/reverse-proxies/services?{query}").status == 422


def test_cursor_alone_pages_by_100(server):
    first = server.get("/api/peers?limit=1")
    r = server.get(f"/api/peers?cursor={first.headers['x-next-cursor']}")
    assert r.status == 200 and 0 < len(r.json) <= 100
    assert r.json[0]["id"] > first.json[0]["id"]
