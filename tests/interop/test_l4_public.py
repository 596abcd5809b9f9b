"""Public L4 relays end to end (issue 13 acceptance), with real processes.

    netns G: twistd nbmanagement, twistd nbgateway (--addr 0.0.0.0:8443, so its
             L4 host ports bind on every interface of G), upstreams on 127.0.0.1:
             TCP echo (half-close aware), UDP echo, two HTTPS servers with their
             own certificates (a.gw.test, b.gw.test), nginx with proxy_protocol
    netns C: a client on a veth (198.18.60.2 -> G 198.18.60.1)

Services are created through management's REST API; the gateway binds their
``listen_port`` on the host and relays to the upstreams (``direct_upstream``,
allowed for 127.0.0.1 by the harness).  TLS is never terminated by the
gateway: clients verify the upstream's own certificate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error

import pytest

from nbgateway.l4.proxyproto import encode_v2
from tests.interop.conftest import require_testbed
from tests.interop.test_private_e2e import (
    DOMAIN,
    World,
    counter,
    gateway_cas,
    service_body,
    wait_for,
)
from tests.interop.testbed import Testbed, inside_netns

pytestmark = pytest.mark.interop

SERVERS = os.path.join(os.path.dirname(__file__), "l4_servers.py")
G_VETH, C_VETH = "198.18.60.1", "198.18.60.2"
TCP_PORT, TLS_PORT, UDP_PORT, PP_PORT, RATE_PORT = 7100, 7443, 7053, 7200, 7054
HOLD_PORT, DNS_PORT = 7300, 7055


def wait_for_cluster(world) -> None:
    """Services name the gateway's cluster, which management knows only once
    the gateway has connected (a listening port comes earlier): 412 before."""
    wait_for(lambda: DOMAIN in json.dumps(world.rest("GET", "/reverse-proxies/clusters")),
             30, "the gateway's cluster at management")


def l4_service(world, name: str, mode: str, listen_port: int, port: int, *,
               domain: str | None = None, proxy_protocol: bool = False) -> dict:
    wait_for_cluster(world)
    options = {"direct_upstream": True}
    if proxy_protocol:
        options["proxy_protocol"] = True
    return world.rest("POST", "/reverse-proxies/services", {
        "name": name, "domain": domain or f"{name}.{DOMAIN}", "enabled": True, "mode": mode,
        "listen_port": listen_port,
        "targets": [{"target_id": DOMAIN, "target_type": "cluster",
                     "protocol": "udp" if mode == "udp" else "tcp", "host": "127.0.0.1",
                     "port": port, "enabled": True, "options": options}]})


def make_certs(tmp: str) -> str:
    """A CA and one leaf per name (openssl CLI); returns the CA file."""
    ca_key, ca = os.path.join(tmp, "ca.key"), os.path.join(tmp, "l4ca.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key, "-out", ca,
                    "-days", "2", "-subj", "/CN=l4 test CA"], check=True, capture_output=True)
    for name in ("a.gw.test", "b.gw.test", "p.gw.test"):
        key, csr, crt = (os.path.join(tmp, f"{name}.{x}") for x in ("key", "csr", "crt"))
        ext = os.path.join(tmp, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=DNS:{name}\n")
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr,
                        "-subj", f"/CN={name}"], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                        "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext],
                       check=True, capture_output=True)
    return ca


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    log_format pp '$proxy_protocol_addr $remote_addr';
    server {{
        listen 127.0.0.1:9200 proxy_protocol;
        access_log {tmp}/nginx-access.log pp;
        location / {{ return 200 "pp=$proxy_protocol_addr\\n"; }}
    }}
}}
"""


