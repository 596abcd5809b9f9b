"""N requests through the gateway give exactly N access-log entries at management.

Real processes: ``twistd nbmanagement`` and ``twistd nbgateway`` in a network
namespace, a wireguard-go peer in another, curl over the tunnel (the World
harness of test_private_e2e).  The gateway ships entries in batches
(NbgwSendAccessLogBatch); the management stores them one transaction per batch.
The count must be exact: none lost, none duplicated.
"""

from __future__ import annotations

import os
import time
import uuid

from tests.interop import test_private_e2e as e2e
from tests.interop.test_private_e2e import APP, counter, gateway_cas, wait_for

world = e2e.world  # the module-scoped harness fixture (a World of our own)

N = 300


def _entries(w, prefix: str) -> list[dict]:
    out: list[dict] = []
    page = 1
    while True:
        got = w.rest("GET", f"/events/proxy?path={prefix}&page_size=100&page={page}")
        out.extend(got["data"])
        if page >= got["total_pages"]:
            return out
        page += 1


def test_n_requests_give_exactly_n_entries(world):
    ns, gw_ip, _ = world.connect_peer("alice")
    wait_for(lambda: world.curl(ns, f"https://{APP}/warm", gw_ip=gw_ip)[0] == 200 or None,
             30, "a 200 from the private service")
    sent_before = counter(world.metrics(), "nbgateway_access_log_entries_total", result="sent")
    prefix = f"/al-{uuid.uuid4().hex[:8]}-"
    cfg = world.tb.write_file("al.curl", "".join(
        f'url = "https://{APP}{prefix}{i}"\noutput = "/dev/null"\n' for i in range(N)))
    r = ns.run(["curl", "-sS", "-m", "60", "--resolve", f"{APP}:443:{gw_ip}",
                "--cacert", gateway_cas(world.gw_dir), "-w", "%{http_code}\n",
                "-K", cfg], check=False, timeout=90)
    codes = r.stdout.split()
    assert codes.count("200") == N, (codes[:5], r.stderr[-500:])
    wait_for(lambda: world.rest("GET", f"/events/proxy?path={prefix}&page_size=1")
             ["total_records"] >= N or None, 20, f"{N} access-log entries")
    time.sleep(1.0)  # anything late (a duplicate from a retry) would show now
    entries = _entries(world, prefix)
    paths = [e["path"] for e in entries]
    assert len(entries) == N, len(entries)
    assert sorted(paths) == sorted(f"{prefix}{i}" for i in range(N))
    assert len({e["id"] for e in entries}) == N
    assert all(e["status_code"] == 200 and e["host"] == APP for e in entries)
    metrics = world.metrics()
    assert counter(metrics, "nbgateway_access_log_entries_total", result="sent") \
        - sent_before >= N
    assert counter(metrics, "nbgateway_access_log_entries_total", result="dropped") == 0
    with open(os.path.join(world.tmp, "gateway.log"), errors="replace") as f:
        assert "one by one" not in f.read()  # the batch extension was used, no fallback
