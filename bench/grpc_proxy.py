"""gRPC through the gateway vs. nginx's ``grpc_pass`` vs. no proxy, one run.

Three processes besides this client: a grpcio server (``tests/proxy/_grpc.py``,
h2c on 127.0.0.1), the gateway's HTTP stack (``ProxySite`` TLS listener with
ALPN h2 -> reverse proxy -> ``upstream_protocol: h2`` relay; without the
``GatewayResource`` front door and auth) and
nginx (Debian package) with ``listen ... ssl http2; grpc_pass``, both
with a certificate of the same local CA.  The client (grpcio, TLS to the
proxies, h2c to the upstream directly) measures, sequentially on one channel:

* unary calls per second (8-byte request and answer) and the mean latency;
* server-streaming throughput: one call of ``--messages`` 16 KiB messages.

Prints one row per path (wall-clock rates, and the proxy process's CPU per
call and per MB, which hold up on a busy machine where the rates do not) and
the gateway/nginx and gateway/direct ratios.
nginx's row is skipped with a note when nginx is not installed.

Run:  .venv/bin/python bench/grpc_proxy.py [--calls 2000] [--messages 4000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHUNK = 16 * 1024


def serve_upstream(port_file: str) -> None:
    """Child: the grpcio upstream; ``BigStream`` streams n messages of 16 KiB."""
    import threading

    import grpc

    from tests.proxy._grpc import SERVICE, EchoGrpc

    server = EchoGrpc()
    server.release.set()
    payload = b"z" * CHUNK

    def big(request: bytes, context: Any):
        for _ in range(int(request)):
            yield payload

    extra = grpc.method_handlers_generic_handler(
        SERVICE + "B", {"BigStream": grpc.unary_stream_rpc_method_handler(big)})
    server.server.add_generic_rpc_handlers((extra,))
    _write(port_file, str(server.port))
    threading.Event().wait()


def serve_gateway(port_file: str, upstream_port: int, datadir: str) -> None:
    """Child: the gateway's TLS listener, reverse proxy and HTTP/2 relay."""
    from twisted.internet import reactor

    from nbgateway.dial.direct import DirectDialer
    from nbgateway.dial.pool import UpstreamPools
    from nbgateway.proxy.reverse import ProxyResource, ReverseProxy
    from nbgateway.proxy.streaming import ProxySite
    from nbgateway.routes.paths import PathRouter, parse_target
    from nbgateway.routes.service import ProxyService, TargetOptions
    from nbgateway.tls.certstore import CertificateStore
    from nbgateway.tls.contexts import server_tls_factory

    store = CertificateStore(None, None, datadir)
    store.reload()
    opts = TargetOptions(direct_upstream=True, upstream_protocol="h2")
    route = parse_target("/", f"http://127.0.0.1:{upstream_port}/", opts)
    svc = ProxyService(account_id="acc1", domain="app.example", router=PathRouter([route]))
    dialer = DirectDialer(reactor)
    proxy = ReverseProxy(reactor, UpstreamPools(reactor), lambda _a, _d: dialer)
    site = ProxySite(ProxyResource(proxy, {"app.example": svc}.get))
    port = reactor.listenTCP(0, server_tls_factory(store, site), interface="127.0.0.1")
    _write(port_file, str(port.getHost().port))
    reactor.run()


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def _wait_file(path: str, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name app.example;
        ssl_certificate {tmp}/leaf.crt;
        ssl_certificate_key {tmp}/leaf.key;
        location / {{ grpc_pass grpc://127.0.0.1:{upstream}; }}
    }}
}}
"""


def start_nginx(tmp: str, upstream_port: int, ca: Any) -> tuple[subprocess.Popen | None, int]:
    if shutil.which("nginx") is None:
        return None, 0
    from tests.proxy._grpc import leaf_pems

    key, cert = leaf_pems(ca, "app.example")
    for name, data in (("leaf.key", key), ("leaf.crt", cert)):
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream_port))
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp])
    return proc, port


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and their children processes."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    seen = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return total


def measure(channel: Any, calls: int, messages: int, pids: list[int]) -> dict[str, float]:
    """Wall-clock rates and the proxy processes' CPU (``pids``; none for
    the direct path) per call and per MB: the CPU figures hold up on a busy
    machine, the rates do not."""
    from tests.proxy._grpc import SERVICE, method

    unary = method(channel, "Unary")
    for _ in range(50):  # warm up: connection, TLS, pools
        unary(b"warmup!!", timeout=10)
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    for _ in range(calls):
        unary(b"12345678", timeout=10)
    unary_s = time.perf_counter() - t0
    cpu1 = cpu_seconds(pids)
    stream = channel.unary_stream(f"/{SERVICE}B/BigStream")
    t0 = time.perf_counter()
    n = sum(len(m) for m in stream(str(messages).encode(), timeout=120))
    stream_s = time.perf_counter() - t0
    cpu2 = cpu_seconds(pids)
    assert n == messages * CHUNK
    return {"calls_per_s": calls / unary_s, "latency_ms": 1000 * unary_s / calls,
            "stream_mb_s": n / stream_s / 1e6,
            "cpu_ms_per_call": 1000 * (cpu1 - cpu0) / calls,
            "cpu_ms_per_mb": 1000 * (cpu2 - cpu1) / (n / 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--serve", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve == "upstream":
        serve_upstream(*a.args)
        return
    if a.serve == "gateway":
        serve_gateway(a.args[0], int(a.args[1]), a.args[2])
        return

    import grpc

    from nbgateway.tls.certstore import CertificateStore
    from tests.proxy._grpc import tls_channel

    tmp = tempfile.mkdtemp(prefix="nbgw-grpc-bench-")
    procs: list[subprocess.Popen] = []
    me = [sys.executable, os.path.abspath(__file__)]
    try:
        procs.append(subprocess.Popen([*me, "--serve", "upstream", "--args",
                                       os.path.join(tmp, "up.port")]))
        up = int(_wait_file(os.path.join(tmp, "up.port")))
        datadir = os.path.join(tmp, "gw")
        procs.append(subprocess.Popen([*me, "--serve", "gateway", "--args",
                                       os.path.join(tmp, "gw.port"), str(up), datadir]))
        gw = int(_wait_file(os.path.join(tmp, "gw.port")))
        store = CertificateStore(None, None, datadir)  # the gateway's CA, persisted
        store.reload()
        with open(store.ca.cert_path, "rb") as f:
            ca_pem = f.read()
        nginx, nginx_port = start_nginx(tmp, up, store.ca)
        if nginx is not None:
            procs.append(nginx)
            time.sleep(0.5)
        rows: dict[str, dict[str, float]] = {}
        rows["direct (h2c, no proxy)"] = measure(
            grpc.insecure_channel(f"127.0.0.1:{up}"), a.calls, a.messages, [])
        if nginx is not None:
            rows["nginx grpc_pass (TLS in, h2c out)"] = measure(
                tls_channel(nginx_port, ca_pem, "app.example"), a.calls, a.messages,
                [nginx.pid])
        rows["gateway (TLS in, h2c out)"] = measure(
            tls_channel(gw, ca_pem, "app.example"), a.calls, a.messages, [procs[1].pid])
        print(f"{'path':36} {'calls/s':>8} {'mean ms':>8} {'MB/s':>7} "
              f"{'proxy CPU ms/call':>18} {'proxy CPU ms/MB':>16}")
        for name, r in rows.items():
            print(f"{name:36} {r['calls_per_s']:8.0f} {r['latency_ms']:8.3f} "
                  f"{r['stream_mb_s']:7.1f} {r['cpu_ms_per_call']:18.3f} "
                  f"{r['cpu_ms_per_mb']:16.2f}")
        g = rows["gateway (TLS in, h2c out)"]
        d = rows["direct (h2c, no proxy)"]
        print(f"gateway/direct: unary calls/s {g['calls_per_s'] / d['calls_per_s']:.2f}, "
              f"stream MB/s {g['stream_mb_s'] / d['stream_mb_s']:.2f}")
        if nginx is not None:
            n = rows["nginx grpc_pass (TLS in, h2c out)"]
            print(f"gateway/nginx:  unary calls/s {g['calls_per_s'] / n['calls_per_s']:.2f}, "
                  f"stream MB/s {g['stream_mb_s'] / n['stream_mb_s']:.2f}, "
                  f"CPU per call {g['cpu_ms_per_call'] / n['cpu_ms_per_call']:.1f}x, "
                  f"CPU per MB {g['cpu_ms_per_mb'] / n['cpu_ms_per_mb']:.1f}x")
        else:
            print("nginx not installed: no nginx row")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
