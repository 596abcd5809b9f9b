"""Private services end to end (issue 6 acceptance), with real processes:

    netns G (gateway host)                         netns A / B / C (stock WireGuard peers)
      twistd nbmanagement (REST 33071, gRPC 33073)    wireguard-go, configured from
      twistd nbgateway --mgmt ... --private             GET /api/peers/{id}/wireguard-config
      upstream HTTP server 127.0.0.1:8081              curl, kernel TCP stack
      198.18.0.1 (lo) <--- veth 198.18.N.0/30 ---> 198.18.N.2

Every address is inside namespaces this test creates.  Peer A is in the access
group, B is not, C is in the group but only talks after management went away.
The test drives management through its REST API (sockets opened inside G) and
the peers with curl inside their namespaces; names are resolved through the
gateway's DNS responder on its tunnel address, and certificates are verified
against the gateway's local CA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from tests.interop.conftest import world_on_testbed
from tests.interop.testbed import KeyPair, Testbed, inside_netns

pytestmark = pytest.mark.interop

VENV_BIN = os.path.dirname(sys.executable)
GW_HOST = "198.18.0.1"
WG_PORT = 51820
API = "http://127.0.0.1:33071/api"
DOMAIN = "gw.test"
APP = f"app.{DOMAIN}"

UPSTREAM = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes
        def do_GET(self):
            body = json.dumps({"path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            with open(sys.argv[2], "a") as log:
                log.write(self.path + "\\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer((sys.argv[3], int(sys.argv[1])), H).serve_forever()
''')

DNS_QUERY = textwrap.dedent('''
    import socket, struct, sys
    name, server = sys.argv[1], sys.argv[2]
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    q += struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (server, 53)); r = s.recv(4096)
    rcode = r[3] & 15; an = struct.unpack("!H", r[6:8])[0]
    if rcode or not an:
        print("RCODE", rcode); sys.exit(1)
    print(socket.inet_ntoa(r[-4:]))
''')


def gateway_cas(gw_dir: str) -> str:
    """A PEM bundle of every local CA of the gateway in ``gw_dir`` (its own
    ``ca.crt`` and each account's ``account-cas/*/ca.crt``), written now
    beside it: what ``curl --cacert`` needs to verify any of its leaves."""
    import glob as _glob

    parts = [os.path.join(gw_dir, "ca.crt"),
             *sorted(_glob.glob(os.path.join(gw_dir, "account-cas", "*", "ca.crt")))]
    out = os.path.join(os.path.dirname(gw_dir.rstrip("/")),
                       os.path.basename(gw_dir.rstrip("/")) + "-cas.pem")
    text = ""
    for path in parts:
        if os.path.exists(path):
            with open(path) as src:
                text += src.read()
    import threading

    tmp = f"{out}.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as f:  # callers run curl from several threads at once
        f.write(text)
    os.replace(tmp, out)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class World:
    """The namespaces, processes and REST client of one test module."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.g = tb.netns()
        self.tmp = tb.tmpdir
        self.g.ip("addr", "add", f"{GW_HOST}/32", "dev", "lo")
        self.mgmt_dir = os.path.join(self.tmp, "mgmt")
        self.gw_dir = os.path.join(self.tmp, "gw")
        self.upstream_log = os.path.join(self.tmp, "upstream.log")
        self.admin = ""
        self.mgmt_proc = None
        self.peers: dict[str, dict] = {}
        self.n_links = 0

    # -- processes
    def log(self, name: str):
        return open(os.path.join(self.tmp, f"{name}.log"), "ab")

    def start_upstream(self, port: int = 8081, host: str = "127.0.0.1", ns=None) -> None:
        script = os.path.join(self.tmp, "upstream.py")
        with open(script, "w") as f:
            f.write(UPSTREAM)
        (ns or self.g).popen([sys.executable, script, str(port), self.upstream_log, host],
                             stdout=self.log("upstream"), stderr=subprocess.STDOUT)

    def start_management(self) -> None:
        self.mgmt_proc = self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbmanagement",
             "--datadir", self.mgmt_dir, "--api-addr", "127.0.0.1:33071",
             "--grpc-addr", "127.0.0.1:33073"],
            stdout=self.log("management"), stderr=subprocess.STDOUT, cwd=self.tmp)
        wait_for(lambda: self._get_ok("/openapi.json"), 30, "management REST API")
        with open(os.path.join(self.mgmt_dir, "admin-token")) as f:
            self.admin = f.read().strip()

    def stop_management(self) -> None:
        self.mgmt_proc.send_signal(signal.SIGTERM)
        self.mgmt_proc.wait(timeout=20)

    #: the harness upstream is on the gateway host's loopback (direct_upstream);
    #: the gateway's dial guard allows only what NB_PROXY_DIRECT_UPSTREAM_ALLOW lists
    direct_upstream_allow = "127.0.0.1/32"

    def start_gateway(self, token: str, *extra_args: str) -> None:
        """``extra_args`` are appended to the command line (a repeated flag wins)."""
        env = dict(os.environ, NB_PROXY_TOKEN=token)
        env.setdefault("NB_PROXY_DIRECT_UPSTREAM_ALLOW", self.direct_upstream_allow)
        self.g.popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "-l", "-", "nbgateway",
             "--mgmt", "http://127.0.0.1:33073", "--domain", DOMAIN, "--private",
             "--wg-port", str(WG_PORT), "--wg-endpoint", f"{GW_HOST}:{WG_PORT}",
             "--addr", "127.0.0.1:8443", "--health-addr", "127.0.0.1:8080",
             "--datadir", self.gw_dir, "--cert-dir", os.path.join(self.gw_dir, "certs"),
             *extra_args],
            stdout=self.log("gateway"), stderr=subprocess.STDOUT, cwd=self.tmp, env=env)

    def start_connected_gateway(self, *extra_args: str, timeout: float = 30.0) -> str:
        """Management, a proxy token, and a gateway started with it
        (``extra_args`` as :meth:`start_gateway`); returns the token once the
        gateway's cluster is listed by management."""
        self.start_management()
        token = self.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        self.start_gateway(token, *extra_args)
        wait_for(lambda: DOMAIN in json.dumps(self.rest("GET", "/reverse-proxies/clusters")),
                 timeout, "the gateway to connect to management")
        return token

    # -- REST inside G
    def _get_ok(self, path: str) -> bool:
        try:
            with inside_netns(self.g.name):
                urllib.request.urlopen(API + path, timeout=2).read()
            return True
        except OSError:
            return False

    def admin_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``nbgateway-admin`` (this venv's) against the management as the
        instance admin; with ``check``, a non-zero exit fails the test."""
        r = self.g.run([os.path.join(VENV_BIN, "nbgateway-admin"),
                        "--url", API[:-len("/api")], "--token", self.admin, *args], check=False)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def rest(self, method: str, path: str, body=None, *, token: str | None = None,
             api: str = API):
        """A REST call from inside G to ``api`` as the instance admin (or as ``token``'s
        user): the decoded JSON, else the text; raises HTTPError on >= 400."""
        auth = self.admin if token is None else token
        req = urllib.request.Request(
            api + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {auth}", "Content-Type": "application/json"})
        with inside_netns(self.g.name), urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def metrics(self) -> str:
        url = "http://127.0.0.1:8080/metrics"
        with inside_netns(self.g.name), urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    # -- peers
    def add_peer(self, name: str, groups: list[str]) -> dict:
        peer = self.rest("POST", "/peers", {"name": name, "groups": groups})
        self.peers[name] = peer
        return peer

    def connect_peer(self, name: str, conf: str | None = None):
        """A namespace with wireguard-go configured from the management's
        wg-quick config for ``name`` (the stock-client path), or from ``conf``."""
        peer = self.peers[name]
        conf = conf or wait_for(lambda: self._config_with_proxy(peer["id"]), 30,
                                f"a [Peer] section in {name}'s wireguard-config")
        ns = self.tb.netns()
        self.n_links += 1
        self.tb.veth(self.g, f"198.18.{self.n_links}.1/30",
                            ns, f"198.18.{self.n_links}.2/30")
        ns.ip("route", "add", f"{GW_HOST}/32", "via", f"198.18.{self.n_links}.1")
        keys = KeyPair(__import__("base64").b64decode(peer["private_key"]),
                       __import__("base64").b64decode(peer["public_key"]))
        wg = self.tb.wireguard_go(ns, keys=keys)
        path = self.tb.write_file(f"{name}.conf", conf)
        stripped = ns.run(["wg-quick", "strip", path]).stdout
        ns.run(["wg", "setconf", wg.ifname, "/dev/stdin"], input=stripped)
        address = re.search(r"^Address\s*=\s*(.+)$", conf, re.M).group(1)
        for cidr in address.split(","):
            ns.add_address(wg.ifname, cidr.strip())
        gw_ip = re.search(r"^AllowedIPs\s*=\s*([0-9.]+)/32", conf, re.M).group(1)
        ns.add_route(wg.ifname, f"{gw_ip}/32")
        return ns, gw_ip, conf

    def _config_with_proxy(self, peer_id: str) -> str | None:
        conf = self.rest("GET", f"/peers/{peer_id}/wireguard-config")
        return conf if "[Peer]" in conf else None

    def curl(self, ns, url: str, *extra: str, gw_ip: str, timeout: float = 15):
        args = ["curl", "-sS", "-m", "10", "--resolve", f"{APP}:443:{gw_ip}",
                "--resolve", f"{APP}:80:{gw_ip}",
                "--cacert", gateway_cas(self.gw_dir),
                "-o", "-", "-w", "\n%{http_code}", *extra, url]
        r = ns.run(args, check=False, timeout=timeout)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body, r.stderr


def upstream_target(port: int = 8081) -> dict:
    """The cluster target of the interop services: the test upstream
    (:meth:`World.start_upstream`) on 127.0.0.1:``port``, reached directly."""
    return {"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
            "host": "127.0.0.1", "port": port, "enabled": True,
            "options": {"direct_upstream": True}}


def service_body(name: str, domain: str, *, private: bool | None = None,
                 groups=(), **fields) -> dict:
    """A REST service body on :func:`upstream_target`: ``private`` only when given,
    ``access_groups`` only when ``groups`` is not empty, ``fields`` (``auth``, ...) as
    they are."""
    body: dict = {"name": name, "domain": domain, "enabled": True}
    if private is not None:
        body["private"] = private
    if groups:
        body["access_groups"] = list(groups)
    body["targets"] = [upstream_target()]
    body.update(fields)
    return body


def upstream_requests(world) -> int:
    with open(world.upstream_log) as f:
        return f.read().count("\n")


def counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def world():
    with world_on_testbed(World, "curl", "wg-quick",
                          logs=("gateway", "management", "upstream"), tail=6000) as w:
        w.start_upstream()
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: any(c.get("address") == DOMAIN or c.get("domain") == DOMAIN
                             or DOMAIN in json.dumps(c)
                             for c in w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.devs = devs
        for name, groups in (("alice", [devs["id"]]), ("bob", []), ("carol", [devs["id"]])):
            w.add_peer(name, groups)
        w.service = w.rest("POST", "/reverse-proxies/services",
                           service_body("app", APP, private=True, groups=[devs["id"]]))
        yield w


def test_peer_in_group_reaches_private_service_with_identity(world):
    ns, gw_ip, conf = world.connect_peer("alice")
    world.alice = (ns, gw_ip)
    # the name resolves through the gateway's DNS on its tunnel address
    dns_server = re.search(r"^DNS\s*=\s*([0-9.]+)", conf, re.M)
    assert dns_server, conf
    script = world.tb.write_file("dnsq.py", DNS_QUERY)
    answer = wait_for(lambda: ns.run([sys.executable, script, APP, dns_server.group(1)],
                                     check=False).stdout.strip() or None, 20, "DNS answer")
    assert answer == gw_ip
    _code, body, _err = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(
            world.curl(ns, f"https://{APP}/hello", "-H", "X-NetBird-User: mallory",
                       gw_ip=answer)),
        30, "a 200 from the private service")
    seen = json.loads(body)
    assert seen["path"] == "/hello"
    assert seen["headers"]["x-netbird-user"] != "mallory"
    assert seen["headers"]["x-netbird-user"]  # stamped from the validated identity
    assert "devs" in seen["headers"]["x-netbird-groups"].split(",")


def test_peer_outside_the_group_is_refused(world):
    # management hands bob no gateway peer and says why, in the config (and so
    # in `nbgateway-admin peer config`) and once in its log
    bob = world.peers["bob"]
    wait_for(lambda: any(p.get("proxy_cluster") == DOMAIN for p in world.rest("GET", "/peers")),
             30, "the gateway's proxy peer")
    for _ in range(3):
        conf = world.rest("GET", f"/peers/{bob['id']}/wireguard-config")
        assert "[Peer]" not in conf and "\nDNS" not in conf, conf
        assert f"# The gateway {DOMAIN} is left out of this config" in conf, conf
        assert "# Add this peer to one of: devs; then fetch this config again." in conf
    cli = world.g.run([os.path.join(VENV_BIN, "nbgateway-admin"), "--url", API[:-len("/api")],
                       "--token", world.admin, "peer", "config", "bob"], check=False)
    assert cli.returncode == 0, cli.stderr
    assert f"# The gateway {DOMAIN} is left out of this config" in cli.stdout, cli.stdout
    with open(os.path.join(world.tmp, "management.log"), errors="replace") as f:
        refusals = [line for line in f if "leaves out gateway" in line and bob["id"] in line]
    assert len(refusals) == 1, refusals
    assert "devs" in refusals[0]
    # a config that lists the gateway anyway (say, written before bob left the
    # group) gets nowhere: the gateway drops bob's handshakes
    alice = world.rest("GET", f"/peers/{world.peers['alice']['id']}/wireguard-config")
    ns, gw_ip, _ = world.connect_peer("bob", conf + "\n" + alice[alice.index("[Peer]"):])
    before = upstream_requests(world)
    code, body, err = world.curl(ns, f"https://{APP}/bob", "--connect-timeout", "3",
                                 gw_ip=gw_ip, timeout=20)
    # 403, or no connection at all because the synthetic ACL filters bob
    assert code in (0, 403), (code, body, err)
    assert upstream_requests(world) == before


def test_thousand_requests_one_validation_rpc(world):
    ns, gw_ip = world.alice
    misses_before = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                            result="miss")
    cfg = world.tb.write_file("many.curl", "".join(
        f'url = "https://{APP}/n{i}"\noutput = "/dev/null"\n' for i in range(1000)))
    r = ns.run(["curl", "-sS", "-m", "120", "--resolve", f"{APP}:443:{gw_ip}",
                "--cacert", gateway_cas(world.gw_dir), "-w", "%{http_code}\n",
                "-K", cfg], check=False, timeout=150)
    codes = r.stdout.split()
    assert codes.count("200") == 1000, (codes[:5], r.stderr[-500:])
    misses_after = counter(world.metrics(), "nbgateway_tunnel_validation_lookups_total",
                           result="miss")
    assert misses_after == misses_before  # every one of them a cache hit


def test_management_down_cache_serves_known_peer_new_peer_refused(world):
    ns_c, gw_c, _ = world.connect_peer("carol")
    ns_a, gw_a = world.alice
    world.stop_management()
    try:
        code, _, err = world.curl(ns_a, f"https://{APP}/still", gw_ip=gw_a)
        assert code == 200, err
        code, _, err = world.curl(ns_c, f"https://{APP}/carol", gw_ip=gw_c, timeout=25)
        assert code in (0, 403), err  # fail closed: validation impossible
    finally:
        world.start_management()
    # the gateway reconnects by itself (services for its cluster can be created
    # again once it is back: 412 until then, as upstream), and new mappings
    # reach it without a restart
    body = service_body("app2", f"app2.{DOMAIN}", private=False)

    def create():
        try:
            return world.rest("POST", "/reverse-proxies/services", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 412:
                raise
            return None

    svc2 = wait_for(create, 30, "the gateway to reconnect to the restarted management",
                    interval=0.5)
    assert svc2["id"]
    code = wait_for(lambda: (lambda c: c if c == 200 else None)(
        world.curl(ns_a, f"http://app2.{DOMAIN}/x", "--resolve", f"app2.{DOMAIN}:80:{gw_a}",
                   gw_ip=gw_a)[0]), 20, "the new service on the gateway")
    assert code == 200
