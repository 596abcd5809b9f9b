"""One gateway, many accounts: the issue-18 scale figures beside their targets.

Builds the world in the management's own SQLite store before management
starts (the fast path: ``Store.open`` in this process, the same repositories
REST uses), then runs real processes in a network namespace of the interop
testbed (:class:`tests.interop.test_private_e2e.World`):

    twistd nbmanagement (REST 33071, gRPC 33073) + twistd nbgateway --private,
    one global proxy token, every account served by the one gateway.

World per account: ``--peers-per-account`` peers in one group and
``--services-per-account`` services cycling through private HTTP, public HTTP,
private TCP (tunnel port) and public TCP (a host port each), about a third of
them private.  ``--accounts 1000`` with 10/10 is the 1,000 / 10,000 / 10,000
world; ``--small`` is 50 accounts.

Figures (each printed beside its target):

* ready: gateway start -> every service ``active`` in the management store
  (the gateway reports ACTIVE once the account's proxy peer exists and its
  tunnel listeners are bound) and every account runtime running;
* memory per account: (RSS - RSS of a one-account baseline run) / extra
  accounts (their peers and services included);
* idle CPU: gateway process CPU over ``--idle-seconds`` once ready;
* threads: ``Threads:`` of the gateway process;
* change latency: ``--changes`` private services created one by one through
  REST in one account, each timed until its status is ``active`` (the mapping
  reached the gateway, was registered and reported back: an upper bound of
  "reaches the routing table"); p50/p99;
* peer storm (``--storm N``, its own one-account world): N peers created one by
  one through REST; creation rate; time from the last create until the
  gateway's ``nbgateway_wireguard_peers`` holds them all; memory per added
  (never-handshaken) peer; ``/healthz/live`` polled every 100 ms throughout:
  its worst latency and failures.

* real WireGuard (``--real-peers N``, ``--handshake-burst M``; bench/_scale_wg.py):
  N seeded peers as stock wireguard-go interfaces configured from the
  management's wg-quick configs (handshakes counted, curl to a private service
  through three of them); M other seeded peers handshaking at once through the
  project's own initiator (completed, time, cookie replies) while a real peer's
  iperf3 through a private TCP service is compared before vs during the burst.

Run as root:  .venv/bin/python bench/scale.py [--small] [--storm 2000]
              [--accounts N] [--skip-world] [--real-peers 50 --handshake-burst 1000]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import statistics
import sys
import threading
import time
import urllib.request

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import sqlalchemy as sa  # noqa: E402

from bench._testbed import Testbed, inside_netns, unavailable_reason  # noqa: E402
from nbgateway.management.model import (  # noqa: E402
    Account,
    Group,
    Peer,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.store import Store  # noqa: E402
from nbgateway.management.store.schema import services as services_table  # noqa: E402
from nbgateway.wireguard.keys import generate_private_key, public_key  # noqa: E402
from tests.interop.test_private_e2e import DOMAIN, World, wait_for  # noqa: E402

HEALTH = "http://127.0.0.1:8080"


def _keypair() -> tuple[bytes, str]:
    """A real X25519 key pair: (private, base64 public); the bench keeps the private
    half so ``--real-peers`` and ``--handshake-burst`` can handshake as the peer."""
    private = generate_private_key()
    return private, base64.b64encode(public_key(private)).decode()


def _target(mode: str, port: int) -> Target:
    return Target(host="127.0.0.1", port=port, protocol=mode, target_id=DOMAIN,
                  target_type="cluster", options=TargetOptions(direct_upstream=True))


def seed(store: Store, accounts: int, peers: int, services: int,
         privates: dict[str, list[tuple[str, bytes]]] | None = None
         ) -> tuple[dict[str, str], str]:
    """Create the world; returns ({account id: group id}, the admin token).  With
    ``privates``, records {account id: [(peer id, private key)]} in account order."""
    boot = store.accounts.ensure_default()
    assert boot.admin_token, "seed wants a fresh store"
    ids = [boot.account.id] + [f"acct-{i:05d}" for i in range(1, accounts)]
    groups: dict[str, str] = {}
    public_port, tunnel_port = 20000, 30000  # unique per cluster, like the store wants
    for a, account_id in enumerate(ids):
        if a:
            store.accounts.create(Account(id=account_id, domain=f"a{a}.netbird.test"))
        group = store.groups.create(Group(account_id=account_id, name="devs"))
        groups[account_id] = group.id
        keys = [_keypair() for _ in range(peers)]
        created = [store.peers.create(Peer(account_id=account_id, name=f"p{p}", key=pub))
                   for p, (_, pub) in enumerate(keys)]
        if privates is not None:
            privates[account_id] = [(c.id, k[0]) for c, k in zip(created, keys, strict=True)]
        store.groups.add_peers(account_id, group.id, [p.id for p in created])
        for s in range(services):
            kind = s % 4
            name = f"s{s}-a{a}"
            kw: dict = {}
            if kind == 0:    # private HTTP
                kw = dict(private=True, access_groups=(group.id,), targets=(_target("http", 8081),))
            elif kind == 1:  # public HTTP
                kw = dict(targets=(_target("http", 8081),))
            elif kind == 2:  # private TCP on a tunnel port (a third of the rest)
                if s % 3 == 2:
                    tunnel_port += 1
                    kw = dict(private=True, access_groups=(group.id,), mode="tcp",
                              listen_port=tunnel_port, targets=(_target("tcp", 7),))
                else:
                    kw = dict(targets=(_target("http", 8081),))
            else:            # public TCP on a host port of its own
                public_port += 1
                kw = dict(mode="tcp", listen_port=public_port, targets=(_target("tcp", 7),))
            store.services.create(Service(account_id=account_id, name=name,
                                          domain=f"{name}.{DOMAIN}", **kw))
    return groups, boot.admin_token


class Scaled(World):
    """The interop World with a pre-seeded store and process introspection."""

    def __init__(self, tb: Testbed, accounts: int, peers: int, services: int) -> None:
        super().__init__(tb)
        os.makedirs(self.mgmt_dir, mode=0o700, exist_ok=True)
        t0 = time.monotonic()
        self.store = Store.open(datadir=self.mgmt_dir, known_clusters=(DOMAIN,))
        #: {account id: [(peer id, private key)]}, accounts in seeding order
        self.privates: dict[str, list[tuple[str, bytes]]] = {}
        self.groups, token = seed(self.store, accounts, peers, services, self.privates)
        self.accounts, self.n_services = accounts, accounts * services
        #: (unix time at the REST create, latency s, name) per timed change
        self.change_log: list[tuple[float, float, str]] = []
        boot = self.store.accounts.ensure_default()
        self.default_account = boot.account.id
        with open(os.path.join(self.mgmt_dir, "admin-token"), "w") as f:
            f.write(token)
        _, self.proxy_token = self.store.proxies.create_token("scale", account_id=None)
        self.seed_seconds = time.monotonic() - t0

    def active_services(self) -> int:
        with self.store._engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(services_table)
                                .where(services_table.c.meta_status == "active")).scalar_one()

    def gateway_pid(self) -> int:
        for pid in self.g.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"nbgateway" in argv and any(a.endswith(b"twistd") for a in argv):
                return pid
        raise RuntimeError("no gateway process")

    def management_pid(self) -> int:
        for pid in self.g.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"nbmanagement" in argv and any(a.endswith(b"twistd") for a in argv):
                return pid
        raise RuntimeError("no management process")

    def health(self, path: str, timeout: float = 5.0) -> str:
        with inside_netns(self.g.name), urllib.request.urlopen(HEALTH + path,
                                                               timeout=timeout) as r:
            return r.read().decode()

    def metric(self, name: str) -> float:
        """A gauge from ``/metrics``; -1 when the gateway does not answer within 5 s."""
        try:
            text = self.metrics()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return -1.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def line(what: str, value: str, target: str, ok: bool | None) -> None:
    mark = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"  {what:<34} {value:>16}   target {target}{mark}", flush=True)


def run_world(accounts: int, peers: int, services: int, args: argparse.Namespace,
              baseline_kib: int | None) -> int:
    """Build, start and measure one world; returns the gateway's RSS (KiB) when ready."""
    tb = Testbed()
    try:
        w = Scaled(tb, accounts, peers, services)
        print(f"[{accounts} accounts] seeded {accounts} accounts, {accounts * peers} peers, "
              f"{accounts * services} services in {w.seed_seconds:.1f} s", flush=True)
        w.start_upstream()
        w.start_management()
        mgmt_pid = w.management_pid()
        mgmt_cpu0 = cpu_seconds(mgmt_pid)
        t0 = time.monotonic()
        w.start_gateway(w.proxy_token)
        try:
            wait_for(lambda: w.active_services() >= w.n_services
                     and w.metric("nbgateway_accounts") >= accounts,
                     args.ready_timeout, "every service active", interval=0.5)
            ready_s = time.monotonic() - t0
        except AssertionError:
            ready_s = float("inf")
            print(f"[{accounts} accounts] NOT READY after {args.ready_timeout:.0f} s: "
                  f"{w.active_services()}/{w.n_services} services active, "
                  f"{w.metric('nbgateway_accounts'):.0f} account runtimes", flush=True)
            t = services_table
            with w.store._engine.connect() as conn:
                for row in conn.execute(sa.select(t.c.mode, t.c.private, t.c.meta_status,
                                                  sa.func.count()).group_by(
                        t.c.mode, t.c.private, t.c.meta_status)):
                    print(f"    mode={row[0]} private={row[1]} status={row[2]}: {row[3]}")
        pid = w.gateway_pid()
        mgmt_cpu, gw_cpu = cpu_seconds(mgmt_pid) - mgmt_cpu0, cpu_seconds(pid)
        time.sleep(3)
        rss = rss_kib(pid)
        c0, m0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle = 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - m0)
        n_threads = threads(pid)
        print(f"[{accounts} accounts] gateway pid {pid}", flush=True)
        line("ready (all services active)", f"{ready_s:.1f} s", "< 60 s (1,000 accounts)",
             ready_s < 60 if accounts >= 1000 else None)
        line("CPU until ready: management", f"{mgmt_cpu:.1f} s", "-", None)
        line("CPU until ready: gateway", f"{gw_cpu:.1f} s", "-", None)
        line("gateway RSS", f"{rss / 1024:.1f} MiB", "-", None)
        if baseline_kib is not None and accounts > 1:
            per = (rss - baseline_kib) / (accounts - 1)
            line("memory per extra account", f"{per:.1f} KiB", "<= 64 KiB (idle account)",
                 per <= 64)
        line("idle CPU", f"{idle:.1f} %", "< 3 % of one core", idle < 3)
        line("threads", f"{n_threads}", "fixed, independent of accounts", None)
        line("WireGuard peers in roster", f"{w.metric('nbgateway_wireguard_peers'):.0f}", "-",
             None)
        if args.changes and accounts > 1:
            lat = change_latency(w, args.changes)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            line(f"mapping change p50 ({len(lat)})", f"{statistics.median(lat) * 1000:.0f} ms",
                 "-", None)
            line(f"mapping change p99 ({len(lat)})", f"{p99 * 1000:.0f} ms", "< 1 s", p99 < 1)
            line(f"mapping change max ({len(lat)})", f"{lat[-1] * 1000:.0f} ms", "-", None)
            if args.trace:
                attribute_slow_changes(w)
        if accounts > 1 and (args.real_peers or args.handshake_burst):
            real_wireguard(w, args)
        return rss
    finally:
        tb.close()
        if args.real_peers:
            from bench._scale_wg import restore_inotify_limit
            restore_inotify_limit()


