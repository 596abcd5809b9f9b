"""Several targets per path with real processes (issue 16 acceptance):

    netns G: twistd nbmanagement, twistd nbgateway --mgmt (public listener
             127.0.0.1:8443), three nginx upstreams on 127.0.0.1:8091-8093

A public service whose one path has the three nginx as targets (round robin,
eject after one failure, 2-4 s back-off, active check of /healthz every
second).  Under wrk load plus a client that records every GET (start time,
status, which nginx answered), one nginx is killed (SIGKILL) mid-run: no GET
started after the kill fails (a refused dial is retried on another target;
only requests in flight on the killed server may fail, at most one per
connection), every failed request, wrk's included,
started before the kill (management's access log: finish - duration), the
target is ejected (metrics), then the nginx is started again
and serves GETs again.  A second service (no ejection) shows that a POST to a
dead target is a 502 and is never retried: no nginx saw it.  The access log
at management names the target that served each request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import DOMAIN, World, counter, wait_for

pytestmark = pytest.mark.interop

PUBLIC = "127.0.0.1:8443"
LB = f"lb.{DOMAIN}"
NOEJECT = f"noeject.{DOMAIN}"
PORTS = {"a": 8091, "b": 8092, "c": 8093}

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/nginx-{name}.err;
events {{ worker_connections 1024; }}
http {{
    log_format brief '$request_method $request_uri $status';
    access_log {tmp}/nginx-{name}.access brief;
    client_body_temp_path {tmp}/nginx-{name}-body;
    proxy_temp_path {tmp}/nginx-{name}-proxy;
    fastcgi_temp_path {tmp}/nginx-{name}-fcgi;
    uwsgi_temp_path {tmp}/nginx-{name}-uwsgi;
    scgi_temp_path {tmp}/nginx-{name}-scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok\\n"; }}
        location / {{ return 200 "nginx-{name}\\n"; }}
    }}
}}
"""

#: GET loop: THREADS keep-alive connections; one JSON line per request
CLIENT = r"""
import http.client, json, sys, threading, time
host, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lines, lock = [], threading.Lock()
def run():
    conn = None
    end = time.time() + seconds
    while time.time() < end:
        start = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", 8443, timeout=10)
            conn.request("GET", "/load", headers={"Host": host})
            r = conn.getresponse()
            body = r.read().decode(errors="replace").strip()
            status = r.status
        except Exception as exc:
            status, body = 0, repr(exc)
            conn = None
        with lock:
            lines.append(json.dumps({"t": start, "status": status, "body": body[:60]}))
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
open(out, "w").write("\n".join(lines) + "\n")
"""


def _service(name: str, domain: str, lb: dict) -> dict:
    return {"name": name, "domain": domain, "enabled": True, "private": False,
            "load_balancing": lb,
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": port, "path": "/", "enabled": True,
                         "options": {"direct_upstream": True}} for port in PORTS.values()]}


class Upstreams:
    def __init__(self, world: World) -> None:
        self.w = world
        self.procs: dict[str, subprocess.Popen] = {}

    def conf(self, name: str) -> str:
        path = os.path.join(self.w.tmp, f"nginx-{name}.conf")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(NGINX_CONF.format(tmp=self.w.tmp, name=name, port=PORTS[name]))
        return path

    def start(self, name: str) -> None:
        self.procs[name] = self.w.g.popen(["nginx", "-c", self.conf(name)],
                                          stdout=self.w.log(f"nginx-{name}"),
                                          stderr=subprocess.STDOUT)
        wait_for(lambda: self.up(name), 10, f"nginx {name} listening")

    def up(self, name: str) -> bool:
        r = self.w.g.run(["curl", "-sS", "-m", "2", f"http://127.0.0.1:{PORTS[name]}/healthz"],
                         check=False)
        return r.returncode == 0 and r.stdout.strip() == "ok"

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def requests(self, name: str) -> list[str]:
        path = os.path.join(self.w.tmp, f"nginx-{name}.access")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [ln.strip() for ln in f if ln.strip()]


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "nginx", "wrk",
                          logs=("gateway", "management")) as w:
        w.upstreams = Upstreams(w)
        for name in PORTS:
            w.upstreams.start(name)
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--addr", PUBLIC)
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")), 30,
                 "the gateway to connect to management")
        w.lb = w.rest("POST", "/reverse-proxies/services", _service("lb", LB, {
            "policy": "round_robin", "max_failures": 1, "backoff_seconds": 2,
            "max_backoff_seconds": 4,
            "health_check": {"path": "/healthz", "interval_seconds": 1, "timeout_seconds": 1}}))
        w.noeject = w.rest("POST", "/reverse-proxies/services", _service("noeject", NOEJECT, {
            "max_failures": 100}))
        yield w


def get(world, host: str, path: str = "/", *extra: str) -> tuple[int, str]:
    r = world.g.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}",
                     "-H", f"Host: {host}", *extra, f"http://{PUBLIC}{path}"],
                    check=False, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def healthy(world, name: str) -> float:
    return counter(world.metrics(), "nbgateway_upstream_target_healthy", service=world.lb["id"],
                   target=f"http://127.0.0.1:{PORTS[name]}")


