"""Real WireGuard traffic against a running bench/scale.py world (issue #18).

* :func:`real_peers` -- N of the world's seeded peers (spread over accounts) as
  stock ``wireguard-go`` interfaces in one namespace, each configured with the
  wg-quick config the management renders for it (``wg-quick strip`` +
  ``wg setconf``, the private key being the one the bench seeded), with a
  persistent keepalive so each handshakes at once; the first few get their own
  namespace with the tunnel address and a route so curl and iperf3 reach the
  account's private services through them.
* :func:`handshake_burst` -- M other seeded peers handshake at once from a
  namespace (one UDP socket each, or one for all) through
  :mod:`bench._handshakes` (the project's own Noise core),
  while an established wireguard-go peer runs iperf3 through the gateway's L4
  relay (a private TCP service) before and during the burst.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, replace

from bench._handshakes import BurstResult, Initiator, burst
from bench._testbed import KeyPair, Netns, inside_netns
from nbgateway.management import peerconfig
from nbgateway.wireguard.keys import public_key
from tests.interop.test_private_e2e import DOMAIN, GW_HOST, WG_PORT, wait_for

IPERF_SINK_PORT = 7  # the world's private TCP services target 127.0.0.1:7 on the gateway host


@dataclass
class Connected:
    """A seeded peer with its own namespace, tunnel address and route."""

    ns: Netns
    gw_ip: str
    account_index: int
    account_id: str


def pick(w, n: int, *, from_end: bool = False, skip: int = 0) -> list[tuple[int, str, str, bytes]]:
    """``n`` seeded peers spread round-robin over the accounts:
    (account index, account id, peer id, private key)."""
    accounts = list(w.privates)
    out = []
    i = skip
    while len(out) < n:
        a, p = i % len(accounts), i // len(accounts)
        roster = w.privates[accounts[a]]
        if p >= len(roster):
            raise ValueError(f"the world has too few peers for {n} (+{skip})")
        pid, priv = roster[len(roster) - 1 - p] if from_end else roster[p]
        out.append((a, accounts[a], pid, priv))
        i += 1
    return out


def config_for(w, account_id: str, peer_id: str, private: bytes) -> str:
    """The management's wg-quick config for the peer (rendered by the same code
    as ``GET /peers/{id}/wireguard-config``), with the bench-held private key."""
    peer = w.store.peers.get(account_id, peer_id)
    peer = replace(peer, wg_private_key=base64.b64encode(private).decode())
    return peerconfig.render_peer_config(w.store, account_id, peer, with_ca=False)


def _link(w) -> tuple[Netns, str]:
    ns = w.tb.netns()
    w.n_links += 1
    w.tb.veth(w.g, f"198.18.{w.n_links}.1/30", ns, f"198.18.{w.n_links}.2/30")
    ns.ip("route", "add", f"{GW_HOST}/32", "via", f"198.18.{w.n_links}.1")
    return ns, f"198.18.{w.n_links}.2"


def _wg_go(w, ns: Netns, private: bytes, conf: str, keepalive: bool):
    wg = w.tb.wireguard_go(ns, keys=KeyPair(private, public_key(private)))
    path = w.tb.write_file(f"{wg.ifname}.conf", conf)
    stripped = ns.run(["wg-quick", "strip", path]).stdout
    if keepalive:  # handshakes as soon as it is set (wireguard-go sends a keepalive)
        stripped = re.sub(r"^\[Peer\]$", "[Peer]\nPersistentKeepalive = 25", stripped,
                          flags=re.M)
    ns.run(["wg", "setconf", wg.ifname, "/dev/stdin"], input=stripped)
    return wg


def inotify_headroom() -> int:
    """Free inotify instances for root: each wireguard-go holds one (its UAPI socket
    watch) and fails with "too many open files" past ``fs.inotify.max_user_instances``
    (128 by default, shared by every root process on the machine)."""
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        limit = int(f.read())
    used = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    used += 1
            except OSError:
                continue
    return limit - used


INOTIFY_SYSCTL = "/proc/sys/fs/inotify/max_user_instances"
#: inotify instances left free for the rest of the machine when the limit is raised
INOTIFY_SPARE = 64
_inotify_restore: list[int] = []  # the value to put back, set while raised


def restore_inotify_limit() -> None:
    """Put ``fs.inotify.max_user_instances`` back to the value before
    :func:`raise_inotify_limit` (idempotent; also registered with atexit)."""
    while _inotify_restore:
        old = _inotify_restore.pop()
        try:
            with open(INOTIFY_SYSCTL, "w") as f:
                f.write(str(old))
            print(f"[real peers] fs.inotify.max_user_instances restored to {old}", flush=True)
        except OSError as e:
            print(f"[real peers] could not restore fs.inotify.max_user_instances to {old}: "
                  f"{e}", flush=True)


def raise_inotify_limit(n: int) -> int:
    """Make room for ``n`` more inotify instances (one per wireguard-go) by raising
    ``fs.inotify.max_user_instances`` for the run (root only); the previous value
    is put back by :func:`restore_inotify_limit` (the caller's ``finally`` and an
    atexit hook).  Returns the free instances after."""
    free = inotify_headroom()
    if n + 2 <= free:
        return free
    with open(INOTIFY_SYSCTL) as f:
        old = int(f.read())
    new = old + (n + 2 - free) + INOTIFY_SPARE
    try:
        with open(INOTIFY_SYSCTL, "w") as f:
            f.write(str(new))
    except OSError as e:
        print(f"[real peers] could not raise fs.inotify.max_user_instances ({e})", flush=True)
        return free
    if not _inotify_restore:
        _inotify_restore.append(old)
        atexit.register(restore_inotify_limit)
    print(f"[real peers] fs.inotify.max_user_instances raised {old} -> {new} for this run "
          f"({free} free, {n} wireguard-go need one each); restored on exit", flush=True)
    return inotify_headroom()


def real_peers(w, n: int, n_connected: int = 3, timeout: float = 60.0) -> dict:
    """Start ``n`` wireguard-go peers; returns figures and the connected peers.
    Raises ``fs.inotify.max_user_instances`` when needed (see
    :func:`raise_inotify_limit`; the caller restores it)."""
    free = raise_inotify_limit(n)
    if n > free - 2:
        print(f"[real peers] --real-peers {n} lowered to {max(free - 2, 1)}: only {free} "
              "inotify instances free for root (each wireguard-go needs one)", flush=True)
        n = max(free - 2, 1)
    chosen = pick(w, n)
    shared, _ = _link(w)
    connected: list[Connected] = []
    t0 = time.monotonic()
    ifnames: set[str] = set()
    for k, (a, acct, pid, priv) in enumerate(chosen):
        conf = config_for(w, acct, pid, priv)
        if "[Peer]" not in conf:
            raise RuntimeError(f"no gateway peer in the config of {pid} ({acct}):\n{conf}")
        if k < n_connected:
            ns, _ = _link(w)
            wg = _wg_go(w, ns, priv, conf, keepalive=True)
            ifnames.add(wg.ifname)
            for cidr in re.search(r"^Address\s*=\s*(.+)$", conf, re.M).group(1).split(","):
                ns.add_address(wg.ifname, cidr.strip())
            gw_ip = re.search(r"^AllowedIPs\s*=\s*([0-9.]+)/32", conf, re.M).group(1)
            ns.add_route(wg.ifname, f"{gw_ip}/32")
            connected.append(Connected(ns, gw_ip, a, acct))
        else:
            ns = shared
            ifnames.add(_wg_go(w, ns, priv, conf, keepalive=True).ifname)
    started = time.monotonic() - t0

    def handshaken() -> int:
        # `wg show all` lists every wireguard-go socket on the machine: count ours only
        out = shared.run(["wg", "show", "all", "latest-handshakes"]).stdout
        return sum(1 for ln in out.splitlines()
                   if len(ln.split()) == 3 and ln.split()[0] in ifnames
                   and ln.split()[2] != "0")

    t1 = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: handshaken() >= n, timeout, "every real peer handshaken", interval=0.5)
    done = handshaken()
    return {"n": n, "handshaken": done, "start_seconds": started,
            "handshake_seconds": time.monotonic() - t1, "connected": connected}


def curl_private(w, c: Connected) -> tuple[int, str]:
    """GET the account's private HTTP service (s0) through the peer's tunnel."""
    host = f"s0-a{c.account_index}.{DOMAIN}"
    r = c.ns.run(["curl", "-sS", "-m", "10", "--resolve", f"{host}:443:{c.gw_ip}",
                  "--cacert", os.path.join(w.gw_dir, "ca.crt"), "-o", "/dev/null",
                  "-w", "%{http_code}", f"https://{host}/scale"], check=False, timeout=20)
    code = r.stdout.strip()
    return (int(code) if code.isdigit() else 0), r.stderr.strip()[-200:]


def start_iperf_sink(w) -> None:
    """iperf3 server where the world's private TCP services point (127.0.0.1:7 in G)."""
    w.g.popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(IPERF_SINK_PORT)])
    wait_for(lambda: w.g.run(["ss", "-Htln", f"sport = :{IPERF_SINK_PORT}"],
                             check=False).stdout.strip(), 10, "iperf3 sink listening")