def real_wireguard(w: Scaled, args: argparse.Namespace) -> None:
    """``--real-peers`` (stock wireguard-go) and ``--handshake-burst`` (the project's
    own initiator) against the running world; see bench/_scale_wg.py."""
    from bench import _scale_wg as rw

    connected: list[rw.Connected] = []
    if args.real_peers:
        rp = rw.real_peers(w, args.real_peers, n_connected=min(3, args.real_peers))
        connected = rp["connected"]
        print(f"[real peers] {rp['n']} wireguard-go interfaces configured in "
              f"{rp['start_seconds']:.1f} s (wg-quick configs rendered by the management)",
              flush=True)
        line("real peers handshaken (wg show)", f"{rp['handshaken']}/{rp['n']}", "all",
             rp["handshaken"] == rp["n"])
        line("... after the last was configured", f"{rp['handshake_seconds']:.1f} s", "-",
             None)
        for c in connected:
            code, err = rw.curl_private(w, c)
            line(f"curl private s0-a{c.account_index} via wg-go", f"HTTP {code}", "200",
                 code == 200)
            if code != 200:
                print(f"    curl: {err}", flush=True)
    if args.handshake_burst:
        est = connected[0] if connected else None
        b = rw.handshake_burst(w, args.handshake_burst, est, skip=args.real_peers,
                               one_socket=args.burst_one_socket)
        r = b["result"]
        where = "one UDP socket" if args.burst_one_socket else "one UDP socket each"
        print(f"[burst] {r.total} distinct peers over {len({c for c in w.privates})} accounts, "
              f"{where} in a namespace; {r.initiations_sent} initiations sent, "
              f"at most {r.max_attempts} per peer", flush=True)
        line("burst handshakes completed", f"{r.completed}/{r.total}", "all",
             r.completed == r.total)
        line("time until all completed",
             f"{r.seconds_to_all:.2f} s" if r.seconds_to_all is not None else
             f"> {r.last_completion:.1f} s", "-", None)
        line("cookie replies received", f"{r.cookie_replies}", "allowed", None)
        if est is not None:
            before = [mbit for _, mbit in b["before"][5:]]  # skip slow start
            lo, hi = b["burst_window"]
            # 0.1-s iperf3 intervals that overlap the burst (first send .. last completion)
            during = [mbit for end, mbit in b["during"] if lo < end and end - 0.1 <= hi]
            after = [mbit for end, mbit in b["during"] if hi + 0.5 < end <= hi + 2.5]
            base = statistics.mean(before) if before else float("nan")
            if during:
                avg = statistics.mean(during)
                line("established peer iperf3 before", f"{base:.0f} Mbit/s", "-", None)
                line(f"... during the burst ({len(during)}x0.1 s)", f"{avg:.0f} Mbit/s", "-",
                     None)
                line("... during / before", f"{avg / base:.2f} x", "keeps its throughput",
                     avg / base >= 0.5)
                first = [mbit for end, mbit in b["during"] if lo < end <= lo + 1.0]
                if first and hi - lo > 1.0:
                    line("... first 1 s of the burst / before",
                         f"{statistics.mean(first) / base:.2f} x", "-", None)
                line("... worst 0.1 s during / before", f"{min(during) / base:.2f} x", "-", None)
                low = sum(1 for x in during if x / base < 0.5)
                line("... 0.1-s intervals under 0.5 x", f"{low}/{len(during)}", "-", None)
                print("  0.1-s intervals / before, from 0.3 s before the burst: " + " ".join(
                    f"{mbit / base:.2f}" for end, mbit in b["during"]
                    if lo - 0.3 < end and end - 0.1 <= hi + 0.3), flush=True)
                if after:
                    line("... 0.5-2.5 s after / before",
                         f"{statistics.mean(after) / base:.2f} x", "-", None)
            else:
                print("  (no iperf3 interval overlapped the burst)", flush=True)
        if args.burst_baseline:
            wg_go_burst_reference(b, args.handshake_burst,
                                  sum(len(r) for r in w.privates.values()))


