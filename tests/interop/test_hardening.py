"""Hardening with real processes (issue 11 items 4 and 8):

* the gRPC failed-auth limiter: garbage tokens sent to a real ``twistd
  nbmanagement`` from the gateway's own address do not lock the real gateway
  out; its next ValidateTunnelPeer (a new private name, so a cache miss at the
  gateway) still succeeds end to end for a stock WireGuard peer;
* ``twistd nbmanagement`` binds gRPC to loopback by default and refuses a
  plaintext non-loopback bind;
* SIGTERM with a short ``--drain-timeout`` while downloads that never end run
  through the public listener and through the tunnel: both clients (curl)
  fail at once with a reset instead of hanging until their own timeout.

Topology and helpers come from :mod:`tests.interop.test_private_e2e` (``World``:
management and gateway in namespace G, wireguard-go peers in their own
namespaces); every address is inside namespaces this module creates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import DOMAIN, VENV_BIN, World, gateway_cas, wait_for

pytestmark = pytest.mark.interop

APP2 = f"app2.{DOMAIN}"
SLOW = f"slow.{DOMAIN}"
PUB = f"pub.{DOMAIN}"
DRAIN = 2.0

#: answers every GET with headers and then 1 KiB every 100 ms, for ever
SLOW_UPSTREAM = textwrap.dedent('''
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            with open(sys.argv[2], "a") as log:
                log.write(self.path + "\\n")
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 9))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"x" * 1024)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        def log_message(self, *a):
            pass
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')

#: ValidateTunnelPeer calls with the given tokens; prints one status code per call
GRPC_CALLS = textwrap.dedent('''
    import sys, grpc
    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
    target, domain, ip, *tokens = sys.argv[1:]
    stub = pb_grpc.ProxyServiceStub(grpc.insecure_channel(target))
    for token in tokens:
        md = () if token == "-" else (("authorization", "Bearer " + token),)
        try:
            r = stub.ValidateTunnelPeer(pb.ValidateTunnelPeerRequest(tunnel_ip=ip, domain=domain),
                                        metadata=md, timeout=5)
            print("OK", r.valid)
        except grpc.RpcError as e:
            print(e.code().name)
''')


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick", "ss",
                          logs=("gateway", "management"), tail=5000) as w:
        w.start_upstream()
        script = w.tb.write_file("slow_upstream.py", SLOW_UPSTREAM)
        w.slow_log = os.path.join(w.tb.tmpdir, "slow.log")
        w.g.popen([sys.executable, script, "8082", w.slow_log],
                  stdout=w.log("slow"), stderr=subprocess.STDOUT)
        w.start_management()
        w.proxy_token = w.rest("POST", "/reverse-proxies/proxy-tokens",
                               {"name": "gw"})["plain_token"]
        procs: list[subprocess.Popen] = []
        popen = w.g.popen
        w.g.popen = lambda *a, **kw: procs.append(popen(*a, **kw)) or procs[-1]
        try:
            w.start_gateway(w.proxy_token, "--drain-timeout", f"{DRAIN}s")
        finally:
            w.g.popen = popen
        w.gateway_proc = procs[0]
        wait_for(lambda: DOMAIN in str(w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        w.devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [w.devs["id"]])
        for name, domain, port, private in (("app", f"app.{DOMAIN}", 8081, True),
                                            ("app2", APP2, 8081, True),
                                            ("slow", SLOW, 8082, True),
                                            ("pub", PUB, 8082, False)):
            w.rest("POST", "/reverse-proxies/services", {
                "name": name, "domain": domain, "enabled": True, "private": private,
                **({"access_groups": [w.devs["id"]]} if private else {}),
                "targets": [{"target_id": DOMAIN, "target_type": "cluster",
                             "protocol": "http", "host": "127.0.0.1", "port": port,
                             "enabled": True, "options": {"direct_upstream": True}}]})
        w.alice = w.connect_peer("alice")[:2]
        yield w


def curl_tunnel(w, host: str, path: str = "/", *extra: str, timeout: float = 20):
    ns, gw_ip = w.alice
    return ns.run(["curl", "-sS", "-m", "10", "--resolve", f"{host}:443:{gw_ip}",
                   "--cacert", gateway_cas(w.gw_dir), "-o", "/dev/null",
                   "-w", "%{http_code}", *extra, f"https://{host}{path}"],
                  check=False, timeout=timeout)


def grpc_calls(w, domain: str, *tokens: str) -> list[str]:
    script = w.tb.write_file("grpc_calls.py", GRPC_CALLS)
    ip = w.peers["alice"]["ip"]
    r = w.g.run([sys.executable, script, "127.0.0.1:33073", domain, ip, *tokens],
                check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:-1]


def test_garbage_tokens_from_the_gateway_address_do_not_lock_it_out(world):
    # the private service works for alice (the gateway asked management once)
    r = wait_for(lambda: (lambda r: r if r.stdout == "200" else None)(
        curl_tunnel(world, f"app.{DOMAIN}")), 40, "a 200 from the private service")
    assert r.stdout == "200"
    # 8 failures from 127.0.0.1 (the gateway's own source address towards management)
    garbage = ["-", "nbx_short", "nbx_" + "A" * 36] + ["nbx_" + "B" * 36] * 5
    codes = grpc_calls(world, APP2, *garbage)
    assert codes[:5] == ["UNAUTHENTICATED"] * 5, codes
    assert set(codes[5:]) == {"RESOURCE_EXHAUSTED"}, codes  # failures are still limited
    # the valid gateway token is accepted from the same address right away ...
    assert grpc_calls(world, APP2, world.proxy_token) == ["OK True"]
    # ... and the gateway itself keeps working: a name it never validated
    # (cache miss -> ValidateTunnelPeer) is served, with more garbage in between
    assert grpc_calls(world, APP2, "-") == ["RESOURCE_EXHAUSTED"]
    r = curl_tunnel(world, APP2, "/after-garbage")
    assert r.stdout == "200", (r.stdout, r.stderr)


def test_standalone_management_grpc_is_loopback_by_default(world):
    ns = world.tb.netns()
    datadir = os.path.join(world.tmp, "mgmt2")
    twistd = os.path.join(VENV_BIN, "twistd")
    # a plaintext bind to all interfaces is refused with one line, before anything starts
    r = ns.run([twistd, "-n", "--pidfile=", "nbmanagement", "--datadir", datadir,
                "--api-addr", "127.0.0.1:34071", "--grpc-addr", ":34073"],
               check=False, timeout=30)
    assert r.returncode != 0
    assert "refusing to serve gRPC in plaintext" in r.stdout + r.stderr, (r.stdout, r.stderr)
    # the default listens on loopback only
    proc = ns.popen([twistd, "-n", "--pidfile=", "-l", "-", "nbmanagement", "--datadir",
                     datadir, "--api-addr", "127.0.0.1:34071"],
                    stdout=world.log("mgmt2"), stderr=subprocess.STDOUT, cwd=world.tmp)
    try:
        listening = wait_for(lambda: (lambda out: out if ":33073" in out else None)(
            ns.run(["ss", "-ltnH"], check=False).stdout), 30, "the gRPC listener")
        lines = [line for line in listening.splitlines() if ":33073" in line]
        # 127.0.0.1, possibly as grpc's dual-stack [::ffff:127.0.0.1]; never * or 0.0.0.0
        assert lines and all(line.split()[3] in ("127.0.0.1:33073", "[::ffff:127.0.0.1]:33073")
                             for line in lines), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_sigterm_resets_downloads_still_running_at_the_drain_timeout(world):
    """Last in this module: it stops the gateway."""
    ns, gw_ip = world.alice
    tunnel = ns.popen(["curl", "-sS", "-m", "60", "--resolve", f"{SLOW}:443:{gw_ip}",
                       "--cacert", gateway_cas(world.gw_dir), "-o", "/dev/null",
                       f"https://{SLOW}/tunnel-download"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    public = world.g.popen(["curl", "-sS", "-m", "60", "-H", f"Host: {PUB}", "-o", "/dev/null",
                            "http://127.0.0.1:8443/public-download"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def both_streaming() -> bool:
        if not os.path.exists(world.slow_log):
            return False
        with open(world.slow_log) as f:
            seen = f.read()
        return "/tunnel-download" in seen and "/public-download" in seen

    wait_for(both_streaming, 20, "both downloads to reach the upstream")
    time.sleep(0.5)
    assert tunnel.poll() is None and public.poll() is None
    t0 = time.monotonic()
    world.gateway_proc.send_signal(signal.SIGTERM)
    results = {}
    for name, proc in (("tunnel", tunnel), ("public", public)):
        try:
            _out, err = proc.communicate(timeout=DRAIN + 8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{name} download still hanging {DRAIN + 8:.0f}s after SIGTERM")
        results[name] = (proc.returncode, err.strip(), time.monotonic() - t0)
    for name, (rc, err, elapsed) in results.items():
        # curl 56: "Recv failure: Connection reset by peer" -- not 28 (its own timeout)
        assert rc == 56 and "reset" in err.lower(), (name, rc, err)
        assert elapsed < DRAIN + 5, (name, elapsed)
    world.gateway_proc.wait(timeout=20)