def can_connect(ns_name: str, host: str, port: int) -> bool:
    try:
        with inside_netns(ns_name), socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def world():
    require_testbed("openssl", "curl")
    tb = Testbed()
    try:
        w = World(tb)
        g = w.g
        ca = make_certs(w.tmp)
        w.l4_ca = ca
        py = sys.executable
        logf = w.log("l4-upstreams")
        g.popen([py, SERVERS, "tcp-echo", "127.0.0.1", "9100"], stdout=logf, stderr=logf)
        g.popen([py, SERVERS, "udp-echo", "127.0.0.1", "9053"], stdout=logf, stderr=logf)
        g.popen([py, SERVERS, "hold", "127.0.0.1", "9300"], stdout=logf, stderr=logf)
        hosts = os.path.join(w.tmp, "dns-hosts")
        with open(hosts, "w") as f:
            f.write("198.18.99.7 host1.example\n198.18.99.8 host2.example\n")
        g.popen([os.path.join(os.path.dirname(py), "twistd"), "-n", "--pidfile=", "-l",
                 os.path.join(w.tmp, "dns.log"), "dns", "--hosts-file", hosts, "-p", "9153",
                 "-i", "127.0.0.1"], stdout=logf, stderr=logf, cwd=w.tmp)
        g.popen([py, SERVERS, "udp-echo", "127.0.0.1", "9054"], stdout=logf, stderr=logf)
        for name, port in (("a.gw.test", 9443), ("b.gw.test", 9444), ("p.gw.test", 9445)):
            g.popen([py, SERVERS, "tls-name", "127.0.0.1", str(port),
                     os.path.join(w.tmp, f"{name}.crt"), os.path.join(w.tmp, f"{name}.key"),
                     name], stdout=logf, stderr=logf)
        w.nginx = None
        if shutil.which("nginx"):
            conf = os.path.join(w.tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(tmp=w.tmp))
            g.run(["nginx", "-c", conf, "-e", os.path.join(w.tmp, "nginx-error.log")])
            w.nginx = conf
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token, "--addr", "0.0.0.0:8443", "--proxy-protocol",
                        "--trusted-proxies", "198.18.61.2")
        wait_for(lambda: can_connect(g.name, "127.0.0.1", 8443), 30, "the gateway")
        w.c = tb.netns()
        tb.veth(g, f"{G_VETH}/30", w.c, f"{C_VETH}/30")
        w.t = tb.netns()  # a "trusted load balancer" at 198.18.61.2
        tb.veth(g, "198.18.61.1/30", w.t, "198.18.61.2/30")
        w.tcp = l4_service(w, "echo", "tcp", TCP_PORT, 9100)
        w.tls_a = l4_service(w, "tlsa", "tls", TLS_PORT, 9443, domain="a.gw.test")
        w.tls_b = l4_service(w, "tlsb", "tls", TLS_PORT, 9444, domain="b.gw.test")
        w.udp = l4_service(w, "dns", "udp", UDP_PORT, 9053)
        w.udp_rate = l4_service(w, "flood", "udp", RATE_PORT, 9054)
        w.pp = l4_service(w, "pp", "tcp", PP_PORT, 9200, proxy_protocol=True)
        w.hold = l4_service(w, "hold", "tcp", HOLD_PORT, 9300)
        w.dns = l4_service(w, "realdns", "udp", DNS_PORT, 9153)
        # the main port (8443): an HTTP service and a TLS passthrough service by SNI
        w.start_upstream()
        w.web = w.rest("POST", "/reverse-proxies/services", service_body("web", f"web.{DOMAIN}"))
        w.passthrough = l4_service(w, "p", "tls", 8443, 9445, domain="p.gw.test")
        for port in (TCP_PORT, TLS_PORT, PP_PORT, HOLD_PORT):
            wait_for(lambda port=port: can_connect(g.name, "127.0.0.1", port), 30,
                     f"the L4 listener on {port}")
        yield w
    finally:
        if os.path.exists(os.path.join(tb.tmpdir, "nginx.pid")):
            with contextlib.suppress(Exception):
                w.g.run(["nginx", "-c", w.nginx, "-s", "stop"], check=False)
        left = tb.close_with_log_tails("gateway", "management", tail=5000)
    assert not left, left


def _pump(sock: socket.socket, total: int, seed: bytes) -> str:
    """Send ``total`` pseudo-random bytes, then shut down writing; sha256 of them."""
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        h.update(chunk)
        sock.sendall(chunk)
        sent += len(chunk)
        block = block[1:] + block[:1]
    sock.shutdown(socket.SHUT_WR)
    return h.hexdigest()


def test_tcp_64mib_each_way_sha256_and_half_close(world):
    """64 MiB up, the same 64 MiB echoed down while sending (sha256 compared),
    then the client shuts down writing and still reads the server's reply."""
    total = 64 << 20
    with inside_netns(world.c.name):
        sock = socket.create_connection((G_VETH, TCP_PORT), timeout=30)
    sent_digest: list[str] = []
    sender = threading.Thread(target=lambda: sent_digest.append(_pump(sock, total, b"l4")))
    sender.start()
    h = hashlib.sha256()
    tail = b""
    got = 0
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        got += len(data)
        keep = tail + data  # hash all but the last 4 bytes (the reply to our EOF)
        h.update(keep[:-4])
        tail = keep[-4:]
    sender.join()
    sock.close()
    assert got == total + 4
    assert h.hexdigest() == sent_digest[0]
    assert tail == b"BYE\n"  # read after our write shutdown: half-close works