def wg_go_burst_reference(b: dict, n: int, peers: int) -> None:
    """The same burst against a stock wireguard-go with as many peers configured,
    an established wireguard-go peer's iperf3 through it (bench/wg_baseline.py),
    printed beside the gateway's figures of this run."""
    from bench.wg_baseline import burst_window_summary, measure_wg_go_burst, print_burst_summary

    print(f"[burst reference] the same burst against a stock wireguard-go with {peers} "
          "peers (bench/wg_baseline.measure_wg_go_burst)", flush=True)
    try:
        ref = measure_wg_go_burst(n, max(peers, n + 1))
    except (RuntimeError, ValueError) as e:
        print(f"  (reference unavailable: {e})", flush=True)
        return
    r = ref["result"]
    line("wireguard-go: burst handshakes completed", f"{r.completed}/{r.total}", "all",
         r.completed == r.total)
    line("wireguard-go: time until all completed",
         f"{r.seconds_to_all:.2f} s" if r.seconds_to_all is not None else
         f"> {r.last_completion:.1f} s", "-", None)
    line("wireguard-go: cookie replies received", f"{r.cookie_replies}", "-", None)
    if "before" in b:
        print_burst_summary("gateway     ", burst_window_summary(b["before"], b["during"],
                                                                 b["burst_window"]))
    print_burst_summary("wireguard-go", ref["summary"])


