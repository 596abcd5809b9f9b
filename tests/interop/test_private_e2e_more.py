"""More private-service end-to-end cases (issue 6 acceptance), real processes.

Same topology as ``test_private_e2e.py`` (its ``World`` is reused): netns G
runs ``twistd nbmanagement`` and ``twistd nbgateway --private``; stock
wireguard-go peers in their own namespaces take their configuration from the
management's ``/api/peers/{id}/wireguard-config``.

* alice (in group ``devs``) is the client;
* berta (no groups) is a *backend*: an HTTP server bound to her tunnel IP
  inside her namespace, the target of a ``type=peer`` service.

The management runs from a small launcher that wraps the management's
``ValidateTunnelPeer`` handler with a counter written to a file (no source
change; the management itself exposes no RPC counter), so "exactly one
validation RPC" is counted where the RPC is served.  A separate grpcio client
(the generated stubs in ``nbgateway/_proto``) plays a proxy without the private
capability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import (
    APP,
    DOMAIN,
    VENV_BIN,
    World,
    counter,
    service_body,
    wait_for,
)
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

SWITCH = f"sw.{DOMAIN}"
ONPEER = f"onpeer.{DOMAIN}"
MANY = f"many.{DOMAIN}"
PUB = f"pub.{DOMAIN}"
BACKEND_PORT = 9090
#: issue 6: "a service switched public -> private -> removed takes effect within 2 s"
SWITCH_BOUND = 2.0
SETUP_WAIT = 90

COUNTING_MANAGEMENT = textwrap.dedent('''
    """twistd nbmanagement with ValidateTunnelPeer calls appended to a file."""
    import sys
    from nbgateway.management import proxyrpcs
    count_file = sys.argv[1]
    served = proxyrpcs.TunnelPeerRpcs.ValidateTunnelPeer
    def counted(self, req, context, caller):
        with open(count_file, "a") as f:
            f.write(f"{req.tunnel_ip} {req.domain}\\n")
        return served(self, req, context, caller)
    proxyrpcs.TunnelPeerRpcs.ValidateTunnelPeer = counted
    sys.argv = ["twistd", *sys.argv[2:]]
    from twisted.scripts.twistd import run
    run()
''')

BACKEND = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = json.dumps({"server": "berta", "path": self.path,
                               "client": self.client_address[0],
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
''')

#: a proxy without the private capability: SyncMappings init with
#: private=false / supports_private_service=false, acks every batch, prints the
#: snapshot's (domain, private) pairs once initial_sync_complete arrives.
LEGACY_PROXY = textwrap.dedent('''
    import json, queue, sys, time
    import grpc
    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway._proto import proxy_service_pb2_grpc as rpc
    token, address, watch = sys.argv[1], sys.argv[2], sys.argv[3]
    outbox = queue.Queue()
    outbox.put(pb.SyncMappingsRequest(init=pb.SyncMappingsInit(
        proxy_id="legacy-proxy-1", version="0.0.1-test", address=address,
        capabilities=pb.ProxyCapabilities(
            supports_custom_ports=True, require_subdomain=False, supports_crowdsec=False,
            private=False, supports_private_service=False))))
    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item
    channel = grpc.insecure_channel("127.0.0.1:33073")
    stub = rpc.ProxyServiceStub(channel)
    call = stub.SyncMappings(requests(), metadata=(("authorization", f"Bearer {token}"),),
                             timeout=60)
    seen, synced = {}, False
    for msg in call:
        for m in msg.mapping:
            if synced:  # live updates after the snapshot, one JSON line each
                print(json.dumps({"domain": m.domain, "type": m.type, "private": m.private}),
                      flush=True)
            if m.type == pb.UPDATE_TYPE_REMOVED:
                seen.pop(m.domain, None)
            else:
                seen[m.domain] = m.private
        outbox.put(pb.SyncMappingsRequest(ack=pb.SyncMappingsAck()))
        if msg.initial_sync_complete and not synced:
            synced = True
            print(json.dumps(seen), flush=True)  # the snapshot
        if synced and watch not in seen:
            break  # the watched public service went away (or was never there)
    outbox.put(None)
    call.cancel()
    print("END", flush=True)
''')


class CountingWorld(World):
    """``World`` whose management counts ValidateTunnelPeer calls it serves."""

    def __init__(self, tb: Testbed) -> None:
        super().__init__(tb)
        self.rpc_log = os.path.join(self.tmp, "validate-tunnel-peer.calls")
        open(self.rpc_log, "w").close()

    def start_management(self) -> None:
        launcher = self.tb.write_file("counting_management.py", COUNTING_MANAGEMENT)
        self.mgmt_proc = self.g.popen(
            [sys.executable, launcher, self.rpc_log, "-n", "--pidfile=", "-l", "-",
             "nbmanagement", "--datadir", self.mgmt_dir, "--api-addr", "127.0.0.1:33071",
             "--grpc-addr", "127.0.0.1:33073"],
            stdout=self.log("management"), stderr=subprocess.STDOUT, cwd=self.tmp,
            env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}"))
        wait_for(lambda: self._get_ok("/openapi.json"), 30, "management REST API")
        with open(os.path.join(self.mgmt_dir, "admin-token")) as f:
            self.admin = f.read().strip()

    def validations(self, domain: str) -> list[str]:
        with open(self.rpc_log) as f:
            return [line.split()[0] for line in f if line.split()[1:] == [domain]]

    def public_curl(self, host: str, path: str = "/") -> int:
        """A request on the gateway's public listener (127.0.0.1:8443 in G),
        from this process (no subprocess start in the timed polls)."""
        req = urllib.request.Request(f"http://127.0.0.1:8443{path}", headers={"Host": host})
        try:
            with inside_netns(self.g.name), urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            exc.read()
            return exc.code
        except OSError:
            return 0

    def peer_curl(self, name: str, host: str, path: str = "/") -> tuple[int, str]:
        ns, gw_ip = self.conns[name]
        r = ns.run(["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}",
                    "--resolve", f"{host}:80:{gw_ip}", f"http://{host}{path}"],
                   check=False, timeout=10)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body


def _status_is(expected: int, probe):
    return lambda: (lambda c: c if c == expected else None)(probe())


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(CountingWorld, "curl", "wg-quick",
                          logs=("gateway", "management", "upstream")) as w:
        w.conns = {}
        w.start_upstream()
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        # setup waits are generous (a shared, busy machine); they bound, not measure
        wait_for(lambda: DOMAIN in json.dumps(w.rest("GET", "/reverse-proxies/clusters")),
                 SETUP_WAIT, "the gateway to connect to management")
        w.devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [w.devs["id"]])
        w.add_peer("berta", [])
        # the account's first service makes the gateway join as a proxy peer
        w.app = w.rest("POST", "/reverse-proxies/services", service_body(
            "app", APP, private=True, groups=(w.devs["id"],)))
        alice = wait_for(lambda: w._config_with_proxy(w.peers["alice"]["id"]), SETUP_WAIT,
                         "the gateway's proxy peer in alice's wireguard-config", interval=0.25)
        w.conns["alice"] = w.connect_peer("alice", alice)[:2]
        # no service targets berta yet, so management lists no gateway in her
        # config (the gateway would drop her handshakes until one does); she
        # gets the gateway's section, as a config written later would have it
        berta = w.rest("GET", f"/peers/{w.peers['berta']['id']}/wireguard-config")
        assert "[Peer]" not in berta and "left out of this config" in berta, berta
        w.conns["berta"] = w.connect_peer("berta", berta + "\n" + alice[alice.index("[Peer]"):])[:2]
        yield w


def test_direct_upstream_target_and_target_on_a_peer(world):
    # direct_upstream: the upstream on the gateway host's network (127.0.0.1:8081 in G)
    _code, body = wait_for(_status_pair(world, "alice", APP, "/direct"), 30,
                          "the direct_upstream service")
    assert json.loads(body)["path"] == "/direct"

    # a target on a peer: berta serves on her tunnel IP; the gateway dials it
    # through its netstack and WireGuard (not direct_upstream)
    berta = world.peers["berta"]
    ns_b, _ = world.conns["berta"]
    script = world.tb.write_file("backend.py", BACKEND)
    ns_b.popen([sys.executable, script, berta["ip"], str(BACKEND_PORT)],
               stdout=world.log("backend"), stderr=subprocess.STDOUT)
    svc = world.rest("POST", "/reverse-proxies/services", {
        "name": "onpeer", "domain": ONPEER, "enabled": True, "private": True,
        "access_groups": [world.devs["id"]],
        "targets": [{"target_id": berta["id"], "target_type": "peer", "protocol": "http",
                     "port": BACKEND_PORT, "enabled": True}]})
    assert svc["targets"][0]["host"] == berta["ip"]  # management resolved the peer's IP
    _code, body = wait_for(_status_pair(world, "alice", ONPEER, "/on/peer"), 30,
                          "the service whose target is on berta")
    seen = json.loads(body)
    assert seen["server"] == "berta" and seen["path"] == "/on/peer"
    # berta saw the gateway's tunnel address as the client: it came through WireGuard
    _ns_a, gw_ip = world.conns["alice"]
    assert seen["client"] == gw_ip
    assert seen["headers"]["x-forwarded-for"] == world.peers["alice"]["ip"]
    assert "devs" in seen["headers"]["x-netbird-groups"].split(",")


def _status_pair(world, peer: str, host: str, path: str):
    def probe():
        code, body = world.peer_curl(peer, host, path)
        return (code, body) if code == 200 else None
    return probe


def test_thousand_requests_one_validation_rpc_counted_at_management(world):
    world.rest("POST", "/reverse-proxies/services", service_body(
        "many", MANY, private=True, groups=(world.devs["id"],)))
    ns, gw_ip = world.conns["alice"]
    # the service exists on the gateway once the roster short-circuit passes;
    # wait on the public listener's answer (403 there: it is private), which
    # costs no validation RPC
    wait_for(_status_is(403, lambda: world.public_curl(MANY)), 30, "the mapping on the gateway")
    # creating a private service with access groups also changes what the
    # account's validations depend on, so management pushes the proxy peer a
    # new network map (coalesced, ~50 ms after the change) and the gateway
    # empties the account's cache when it lands.  Let that happen before the
    # run: this test counts RPCs for a steady cache, not across a revocation.
    time.sleep(1.5)
    assert world.validations(MANY) == []
    misses_before = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                            result="miss")
    cfg = world.tb.write_file("many-more.curl", "".join(
        f'url = "http://{MANY}/n{i}"\noutput = "/dev/null"\n' for i in range(1000)))
    r = ns.run(["curl", "-sS", "-m", "150", "--resolve", f"{MANY}:80:{gw_ip}",
                "-w", "%{http_code}\n", "-K", cfg], check=False, timeout=180)
    codes = r.stdout.split()
    assert codes.count("200") == 1000, (codes[:5], r.stderr[-500:])
    # counted where the RPC is served: exactly one, for alice's tunnel IP
    assert world.validations(MANY) == [world.peers["alice"]["ip"]]
    misses_after = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                           result="miss")
    assert misses_after - misses_before == 1
    # and one access-log entry per request reached the management (batched,
    # asynchronous); alice's only (the public-listener probe above is logged too)
    query = f"host={MANY}&source_ip={world.peers['alice']['ip']}&page_size=1"
    total = wait_for(lambda: (lambda n: n if n >= 1000 else None)(world.rest(
        "GET", f"/events/proxy?{query}")["total_records"]),
        SETUP_WAIT, "the access log entries at the management", interval=0.5)
    assert total == 1000


def test_service_switched_public_private_removed_within_2s(world):
    body = service_body("sw", SWITCH, private=False)
    svc = world.rest("POST", "/reverse-proxies/services", body)
    wait_for(_status_is(200, lambda: world.public_curl(SWITCH)), 30, "the public service")
    assert world.peer_curl("alice", SWITCH)[0] == 200  # public services also on the tunnel

    # public -> private (PUT is a full replace)
    private = dict(body, private=True, access_groups=[world.devs["id"]])
    world.rest("PUT", f"/reverse-proxies/services/{svc['id']}", private)
    t0 = time.monotonic()
    wait_for(_status_is(403, lambda: world.public_curl(SWITCH)), SWITCH_BOUND,
             "the public listener to refuse the now-private service", interval=0.05)
    took_private = time.monotonic() - t0
    assert world.peer_curl("alice", SWITCH)[0] == 200  # group peer still served

    # removed
    world.rest("DELETE", f"/reverse-proxies/services/{svc['id']}")
    t0 = time.monotonic()
    wait_for(_status_is(404, lambda: world.public_curl(SWITCH)), SWITCH_BOUND,
             "the removed service to be gone on the public listener", interval=0.05)
    took_removed = time.monotonic() - t0
    assert world.peer_curl("alice", SWITCH)[0] == 404
    print(f"public->private took {took_private:.3f} s, removal {took_removed:.3f} s")


def test_proxy_without_private_capability_never_gets_private_mapping(world):
    body = service_body("pub", PUB, private=False)
    pub = world.rest("POST", "/reverse-proxies/services", body)
    wait_for(_status_is(200, lambda: world.public_curl(PUB)), 30, "the public service")
    token = world.rest("POST", "/reverse-proxies/proxy-tokens",
                       {"name": "legacy"})["plain_token"]
    script = world.tb.write_file("legacy_proxy.py", LEGACY_PROXY)
    proc = world.g.popen([sys.executable, script, token, DOMAIN, PUB],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()[-2000:] if proc.poll() is not None else "no snapshot"
        snapshot = json.loads(first)
        assert snapshot.get(PUB) is False  # the public service is there
        for private in (APP, MANY, ONPEER):
            assert private not in snapshot, snapshot
        assert not any(snapshot.values()), snapshot
        # live: the public service turns private -> this proxy is told to drop
        # it, and never sees it as a private mapping
        world.rest("PUT", f"/reverse-proxies/services/{pub['id']}",
                   dict(body, private=True, access_groups=[world.devs["id"]]))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.splitlines()
    assert lines and lines[-1] == "END", (out, err[-2000:])
    updates = [json.loads(line) for line in lines[:-1]]
    removed = pb.UPDATE_TYPE_REMOVED
    assert any(u["domain"] == PUB and u["type"] == removed for u in updates), updates
    # nothing it received after the snapshot was a private mapping to serve
    assert not any(u["private"] and u["type"] != removed for u in updates), updates
    # the gateway (private-capable) serves it as private now, and its own
    # private service meanwhile
    wait_for(_status_is(403, lambda: world.public_curl(PUB)), 30, "pub private on the gateway")
    assert world.peer_curl("alice", PUB)[0] == 200
    assert world.peer_curl("alice", APP)[0] == 200


def test_management_rest_still_answers(world):
    """Guard against the legacy proxy having disturbed the cluster: the
    gateway's cluster stays listed as connected."""
    try:
        clusters = world.rest("GET", "/reverse-proxies/clusters")
    except urllib.error.HTTPError as exc:  # pragma: no cover - diagnostic
        raise AssertionError(exc.read()) from exc
    assert DOMAIN in json.dumps(clusters)
