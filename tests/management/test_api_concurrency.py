"""50 concurrent REST writers creating groups and services lose nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from .apiserver import BACKENDS, running_server

WRITERS = 50
CLUSTER = "eu.proxy.test"


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        srv.add_domain("apps.test", CLUSTER)
        yield srv


def test_concurrent_writers_lose_nothing(server):
    run = uuid.uuid4().hex[:6]
    barrier = threading.Barrier(WRITERS)

    def writer(i: int) -> tuple[dict, dict]:
        barrier.wait(timeout=60)
        g = server.request("POST", "/api/groups", {"name": f"g-{run}-{i}"}, timeout=120)
        assert g.status == 200, g
        gid = g.json["id"]
        body = {"name": f"svc-{run}-{i}", "domain": f"s{i}-{run}.apps.test", "enabled": True,
                "private": True, "access_groups": [gid],
                "targets": [{"target_id": CLUSTER, "target_type": "cluster",
                             "protocol": "http", "host": f"backend-{i}.lan", "port": 8000 + i,
                             "enabled": True, "options": {"direct_upstream": True}}]}
        s = server.request("POST", "/api/reverse-proxies/services", body, timeout=120)
        assert s.status == 200, s
        return g.json, s.json

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))

    groups = {g["id"]: g for g in server.ok("GET", "/api/groups")}
    services = {s["id"]: s for s in server.ok("GET", "/api/reverse-proxies/services")}
    ours = [s for s in services.values() if s["name"].startswith(f"svc-{run}-")]
    assert len(ours) == WRITERS
    assert len([g for g in groups.values() if g["name"].startswith(f"g-{run}-")]) == WRITERS
    for i, (g, s) in enumerate(results):
        assert groups[g["id"]]["name"] == f"g-{run}-{i}"
        stored = services[s["id"]]
        assert stored == s
        assert stored["name"] == f"svc-{run}-{i}"
        assert stored["domain"] == f"s{i}-{run}.apps.test"
        assert stored["access_groups"] == [g["id"]]
        assert stored["targets"][0]["host"] == f"backend-{i}.lan"
        assert stored["targets"][0]["port"] == 8000 + i


def test_concurrent_peer_writers_lose_and_duplicate_nothing(server):
    """50 writers POST /api/peers at once: 50 peers, unique ids, keys and addresses."""
    run = uuid.uuid4().hex[:6]
    barrier = threading.Barrier(WRITERS)

    def writer(i: int) -> dict:
        barrier.wait(timeout=60)
        r = server.request("POST", "/api/peers", {"name": f"peer-{run}-{i}"}, timeout=120)
        assert r.status == 200, r
        return r.json

    with ThreadPoolExecutor(WRITERS) as pool:
        created = list(pool.map(writer, range(WRITERS)))

    listed = [p for p in server.ok("GET", "/api/peers") if p["name"].startswith(f"peer-{run}-")]
    assert len(listed) == WRITERS
    by_id = {p["id"]: p for p in listed}
    assert set(by_id) == {p["id"] for p in created}
    for field in ("id", "public_key", "ip", "ipv6"):
        assert len({p[field] for p in listed}) == WRITERS, field
    assert len({p["private_key"] for p in created}) == WRITERS
    for p in created:
        assert by_id[p["id"]]["ip"] == p["ip"] and by_id[p["id"]]["name"] == p["name"]
