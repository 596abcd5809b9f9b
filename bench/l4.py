"""L4 relay benchmark (issue 13): the gateway's TCP relays vs. their baselines,
all measured in one run on this machine.

* **private TCP**: iperf3 from stock wireguard-go peer "alice" to a private
  ``tcp`` service on the gateway's tunnel address (kernel TCP -> wireguard-go
  -> the gateway's WireGuard + netstack -> private gate -> relay -> iperf3
  server on the gateway host's loopback, ``direct_upstream``), vs. iperf3
  straight over wireguard-go <-> wireguard-go (``bench/wg_baseline.py``).
  Goal: >= 0.7 of the baseline.
* **public TCP relay on loopback**: iperf3 through a public ``tcp`` service's
  host port, vs. HAProxy (Debian package) as a plain TCP relay on the same
  loopback, vs. iperf3 without any relay (the ceiling).  HAProxy's row is
  skipped with a note when it is not installed.
* **connections/s** through the public relay (connect, one byte echoed, close;
  one client, sequential) vs. straight to the upstream.
* **memory per idle relayed connection**: the gateway's RSS before and after
  opening ``--idle`` (2,000) relayed connections that stay idle.  Goal:
  <= 16 KiB each.

Run as root:  .venv/bin/python bench/l4.py [--seconds 5] [--idle 2000]
Everything runs inside namespaces this script creates and is torn down after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

try:
    from bench._testbed import Testbed, iperf3, start_iperf3_server, unavailable_reason
    from bench.wg_baseline import measure_wg_go_baseline
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _testbed import Testbed, iperf3, start_iperf3_server, unavailable_reason
    from wg_baseline import measure_wg_go_baseline

from tests.interop.test_private_e2e import DOMAIN, World, counter, wait_for
from tests.interop.testbed import inside_netns

SERVERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "tests", "interop", "l4_servers.py")
PUBLIC_PORT, PRIVATE_PORT, HAPROXY_PORT, ECHO_PORT = 7100, 2222, 7200, 9100


def gateway_pid(w: World) -> int | None:
    for pid in w.g.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"twistd") for a in argv) and b"nbgateway" in argv:
            return pid
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: gateway counters summed over the private runs (loss shows here first)
LOSS = (("tcp_rto", "nbgateway_tcp_retransmits_total", {"kind": "timeout"}),
        ("tcp_fast_retransmits", "nbgateway_tcp_retransmits_total", {"kind": "fast"}),
        ("udp_send_errors", "nbgateway_wireguard_udp_errors_total", {"kind": "send_error"}),
        ("netstack_drops", "nbgateway_netstack_drops_total", {}),
        ("wireguard_drops", "nbgateway_wireguard_drops_total", {}),
        ("netstack_rx_packets", "nbgateway_netstack_packets_total", {"direction": "rx"}),
        ("netstack_tx_packets", "nbgateway_netstack_packets_total", {"direction": "tx"}))


def loss_counters(w: World) -> dict[str, float]:
    try:
        text = w.metrics()
    except OSError:
        return {}
    return {key: counter(text, name, **labels) for key, name, labels in LOSS}


def snmp(ns, proto: str, field: str) -> int:
    """A kernel counter of a namespace from /proc/net/snmp (0 when absent)."""
    lines = ns.run(["cat", "/proc/net/snmp"], check=False).stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith(proto + ":")]
    if len(rows) < 2 or field not in rows[0]:
        return 0
    return int(rows[1][rows[0].index(field)])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def service(w: World, name: str, port: int, target_port: int, *, private: bool) -> dict:
    body = {"name": name, "domain": f"{name}.{DOMAIN}", "enabled": True, "mode": "tcp",
            "listen_port": port,
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "tcp",
                         "host": "127.0.0.1", "port": target_port, "enabled": True,
                         "options": {"direct_upstream": True}}]}
    if private:
        body.update(private=True, access_groups=[w.devs["id"]])
    return w.rest("POST", "/reverse-proxies/services", body)


def conns_per_second(ns_name: str, host: str, port: int, seconds: float) -> float:
    n = 0
    end = time.monotonic() + seconds
    with inside_netns(ns_name):
        while time.monotonic() < end:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"x")
            s.recv(1)
            s.close()
            n += 1
    return n / seconds


def start_haproxy(w: World) -> bool:
    if shutil.which("haproxy") is None:
        return False
    conf = os.path.join(w.tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:{HAPROXY_PORT}
    default_backend up
backend up
    server iperf 127.0.0.1:5201
""")
    w.g.popen(["haproxy", "-f", conf, "-db"], stdout=w.log("haproxy"), stderr=w.log("haproxy"))
    wait_for(lambda: w.g.run(["ss", "-Htln", f"sport = :{HAPROXY_PORT}"],
                             check=False).stdout.strip(), 10, "haproxy")
    return True