def change_latency(w: Scaled, n: int) -> list[float]:
    group = w.groups[w.default_account]
    out = []
    for i in range(n):
        t0 = time.monotonic()
        svc = w.rest("POST", "/reverse-proxies/services", {
            "name": f"chg{i}", "domain": f"chg{i}.{DOMAIN}", "enabled": True, "private": True,
            "access_groups": [group],
            "targets": [{"target_id": DOMAIN, "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": 8081, "enabled": True,
                         "options": {"direct_upstream": True}}]})

        def active(sid: str = svc["id"]) -> bool:
            with w.store._engine.connect() as conn:
                return conn.execute(sa.select(services_table.c.meta_status)
                                    .where(services_table.c.id == sid)).scalar_one() == "active"

        wait_for(active, 30, f"service chg{i} active", interval=0.005)
        out.append(time.monotonic() - t0)
        w.change_log.append((time.time() - out[-1], out[-1], f"chg{i}"))
    return sorted(out)


def attribute_slow_changes(w: Scaled, threshold: float = 0.2, show: int = 8) -> None:
    """Print the slowest changes with the NBTRACE events (bench/_trace) of both
    processes that overlap them: GC collections, main-thread stalls, late wakeups."""
    events: list[tuple[float, str]] = []
    for name in ("management", "gateway"):
        try:
            with open(os.path.join(w.tmp, f"{name}.log"), errors="replace") as f:
                for ln in f:
                    if ln.startswith("NBTRACE "):
                        parts = ln.split(" ", 3)
                        events.append((float(parts[2]), f"{parts[1]} {parts[3].strip()}"))
        except OSError:
            continue
    slow = sorted((c for c in w.change_log if c[1] >= threshold), key=lambda c: -c[1])
    print(f"  changes over {threshold * 1000:.0f} ms: {len(slow)}/{len(w.change_log)}; "
          f"trace events {len(events)}", flush=True)
    gen2 = [e for e in events if " gc gen=2 " in f" {e[1]} "]
    for at, lat, name in slow[:show]:
        print(f"  {name}: {lat * 1000:.0f} ms", flush=True)
        for t, what in events:
            if at - 0.05 <= t <= at + lat + 0.05:
                print(f"      +{(t - at) * 1000:6.0f} ms  {what[:220]}", flush=True)
    first = min((c[0] for c in w.change_log), default=0.0)
    last = max((c[0] + c[1] for c in w.change_log), default=0.0)
    for prog in ("nbmanagement", "nbgateway"):
        ms = [float(e[1].split(" ms=")[1].split()[0]) for e in gen2 if e[1].startswith(prog)]
        during = [float(e[1].split(" ms=")[1].split()[0]) for e in gen2
                  if e[1].startswith(prog) and first <= e[0] <= last]
        if ms:
            print(f"  {prog} full (gen-2) collections: {len(ms)}, slowest {max(ms):.0f} ms, "
                  f"median {statistics.median(ms):.0f} ms; during the changes: "
                  f"{', '.join(f'{x:.0f}' for x in during) or 'none'} ms", flush=True)


