"""Operator-auth benchmark: what a password/PIN/header check costs, and that a
cookie-authenticated request costs no RPC.

1. **argon2id**: single-thread verifications per second of a PIN hash made by
   the management store's hasher (the cost parameters it stores).
2. **Authenticate RPCs/s**: a real ProxyGrpcService on loopback (SQLite store,
   a PIN service), ``--threads`` client threads calling ``Authenticate`` with
   the right PIN (each call one argon2id verification and, on success, one
   Ed25519 signature), printed beside the raw argon2id rate times the cores.
3. **cookie vs unauthenticated**: an in-process gateway front resource on
   loopback TCP in front of a small upstream; ``wrk`` (Debian) with
   ``--connections`` keep-alive connections against a service without auth and
   against a PIN service with a valid ``nb_session`` cookie, rounds
   interleaved; the ratio of medians and the number of management RPCs during
   the cookie runs (must be 0).

Usage: ``.venv/bin/python bench/public_auth.py [--seconds 5] [--rounds 3]``.
Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def argon2_rate(seconds: float) -> float:
    from nbgateway.management.store import _secrets

    phc = _secrets.hash_secret("123456")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        assert _secrets.verify_secret(phc, "123456")
        n += 1
    return n / (time.perf_counter() - start)


def authenticate_rate(seconds: float, threads: int) -> float:
    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway.management.model import AuthConfig, PinAuth
    from nbgateway.management.store import Store
    from tests.management.test_grpc_support import Fixture, Harness, make_service, md

    tmp = tempfile.mkdtemp(prefix="nbgw-bench-auth-")
    store = Store.open(f"sqlite:///{tmp}/store.db", known_clusters=["eu.proxy.netbird.io"])
    try:
        fx = Fixture(store)
        svc = store.services.create(make_service("bench", auth=AuthConfig(
            pin_auth=PinAuth(True, "123456"))))
        h = Harness(store)
        req = pb.AuthenticateRequest(id=svc.id, account_id=svc.account_id,
                                     pin=pb.PinRequest(pin="123456"))
        meta = md(fx.token)
        counts = [0] * threads
        stop = time.perf_counter() + seconds

        def worker(i: int) -> None:
            while time.perf_counter() < stop:
                # each thread its own address: the guess limiter only counts failures
                assert h.stub.Authenticate(req, metadata=(*meta, ("x-nbgw-client-ip",
                                                                  f"192.0.2.{i}"))).success
                counts[i] += 1

        start = time.perf_counter()
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        rate = sum(counts) / (time.perf_counter() - start)
        h.close()
        return rate
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


GATEWAY = r'''
import json, sys
from twisted.internet import defer, reactor
from twisted.web import resource, server
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping

up_port, gw_port, pub = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

class Up(resource.Resource):
    isLeaf = True
    def render(self, request):
        return b"x" * 512

class Counting:
    rpcs = 0
    def __getattr__(self, name):
        def call(*a, **kw):
            Counting.rpcs += 1
            return defer.fail(RuntimeError("no management in this benchmark"))
        return call

def mapping(domain, **auth):
    return pb.ProxyMapping(id="svc-" + domain, account_id="acct", domain=domain,
        path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{up_port}/",
                             options=pb.PathTargetOptions(direct_upstream=True))],
        auth=pb.Authentication(session_key=pub, **auth))

entries = {m.domain: entry_from_mapping(m) for m in (
    mapping("open.bench"), mapping("pin.bench", pin=True))}
pools = UpstreamPools(reactor)
proxy = ReverseProxy(reactor, pools, lambda acct, direct: DirectDialer(reactor))
client = Counting()
gw = GatewayResource(lookup=entries.get, proxy=proxy, gate=None, auth_client=client)

class Rpcs(resource.Resource):
    isLeaf = True
    def render(self, request):
        return json.dumps({"rpcs": Counting.rpcs}).encode()

reactor.listenTCP(up_port, server.Site(Up()), interface="127.0.0.1")
reactor.listenTCP(gw_port, ProxySite(gw), interface="127.0.0.1")
reactor.listenTCP(gw_port + 1, server.Site(Rpcs()), interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrk(port: int, host: str, seconds: float, connections: int, cookie: str = "") -> float:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-H", f"Host: {host}"]
    if cookie:
        args += ["-H", f"Cookie: nb_session={cookie}"]
    out = subprocess.run([*args, f"http://127.0.0.1:{port}/"], capture_output=True,
                         text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors against {host}:\n{out}")
    return float(next(line.split()[1] for line in out.splitlines()
                      if line.startswith("Requests/sec")))


def cookie_vs_open(seconds: float, rounds: int, connections: int) -> dict:
    import urllib.request

    from nbgateway.management import sessionjwt
    from nbgateway.management.store._secrets import generate_session_keys

    priv, pub = generate_session_keys()
    token = sessionjwt.sign_session(priv, subject="pin-user", domain="pin.bench", method="pin")
    up, gw = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-c", GATEWAY, str(up), str(gw), pub],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for _ in range(50):
            line = proc.stdout.readline()
            if not line or line.strip() == "ready":
                break
        else:
            raise SystemExit("the benchmark gateway did not start")
        opened, cookie = [], []
        for _ in range(rounds):
            opened.append(_wrk(gw, "open.bench", seconds, connections))
            cookie.append(_wrk(gw, "pin.bench", seconds, connections, token))
        with urllib.request.urlopen(f"http://127.0.0.1:{gw + 1}/") as r:
            rpcs = json.loads(r.read())["rpcs"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    o, c = statistics.median(opened), statistics.median(cookie)
    return {"unauthenticated_rps": round(o), "cookie_rps": round(c),
            "cookie_vs_unauthenticated": round(c / o, 3), "management_rpcs": rpcs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    raw = argon2_rate(args.seconds)
    rpc = authenticate_rate(args.seconds, args.threads)
    print(json.dumps({"argon2id_verifications_per_s_one_core": round(raw, 1),
                      "argon2id_ceiling_all_cores": round(raw * cores, 1),
                      "authenticate_rpcs_per_s": round(rpc, 1),
                      "authenticate_vs_ceiling": round(rpc / (raw * cores), 3)}))
    if shutil.which("wrk"):
        print(json.dumps(cookie_vs_open(args.seconds, args.rounds, args.connections)))
    else:
        print("wrk not installed: cookie benchmark skipped")


if __name__ == "__main__":
    main()