def test_killed_target_under_load_no_failed_get_and_it_comes_back(world):
    ups = world.upstreams
    wait_for(lambda: get(world, LB)[0] == 200, 30, "the load-balanced service on the gateway")
    seen = {get(world, LB, "/warm")[1] for _ in range(6)}
    assert seen == {"nginx-a", "nginx-b", "nginx-c"}, seen  # round robin over all three

    out = os.path.join(world.tmp, "client.jsonl")
    script = os.path.join(world.tmp, "client.py")
    with open(script, "w") as f:
        f.write(CLIENT)
    client = world.g.popen([sys.executable, script, LB, "14", out],
                           stdout=world.log("client"), stderr=subprocess.STDOUT)
    wrk = world.g.popen(["wrk", "-t2", "-c16", "-d12s", "-H", f"Host: {LB}",
                         f"http://{PUBLIC}/wrk"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    killed_at = time.time()
    ups.kill("b")
    wait_for(lambda: healthy(world, "b") == 0, 5, "nginx b out of rotation")
    time.sleep(3)
    ups.start("b")
    wait_for(lambda: healthy(world, "b") == 1, 10, "nginx b back in rotation")
    back_at = time.time()
    wrk_out, _ = wrk.communicate(timeout=60)
    assert client.wait(timeout=60) == 0
    with open(out) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]

    # the client: nothing started after the kill failed; b served before and after
    failed = [r for r in rows if r["status"] != 200]
    assert all(r["t"] < killed_at + 0.05 for r in failed), failed[:5]
    assert len(failed) <= 4, failed  # at most the requests in flight at the kill
    after = [r for r in rows if r["t"] > killed_at + 0.05]
    assert len(after) > 100 and all(r["status"] == 200 for r in after)
    assert any(r["body"] == "nginx-b" for r in rows if r["t"] < killed_at)
    assert any(r["body"] == "nginx-b" for r in rows if r["t"] > back_at), \
        "the restarted nginx never served again"
    assert not any(r["body"] == "nginx-b" for r in rows
                   if killed_at + 0.05 < r["t"] < back_at - 1.5)

    # wrk: at most one failure per connection (the request in flight on b)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk_out)
    non2xx = int(m.group(1)) if m else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       wrk_out)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    total = int(re.search(r"(\d+) requests in", wrk_out).group(1))
    print(wrk_out)
    assert total > 500, wrk_out
    assert non2xx + socket_errors <= 16, wrk_out
    # every failed request (wrk's included) was in flight on b when it was
    # killed: management's access log has its start (finish - duration)
    def failures_logged():
        got = world.rest("GET", f"/events/proxy?service_id={world.lb['id']}&status=failed"
                                "&page_size=100")
        return got if got["total_records"] >= non2xx else None

    failures = wait_for(failures_logged, 30, "the failed requests in the access log")
    assert failures["total_records"] <= 20, failures["total_records"]
    for e in failures["data"]:
        finished = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        started = finished - e["duration_ms"] / 1000
        assert started < killed_at + 0.05, (e, killed_at)
        assert e.get("upstream_target") == f"http://127.0.0.1:{PORTS['b']}", e
    metrics = world.metrics()
    assert counter(metrics, "nbgateway_upstream_target_ejections_total", service=world.lb["id"],
                   target=f"http://127.0.0.1:{PORTS['b']}") >= 1
    assert counter(metrics, "nbgateway_upstream_target_requests_total",
                   service=world.lb["id"]) >= total

    # the access log at management names the target of each request
    def logged():
        page = world.rest("GET", "/events/proxy?path=/warm&page_size=100")
        got = {e.get("upstream_target") for e in page["data"] if e.get("host") == LB}
        return got if len(got) == 3 else None

    assert wait_for(logged, 30, "access-log entries naming the targets") == {
        f"http://127.0.0.1:{p}" for p in PORTS.values()}


def test_post_to_dead_target_is_502_and_never_retried(world):
    ups = world.upstreams
    wait_for(lambda: get(world, NOEJECT)[0] == 200, 30, "the second service on the gateway")
    ups.kill("c")
    try:
        tag = uuid.uuid4().hex[:8]
        codes = {}
        for i in range(6):  # round robin: two of six land on the dead c
            codes[f"/post-{tag}-{i}"] = get(world, NOEJECT, f"/post-{tag}-{i}",
                                            "--data", "x=1")[0]
        assert sorted(codes.values()) == [200, 200, 200, 200, 502, 502], codes
        posted = [ln for name in PORTS for ln in ups.requests(name) if tag in ln]
        # every POST reached at most one nginx; the 502 ones none
        assert len(posted) == 4, posted
        for path, code in codes.items():
            hits = [ln for ln in posted if f" {path} " in ln]
            assert len(hits) == (1 if code == 200 else 0), (path, code, hits)
        # a GET to the same dead target is retried on another one
        gets = [get(world, NOEJECT, f"/get-{tag}-{i}")[0] for i in range(6)]
        assert gets == [200] * 6
    finally:
        ups.start("c")
