"""Gateway benchmark (issue 6): a private service over the tunnel vs. the same
upstream reached directly over wireguard-go, measured in the same run.

Topology (everything inside namespaces this script creates, torn down after):

* **gateway path** -- netns G runs ``twistd nbmanagement`` and ``twistd
  nbgateway --private`` (as in ``tests/interop/test_private_e2e.py``, whose
  ``World`` is reused) and the upstream HTTP server on 127.0.0.1:8081 (a
  ``direct_upstream`` target).  Peer "alice" (in the service's access group)
  runs stock wireguard-go configured from the management's wireguard-config;
  the load generator runs in her namespace: kernel TCP -> wireguard-go ->
  the gateway's WireGuard + netstack -> private gate (validation cached) ->
  reverse proxy -> upstream.
* **baseline path** -- two fresh namespaces joined by plain wireguard-go <->
  wireguard-go (``tunnel_pair``); the same upstream server program listens on
  the far side's tunnel address and the same load generator runs on the near
  side.

Load generator: ``--clients`` (16) threads, each with one keep-alive
``http.client`` connection, GET in a loop for ``--seconds``; requests/s and
p50/p99 latency of completed 200s.  Plain HTTP (the tunnel listener's port 80)
so that TLS cost is not part of the ratio.

Cache hit vs. miss: ``--domains`` extra private services; for each, on one
keep-alive connection, the first request is a ValidateTunnelPeer miss (an RPC
to the management) and the following ones are cache hits; medians of both.

``--tls`` adds a gateway round over HTTPS (keep-alive TLS to port 443, the
gateway's local CA verified, SNI = the service name); it is printed but not
part of the ratio (the baseline has no TLS).

Run as root:  .venv/bin/python bench/gateway.py [--seconds 8] [--clients 16] [--domains 20] [--tls]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

try:
    from bench._testbed import Testbed, tunnel_pair, unavailable_reason
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import Testbed, tunnel_pair, unavailable_reason

from tests.interop.test_private_e2e import (  # repo root put on sys.path by _testbed
    APP,
    DOMAIN,
    UPSTREAM,
    World,
    counter,
    wait_for,
)

LOADGEN = textwrap.dedent('''
    import http.client, json, socket, ssl, sys, threading, time
    host, port, vhost, clients, seconds = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                           int(sys.argv[4]), float(sys.argv[5]))
    cafile = sys.argv[6] if len(sys.argv) > 6 else None
    class TLSConn(http.client.HTTPConnection):
        """HTTPS to an IP with SNI/verification for the virtual host."""
        def connect(self):
            raw = socket.create_connection((self.host, self.port), self.timeout)
            ctx = ssl.create_default_context(cafile=cafile)
            self.sock = ctx.wrap_socket(raw, server_hostname=vhost)
    Conn = TLSConn if cafile else http.client.HTTPConnection
    lat, errors, lock, first_error = [], [0], threading.Lock(), []
    start = time.monotonic()
    stop_at = start + seconds
    def worker(n):
        conn = Conn(host, port, timeout=10)
        mine, bad = [], 0
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            try:
                conn.request("GET", f"/bench/{n}", headers={"Host": vhost})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    mine.append(time.monotonic() - t0)
                else:
                    bad += 1
            except OSError as exc:
                bad += 1
                if not first_error:
                    first_error.append(repr(exc))
                conn.close()
                conn = Conn(host, port, timeout=10)
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    lat.sort()
    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(json.dumps({"ok": len(lat), "errors": errors[0], "first_error": first_error[:1],
                      "seconds": elapsed,
                      "rps": len(lat) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}))
''')

HIT_MISS = textwrap.dedent('''
    import http.client, json, statistics, sys, time
    host, port, hits_per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    domains = sys.argv[4:]
    miss, hit, codes = [], [], []
    for d in domains:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        for i in range(1 + hits_per):
            t0 = time.monotonic()
            conn.request("GET", "/hm", headers={"Host": d})
            resp = conn.getresponse()
            resp.read()
            dt = time.monotonic() - t0
            codes.append(resp.status)
            (miss if i == 0 else hit).append(dt)
        conn.close()
    print(json.dumps({"miss_ms": statistics.median(miss) * 1000,
                      "hit_ms": statistics.median(hit) * 1000,
                      "codes": sorted(set(codes)), "n_miss": len(miss), "n_hit": len(hit)}))
''')


def _json_out(res) -> dict:
    if res.returncode != 0:
        raise RuntimeError(f"load generator failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def private_service(name: str, domain: str, group: str) -> dict:
    return {"name": name, "domain": domain, "enabled": True, "private": True,
            "access_groups": [group],
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": 8081, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def public_listener_code(world: World, host: str) -> int:
    r = world.g.run(["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                     "--resolve", f"{host}:8443:127.0.0.1", f"http://{host}:8443/"],
                    check=False, timeout=10)
    return int(r.stdout) if r.stdout.strip().isdigit() else 0


def run_bench(seconds: float, clients: int, n_domains: int, hits_per: int,
              tls: bool = False) -> dict:
    reason = unavailable_reason(need=("curl", "wg-quick"))
    if reason is not None:
        raise RuntimeError(f"gateway benchmark unavailable: {reason}")
    out: dict = {}
    with Testbed() as tb:
        w = World(tb)
        w.start_upstream()
        w.start_management()
        token = w.rest("POST", "/reverse-proxies/proxy-tokens", {"name": "gw"})["plain_token"]
        w.start_gateway(token)
        wait_for(lambda: DOMAIN in json.dumps(w.rest("GET", "/reverse-proxies/clusters")),
                 30, "the gateway to connect to management")
        devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [devs["id"]])
        w.rest("POST", "/reverse-proxies/services", private_service("app", APP, devs["id"]))
        ns, gw_ip, _conf = w.connect_peer("alice")
        loadgen = tb.write_file("loadgen.py", LOADGEN)
        # warm up: handshake, mapping applied, validation cached
        wait_for(lambda: w.curl(ns, f"http://{APP}/warm", gw_ip=gw_ip)[0] == 200, 30,
                 "the private service over the tunnel")

        # --- baseline: the same upstream behind plain wireguard-go <-> wireguard-go
        ns_a, _wg_a, ns_b, _wg_b = tunnel_pair(tb)
        script = tb.write_file("upstream_b.py", UPSTREAM)
        ns_b.popen([sys.executable, script, "8081", os.devnull, "100.64.0.2"])
        wait_for(lambda: ns_a.run(["curl", "-sS", "-m", "3", "-o", "/dev/null",
                                   "http://100.64.0.2:8081/"], check=False).returncode == 0,
                 20, "the baseline upstream")

        def gateway_round() -> dict:
            return _json_out(ns.run([sys.executable, loadgen, gw_ip, "80", APP, str(clients),
                                     str(seconds)], check=False, timeout=seconds + 60))

        def direct_round() -> dict:
            return _json_out(ns_a.run([sys.executable, loadgen, "100.64.0.2", "8081",
                                       "100.64.0.2", str(clients), str(seconds)],
                                      check=False, timeout=seconds + 60))

        misses0 = counter(w.metrics(), "nbgateway_tunnel_validation_lookups_total",
                          result="miss")
        # interleaved (direct, gateway, direct) so drift on a shared box shows
        out["direct_1"] = direct_round()
        out["gateway"] = gateway_round()
        out["direct_2"] = direct_round()
        if tls:
            # the local CA and the name's certificate are made on first use
            ca = os.path.join(w.gw_dir, "ca.crt")
            ns.run(["curl", "-sk", "-m", "10", "-o", "/dev/null", "--resolve",
                    f"{APP}:443:{gw_ip}", f"https://{APP}/warm"], check=False, timeout=20)
            wait_for(lambda: os.path.exists(ca), 20, "the gateway's local CA certificate")
            out["gateway_tls"] = _json_out(ns.run(
                [sys.executable, loadgen, gw_ip, "443", APP, str(clients), str(seconds),
                 ca], check=False, timeout=seconds + 60))
        out["gateway_misses_during_load"] = counter(
            w.metrics(), "nbgateway_tunnel_validation_lookups_total", result="miss") - misses0

        # --- cache hit vs miss: one miss per fresh domain, then hits
        domains = [f"hm{i}.{DOMAIN}" for i in range(n_domains)]
        for i, d in enumerate(domains):
            w.rest("POST", "/reverse-proxies/services", private_service(f"hm{i}", d, devs["id"]))
        for d in domains:
            wait_for(lambda d=d: public_listener_code(w, d) == 403, 30, f"{d} on the gateway")
        misses1 = counter(w.metrics(), "nbgateway_tunnel_validation_lookups_total",
                          result="miss")
        hm = tb.write_file("hitmiss.py", HIT_MISS)
        out["hit_miss"] = _json_out(ns.run([sys.executable, hm, gw_ip, "80", str(hits_per),
                                            *domains], check=False, timeout=120))
        out["hit_miss"]["gateway_misses"] = counter(
            w.metrics(), "nbgateway_tunnel_validation_lookups_total", result="miss") - misses1
    return out


def report(r: dict, seconds: float, clients: int) -> None:
    g, d1, d2 = r["gateway"], r["direct_1"], r["direct_2"]
    direct_rps = (d1["rps"] + d2["rps"]) / 2
    print(f"private service, {clients} keep-alive clients, {seconds:g} s per round, plain HTTP:")
    for name, x in (("direct over wireguard-go (1)", d1), ("through the gateway", g),
                    ("direct over wireguard-go (2)", d2)):
        print(f"  {name:30s} {x['rps']:8.1f} req/s  p50 {x['p50_ms']:7.2f} ms  "
              f"p99 {x['p99_ms']:7.2f} ms  ({x['ok']} ok, {x['errors']} errors)")
    if "gateway_tls" in r:
        x = r["gateway_tls"]
        print(f"  {'through the gateway, HTTPS':30s} {x['rps']:8.1f} req/s  "
              f"p50 {x['p50_ms']:7.2f} ms  p99 {x['p99_ms']:7.2f} ms  "
              f"({x['ok']} ok, {x['errors']} errors; not in the ratio)")
    print(f"  ratio gateway/direct req/s: {g['rps'] / direct_rps:.3f}; "
          f"p50 x{g['p50_ms'] / ((d1['p50_ms'] + d2['p50_ms']) / 2):.2f}, "
          f"p99 x{g['p99_ms'] / ((d1['p99_ms'] + d2['p99_ms']) / 2):.2f}")
    print(f"  validation misses during the gateway round: {r['gateway_misses_during_load']:g}"
          " (0 = every request a cache hit)")
    hm = r["hit_miss"]
    print(f"ValidateTunnelPeer cache, {hm['n_miss']} fresh domains, one keep-alive connection "
          "each, sequential:")
    print(f"  miss (RPC to management): median {hm['miss_ms']:7.2f} ms per request")
    print(f"  hit                     : median {hm['hit_ms']:7.2f} ms per request "
          f"({hm['n_hit']} requests)")
    print(f"  cost of a miss over a hit: {hm['miss_ms'] - hm['hit_ms']:.2f} ms "
          f"(x{hm['miss_ms'] / hm['hit_ms']:.2f}); gateway-counted misses {hm['gateway_misses']:g}"
          f"; statuses {hm['codes']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--domains", type=int, default=20, help="fresh domains for hit/miss")
    parser.add_argument("--hits", type=int, default=5, help="cache hits timed per domain")
    parser.add_argument("--tls", action="store_true",
                        help="also a gateway round over HTTPS (port 443, local CA verified)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        r = run_bench(args.seconds, args.clients, args.domains, args.hits, args.tls)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    report(r, args.seconds, args.clients)
    print(f"(total wall time {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