def profile_during(pid: int | None, path: str, seconds: int) -> Any:
    """``py-spy record`` on the gateway for ``seconds`` (a flame graph SVG,
    or speedscope JSON when ``path`` ends in .json); None without py-spy."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if pid is None or not os.path.exists(spy):
        return None
    fmt = ["--format", "speedscope"] if path.endswith(".json") else []
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-o", path,
                             "--nonblocking", *fmt],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(seconds: int, idle: int, *, rounds: int = 1, private_only: bool = False,
        profile: str = "", profile_reverse: str = "", public_rounds: int = 1) -> dict:
    """All figures; with ``rounds`` > 1 the private iperf3 and the
    wireguard-go baseline alternate that many times (medians reported, the
    box is shared and noisy)."""
    reason = unavailable_reason(need=("iperf3", "ss", "wg-quick"))
    if reason is not None:
        raise RuntimeError(f"L4 benchmark unavailable: {reason}")
    out: dict = {"rounds": []}
    with Testbed() as tb:
        w = World(tb)
        start_iperf3_server(w.g, "127.0.0.1")
        w.g.popen([sys.executable, SERVERS, "tcp-echo", "127.0.0.1", str(ECHO_PORT)])
        w.start_connected_gateway()
        w.devs = w.rest("POST", "/groups", {"name": "devs"})
        w.add_peer("alice", [w.devs["id"]])
        service(w, "pub", PUBLIC_PORT, 5201, private=False)
        service(w, "echo", PUBLIC_PORT + 1, ECHO_PORT, private=False)
        service(w, "priv", PRIVATE_PORT, 5201, private=True)
        ns, gw_ip, _ = w.connect_peer("alice")
        service(w, "probe", PRIVATE_PORT + 1, ECHO_PORT, private=True)
        try:
            wait_for(lambda: ns.run(["timeout", "3", "bash", "-c",
                                     f"exec 3<>/dev/tcp/{gw_ip}/{PRIVATE_PORT + 1}"],
                                    check=False).returncode == 0, 60, "the private services")
        except AssertionError:
            for name in ("gateway", "management"):
                with open(os.path.join(w.tmp, f"{name}.log"), errors="replace") as f:
                    print(f"--- {name}.log (tail)", *f.readlines()[-40:], sep="",
                          file=sys.stderr)
            raise
        pid = gateway_pid(w)
        loss0 = loss_counters(w)
        peer0 = (snmp(ns, "Udp", "RcvbufErrors"), snmp(ns, "Tcp", "RetransSegs"),
                 snmp(w.g, "Udp", "RcvbufErrors"))
        for i in range(rounds):
            base = measure_wg_go_baseline(seconds)["forward"]
            spy = profile_during(pid, profile, seconds) if profile and i == 0 else None
            cpu0 = cpu_seconds(pid)
            fwd = iperf3(ns, gw_ip, seconds=seconds, port=PRIVATE_PORT)
            cpu1 = cpu_seconds(pid)
            if spy is not None:
                spy.wait(timeout=seconds + 30)
            spy = (profile_during(pid, profile_reverse, seconds)
                   if profile_reverse and i == 0 else None)
            cpu2 = cpu_seconds(pid)
            rev = iperf3(ns, gw_ip, seconds=seconds, port=PRIVATE_PORT, reverse=True)
            cpu3 = cpu_seconds(pid)
            if spy is not None:
                spy.wait(timeout=seconds + 30)
            # gateway CPU per MB relayed: steadier than Mbit/s on a shared box
            fwd_cpu = 1000 * (cpu1 - cpu0) / max(fwd * seconds / 8, 1e-9)
            rev_cpu = 1000 * (cpu3 - cpu2) / max(rev * seconds / 8, 1e-9)
            out["rounds"].append({"wg_go_mbps": base, "private_mbps": fwd,
                                  "private_reverse_mbps": rev, "ratio": fwd / base,
                                  "cpu_ms_per_mb": fwd_cpu, "reverse_cpu_ms_per_mb": rev_cpu})
            print(f"round {i + 1}: private {fwd / 1000:.3f} Gbit/s (reverse {rev / 1000:.3f}), "
                  f"wireguard-go {base / 1000:.3f} Gbit/s, ratio {fwd / base:.2f}; gateway CPU "
                  f"{fwd_cpu:.2f} ms/MB (reverse {rev_cpu:.2f})", file=sys.stderr, flush=True)
        for key in ("wg_go_mbps", "private_mbps", "private_reverse_mbps", "ratio",
                    "cpu_ms_per_mb", "reverse_cpu_ms_per_mb"):
            if out["rounds"]:  # --rounds 0: the public figures only
                out[key] = statistics.median(r[key] for r in out["rounds"])
        loss1 = loss_counters(w)
        out["loss"] = {k: loss1[k] - loss0.get(k, 0.0) for k in loss1}
        # the peer's side: its wireguard-go socket's receive-buffer overflows
        # (loss of what the gateway sent) and its kernel TCP's retransmissions
        out["loss"]["peer_udp_rcvbuf_errors"] = snmp(ns, "Udp", "RcvbufErrors") - peer0[0]
        out["loss"]["peer_tcp_retransmits"] = snmp(ns, "Tcp", "RetransSegs") - peer0[1]
        # the gateway's own UDP socket (loss of what the peer sent)
        out["loss"]["gateway_udp_rcvbuf_errors"] = snmp(w.g, "Udp", "RcvbufErrors") - peer0[2]
        if private_only:
            return out
        out["loopback_direct_mbps"] = iperf3(w.g, "127.0.0.1", seconds=seconds)
        haproxy = start_haproxy(w)
        relay, hap, cpu = [], [], []
        for _ in range(max(1, public_rounds)):  # interleaved: relay, HAProxy, ...
            c0 = cpu_seconds(pid)
            relay.append(iperf3(w.g, "127.0.0.1", seconds=seconds, port=PUBLIC_PORT))
            cpu.append(1000 * (cpu_seconds(pid) - c0) / max(relay[-1] * seconds / 8, 1e-9))
            if haproxy:
                hap.append(iperf3(w.g, "127.0.0.1", seconds=seconds, port=HAPROXY_PORT))
        out["public_relay_mbps"] = statistics.median(relay)
        out["public_cpu_ms_per_mb"] = statistics.median(cpu)
        if hap:
            out["haproxy_mbps"] = statistics.median(hap)
            out["public_ratio"] = statistics.median(r / h for r, h in zip(relay, hap, strict=True))
        out["conns_per_s_relay"] = conns_per_second(w.g.name, "127.0.0.1", PUBLIC_PORT + 1, 3)
        out["conns_per_s_direct"] = conns_per_second(w.g.name, "127.0.0.1", ECHO_PORT, 3)
        if pid is not None:
            socks = []
            before = rss_kib(pid)
            with inside_netns(w.g.name):
                for _ in range(idle):
                    socks.append(socket.create_connection(("127.0.0.1", PUBLIC_PORT + 1)))
            time.sleep(2.0)
            after = rss_kib(pid)
            out["idle_relays"] = idle
            out["kib_per_idle_relay"] = (after - before) / idle
            for s in socks:
                s.close()
    return out


def report(out: dict) -> None:
    def ratio(a: str, b: str) -> str:
        return f"{out[a] / out[b]:.2f}" if out.get(a) and out.get(b) else "n/a"

    if "private_mbps" not in out:
        print("private TCP: not measured (--rounds 0)")
    else:
        report_private(out, ratio)
    report_public(out, ratio)


def report_private(out: dict, ratio: Any) -> None:
    print(f"private TCP (peer -> wireguard-go -> gateway -> upstream): "
          f"{out['private_mbps'] / 1000:.2f} Gbit/s, "
          f"reverse {out['private_reverse_mbps'] / 1000:.2f}")
    print(f"wireguard-go <-> wireguard-go baseline: {out['wg_go_mbps'] / 1000:.2f} Gbit/s  "
          f"ratio {ratio('private_mbps', 'wg_go_mbps')} (goal >= 0.7; median of "
          f"{len(out['rounds'])} interleaved round(s), median per-round ratio "
          f"{out['ratio']:.2f})")
    print(f"gateway CPU per MB relayed (private): {out['cpu_ms_per_mb']:.2f} ms, "
          f"reverse {out['reverse_cpu_ms_per_mb']:.2f} ms")
    if out.get("loss"):
        print("gateway counters over the private runs: "
              + ", ".join(f"{k} {v:.0f}" for k, v in out["loss"].items()))


def report_public(out: dict, ratio: Any) -> None:
    if "public_relay_mbps" not in out:
        return
    print(f"public relay on loopback: {out['public_relay_mbps'] / 1000:.2f} Gbit/s "
          f"(gateway CPU {out['public_cpu_ms_per_mb']:.2f} ms/MB); "
          f"no relay {out['loopback_direct_mbps'] / 1000:.2f} Gbit/s")
    if "haproxy_mbps" in out:
        print(f"HAProxy TCP relay on loopback: {out['haproxy_mbps'] / 1000:.2f} Gbit/s  "
              f"ratio gateway/haproxy {ratio('public_relay_mbps', 'haproxy_mbps')} "
              f"(median per-round ratio {out['public_ratio']:.2f})")
    else:
        print("HAProxy: not installed (apt-get install haproxy), row skipped")
    print(f"connections/s through the relay: {out['conns_per_s_relay']:.0f} "
          f"(direct {out['conns_per_s_direct']:.0f})")
    if "kib_per_idle_relay" in out:
        print(f"memory per idle relayed connection: {out['kib_per_idle_relay']:.1f} KiB "
              f"over {out['idle_relays']} (goal <= 16 KiB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved private/baseline rounds (medians reported; 0: none)")
    p.add_argument("--private-only", action="store_true",
                   help="only the private TCP vs wireguard-go rounds")
    p.add_argument("--profile", default="",
                   help="py-spy record the gateway during the first private run "
                        "into this file (.svg flame graph, .json speedscope)")
    p.add_argument("--profile-reverse", default="",
                   help="the same for the first reverse (-R) private run")
    p.add_argument("--public-rounds", type=int, default=1,
                   help="interleaved public relay / HAProxy rounds (medians)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(args.seconds, args.idle, rounds=max(0, args.rounds),
              private_only=args.private_only, profile=args.profile,
              profile_reverse=args.profile_reverse, public_rounds=args.public_rounds)
    if args.json:
        print(json.dumps(out, indent=2))
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
