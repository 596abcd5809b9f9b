"""Management replicas on one PostgreSQL database, with real processes:

    netns G                                            netns A (stock WireGuard peer)
      twistd nbmanagement replica A (REST 33071, gRPC 33073)   wireguard-go + curl
      twistd nbmanagement replica B (REST 33081, gRPC 33083)
      twistd nbgateway --mgmt http://127.0.0.1:33073,127.0.0.1:33083
      upstream HTTP server 127.0.0.1:8081
    PostgreSQL: the test session's throwaway cluster, reached from G through
    its unix socket (a fresh database for this module)

The gateway connects to replica A (the first address). A service created
through replica B reaches it through PostgreSQL LISTEN/NOTIFY (A's change feed)
and serves the peer. Then replica A is killed with SIGKILL while the peer keeps
sending requests: the gateway moves to B by itself (a service created through
B afterwards is served), and not one of the peer's requests fails meanwhile
(the peer is cached at the gateway).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import pytest

from tests.interop.conftest import require_testbed
from tests.interop.test_private_e2e import (
    APP,
    DOMAIN,
    VENV_BIN,
    World,
    gateway_cas,
    service_body,
    wait_for,
)
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

REPLICAS = {"a": (33071, 33073), "b": (33081, 33083)}


def _pg_database() -> tuple[str, str, str]:
    """(admin DSN, database name, unix-socket DSN of a fresh database)."""
    import psycopg

    from tests import pgcluster

    base = pgcluster.dsn()
    if not base:
        pytest.fail(pgcluster.unavailable_reason() or "PostgreSQL not available")
    name = "nbgw_replicas_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        sockdir = conn.execute("SHOW unix_socket_directories").fetchone()[0].split(",")[0]
    parts = urlsplit(base)
    # processes in the namespace cannot reach the root namespace's 127.0.0.1: the socket
    return base, name, f"postgresql://{parts.username}@/{name}?host={sockdir}&port={parts.port}"


class Replicas(World):
    """World with two management replicas sharing one PostgreSQL database and one
    data directory (the peer-channel server key and the first admin token)."""

    def __init__(self, tb: Testbed, store_dsn: str) -> None:
        super().__init__(tb)
        self.store_dsn = store_dsn
        self.procs: dict[str, subprocess.Popen] = {}

    def start_replica(self, name: str) -> None:
        api, grpc_port = REPLICAS[name]
        self.procs[name] = self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbmanagement",
             "--datadir", self.mgmt_dir, "--store-dsn", self.store_dsn,
             "--api-addr", f"127.0.0.1:{api}", "--grpc-addr", f"127.0.0.1:{grpc_port}"],
            stdout=self.log(f"management-{name}"), stderr=subprocess.STDOUT, cwd=self.tmp)
        wait_for(lambda: self._ok_at(api), 45, f"replica {name} REST API")
        if not self.admin:
            with open(os.path.join(self.mgmt_dir, "admin-token")) as f:
                self.admin = f.read().strip()

    def _ok_at(self, api: int) -> bool:
        try:
            with inside_netns(self.g.name):
                urllib.request.urlopen(f"http://127.0.0.1:{api}/api/openapi.json",
                                       timeout=2).read()
            return True
        except OSError:
            return False

    def rest_at(self, name: str, method: str, path: str, body=None):
        url = f"http://127.0.0.1:{REPLICAS[name][0]}/api{path}"
        req = urllib.request.Request(
            url, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.admin}", "Content-Type": "application/json"})
        with inside_netns(self.g.name), urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def rest(self, method: str, path: str, body=None, **kw):  # World's helpers: replica B
        return super().rest(method, path, body, api=f"http://127.0.0.1:{REPLICAS['b'][0]}/api",
                            **kw)


@pytest.fixture(scope="module")
def replicas():
    require_testbed("curl", "wg-quick")
    base, dbname, store_dsn = _pg_database()
    tb = Testbed()
    try:
        w = Replicas(tb, store_dsn)
        w.start_upstream()
        w.start_replica("a")
        w.start_replica("b")
        token = w.rest_at("a", "POST", "/reverse-proxies/proxy-tokens",
                          {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--mgmt", "http://127.0.0.1:33073,127.0.0.1:33083")
        wait_for(lambda: any(DOMAIN in json.dumps(c)
                             for c in w.rest_at("b", "GET", "/reverse-proxies/clusters")),
                 45, "the gateway to connect to management")
        yield w
    finally:
        left = tb.close_with_log_tails("gateway", "management-a", "management-b", "upstream",
                                       tail=5000)
        import psycopg

        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    assert not left, left


def _gateway_connections(w: Replicas) -> str:
    """The gateway's established TCP connections to the replicas' gRPC ports."""
    return w.g.run(["ss", "-Htn", "state", "established", "( dport = :33073 or dport = :33083 )"],
                   check=False).stdout


def test_change_through_b_reaches_gateway_on_a_then_a_dies(replicas):
    w = replicas
    assert ":33073" in wait_for(lambda: _gateway_connections(w) or None, 20,
                                "the gateway's gRPC connection")
    assert ":33083" not in _gateway_connections(w)  # connected to A only
    devs = w.rest_at("b", "POST", "/groups", {"name": "devs"})
    w.add_peer("alice", [devs["id"]])  # through B
    # the service is created through replica B; the gateway listens to A
    t0 = time.monotonic()
    w.rest_at("b", "POST", "/reverse-proxies/services",
              service_body("app", APP, private=True, groups=[devs["id"]]))
    ns, gw_ip, _conf = w.connect_peer("alice")
    _code, body, _err = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(
            w.curl(ns, f"https://{APP}/via-b", gw_ip=gw_ip)), 30, "app served via replica A")
    assert json.loads(body)["path"] == "/via-b"
    print(f"service created through B served through A's gateway after "
          f"{time.monotonic() - t0:.2f} s (includes the peer's tunnel set-up)")

    # requests keep flowing while replica A is killed
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            code, _body, err = w.curl(ns, f"https://{APP}/during-{i}", gw_ip=gw_ip, timeout=20)
            results.append((code, err[-200:]))
            i += 1
            time.sleep(0.05)

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(results) >= 5, 30, "requests before the kill")
        w.procs["a"].send_signal(signal.SIGKILL)
        w.procs["a"].wait(timeout=10)
        # the gateway moves to B by itself
        wait_for(lambda: ":33083" in _gateway_connections(w), 30, "the gateway to reach B")
        # a service created through B after the failover reaches the gateway
        app2 = f"app2.{DOMAIN}"
        w.rest_at("b", "POST", "/reverse-proxies/services",
                  service_body("app2", app2, private=True, groups=[devs["id"]]))
        args = ["curl", "-sS", "-m", "10", "--resolve", f"{app2}:443:{gw_ip}",
                "--cacert", gateway_cas(w.gw_dir), "-o", "/dev/null",
                "-w", "%{http_code}", f"https://{app2}/after"]
        wait_for(lambda: ns.run(args, check=False).stdout.strip() == "200", 20,
                 "app2 (created through B after A died) served")
        n_after = len(results)
        wait_for(lambda: len(results) >= n_after + 5, 30, "requests after the failover")
    finally:
        stop.set()
        t.join(30)
    failures = [r for r in results if r[0] != 200]
    print(f"{len(results)} requests around the failover, {len(failures)} failed")
    assert not failures, (len(results), failures[:5])
    assert len(results) >= 10
