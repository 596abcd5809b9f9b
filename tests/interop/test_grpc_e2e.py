"""gRPC through the gateway end to end (issue 16, "gRPC and h2c upstreams"):
a grpcio client and a grpcio server in real processes, the service's target
configured over REST with ``upstream_protocol: h2``.

- private service: the client runs in a stock wireguard-go peer's namespace
  and calls ``app.gw.test`` on the gateway's tunnel TLS listener (ALPN h2,
  the gateway's local CA), so the call crosses WireGuard, the userspace
  netstack, the private gate and the reverse proxy;
- the same private service over cleartext HTTP/2 with prior knowledge (h2c)
  on the tunnel's plain port 80;
- public service: the same client on the gateway host calls ``grpc.gw.test``
  on the public listener.

Both reach a grpcio server on the gateway host's loopback over h2c (prior
knowledge, ``direct_upstream`` allowed for 127.0.0.1/32).  Unary and
server-streaming calls; request metadata reaches the upstream next to the
gateway's identity metadata (private), response metadata, trailing metadata
(text and binary) and an error status with details and trailing metadata
reach the client.

Real processes as in ``test_private_e2e.py`` (whose ``World`` is reused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.test_private_e2e import APP, DOMAIN, World, gateway_cas, wait_for

pytestmark = pytest.mark.interop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUBLIC_APP = f"grpc.{DOMAIN}"

SERVER = textwrap.dedent('''
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.proxy._grpc import EchoGrpc

    class Logged(EchoGrpc):
        def _unary(self, request, context):
            out = super()._unary(request, context)
            with open(sys.argv[3], "a") as f:
                f.write(json.dumps({k: v for k, v in self.metadata[-1].items()
                                    if isinstance(v, str)}) + "\\n")
            return out

    server = Logged(host=sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1",
                    port=int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    server.release.set()  # no pause between streamed messages here
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(server.port))
    import os
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    while True:
        time.sleep(3600)
''')

CLIENT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import grpc
    from tests.proxy._grpc import method
    target_port, ca_path = int(sys.argv[2]), sys.argv[3]
    authority, address = sys.argv[4], sys.argv[5]
    if ca_path == "plain":  # h2c with prior knowledge on a plain listener
        channel = grpc.insecure_channel(f"{address}:{target_port}",
                                        options=[("grpc.default_authority", authority)])
    else:
        ca = open(ca_path, "rb").read()
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        channel = grpc.secure_channel(f"{address}:{target_port}", creds, options=[
            ("grpc.ssl_target_name_override", authority),
            ("grpc.default_authority", authority)])
    out = {}
    reply, call = method(channel, "Unary").with_call(
        b"ping", metadata=(("x-req", "r1"), ("x-netbird-user", "mallory")), timeout=15)
    out["unary"] = reply.decode()
    out["initial"] = [list(m) for m in call.initial_metadata()]
    out["trailing"] = {k: (v.hex() if isinstance(v, bytes) else v)
                       for k, v in call.trailing_metadata()}
    it = method(channel, "Stream", "unary_stream")(b"3", timeout=15)
    out["stream"] = [m.decode() for m in it]
    out["stream_trailing"] = dict(it.trailing_metadata())
    try:
        method(channel, "Fail")(b"x", timeout=15)
        out["fail"] = None
    except grpc.RpcError as exc:
        out["fail"] = [exc.code().name, exc.details(), dict(exc.trailing_metadata())]
    print(json.dumps(out))
''')


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick") as w:
        w.grpc_log = os.path.join(w.tmp, "grpc-metadata.log")
        port_file = os.path.join(w.tmp, "grpc.port")
        script = w.tb.write_file("grpc_server.py", SERVER)
        w.g.popen([sys.executable, script, REPO, port_file, w.grpc_log],
                  stdout=w.log("grpc-upstream"), stderr=subprocess.STDOUT)
        w.grpc_port = int(wait_for(lambda: _read(port_file), 30, "the grpcio upstream"))
        w.client_script = w.tb.write_file("grpc_client.py", CLIENT)
        w.start_connected_gateway()
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [devs["id"]])
        target = {"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                  "host": "127.0.0.1", "port": w.grpc_port, "enabled": True,
                  "options": {"direct_upstream": True, "upstream_protocol": "h2"}}
        svc = w.rest("POST", "/reverse-proxies/services", {
            "name": "app", "domain": APP, "enabled": True, "private": True,
            "access_groups": [devs["id"]], "targets": [target]})
        assert svc["targets"][0]["options"]["upstream_protocol"] == "h2"
        w.rest("POST", "/reverse-proxies/services", {
            "name": "grpcpub", "domain": PUBLIC_APP, "enabled": True, "private": False,
            "targets": [target]})
        w.add_peer("berta", [])
        w.alice = w.connect_peer("alice")
        # berta is in no group: her config lists no gateway until a service
        # targets her; she gets the gateway's section as a later config would
        berta = w.rest("GET", f"/peers/{w.peers['berta']['id']}/wireguard-config")
        alice_conf = w.alice[2]
        w.berta = w.connect_peer("berta", berta + "\n" + alice_conf[alice_conf.index("[Peer]"):])
        yield w


def _call(world: World, ns, address: str, port: int, authority: str,
          plain: bool = False) -> dict | None:
    ca = "plain" if plain else gateway_cas(world.gw_dir)
    r = ns.run([sys.executable, world.client_script, REPO, str(port), ca, authority, address],
               check=False, timeout=60)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check(result: dict) -> None:
    assert result["unary"] == "echo:ping"
    assert ["x-initial", "hello"] in result["initial"]
    assert result["trailing"]["x-trailing"] == "bye"
    assert result["trailing"]["x-trail-bin"] == "0001ff"
    assert result["stream"] == ["msg0", "msg1", "msg2"]
    assert result["stream_trailing"]["x-count"] == "3"
    code, details, trailing = result["fail"]
    assert (code, details, trailing["x-why"]) == ("PERMISSION_DENIED", "nope: denied", "because")
    assert "set-cookie" not in trailing  # the gateway's own headers stay in the head


def test_private_service_whose_grpc_server_is_on_a_peer(world):
    """The upstream on berta's tunnel address: the gateway dials it through
    its netstack and WireGuard (no direct_upstream), h2c over the tunnel."""
    berta = world.peers["berta"]
    ns_b = world.berta[0]
    log = os.path.join(world.tmp, "grpc-berta.log")
    port_file = os.path.join(world.tmp, "grpc-berta.port")
    ns_b.popen([sys.executable, os.path.join(world.tb.tmpdir, "grpc_server.py"), REPO,
                port_file, log, berta["ip"], "50051"],
               stdout=world.log("grpc-berta"), stderr=subprocess.STDOUT)
    wait_for(lambda: _read(port_file), 30, "the grpcio server on berta")
    devs = next(g for g in world.rest("GET", "/groups") if g["name"] == "devs")
    onpeer = f"onpeer.{DOMAIN}"
    svc = world.rest("POST", "/reverse-proxies/services", {
        "name": "onpeer", "domain": onpeer, "enabled": True, "private": True,
        "access_groups": [devs["id"]],
        "targets": [{"target_id": berta["id"], "target_type": "peer", "protocol": "http",
                     "port": 50051, "enabled": True,
                     "options": {"upstream_protocol": "h2"}}]})
    assert svc["targets"][0]["host"] == berta["ip"]
    ns, gw_ip, _conf = world.alice
    result = wait_for(lambda: _call(world, ns, gw_ip, 443, onpeer), 60,
                      "a gRPC call to the server on berta")
    _check(result)
    with open(log) as f:
        seen = [json.loads(line) for line in f if line.strip()][-1]
    assert seen["x-req"] == "r1"
    assert "devs" in seen["x-netbird-groups"].split(",")


def _upstream_metadata(world: World) -> list[dict]:
    with open(world.grpc_log) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_private_service_over_the_tunnel(world):
    ns, gw_ip, _conf = world.alice
    result = wait_for(lambda: _call(world, ns, gw_ip, 443, APP), 60,
                      "a gRPC call through the tunnel")
    _check(result)
    seen = _upstream_metadata(world)[-1]
    assert seen["x-req"] == "r1"
    assert seen["x-netbird-user"] and seen["x-netbird-user"] != "mallory"
    assert "devs" in seen["x-netbird-groups"].split(",")
    assert seen["x-forwarded-proto"] == "https"


def test_private_service_h2c_on_the_tunnel_plain_port(world):
    """Cleartext HTTP/2 with prior knowledge on the tunnel's port 80 (the
    tunnel is the encryption): the same calls."""
    ns, gw_ip, _conf = world.alice
    result = wait_for(lambda: _call(world, ns, gw_ip, 80, APP, plain=True), 60,
                      "a gRPC call over h2c through the tunnel")
    _check(result)
    seen = _upstream_metadata(world)[-1]
    assert seen["x-netbird-user"] and seen["x-forwarded-proto"] == "http"


def test_public_service_on_the_public_listener(world):
    result = wait_for(lambda: _call(world, world.g, "127.0.0.1", 8443, PUBLIC_APP), 60,
                      "a gRPC call on the public listener")
    _check(result)
    seen = _upstream_metadata(world)[-1]
    assert seen["x-req"] == "r1"
    assert seen.get("x-netbird-user", "") != "mallory"  # spoofed identity removed
