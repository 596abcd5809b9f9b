"""Gateway benchmark (issue 20): a private service through the gateway vs. nginx
as a reverse proxy behind wireguard-go, all paths measured in one run.

Topology (everything inside namespaces this script creates, torn down after):

* **gateway path** -- netns G runs ``twistd nbmanagement``, ``twistd nbgateway
  --private`` (``World`` from ``tests/interop/test_private_e2e.py``) and the
  upstream: nginx from Debian on 127.0.0.1:8081 returning 512 bytes (a
  ``direct_upstream`` target).  Peer "alice" (in the service's access group)
  runs stock wireguard-go configured from the management's wireguard-config; the
  load generator runs in her namespace: kernel TCP -> wireguard-go -> the
  gateway's WireGuard + netstack -> private gate (validation cached) -> reverse
  proxy (identity headers stamped, access-log entry shipped) -> nginx upstream.
* **nginx baseline** -- two fresh namespaces A and B joined by wireguard-go <->
  wireguard-go (``tunnel_pair``).  B runs the same nginx upstream configuration
  (127.0.0.1:8081 and 100.64.0.2:8081) and a second nginx as the reverse proxy on
  100.64.0.2:80 (and :443 with TLS): one worker, ``keepalive`` upstream
  connections, one header stamped (``X-NetBird-User``), like the gateway's
  identity header.  The load generator runs in A.
* **upstream alone** -- the load generator in A straight to the upstream nginx on
  100.64.0.2:8081 over wireguard-go (the ceiling of the tunnel + nginx).

Load generator: wrk from Debian (``-t1``), ``--connections`` (16) keep-alive
connections, plus a one-connection round for latency; a Lua ``done`` hook prints
requests, errors and latency percentiles as JSON.  Rounds are interleaved
(upstream, nginx, gateway, ... repeated ``--rounds`` times) so drift on a shared
box shows in every path alike; medians are reported.

HTTPS: TLS on the gateway's tunnel listener (port 443, SNI = the service name,
keep-alive) vs. nginx terminating TLS on 100.64.0.2:443 with the same key type
(ECDSA P-256), then new TLS handshakes/s (``Connection: close``: one handshake
per request, no session resumption by wrk) on both.

HTTP/2 (``--h2``; browsers negotiate h2 on TLS listeners): h2load from Debian
(package ``nghttp2-client``, ``-t1``, ALPN ``h2`` only: a path that does not
negotiate h2 fails the run) against the gateway's TLS tunnel listener (the same
private service and upstream) and against nginx terminating TLS with ``http2``
on 100.64.0.2:8443 (``bench/_h2load.py``'s ``PROXY_H2``: the same keepalive
upstream and stamped header as the HTTPS baseline), in every round after the
HTTPS rows: ``--connections`` connections x 10 streams (req/s, CPU per request),
then one connection with one stream (latency); p50/p99 come from h2load's
per-request log (its summary has mean and sd only).  Errors are h2load's
failed, errored and timed-out requests plus non-2xx responses; with
``--browser`` every request carries the browser head as HTTP/2 fields
(``--vary-lines`` cannot vary it: h2load has no per-request hook).

CPU per request: the user+system CPU time of the gateway process, and of the
nginx reverse proxy's worker, during the 16-connection (and handshake) runs
divided by the requests served -- steadier than req/s on a shared machine --
and the system (kernel) part of it.  Beside it, the whole machine's busy CPU
per request during each 16-connection run ("machine", from /proc/stat: load
generator, wireguard-go, proxies, upstream, management and kernel together)
and the machine's idle share meanwhile: a path whose machine is not busy is
bound by latency or by one process, not by the CPUs.

Checked in every round: zero wrk errors (connect/read/write/timeout/non-2xx), and
for the gateway rounds exactly one access-log entry per request (h2load's
runs likewise, the slack being the streams it started and had not completed
when it stopped): wrk's completed
requests <= the requests the upstream nginx logged <= the management's new
access-log rows <= completed + one per connection (a request in flight when wrk
stops is logged by the gateway as 499 and may or may not have reached the
upstream; a lost or duplicated entry breaks the chain).

Run as root:  .venv/bin/python bench/gateway.py [--seconds 5] [--rounds 3] [--json out.json]
              [--py-spy profile.txt]   (py-spy in the venv: records the gateway
                                        during the first 16-connection round)
              [--fast-path on|off|ab] (off: the gateway runs with NBGW_HTTP_FAST=0,
                                        i.e. twisted.web's server path; ab: every
                                        round measures both, restarting the gateway
                                        with the other setting in between)
              [--strace]              (after the rounds: syscalls per request of
                                        the gateway and of nginx's worker, counted
                                        by strace -c in extra runs)
              [--floor]               (the second rows: the gateway's UDP port,
                                        WireGuard and netstack under the smallest
                                        Twisted + httptools proxy, see
                                        bench/_floor/sitecustomize.py)
              [--h2]                  (HTTP/2 rows with h2load, from Debian's
                                        nghttp2-client; see above)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time

try:
    from bench import _h2load as h2
    from bench._testbed import Testbed, run, tunnel_pair, unavailable_reason
except ImportError:  # run as a script: bench/ is sys.path[0]
    import _h2load as h2
    from _testbed import Testbed, run, tunnel_pair, unavailable_reason

from tests.interop.test_private_e2e import (  # repo root put on sys.path by _testbed
    APP,
    DOMAIN,
    World,
    counter,
    wait_for,
)

#: gateway counters whose growth during a round is reported (loss shows as
#: retransmissions: p99 near the 200 ms minimum RTO)
LOSS_COUNTERS = ("nbgateway_tcp_retransmits_total", "nbgateway_netstack_drops_total",
                 "nbgateway_wireguard_drops_total")


#: the variable --fast-path ab switches (--ab-env)
AB_VAR = "NBGW_HTTP_FAST"
#: its values for the "gateway" rows and the second ("slowpath") rows
AB_VALUES = ("1", "0")
#: --floor: the second rows are the gateway's packet path under the smallest
#: Python HTTP proxy (bench/_floor/sitecustomize.py), which logs nothing
FLOOR = False
FLOOR_VAR = "NBGW_BENCH_FLOOR"


def loss_counters(w: World) -> dict[str, float]:
    text = w.metrics()
    out = {name: counter(text, name) for name in LOSS_COUNTERS}
    # WireGuard data packets in each direction (packets per request: pure ACKs
    # and split writes show here)
    for d in ("rx", "tx"):
        out[f"wg_{d}"] = counter(text, "nbgateway_wireguard_packets_total", direction=d)
    return out


def snmp(ns, proto: str, field: str) -> int:
    """A kernel counter of a namespace from /proc/net/snmp."""
    lines = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith(proto + ":")]
    return int(rows[1][rows[0].index(field)])


def client_retransmits(ns) -> int:
    """The kernel TCP RetransSegs of a namespace (the wrk side)."""
    return snmp(ns, "Tcp", "RetransSegs")

BODY = "x" * 511 + "\n"  # 512 bytes

WRK_LUA = textwrap.dedent('''
    done = function(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
        .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read,
        e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
    end
''')

#: ``--vary-lines``: each request's Referer differs (a browser moving between
#: pages), so no two heads on a connection have the same header section
WRK_VARY_LUA = textwrap.dedent('''
    local n = 0
    request = function()
      n = n + 1
      local h = {}
      for k, v in pairs(wrk.headers) do h[k] = v end
      h["Referer"] = "https://app.example/page/" .. n
      return wrk.format(nil, nil, h)
    end
''')
VARY_LINES = False

NGINX_MAIN = textwrap.dedent('''
    daemon off;
    master_process on;
    user root;
    worker_processes 1;
    pid {dir}/nginx.pid;
    error_log {dir}/error.log warn;
    events {{ worker_connections 4096; }}
    http {{
      client_body_temp_path {dir}/body;
      proxy_temp_path {dir}/proxy;
      fastcgi_temp_path {dir}/fastcgi;
      uwsgi_temp_path {dir}/uwsgi;
      scgi_temp_path {dir}/scgi;
      keepalive_requests 1000000;
      keepalive_timeout 120s;
      default_type text/plain;
      {body}
    }}
''')

UPSTREAM_HTTP = textwrap.dedent('''
      access_log {dir}/access.log combined buffer=64k flush=100ms;
      server {{
        {listen}
        location / {{ return 200 "{payload}"; }}
      }}
''')

PROXY_HTTP = textwrap.dedent('''
      access_log off;
      upstream up {{ server 127.0.0.1:8081; keepalive 32; }}
      server {{
        listen 100.64.0.2:80;
        listen 100.64.0.2:443 ssl;
        # the gateway's protocols and order (TLS 1.3, AES-256-GCM with wrk):
        # Debian's nginx 1.22 stops at TLS 1.2 without this line
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_certificate {dir}/proxy.crt;
        ssl_certificate_key {dir}/proxy.key;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
          proxy_pass http://up;
          proxy_http_version 1.1;
          proxy_set_header Connection "";
          proxy_set_header X-NetBird-User "alice";
        }}
      }}
''')


def start_nginx(tb: Testbed, ns, name: str, body: str) -> str:
    """nginx from Debian in ``ns`` (one worker, owned by the testbed); returns its dir."""
    d = os.path.join(tb.tmpdir, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_MAIN.format(dir=d, body=body.replace("{dir}", d)))
    ns.run(["nginx", "-t", "-c", conf, "-p", d])
    with open(os.path.join(d, "stderr"), "ab") as err:
        ns.popen(["nginx", "-c", conf, "-p", d], stderr=err)
    return d


def upstream_body(listen: list[str]) -> str:
    return UPSTREAM_HTTP.format(dir="{dir}", payload=BODY.replace("\n", "\\n"),
                                listen=" ".join(f"listen {a};" for a in listen))


def log_lines(d: str) -> int:
    try:
        with open(os.path.join(d, "access.log"), "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


#: ``--browser``: the head lines a browser's navigation request carries
#: besides Host (Chrome 120 on Linux), sent on every path of the run
BROWSER_HEADERS = (
    'sec-ch-ua: "Chromium";v="120", "Not?A_Brand";v="8"',
    "sec-ch-ua-mobile: ?0",
    'sec-ch-ua-platform: "Linux"',
    "Upgrade-Insecure-Requests: 1",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-User: ?1",
    "Sec-Fetch-Dest: document",
    "Referer: https://app.example/dashboard",
    "Accept-Encoding: gzip, deflate, br",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8",
    "Cookie: _ga=GA1.1.1234567890.1700000000; theme=dark; "
    "csrftoken=Wm9vZ2xlQ2hyb21lMTIwTGludXg4ODg4ODg4",
)
EXTRA_HEADERS: tuple[str, ...] = ()


class Wrk:
    """One wrk invocation in a namespace, parsed."""

    def __init__(self, tb: Testbed, seconds: float) -> None:
        self.lua = tb.write_file("report.lua", WRK_LUA + (WRK_VARY_LUA if VARY_LINES else ""))
        self.seconds = seconds

    def __call__(self, ns, url: str, conns: int, *headers: str) -> dict:
        args = ["wrk", "-t1", f"-c{conns}", f"-d{self.seconds:g}s", "--timeout", "5s",
                "-s", self.lua]
        extra = EXTRA_HEADERS
        if extra and not any(h.lower().startswith("connection:") for h in headers):
            extra = (*extra, "Connection: keep-alive")
        for h in (*headers, *extra):
            args += ["-H", h]
        res = ns.run([*args, url], check=False, timeout=self.seconds + 60)
        if res.returncode != 0:
            raise RuntimeError(f"wrk failed: {res.stderr[-2000:]}")
        line = [x for x in res.stdout.splitlines() if x.startswith("{")][-1]
        r = json.loads(line)
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
        return r


def access_log_total(w: World) -> int:
    return int(w.rest("GET", f"/events/proxy?host={APP}&page_size=1")["total_records"])


def settled(fn, *, timeout: float = 30.0, quiet: float = 1.0) -> int:
    """``fn()`` once it stopped changing for ``quiet`` seconds."""
    last, since, deadline = fn(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = fn()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def make_cert(tb: Testbed, d: str) -> None:
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=proxy.bench", "-keyout",
         os.path.join(d, "proxy.key"), "-out", os.path.join(d, "proxy.crt")])


def private_service(name: str, domain: str, group: str) -> dict:
    return {"name": name, "domain": domain, "enabled": True, "private": True,
            "access_groups": [group],
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": 8081, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def cpu_seconds(pids: list[int], *, system_only: bool = False) -> float:
    """User + system CPU time of ``pids`` so far (from /proc); only the
    system (kernel) part with ``system_only``."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, from /proc/stat
    (every namespace's processes, the kernel's softirq work, and whatever
    else runs on the box: a shared machine's neighbours show here too)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal
    tck = os.sysconf("SC_CLK_TCK")
    return busy / tck, idle / tck


def strace_counts(pid: int, out_file: str, run_load) -> tuple[dict, dict]:
    """Run ``run_load()`` (a wrk run) with ``strace -c`` attached to every
    thread of ``pid``; returns (the wrk result, {syscall: calls})."""
    tids = sorted(os.listdir(f"/proc/{pid}/task"))
    argv = ["strace", "-c", "-qq", "-o", out_file]
    for tid in tids:
        argv += ["-p", tid]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        result = run_load()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    with open(out_file) as f:
        return result, parse_strace_summary(f.read())


def parse_strace_summary(text: str) -> dict[str, int]:
    """``{syscall: calls}`` from the table ``strace -c`` writes (columns:
    % time, seconds, usecs/call, calls, [errors,] syscall; the total row left out)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls


def nginx_workers(d: str) -> list[int]:
    with open(os.path.join(d, "nginx.pid")) as f:
        master = int(f.read().strip())
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(x) for x in f.read().split()]


def find_gateway_pid(w: World) -> int | None:
    for pid in w.g.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"twistd") for a in argv) and b"nbgateway" in argv:
            return pid
    return None


def _exited(pid: int, timeout: float) -> bool:
    """True once ``pid`` is gone or a zombie (its sockets are closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


def restart_gateway(w: World, token: str, fast: bool, ns, gw_ip: str,
                    up_dir: str) -> int | None:
    """Stop the gateway and start it again with the fast path on or off (same
    datadir: same keys, same tunnel address); returns its new pid once the
    private service answers over HTTP and HTTPS again."""
    t0 = time.monotonic()
    pid = find_gateway_pid(w)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not _exited(pid, 20.0):
            os.kill(pid, signal.SIGKILL)
            _exited(pid, 10.0)
    os.environ[AB_VAR] = AB_VALUES[0] if fast else AB_VALUES[1]
    w.start_gateway(token)
    wait_for(lambda: w.curl(ns, f"http://{APP}/warm", gw_ip=gw_ip)[0] == 200, 150,
             "the private service after the gateway restart")
    wait_for(lambda: w.curl(ns, f"https://{APP}/warm", "-k", gw_ip=gw_ip)[0] == 200, 60,
             "the private service over HTTPS after the gateway restart")
    print(f"gateway restarted with {AB_VAR}={os.environ[AB_VAR]} "
          f"in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    # the warm-up requests' upstream log lines and access-log entries land
    # before the next round counts them
    settled(lambda: log_lines(up_dir))
    settled(lambda: access_log_total(w), timeout=60.0, quiet=2.0)
    return find_gateway_pid(w)


def bring_up_private_app(w: World, hosts_dirs: list[str]) -> tuple[str, object, str]:
    """Management, a gateway with its proxy token, the private service APP for
    group devs and peer alice in a namespace whose /etc/hosts names APP (wrk
    connects to the name it is given and sends it as SNI; ip netns exec
    bind-mounts the namespace's own hosts file, whose directory is appended to
    *hosts_dirs* for the caller to remove); returns (token, namespace, the
    gateway's tunnel IP) once the service answers over the tunnel."""
    token = w.start_connected_gateway()
    devs = w.rest("POST", "/groups", {"name": "devs"})
    w.add_peer("alice", [devs["id"]])
    w.rest("POST", "/reverse-proxies/services", private_service("app", APP, devs["id"]))
    ns, gw_ip, _conf = w.connect_peer("alice")
    hosts_dir = f"/etc/netns/{ns.name}"
    os.makedirs(hosts_dir, exist_ok=True)
    hosts_dirs.append(hosts_dir)
    with open(os.path.join(hosts_dir, "hosts"), "w") as f:
        f.write(f"127.0.0.1 localhost\n{gw_ip} {APP}\n")
    wait_for(lambda: w.curl(ns, f"http://{APP}/warm", gw_ip=gw_ip)[0] == 200, 30,
             "the private service over the tunnel")
    return token, ns, gw_ip


def run_bench(seconds: float, rounds: int, conns: int, py_spy: str | None,
              ab: bool = False, strace: bool = False, http2: bool = False) -> dict:
    reason = unavailable_reason(need=("curl", "wg-quick", "wrk", "nginx", "openssl")
                                + (("strace",) if strace else ())
                                + (("h2load",) if http2 else ()))
    if reason is not None:
        raise RuntimeError(f"gateway benchmark unavailable: {reason}")
    out: dict = {"rounds": [], "access_log": []}
    hosts_dirs: list[str] = []
    with Testbed() as tb:
        try:
            w = World(tb)
            up_g = start_nginx(tb, w.g, "upstream-g", upstream_body(["127.0.0.1:8081"]))
            token, ns, gw_ip = bring_up_private_app(w, hosts_dirs)
            # the local CA and the name's certificate are made on first use
            wait_for(lambda: w.curl(ns, f"https://{APP}/warm", "-k", gw_ip=gw_ip)[0] == 200,
                     30, "the private service over HTTPS")

            ns_a, _wg_a, ns_b, _wg_b = tunnel_pair(tb)
            start_nginx(tb, ns_b, "upstream-b",
                        upstream_body(["127.0.0.1:8081", "100.64.0.2:8081"]))
            proxy_dir = os.path.join(tb.tmpdir, "proxy-b")
            os.makedirs(proxy_dir)
            make_cert(tb, proxy_dir)
            start_nginx(tb, ns_b, "proxy-b", PROXY_HTTP.format(dir="{dir}")
                        + (h2.PROXY_H2.format(dir="{dir}") if http2 else ""))
            wait_for(lambda: os.path.exists(os.path.join(proxy_dir, "nginx.pid")), 10,
                     "the nginx proxy's pid file")
            for url in ("http://100.64.0.2:8081/", "http://100.64.0.2/"):
                wait_for(lambda url=url: ns_a.run(
                    ["curl", "-sS", "-m", "3", "-o", "/dev/null", url],
                    check=False).returncode == 0, 20, f"the baseline at {url}")
            if http2:
                wait_for(lambda: ns_a.run(
                    ["curl", "-sS", "-k", "--http2", "-m", "3", "-o", "/dev/null",
                     h2.NGINX_H2_URL], check=False).returncode == 0, 20,
                    f"the HTTP/2 baseline at {h2.NGINX_H2_URL}")

            wrk = Wrk(tb, seconds)
            gw_host = ("Host: " + APP,)
            paths = {
                "upstream": lambda c, *h: wrk(ns_a, "http://100.64.0.2:8081/", c, *h),
                "nginx": lambda c, *h: wrk(ns_a, "http://100.64.0.2/", c, *h),
                "gateway": lambda c, *h: wrk(ns, f"http://{gw_ip}/", c, *gw_host, *h),
                "nginx_tls": lambda c, *h: wrk(ns_a, "https://100.64.0.2/", c, *h),
                "gateway_tls": lambda c, *h: wrk(ns, f"https://{APP}/", c, *h),
            }
            close = "Connection: close"
            gw_pid = find_gateway_pid(w)
            fast_now = os.environ.get(AB_VAR, AB_VALUES[0]) == AB_VALUES[0]
            # --fast-path ab: each round measures the gateway with the fast
            # path ("gateway*") and, after a restart, without ("slowpath*")
            if ab:
                paths["slowpath"] = paths["gateway"]
                paths["slowpath_tls"] = paths["gateway_tls"]
            # CPU per request of the proxying process (robust on a shared box
            # where req/s moves with the neighbours' load): the gateway, and
            # the nginx reverse proxy's worker
            cpu_of = {"gateway": [gw_pid] if gw_pid else [], "gateway_tls": [gw_pid] if gw_pid
                      else [], "nginx": nginx_workers(proxy_dir),
                      "nginx_tls": nginx_workers(proxy_dir)}
            gw_plain, gw_tls = ("gateway", "slowpath"), ("gateway_tls", "slowpath_tls")
            # --h2: h2load (ALPN h2) to the gateway's TLS tunnel listener and
            # to nginx terminating TLS with http2 on, each round after HTTPS
            h2_paths: tuple[str, ...] = ()
            if http2:
                h2load = h2.H2Load(tb.tmpdir, seconds, EXTRA_HEADERS)
                paths["nginx_h2"] = lambda c, m: h2load(ns_a, h2.NGINX_H2_URL, c, m)
                paths["gateway_h2"] = lambda c, m: h2load(ns, f"https://{APP}/", c, m)
                cpu_of["nginx_h2"] = nginx_workers(proxy_dir)
                h2_paths = ("nginx_h2", "gateway_h2")

            def measure_h2(rnd: dict, name: str) -> None:
                """``conns`` connections x h2.STREAMS streams (req/s, CPU per
                request), then one connection with one stream (latency); for the
                gateway, one access-log entry per request (a stream in flight
                when h2load stops is logged too: at most h2load's started -
                succeeded, i.e. the streams in flight at its end)."""
                is_gw = name == "gateway_h2"
                before = (log_lines(up_g), access_log_total(w)) if is_gw else None
                c0 = cpu_seconds(cpu_of[name])
                s0 = cpu_seconds(cpu_of[name], system_only=True)
                if is_gw:
                    loss0 = loss_counters(w)
                m0 = machine_cpu()
                rnd[f"{name}_c{conns}"] = paths[name](conns, h2.STREAMS)
                _machine_per_request(rnd[f"{name}_c{conns}"], m0)
                _cpu_per_request(rnd[f"{name}_c{conns}"], c0, cpu_of[name], s0)
                if is_gw:
                    loss1 = loss_counters(w)
                    done = max(1, rnd[f"{name}_c{conns}"]["requests"])
                    out.setdefault("loss", []).append(
                        {"path": name, **{f"wg_{d}_per_req": (loss1[f"wg_{d}"] - loss0[f"wg_{d}"])
                                          / done for d in ("rx", "tx")},
                         **{k: loss1[k] - loss0[k] for k in LOSS_COUNTERS}})
                rnd[f"{name}_c1"] = paths[name](1, 1)
                if before is not None:
                    runs = [rnd[f"{name}_{k}"] for k in (f"c{conns}", "c1")]
                    h2_done = sum(r["requests"] for r in runs)
                    in_flight = sum(r["started"] - r["requests"] for r in runs)
                    out["access_log"].append(
                        {**check_access_log(w, up_g, before, h2_done, in_flight),
                         "client": "h2load"})

            def measure(rnd: dict, i: int, plain: tuple, tls: tuple) -> None:
                for name in plain:
                    is_gw = name in gw_plain
                    logged = is_gw and not (FLOOR and name == "slowpath")
                    before = (log_lines(up_g), access_log_total(w)) if logged else None
                    spy = None
                    if py_spy and i == 0 and name == "gateway" and gw_pid:
                        spy = subprocess.Popen(
                            [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                             "-p", str(gw_pid), "-d", str(int(seconds)), "-f", "raw",
                             "-o", py_spy, "-r", "200", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    c0 = cpu_seconds(cpu_of.get(name, []))
                    s0 = cpu_seconds(cpu_of.get(name, []), system_only=True)
                    if is_gw:
                        loss0, rtx0 = loss_counters(w), client_retransmits(ns)
                        udp0 = snmp(w.g, "Udp", "RcvbufErrors")
                    m0 = machine_cpu()
                    rnd[f"{name}_c{conns}"] = paths[name](conns)
                    _machine_per_request(rnd[f"{name}_c{conns}"], m0)
                    _cpu_per_request(rnd[f"{name}_c{conns}"], c0, cpu_of.get(name, []), s0)
                    if is_gw:
                        loss1 = loss_counters(w)
                        done = max(1, rnd[f"{name}_c{conns}"]["requests"])
                        for d in ("rx", "tx"):
                            k = f"wg_{d}"
                            loss1[f"{k}_per_req"] = (loss1.pop(k) - loss0.pop(k)) / done
                            loss0[f"{k}_per_req"] = 0.0
                        out.setdefault("loss", []).append(
                            {"path": name, **{k: loss1[k] - loss0[k] for k in loss1},
                             "client_retransmits": client_retransmits(ns) - rtx0,
                             "gateway_udp_rcvbuf_errors": snmp(w.g, "Udp", "RcvbufErrors") - udp0})
                    if spy is not None:
                        spy.wait(timeout=60)
                    if is_gw:
                        p0 = loss_counters(w)
                    rnd[f"{name}_c1"] = paths[name](1)
                    if is_gw:
                        p1 = loss_counters(w)
                        done = max(1, rnd[f"{name}_c1"]["requests"])
                        out.setdefault("loss", []).append(
                            {"path": name + " 1 conn",
                             **{f"wg_{d}_per_req": (p1[f"wg_{d}"] - p0[f"wg_{d}"]) / done
                                for d in ("rx", "tx")}})
                    if before is not None:
                        wrk_done = sum(rnd[f"{name}_{k}"]["requests"] for k in (f"c{conns}", "c1"))
                        out["access_log"].append(check_access_log(w, up_g, before, wrk_done,
                                                                  conns + 1))
                    elif is_gw:
                        # --floor: nothing is logged, but the upstream's buffered
                        # log lines of these requests land before the next count
                        settled(lambda: log_lines(up_g))
                for name in tls:
                    before = ((log_lines(up_g), access_log_total(w))
                              if name in gw_tls else None)
                    c0 = cpu_seconds(cpu_of[name])
                    s0 = cpu_seconds(cpu_of[name], system_only=True)
                    m0 = machine_cpu()
                    rnd[f"{name}_c{conns}"] = paths[name](conns)
                    _machine_per_request(rnd[f"{name}_c{conns}"], m0)
                    _cpu_per_request(rnd[f"{name}_c{conns}"], c0, cpu_of[name], s0)
                    rnd[f"{name}_c1"] = paths[name](1)
                    c0 = cpu_seconds(cpu_of[name])
                    rnd[f"{name}_hs"] = paths[name](conns, close)
                    _cpu_per_request(rnd[f"{name}_hs"], c0, cpu_of[name])
                    if before is not None:
                        wrk_done = sum(rnd[f"{name}_{k}"]["requests"]
                                       for k in (f"c{conns}", "c1", "hs"))
                        out["access_log"].append(check_access_log(w, up_g, before, wrk_done,
                                                                  2 * conns + 1))

            for i in range(rounds):
                rnd: dict = {}
                if ab and not fast_now:
                    gw_pid = restart_gateway(w, token, True, ns, gw_ip, up_g)
                    fast_now = True
                for key in (*gw_plain, *gw_tls):
                    cpu_of[key] = [gw_pid] if gw_pid else []
                measure(rnd, i, ("upstream", "nginx", "gateway"), ("nginx_tls", "gateway_tls"))
                if h2_paths:
                    cpu_of["gateway_h2"] = [gw_pid] if gw_pid else []
                    for name in h2_paths:
                        measure_h2(rnd, name)
                if ab:
                    gw_pid = restart_gateway(w, token, False, ns, gw_ip, up_g)
                    fast_now = False
                    for key in ("slowpath", "slowpath_tls"):
                        cpu_of[key] = [gw_pid] if gw_pid else []
                    measure(rnd, i, ("slowpath",), ("slowpath_tls",))
                out["rounds"].append(rnd)
                print(f"round {i + 1}/{rounds}: " + ", ".join(
                    f"{k} {v['rps']:.0f}" for k, v in rnd.items()), file=sys.stderr)
            if strace:
                # extra runs after the rounds (tracing slows the traced
                # process, so their req/s count nowhere): syscalls per request
                # of the gateway and of nginx's worker, 16 connections
                if ab and not fast_now:
                    gw_pid = restart_gateway(w, token, True, ns, gw_ip, up_g)
                traced = {"gateway": gw_pid, "nginx": nginx_workers(proxy_dir)[0]}
                out["syscalls"] = {}
                for name, pid in traced.items():
                    if pid is None:
                        continue
                    res, calls = strace_counts(
                        pid, os.path.join(tb.tmpdir, f"strace-{name}.txt"),
                        lambda name=name: paths[name](conns))
                    out["syscalls"][name] = {"requests": res["requests"], "calls": calls}
        finally:
            for d in hosts_dirs:
                shutil.rmtree(d, ignore_errors=True)
    return out


def _cpu_per_request(result: dict, c0: float, pids: list[int], s0: float | None = None) -> None:
    if pids and result["requests"]:
        result["cpu_ms_per_req"] = (cpu_seconds(pids) - c0) * 1000 / result["requests"]
        if s0 is not None:
            result["sys_ms_per_req"] = ((cpu_seconds(pids, system_only=True) - s0) * 1000
                                        / result["requests"])


def _machine_per_request(result: dict, m0: tuple[float, float]) -> None:
    """The whole machine's busy CPU per request of this run (every process of
    the path: load generator, wireguard-go, proxies, upstream, management,
    kernel) and the idle share of the machine meanwhile: idle left over
    means the path was bound by latency or one process, not by the CPUs."""
    busy, idle = (b - a for a, b in zip(m0, machine_cpu(), strict=True))
    if result["requests"]:
        result["machine_ms_per_req"] = busy * 1000 / result["requests"]
        result["idle_pct"] = 100 * idle / max(busy + idle, 1e-9)


def check_access_log(w: World, up_dir: str, before: tuple[int, int], wrk_done: int,
                     slack: int) -> dict:
    upstream = settled(lambda: log_lines(up_dir)) - before[0]
    entries = settled(lambda: access_log_total(w), timeout=60.0, quiet=2.0) - before[1]
    # requests still in flight when wrk stops are logged (499) by the gateway and
    # may or may not have reached the upstream: at most one per connection
    ok = wrk_done <= upstream <= entries <= wrk_done + slack
    return {"wrk_completed": wrk_done, "upstream_requests": upstream,
            "access_log_entries": entries, "ok": ok}


def summarize(out: dict, conns: int) -> dict:
    keys = out["rounds"][0].keys()
    med = {}
    for k in keys:
        xs = [r[k] for r in out["rounds"]]
        med[k] = {"rps": statistics.median(x["rps"] for x in xs),
                  "p50_ms": statistics.median(x["p50_us"] for x in xs) / 1000,
                  "p99_ms": statistics.median(x["p99_us"] for x in xs) / 1000,
                  "errors": sum(x["errors"] for x in xs),
                  "cpu_ms": (statistics.median(x["cpu_ms_per_req"] for x in xs)
                             if all("cpu_ms_per_req" in x for x in xs) else None),
                  "sys_ms": (statistics.median(x["sys_ms_per_req"] for x in xs)
                             if all("sys_ms_per_req" in x for x in xs) else None),
                  "machine_ms": (statistics.median(x["machine_ms_per_req"] for x in xs)
                                 if all("machine_ms_per_req" in x for x in xs) else None),
                  "idle_pct": (statistics.median(x["idle_pct"] for x in xs)
                               if all("idle_pct" in x for x in xs) else None),
                  "requests": sum(x["requests"] for x in xs)}
    c = f"c{conns}"
    ratios = {
        "gateway/nginx req/s": med[f"gateway_{c}"]["rps"] / med[f"nginx_{c}"]["rps"],
        "gateway/upstream req/s": med[f"gateway_{c}"]["rps"] / med[f"upstream_{c}"]["rps"],
        "nginx/upstream req/s": med[f"nginx_{c}"]["rps"] / med[f"upstream_{c}"]["rps"],
        "gateway added p50 over nginx at 1 connection (ms)":
            med["gateway_c1"]["p50_ms"] - med["nginx_c1"]["p50_ms"],
        "HTTPS gateway/nginx req/s": med[f"gateway_tls_{c}"]["rps"] / med[f"nginx_tls_{c}"]["rps"],
        "HTTPS gateway added p50 at 1 connection (ms)":
            med["gateway_tls_c1"]["p50_ms"] - med["nginx_tls_c1"]["p50_ms"],
        "new TLS handshakes/s gateway/nginx":
            med["gateway_tls_hs"]["rps"] / med["nginx_tls_hs"]["rps"],
    }
    for name in ("", "tls_"):
        g, n = med[f"gateway_{name}{c}"]["cpu_ms"], med[f"nginx_{name}{c}"]["cpu_ms"]
        if g and n:
            ratios[f"{'HTTPS ' if name else ''}CPU per request gateway/nginx worker"] = g / n
    if f"gateway_h2_{c}" in med:  # --h2
        g, n = med[f"gateway_h2_{c}"], med[f"nginx_h2_{c}"]
        ratios["HTTP/2 gateway/nginx req/s"] = g["rps"] / n["rps"]
        ratios["HTTP/2 gateway added p50 at 1 connection (ms)"] = (
            med["gateway_h2_c1"]["p50_ms"] - med["nginx_h2_c1"]["p50_ms"])
        if g["cpu_ms"] and n["cpu_ms"]:
            ratios["HTTP/2 CPU per request gateway/nginx worker"] = g["cpu_ms"] / n["cpu_ms"]
        ratios["gateway req/s HTTP/2 / HTTPS (HTTP/1.1)"] = (
            g["rps"] / med[f"gateway_tls_{c}"]["rps"])
    if f"slowpath_{c}" in med:  # --fast-path ab
        on, off = (("fast path", "twisted.web path") if AB_VAR == "NBGW_HTTP_FAST"
                   else ("gateway", "floor") if FLOOR
                   else (f"{AB_VAR}=1", f"{AB_VAR}=0"))
        for name in ("", "tls_"):
            label = "HTTPS " if name else ""
            fast, slow = med[f"gateway_{name}{c}"], med[f"slowpath_{name}{c}"]
            ratios[f"{label}req/s {on} / {off}"] = fast["rps"] / slow["rps"]
            ratios[f"{label}{off} / nginx req/s"] = (
                slow["rps"] / med[f"nginx_{name}{c}"]["rps"])
            if fast["cpu_ms"] and slow["cpu_ms"]:
                ratios[f"{label}CPU per request {on} / {off}"] = (
                    fast["cpu_ms"] / slow["cpu_ms"])
        ratios[f"added p50 at 1 connection, {off} (ms)"] = (
            med["slowpath_c1"]["p50_ms"] - med["nginx_c1"]["p50_ms"])
    return {"median": med, "ratios": ratios}


LABELS = {
    "upstream": "upstream alone over wireguard-go",
    "nginx": "nginx reverse proxy behind wireguard-go",
    "gateway": "nbgateway private service",
    "nginx_tls": "nginx HTTPS behind wireguard-go",
    "gateway_tls": "nbgateway HTTPS (tunnel listener)",
    "slowpath": "nbgateway, fast path off (twisted.web)",
    "slowpath_tls": "nbgateway HTTPS, fast path off",
    "nginx_h2": "nginx HTTP/2 (TLS) behind wireguard-go",
    "gateway_h2": "nbgateway HTTP/2 (TLS tunnel listener)",
}


def report(out: dict, seconds: float, conns: int) -> bool:
    s = summarize(out, conns)
    med = s["median"]
    print(f"wrk -t1, {seconds:g} s per round, {len(out['rounds'])} interleaved rounds, "
          f"medians; nginx upstream returning {len(BODY)} B; request heads: "
          f"{'a browser navigation (--browser)' if EXTRA_HEADERS else 'Host only (wrk)'}"
          f"{', the Referer new on every request (--vary-lines)' if VARY_LINES else ''}")
    h2_rows = [k for k in med if k.startswith(("gateway_h2_", "nginx_h2_"))]
    if h2_rows:
        first = out["rounds"][0]
        print(f"HTTP/2 rows (--h2): h2load -t1, ALPN h2, {conns} connections x "
              f"{h2.STREAMS} streams and 1 x 1, p50/p99 from its per-request log; "
              f"request heads: {'the browser head' if EXTRA_HEADERS else 'h2load default'}"
              f"{' repeated (h2load cannot vary it)' if VARY_LINES else ''}; TLS: "
              + ", ".join(f"{k.rsplit('_', 2)[0]} {first[k].get('tls')}"
                          for k in h2_rows if k.endswith(f"_c{conns}")))
    print(f"  {'path':42s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'errors':>6s} {'CPU ms/req':>10s} {'of it sys':>9s} {'machine':>8s} {'idle %':>6s}")
    for k, v in med.items():
        name, _, c = k.rpartition("_")
        conn_label = {"c1": "1", "hs": f"{conns} new TLS"}.get(c, c[1:])
        if name.endswith("_h2") and c != "c1":
            conn_label = f"{c[1:]}x{h2.STREAMS}"
        cpu = f"{v['cpu_ms']:10.3f}" if v["cpu_ms"] else f"{'':10s}"
        sys_ms = f"{v['sys_ms']:9.3f}" if v.get("sys_ms") is not None else f"{'':9s}"
        mach = (f" {v['machine_ms']:8.3f} {v['idle_pct']:6.1f}"
                if v.get("machine_ms") is not None else "")
        print(f"  {LABELS[name]:42s} {conn_label:>5s} {v['rps']:9.0f} {v['p50_ms']:8.3f} "
              f"{v['p99_ms']:8.3f} {v['errors']:6d} {cpu} {sys_ms}{mach}")
    print("ratios:")
    for k, v in s["ratios"].items():
        print(f"  {k:52s} {v:7.3f}")
    all_ok = all(v["errors"] == 0 for v in med.values())
    for a in out["access_log"]:
        all_ok = all_ok and a["ok"]
        print(f"  access log: {a['access_log_entries']} entries for {a['upstream_requests']} "
              f"upstream requests, {a.get('client', 'wrk')} completed {a['wrk_completed']}: "
              f"{'ok' if a['ok'] else 'MISMATCH'}")
    for x in out.get("loss", []):
        x = dict(x)
        print(f"  during a {x.pop('path', 'gateway')} run: " + ", ".join(
            f"{k.replace('nbgateway_', '').replace('_total', '')} {v:.3g}" for k, v in x.items()))
    for who, x in out.get("syscalls", {}).items():
        done = max(1, x["requests"])
        top = sorted(x["calls"].items(), key=lambda kv: -kv[1])[:8]
        print(f"  syscalls per request, {who} under strace -c ({x['requests']} requests, "
              f"{sum(x['calls'].values()) / done:.2f} in all): "
              + ", ".join(f"{k} {n / done:.2f}" for k, n in top))
    print("zero errors and one access-log entry per request:", "yes" if all_ok else "NO")
    return all_ok


def main(argv: list[str] | None = None) -> int:
    try:
        from bench._limits import lift_management_limits
    except ImportError:  # run as a script from bench/
        from _limits import lift_management_limits  # type: ignore[no-redef]

    lift_management_limits()  # throughput, not the per-account limits
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=16,
                        help="keep-alive connections of the throughput runs")
    parser.add_argument("--ab-env", default="NBGW_HTTP_FAST", metavar="VAR",
                        help="with --fast-path ab: the environment variable switched "
                             "between 1 (the 'gateway' rows) and 0 (the second rows) "
                             "instead of NBGW_HTTP_FAST")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--py-spy", help="record the gateway with py-spy (raw format) here")
    parser.add_argument("--strace", action="store_true",
                        help="after the rounds, count the gateway's and nginx's syscalls "
                             "per request under strace -c (extra runs, not in the medians)")
    parser.add_argument("--fast-path", choices=("on", "off", "ab"), default="on",
                        help="the gateway's HTTP/1.1 fast path (off: NBGW_HTTP_FAST=0, the "
                             "twisted.web server path; ab: both in every round, the gateway "
                             "restarted between them)")
    parser.add_argument("--floor", action="store_true",
                        help="the second rows of every round: the gateway's own UDP port, "
                             "WireGuard and netstack under the smallest Twisted + httptools "
                             "proxy instead of its HTTP layer (bench/_floor/sitecustomize.py; "
                             "no access log): the most any Python HTTP layer could serve")
    parser.add_argument("--browser", action="store_true",
                        help="every request of every path carries a browser's navigation "
                             "head (14 more lines, a cookie; BROWSER_HEADERS) instead of "
                             "wrk's Host-only head")
    parser.add_argument("--vary-lines", action="store_true",
                        help="each request's Referer differs (wrk's request() in Lua), so a "
                             "connection never sends the same header section twice (the "
                             "gateway's per-connection memo of the last section never hits); "
                             "implies --browser")
    parser.add_argument("--h2", action="store_true",
                        help="add HTTP/2 rows to every round: h2load (nghttp2-client, ALPN "
                             "h2) against the gateway's TLS tunnel listener and against "
                             "nginx terminating TLS with http2 on (same upstream, same "
                             f"stamped header); --connections x {h2.STREAMS} streams, then "
                             "1 x 1; with --browser, the browser head as HTTP/2 fields")
    args = parser.parse_args(argv)
    global AB_VAR, AB_VALUES, FLOOR, EXTRA_HEADERS, VARY_LINES
    if args.browser or args.vary_lines:
        EXTRA_HEADERS = BROWSER_HEADERS
    VARY_LINES = args.vary_lines
    AB_VAR = args.ab_env
    os.environ["NBGW_HTTP_FAST"] = "0" if args.fast_path == "off" else "1"
    os.environ[AB_VAR] = "0" if args.fast_path == "off" else "1"
    if args.floor:
        FLOOR, AB_VAR, AB_VALUES = True, FLOOR_VAR, ("0", "1")
        args.fast_path = "ab"
        os.environ[AB_VAR] = "0"
        floor_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_floor")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (floor_dir, os.environ.get("PYTHONPATH")) if p)
        LABELS["slowpath"] = "gateway packets, minimal Python HTTP"
        LABELS["slowpath_tls"] = "nbgateway HTTPS (same again)"
    elif AB_VAR != "NBGW_HTTP_FAST":
        LABELS["slowpath"] = f"nbgateway, {AB_VAR}=0"
        LABELS["slowpath_tls"] = f"nbgateway HTTPS, {AB_VAR}=0"
    print(f"gateway HTTP/1.1 fast path: {args.fast_path}")
    t0 = time.monotonic()
    try:
        out = run_bench(args.seconds, args.rounds, args.connections, args.py_spy,
                        ab=args.fast_path == "ab", strace=args.strace, http2=args.h2)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"raw": out, "summary": summarize(out, args.connections)}, f, indent=1)
    ok = report(out, args.seconds, args.connections)
    print(f"(total wall time {time.monotonic() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