def run_storm(n: int, args: argparse.Namespace) -> None:
    tb = Testbed()
    try:
        w = Scaled(tb, 1, 1, 1)
        w.start_upstream()
        w.start_management()
        w.start_gateway(w.proxy_token)
        wait_for(lambda: w.active_services() >= 1, 60, "the service active", interval=0.2)
        pid = w.gateway_pid()
        base_peers = w.metric("nbgateway_wireguard_peers")
        time.sleep(2)
        rss0 = rss_kib(pid)
        stop = threading.Event()
        probes: list[float] = []
        failures = [0]

        slow: list[tuple[float, float]] = []  # (seconds into the storm, latency)

        def probe() -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    w.health("/healthz/live", timeout=10)
                    probes.append(time.monotonic() - t)
                    if probes[-1] > 1:
                        slow.append((t - t0, probes[-1]))
                except OSError:
                    failures[0] += 1
                    slow.append((t - t0, float("inf")))
                stop.wait(0.1)

        group = w.groups[w.default_account]
        print(f"[storm] gateway pid {pid}: {n} peers through REST", flush=True)
        t0 = time.monotonic()
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        for i in range(n):
            w.rest("POST", "/peers", {"name": f"storm{i}", "groups": [group]})
        last = time.monotonic()
        create_rate = n / (last - t0)
        want = base_peers + n
        try:
            wait_for(lambda: w.metric("nbgateway_wireguard_peers") >= want, args.storm_timeout,
                     "the storm's peers in the roster", interval=0.1)
            lag = f"{time.monotonic() - last:.1f} s"
            ok = time.monotonic() - last <= 5
        except AssertionError:
            lag = f"> {args.storm_timeout:.0f} s ({w.metric('nbgateway_wireguard_peers'):.0f}" \
                  f"/{want:.0f})"
            ok = False
        time.sleep(2)
        rss1 = rss_kib(pid)
        # the gateway trims the allocator every 60 s: the idle figure is after it
        settle_end = last + args.storm_settle
        while time.monotonic() < settle_end:
            time.sleep(min(1.0, settle_end - time.monotonic()))
        stop.set()
        prober.join(15)
        rss2 = rss_kib(pid)
        print(f"[storm] {n} peers through REST, one account, gateway pid {pid}", flush=True)
        line("REST peer creation, one client", f"{create_rate:.0f} /s",
             "- (sequential, each create waits for its answer; the >= 500 /s "
             "target is bench/management_rest.py's)", None)
        line("roster complete after last create", lag, "<= 5 s", ok)
        line("memory per added peer, +2 s", f"{(rss1 - rss0) * 1024 / n:.0f} B",
             "- (before the allocator trim)", None)
        if args.storm_settle > 2:
            per_peer = (rss2 - rss0) * 1024 / n
            line(f"memory per added peer, +{args.storm_settle:.0f} s", f"{per_peer:.0f} B",
                 "<= 2 KiB (idle, after the 60-s trim)", per_peer <= 2048)
        worst = max(probes) if probes else float("nan")
        line("health worst latency", f"{worst * 1000:.0f} ms", "answers throughout", None)
        line("health failures", f"{failures[0]}/{len(probes) + failures[0]}", "0",
             failures[0] == 0)
        line("threads", f"{threads(pid)}", "-", None)
        if slow:
            print("  health probes over 1 s (s into the storm, latency s): "
                  + ", ".join(f"{at:.0f}:{lat:.1f}" for at, lat in slow[:20]), flush=True)
    finally:
        tb.close()