def iperf_intervals(c: Connected, seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """iperf3 through the account's private TCP service (tunnel port 30001 + index):
    (start time, [(interval end, Mbit/s)] in time.monotonic terms)."""
    port = 30001 + c.account_index
    t0 = time.monotonic()
    r = c.ns.run(["iperf3", "-c", c.gw_ip, "-p", str(port), "-t", f"{seconds:g}",
                  "-i", "0.1", "-J"], check=False, timeout=seconds + 30)
    try:
        report = json.loads(r.stdout)
        ivs = [(t0 + iv["sum"]["end"], iv["sum"]["bits_per_second"] / 1e6)
               for iv in report["intervals"]]
    except (ValueError, KeyError):
        raise RuntimeError(f"iperf3 through {c.gw_ip}:{port} failed: {r.stdout[-300:]} "
                           f"{r.stderr[-300:]}") from None
    return t0, ivs


def _proxy_key(w, account_id: str) -> bytes:
    proxies = w.store.peers.list_proxy_peers(account_id, DOMAIN)
    if not proxies:
        raise RuntimeError(f"account {account_id} has no proxy peer")
    return base64.b64decode(proxies[0].key)


def handshake_burst(w, n: int, established: Connected | None, skip: int,
                    iperf_seconds: float = 10.0, one_socket: bool = False) -> dict:
    """``n`` seeded peers (not among the first ``skip`` picked) handshake at once,
    each from its own UDP socket (source port) unless ``one_socket``."""
    chosen = pick(w, n, from_end=True)
    taken = {(acct, pid) for _, acct, pid, _ in pick(w, skip)} if skip else set()
    if any((acct, pid) in taken for _, acct, pid, _ in chosen):
        raise ValueError("the burst's peers overlap the real peers: the world is too small")
    keys = {acct: _proxy_key(w, acct) for acct in {c[1] for c in chosen}}
    inis = [(Initiator(priv, keys[acct], index=0x1000 + i), (GW_HOST, WG_PORT))
            for i, (_, acct, _, priv) in enumerate(chosen)]
    for ini, _ in inis:  # the first initiation and the (MAC2) retry: key work done now
        ini.prepare(2)
    ns, _ = _link(w)
    with inside_netns(ns.name):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                 for _ in range(1 if one_socket else n)]
    for s in socks:
        if one_socket:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", 0))
    out: dict = {"n": n}
    if established is not None:
        start_iperf_sink(w)
        _, before = iperf_intervals(established, iperf_seconds)
        out["before"] = before
        box: dict = {}
        th = threading.Thread(target=lambda: box.update(
            during=iperf_intervals(established, iperf_seconds)), daemon=True)
        th.start()
        time.sleep(2.0)  # iperf3 at steady state first
    t_burst = time.monotonic()
    try:
        result: BurstResult = burst(socks[0] if one_socket else socks, inis)
    finally:
        for s in socks:
            s.close()
    out["result"] = result
    out["burst_window"] = (t_burst, t_burst + max(result.last_completion, 0.5))
    if established is not None:
        th.join(iperf_seconds + 40)
        out["during"] = box.get("during", (0.0, []))[1]
    return out