def test_tcp_echo_digest_matches(world):
    """The bytes that come back are exactly the bytes sent (sha256 on both sides)."""
    payload = os.urandom(4 << 20)
    with inside_netns(world.c.name):
        sock = socket.create_connection((G_VETH, TCP_PORT), timeout=30)
    t = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    t.start()
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
    t.join()
    sock.close()
    back = b"".join(chunks)
    assert back[-4:] == b"BYE\n"
    assert hashlib.sha256(back[:-4]).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_tls_passthrough_two_names_verify_upstream_certificate(world):
    for name in ("a.gw.test", "b.gw.test"):
        r = world.c.run(["curl", "-sS", "-m", "10", "--cacert", world.l4_ca,
                         "--resolve", f"{name}:{TLS_PORT}:{G_VETH}",
                         f"https://{name}:{TLS_PORT}/"], check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout == name  # the upstream for that name answered, with its certificate
    r = world.c.run(["openssl", "s_client", "-connect", f"{G_VETH}:{TLS_PORT}",
                     "-servername", "a.gw.test", "-verify_return_error", "-CAfile",
                     world.l4_ca, "-brief"], input="", check=False, timeout=20)
    out = r.stdout + r.stderr
    assert "Verification: OK" in out, out
    assert "a.gw.test" in out
    # an unknown name: no fallback on this port, the connection is closed
    r = world.c.run(["curl", "-sS", "-m", "10", "-k", "--resolve",
                     f"c.gw.test:{TLS_PORT}:{G_VETH}", f"https://c.gw.test:{TLS_PORT}/"],
                    check=False)
    assert r.returncode != 0


def test_udp_10000_datagrams_none_lost(world):
    with inside_netns(world.g.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect(("127.0.0.1", UDP_PORT))
    got = 0
    window = 50
    for start in range(0, 10_000, window):
        for i in range(start, start + window):
            s.send(i.to_bytes(4, "big") + b"q" * 60)
        for _ in range(window):
            data = s.recv(65535)
            assert len(data) == 64
            got += 1
    s.close()
    assert got == 10_000
    big = b"x" * 60000  # a large datagram (host loopback carries it)
    with inside_netns(world.g.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(big, ("127.0.0.1", UDP_PORT))
    assert s.recv(65535) == big
    s.close()


def test_udp_new_session_rate_limit(world):
    socks = []
    with inside_netns(world.g.name):
        for _ in range(250):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            socks.append(s)
    for s in socks:
        s.sendto(b"hello", ("127.0.0.1", RATE_PORT))
    time.sleep(1.0)  # replies to admitted sessions arrive well within this on loopback
    answered = 0
    for s in socks:
        s.setblocking(False)
        try:
            s.recv(100)
            answered += 1
        except OSError:
            pass
        s.close()
    assert 100 <= answered < 200  # burst 100 (+50/s while sending), not all 250
    assert counter(world.metrics(), "nbgateway_l4_udp_rate_limit_hits") > 0


def test_proxy_v2_to_nginx_and_inbound_proxy(world):
    if world.nginx is None:
        pytest.skip("nginx not installed")
    r = world.c.run(["curl", "-sS", "-m", "10", f"http://{G_VETH}:{PP_PORT}/"], check=False)
    assert r.stdout.strip() == f"pp={C_VETH}", r.stdout + r.stderr
    with open(os.path.join(world.tmp, "nginx-access.log")) as f:
        assert f"{C_VETH} 127.0.0.1" in f.read()
    # from the trusted balancer: its PROXY v1 header names the client
    with inside_netns(world.t.name):
        s = socket.create_connection(("198.18.61.1", PP_PORT), timeout=10)
    s.sendall(b"PROXY TCP4 203.0.113.9 198.18.61.1 5555 7200\r\n"
              b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = b"".join(iter(lambda: s.recv(4096), b""))
    s.close()
    assert b"pp=203.0.113.9" in reply
    # ... and its PROXY v2 header too
    with inside_netns(world.t.name):
        s = socket.create_connection(("198.18.61.1", PP_PORT), timeout=10)
    s.sendall(encode_v2(("203.0.113.10", 6666), ("198.18.61.1", PP_PORT))
              + b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = b"".join(iter(lambda: s.recv(4096), b""))
    s.close()
    assert b"pp=203.0.113.10" in reply
    # from an untrusted client: its header is read and ignored
    with inside_netns(world.c.name):
        s = socket.create_connection((G_VETH, PP_PORT), timeout=10)
    s.sendall(b"PROXY TCP4 203.0.113.9 198.18.60.1 5555 7200\r\n"
              b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = b"".join(iter(lambda: s.recv(4096), b""))
    s.close()
    assert f"pp={C_VETH}".encode() in reply
    # the trusted balancer must send a header: without one it is cut
    with inside_netns(world.t.name):
        s = socket.create_connection(("198.18.61.1", PP_PORT), timeout=10)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s.settimeout(10)
    try:
        reply = s.recv(4096)
    except ConnectionResetError:
        reply = b""
    s.close()
    assert b"pp=" not in reply
    # a lying v2 header (length shorter than its addresses): cut
    with inside_netns(world.t.name):
        s = socket.create_connection(("198.18.61.1", PP_PORT), timeout=10)
    s.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcdGET / HTTP/1.0\r\n\r\n")
    s.settimeout(10)
    try:
        reply = s.recv(4096)
    except ConnectionResetError:
        reply = b""
    s.close()
    assert reply == b""


def _closed_within(sock: socket.socket, limit: float) -> float:
    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_bad_client_hellos_slow_sender_and_legit_client_still_served(world):
    conns = []
    with inside_netns(world.c.name):
        for payload in (b"\x16\x03\x01\x40\x01" + b"x" * 64,  # 16 KiB + 1 record
                        b"\x16\x03\x01\x00\x30" + os.urandom(0x30),  # garbage hello
                        b"\x16\x03\x01\x02\x00\x01\x00"):  # truncated, then silent
            s = socket.create_connection((G_VETH, TLS_PORT), timeout=10)
            s.sendall(payload)
            conns.append(s)
    assert _closed_within(conns[0], 3) < 3  # no SNI, no fallback: closed at once
    assert _closed_within(conns[1], 3) < 3
    waited = _closed_within(conns[2], 10)  # slow sender: cut at the 5 s deadline
    assert 4 <= waited < 8, waited
    for s in conns:
        s.close()
    r = world.c.run(["curl", "-sS", "-m", "10", "--cacert", world.l4_ca, "--resolve",
                     f"a.gw.test:{TLS_PORT}:{G_VETH}", f"https://a.gw.test:{TLS_PORT}/"],
                    check=False)
    assert r.stdout == "a.gw.test"
    metrics = world.metrics()
    assert counter(metrics, "nbgateway_l4_header_timeouts") >= 1
    assert counter(metrics, "nbgateway_l4_no_route") >= 2


def test_port_conflict_with_tunnel_port_is_error(world):
    svc = l4_service(world, "clash", "tcp", 51820, 9100)

    def status():
        s = world.rest("GET", f"/reverse-proxies/services/{svc['id']}")
        meta = s.get("meta", {})
        return meta if meta.get("status") == "error" else None

    meta = wait_for(status, 30, "the ERROR status of a service on the WireGuard port")
    assert meta["status_message"] == "port 51820 conflicts with tunnel port"


def test_public_ports_below_1024_are_refused_by_default(world):
    """--l4-public-ports defaults to 1024-65535 and the gateway advertises it: a
    tenant's public TCP service on 25 and UDP service on 53 are refused by
    management (422 naming the port and the range) and bind nothing on the
    gateway host."""
    for name, mode, port, upstream, what in (("smtp", "tcp", 25, 9100, "port"),
                                             ("dns53", "udp", 53, 9053, "UDP port")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            l4_service(world, name, mode, port, upstream)
        assert refused.value.code == 422
        message = json.loads(refused.value.read())["message"]
        assert f"listen_port {port}: {what.lower()} outside" in message
        assert "(allowed: 1024-65535" in message
    assert not can_connect(world.g.name, "127.0.0.1", 25)
    assert not can_connect(world.g.name, G_VETH, 25)
    with inside_netns(world.g.name), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 53))  # free: the gateway did not take it


def test_http_service_and_tls_passthrough_share_the_main_port(world):
    web = f"web.{DOMAIN}"

    def get(name, cacert, path="/"):
        return world.c.run(["curl", "-sS", "-m", "10", "--cacert", cacert, "--resolve",
                            f"{name}:8443:{G_VETH}", f"https://{name}:8443{path}"],
                           check=False)

    gw_ca = gateway_cas(world.gw_dir)
    r = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
        get(web, gw_ca, "/shared")), 30, "the HTTP service on the main port")
    assert '"path": "/shared"' in r.stdout  # terminated by the gateway (its CA), proxied
    r = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
        get("p.gw.test", world.l4_ca)), 30, "the passthrough service on the main port")
    assert r.stdout == "p.gw.test"  # the upstream's own certificate, verified by the client
    r = world.c.run(["openssl", "s_client", "-connect", f"{G_VETH}:8443", "-servername",
                     "p.gw.test", "-verify_return_error", "-CAfile", world.l4_ca, "-brief"],
                    input="", check=False, timeout=20)
    assert "Verification: OK" in r.stdout + r.stderr


def test_ten_thousand_connections_at_once_limit_holds(world):
    """10,000 connections to one relay port: at most 4,096 are relayed, the
    rest are closed at once and counted; other ports keep serving, and the
    port serves again once the flood is gone."""
    import selectors

    socks = []
    sel = selectors.DefaultSelector()
    with inside_netns(world.g.name):
        for _ in range(10_000):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", HOLD_PORT))
            socks.append(s)
    try:
        def limited():
            m = world.metrics()
            hits = counter(m, "nbgateway_l4_limit_hits")
            active = counter(m, "nbgateway_l4_active_relays")
            return (hits, active) if hits >= 10_000 - 4096 - 50 else None

        _hits, active = wait_for(limited, 20, "the relay limit to refuse the excess", 0.5)
        assert active <= 4096 + 1  # + the echo below may be in flight
        # another router is unaffected
        with inside_netns(world.c.name):
            c = socket.create_connection((G_VETH, TCP_PORT), timeout=10)
        c.sendall(b"legit")
        c.shutdown(socket.SHUT_WR)
        assert b"".join(iter(lambda: c.recv(100), b"")) == b"legitBYE\n"
        c.close()
    finally:
        for s in socks:
            s.close()
        sel.close()

    def drained():
        return counter(world.metrics(), "nbgateway_l4_active_relays") == 0

    wait_for(drained, 20, "the flood's relays to close", 0.5)
    with inside_netns(world.g.name):
        s = socket.create_connection(("127.0.0.1", HOLD_PORT), timeout=5)
    s.sendall(b"x")  # accepted and relayed again: the hold upstream keeps it open
    s.settimeout(0.5)
    try:
        assert s.recv(1) == b""
        raise AssertionError("closed by the gateway after the flood")
    except TimeoutError:
        pass
    s.close()


def test_udp_flood_from_many_ports_session_bound_holds(world):
    """3,000 source ports at once: sessions stay bounded (the new-session
    rate admits the first ~100), an established session keeps working."""
    with inside_netns(world.g.name):
        known = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3000)]
    known.settimeout(5)
    time.sleep(2.5)  # the bucket refills after earlier tests
    known.sendto(b"before", ("127.0.0.1", UDP_PORT))
    assert known.recv(100) == b"before"
    for s in flood:
        s.sendto(b"flood", ("127.0.0.1", UDP_PORT))
    sessions = counter(world.metrics(), "nbgateway_l4_udp_sessions")
    assert sessions <= 1024
    known.sendto(b"during", ("127.0.0.1", UDP_PORT))
    assert known.recv(100) == b"during"
    for s in flood:
        s.close()
    known.close()


def _dns_query(name: str, qid: int) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return q + struct.pack("!HH", 1, 1)


def test_dns_queries_through_a_udp_service_to_a_real_dns_server(world):
    """A Python DNS client from another namespace, through the gateway's UDP
    relay, to Twisted Names (``twistd dns --hosts-file``) on the host."""
    with inside_netns(world.c.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        def ask(name: str, qid: int):
            s.sendto(_dns_query(name, qid), (G_VETH, DNS_PORT))
            try:
                return s.recv(4096)
            except OSError:
                return None

        r = wait_for(lambda: ask("host1.example", 1), 20, "a DNS answer through the relay")
        for i, (name, ip) in enumerate([("host1.example", "198.18.99.7"),
                                        ("host2.example", "198.18.99.8")] * 50):
            r = ask(name, 100 + i)
            assert r is not None
            qid, flags, _qd, an = struct.unpack("!HHHH", r[:8])
            assert qid == 100 + i and flags & 0x000F == 0 and an == 1
            assert socket.inet_ntoa(r[-4:]) == ip
    finally:
        s.close()