def main() -> None:
    try:
        from bench._limits import lift_management_limits
    except ImportError:  # run as a script from bench/
        from _limits import lift_management_limits  # type: ignore[no-redef]

    lift_management_limits()  # throughput, not the per-account limits
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--small", action="store_true", help="50 accounts")
    parser.add_argument("--peers-per-account", type=int, default=10)
    parser.add_argument("--services-per-account", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--storm", type=int, default=2000, help="0 skips the peer storm")
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--storm-settle", type=float, default=65.0,
                        help="seconds after the last create before the idle memory per peer "
                             "(the gateway trims the allocator every 60 s); 0 skips it")
    parser.add_argument("--skip-world", action="store_true", help="only the peer storm")
    parser.add_argument("--real-peers", type=int, default=0,
                        help="N seeded peers handshake through stock wireguard-go from a "
                             "namespace (the first 3 also curl a private service); "
                             "raises fs.inotify.max_user_instances for the run when N "
                             "needs more instances than free (one per wireguard-go), "
                             "restored on exit")
    parser.add_argument("--handshake-burst", type=int, default=0,
                        help="N other seeded peers handshake at once (the project's own "
                             "initiator); iperf3 through a real peer before vs during")
    parser.add_argument("--burst-one-socket", action="store_true",
                        help="the burst's peers share one UDP socket (one source port) "
                             "instead of one each")
    parser.add_argument("--burst-baseline", action="store_true",
                        help="after --handshake-burst, the same burst against a stock "
                             "wireguard-go with as many peers (its established peer's "
                             "iperf3 ratio printed beside the gateway's)")
    parser.add_argument("--trace", action="store_true",
                        help="run the processes with bench/_trace (GC and stall events) and "
                             "attribute the slow mapping changes")
    parser.add_argument("--ab-mgmt-freeze", action="store_true",
                        help="run the world twice: the management's heap freezer and the "
                             "gateway's adaptive freezes off, then on")
    args = parser.parse_args()
    # SIGTERM (timeout(1), kill) unwinds like an exception: the testbed's
    # namespaces and processes are torn down and the inotify sysctl restored
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.trace:
        os.environ["NBTRACE"] = "1"
        trace_dir = os.path.join(_ROOT, "bench", "_trace")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (trace_dir, os.environ.get("PYTHONPATH", "")) if p)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"testbed unavailable: {reason}")
    accounts = 50 if args.small else args.accounts
    if not args.skip_world:
        base = run_world(1, args.peers_per_account, args.services_per_account,
                         _no_changes(args), None)
        if args.ab_mgmt_freeze:  # the same world without, then with, the issue-18 freezes
            for setting in ("0", "1"):
                os.environ["NBGW_MGMT_HEAP_FREEZE"] = setting
                os.environ["NBGW_HEAP_FREEZE_ADAPTIVE"] = setting
                print(f"== NBGW_MGMT_HEAP_FREEZE={setting} NBGW_HEAP_FREEZE_ADAPTIVE={setting}",
                      flush=True)
                run_world(accounts, args.peers_per_account, args.services_per_account, args,
                          base)
            os.environ.pop("NBGW_MGMT_HEAP_FREEZE")
            os.environ.pop("NBGW_HEAP_FREEZE_ADAPTIVE")
        else:
            run_world(accounts, args.peers_per_account, args.services_per_account, args, base)
    if args.storm:
        run_storm(args.storm, args)


def _no_changes(args: argparse.Namespace) -> argparse.Namespace:
    copy = argparse.Namespace(**vars(args))
    copy.changes = 0
    copy.idle_seconds = 3.0
    return copy


if __name__ == "__main__":
    main()
