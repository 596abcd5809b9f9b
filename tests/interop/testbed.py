"""Real-peer testbed: wireguard-go in network namespaces this process creates.

Owns the harness every interop test and the WireGuard benchmarks use:

* :class:`Testbed` -- a registry of everything created for one test (namespaces,
  wireguard-go processes, temporary files).  :meth:`Testbed.close` kills only
  the PIDs it started, deletes its namespaces, removes control sockets left
  behind and then *verifies* that nothing of it is left.
* :class:`Netns` -- one uniquely named namespace with ``lo`` up and helpers to
  run commands in it (``ip netns exec``), add addresses, routes and veth pairs.
* :class:`WgGo` -- one ``wireguard-go -f <ifname>`` interface inside a
  namespace, configured with ``wg set``; reads ``wg show <if> dump``.
* :func:`inside_netns` -- switches the *calling thread* into a namespace with
  ``setns(2)`` (Python 3.11 has no ``os.setns``) so that a socket created by the
  in-process reactor while inside is bound in that namespace; sockets stay in
  the namespace they were created in after the thread switches back.
* :func:`unavailable_reason` -- why the testbed cannot run here, or None.

The only traffic this harness ever causes is on 127.0.0.1 inside namespaces it
created, on tunnel addresses (100.64.0.0/10, fd00:64::/64) and on veth links
numbered from 198.18.0.0/15 that exist only inside its own namespaces.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import errno
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

from nacl.public import PrivateKey

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
WG_SOCKET_DIR = "/var/run/wireguard"
CMD_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------- availability

def _run_quiet(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)


@functools.cache
def unavailable_reason(*, need: tuple[str, ...] = ()) -> str | None:
    """A precise reason why the testbed cannot run on this machine, or None.

    ``need`` names extra executables (``ping``, ``iperf3``) the caller requires.
    Probes for real: creates and deletes a scratch namespace.
    """
    if os.geteuid() != 0:
        return "testbed needs root (network namespaces, TUN, wireguard-go)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun: wireguard-go cannot create its TUN interface"
    for exe in ("ip", "wireguard-go", "wg", *need):
        if shutil.which(exe) is None:
            return f"executable {exe!r} not found on PATH"
    probe = "nbgw-probe-" + secrets.token_hex(4)
    res = _run_quiet(["ip", "netns", "add", probe])
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()}"
    res = _run_quiet(["ip", "netns", "del", probe])
    if res.returncode != 0:
        return f"`ip netns del` failed: {res.stderr.strip()}"
    return None


# --------------------------------------------------------------------------- keys

@dataclasses.dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair in raw and wg(8) base64 forms."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        sk = PrivateKey.generate()
        return cls(bytes(sk), bytes(sk.public_key))

    @property
    def private_b64(self) -> str:
        return base64.b64encode(self.private).decode()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# --------------------------------------------------------------------------- setns

def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@contextlib.contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``name``.

    Only this thread switches; on exit it returns to the namespace it was in.
    Sockets created in the body stay bound inside ``name``.
    """
    target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            # Failing to switch back would leave the test process in a namespace
            # that is about to be deleted; there is no sane way to continue.
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def current_netns_inode() -> int:
    """The inode of the calling thread's network namespace (for assertions)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


# --------------------------------------------------------------------------- dump parsing

@dataclasses.dataclass(frozen=True)
class PeerDump:
    """One peer line of ``wg show <if> dump``."""

    public_key: str
    preshared_key: str | None
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int          # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclasses.dataclass(frozen=True)
class InterfaceDump:
    """``wg show <if> dump``: the interface line and its peers by base64 key."""

    private_key: str
    public_key: str
    listen_port: int
    fwmark: str
    peers: dict[str, PeerDump]


def _none(field: str) -> str | None:
    return None if field in ("(none)", "off") else field


def parse_dump(text: str) -> InterfaceDump:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty `wg show dump` output")
    iface = lines[0].split("\t")
    if len(iface) != 4:
        raise ValueError(f"unexpected interface line: {lines[0]!r}")
    peers: dict[str, PeerDump] = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise ValueError(f"unexpected peer line: {line!r}")
        allowed = () if f[3] == "(none)" else tuple(f[3].split(","))
        keepalive = _none(f[7])
        peers[f[0]] = PeerDump(
            public_key=f[0],
            preshared_key=_none(f[1]),
            endpoint=_none(f[2]),
            allowed_ips=allowed,
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
            persistent_keepalive=int(keepalive) if keepalive else None,
        )
    return InterfaceDump(iface[0], iface[1], int(iface[2]), iface[3], peers)


# --------------------------------------------------------------------------- namespaces

class CommandError(RuntimeError):
    pass


def run(args: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a short command, bounded in time; raise CommandError on error."""
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                         input=input, check=False)
    if check and res.returncode != 0:
        raise CommandError(
            f"{' '.join(args)} -> rc {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
    return res


class Netns:
    """A network namespace created by a :class:`Testbed` (use ``Testbed.netns()``)."""

    def __init__(self, testbed: Testbed, name: str) -> None:
        self.testbed = testbed
        self.name = name

    def exec_args(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the namespace (blocking, bounded)."""
        return run(self.exec_args(args), **kw)

    def popen(self, args: Sequence[str], **kw) -> subprocess.Popen:
        """Start ``args`` inside the namespace; the testbed kills it on close."""
        return self.testbed.spawn(self.exec_args(args), **kw)

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args])

    def add_address(self, dev: str, cidr: str) -> None:
        family = "-6" if ":" in cidr else "-4"
        extra = ["nodad"] if ":" in cidr else []
        run(["ip", "-n", self.name, family, "addr", "add", cidr, "dev", dev, *extra])

    def add_route(self, dev: str, cidr: str) -> None:
        family = "-6" if ":" in cidr else "-4"
        run(["ip", "-n", self.name, family, "route", "add", cidr, "dev", dev])

    def link_up(self, dev: str) -> None:
        run(["ip", "-n", self.name, "link", "set", dev, "up"])

    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def ping(self, dst: str, *, count: int = 5, interval: float = 0.2, wait: float = 2.0,
             source: str | None = None, timeout: float | None = None
             ) -> subprocess.CompletedProcess[str]:
        """``ping -c count`` from inside the namespace; never raises on loss."""
        args = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if source:
            args += ["-I", source]
        args.append(dst)
        if timeout is None:
            timeout = count * interval + wait + 5.0
        return self.run(args, check=False, timeout=timeout)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def free_udp_port(ns: Netns) -> int:
    """A UDP port free on 127.0.0.1 inside ``ns`` (nothing else runs there)."""
    with inside_netns(ns.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def ping_loss(output: str) -> float | None:
    """Packet loss percentage from ping's summary line, or None."""
    for line in output.splitlines():
        if "packet loss" in line:
            for part in line.split(","):
                part = part.strip()
                if part.endswith("packet loss"):
                    return float(part.split("%")[0])
    return None


class WgGo:
    """A wireguard-go interface in a namespace (use ``Testbed.wireguard_go()``)."""

    def __init__(self, ns: Netns, ifname: str, proc: subprocess.Popen,
                 keys: KeyPair) -> None:
        self.ns = ns
        self.ifname = ifname
        self.proc = proc
        self.keys = keys

    @property
    def socket_path(self) -> str:
        return os.path.join(WG_SOCKET_DIR, f"{self.ifname}.sock")

    def wg(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # wg talks to the control socket, a filesystem path shared by all namespaces,
        # but run it inside the namespace anyway so nothing depends on that detail.
        return self.ns.run(["wg", *args], input=input)

    def set(self, *args: str) -> None:
        self.wg("set", self.ifname, *args)

    def set_listen_port(self, port: int) -> None:
        self.set("listen-port", str(port))

    def add_peer(self, public_key: bytes, *, allowed_ips: Sequence[str] = (),
                 endpoint: str | None = None, persistent_keepalive: int | None = None,
                 preshared_key: bytes | None = None) -> None:
        args = ["peer", b64(public_key)]
        if allowed_ips:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            args += ["endpoint", endpoint]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive)]
        if preshared_key is not None:
            path = self.ns.testbed.secret_file(b64(preshared_key))
            args += ["preshared-key", path]
        self.set(*args)

    def remove_peer(self, public_key: bytes) -> None:
        self.set("peer", b64(public_key), "remove")

    def dump(self) -> InterfaceDump:
        return parse_dump(self.wg("show", self.ifname, "dump").stdout)

    def peer(self, public_key: bytes) -> PeerDump:
        return self.dump().peers[b64(public_key)]

    @property
    def listen_port(self) -> int:
        return self.dump().listen_port

    def __repr__(self) -> str:
        return f"WgGo({self.ifname!r} in {self.ns.name!r})"


# --------------------------------------------------------------------------- testbed

class Testbed:
    """Everything one test creates; :meth:`close` removes it and checks it is gone.

    Names are unique per instance (wireguard-go control sockets are shared by
    all namespaces, and other test runs may be using the machine concurrently).
    """

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self._counter = 0
        self.namespaces: list[Netns] = []
        self.processes: list[subprocess.Popen] = []
        self.interfaces: list[WgGo] = []
        self.tmpdir = tempfile.mkdtemp(prefix=f"nbgw-tb-{self.tag}-")
        self.closed = False

    # -- naming
    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def unique_ifname(self, prefix: str = "nbw") -> str:
        name = f"{prefix}{self.tag}{self._next():x}"
        if len(name) > 15:
            raise ValueError(f"interface name too long: {name}")
        return name

    def secret_file(self, content: str) -> str:
        fd, path = tempfile.mkstemp(dir=self.tmpdir)
        with os.fdopen(fd, "w") as f:
            f.write(content + "\n")
        os.chmod(path, 0o600)
        return path

    def write_file(self, name: str, content: str) -> str:
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, 0o600)
        return path

    # -- resources
    def netns(self) -> Netns:
        name = f"nbgw-{self.tag}-{self._next()}"
        run(["ip", "netns", "add", name])
        ns = Netns(self, name)
        self.namespaces.append(ns)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return ns

    def spawn(self, args: Sequence[str], **kw) -> subprocess.Popen:
        """Start a process this testbed owns (killed by PID on close)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(list(args), **kw)
        self.processes.append(proc)
        return proc

    def veth(self, ns_a: Netns, cidr_a: str, ns_b: Netns, cidr_b: str) -> tuple[str, str]:
        """A veth pair between two of our namespaces (never touching the root one)."""
        a, b = self.unique_ifname("nbv"), self.unique_ifname("nbv")
        run(["ip", "-n", ns_a.name, "link", "add", a, "type", "veth",
             "peer", "name", b, "netns", ns_b.name])
        ns_a.add_address(a, cidr_a)
        ns_b.add_address(b, cidr_b)
        ns_a.link_up(a)
        ns_b.link_up(b)
        return a, b

    def wireguard_go(self, ns: Netns, *, keys: KeyPair | None = None,
                     listen_port: int | None = None, addresses: Sequence[str] = (),
                     mtu: int | None = None, start_timeout: float = 5.0) -> WgGo:
        """Start ``wireguard-go -f`` in ``ns``, set its key/port, addresses, bring it up."""
        keys = keys or KeyPair.generate()
        ifname = self.unique_ifname()
        log = open(os.path.join(self.tmpdir, f"{ifname}.log"), "wb")  # noqa: SIM115
        env = dict(os.environ, LOG_LEVEL=os.environ.get("NBGW_WG_GO_LOG_LEVEL", "error"))
        try:
            proc = ns.popen(["wireguard-go", "-f", ifname], stdout=log, stderr=log, env=env)
        finally:
            log.close()
        wg = WgGo(ns, ifname, proc, keys)
        self.interfaces.append(wg)
        deadline = time.monotonic() + start_timeout
        while not os.path.exists(wg.socket_path):
            if proc.poll() is not None:
                raise CommandError(f"wireguard-go exited with {proc.returncode}: "
                                    f"{self.log_of(wg)}")
            if time.monotonic() > deadline:
                raise CommandError(f"wireguard-go control socket did not appear: "
                                    f"{self.log_of(wg)}")
            time.sleep(0.02)
        args = ["private-key", self.secret_file(keys.private_b64)]
        if listen_port is not None:
            args += ["listen-port", str(listen_port)]
        wg.set(*args)
        if mtu is not None:
            ns.ip("link", "set", ifname, "mtu", str(mtu))
        for cidr in addresses:
            ns.add_address(ifname, cidr)
        ns.link_up(ifname)
        return wg

    def log_of(self, wg: WgGo) -> str:
        try:
            with open(os.path.join(self.tmpdir, f"{wg.ifname}.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    # -- teardown
    def leftovers(self) -> list[str]:
        """Everything of this testbed that still exists (empty after close())."""
        left = []
        for proc in self.processes:
            if proc.poll() is None:
                left.append(f"process {proc.pid} {proc.args!r} still running")
        for wg in self.interfaces:
            if os.path.exists(wg.socket_path):
                left.append(f"control socket {wg.socket_path}")
        for ns in self.namespaces:
            if os.path.exists(os.path.join(NETNS_DIR, ns.name)):
                left.append(f"namespace {ns.name}")
        if os.path.exists(self.tmpdir):
            left.append(f"directory {self.tmpdir}")
        return left

    def close_with_log_tails(self, *names: str, tail: int = 4000) -> list[str]:
        """Print the last ``tail`` bytes of each ``<name>.log`` in the testbed's
        directory (what a failed fixture needs to be read), then :meth:`close`."""
        for name in names:
            path = os.path.join(self.tmpdir, f"{name}.log")
            if os.path.exists(path):
                print(f"--- {name} log tail ---")
                with open(path, "rb") as f:
                    print(f.read()[-tail:].decode(errors="replace"))
        return self.close()

    def close(self) -> list[str]:
        """Kill our PIDs, delete our namespaces and sockets; return what is left."""
        if self.closed:
            return self.leftovers()
        self.closed = True
        problems: list[str] = []
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=3.0)
        for wg in self.interfaces:
            # wireguard-go removes its socket on SIGTERM; not if it died otherwise.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(wg.socket_path)
        for ns in reversed(self.namespaces):
            # Anything still running in the namespace was started by us (nobody else
            # knows its name); report it rather than kill unknown PIDs silently.
            for pid in ns.pids():
                problems.append(f"pid {pid} still in namespace {ns.name}")
            res = run(["ip", "netns", "del", ns.name], check=False)
            if res.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, ns.name)):
                problems.append(f"ip netns del {ns.name}: {res.stderr.strip()}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return problems + self.leftovers()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        left = self.close()
        if left and exc[0] is None:
            raise RuntimeError("testbed teardown left: " + "; ".join(left))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def tunnel_pair(tb: Testbed) -> tuple[Netns, WgGo, Netns, WgGo]:
    """Two wireguard-go peers in two namespaces joined by a veth (198.18.0.1/.2).

    Tunnel addresses: A = 100.64.0.1 / fd00:64::1, B = 100.64.0.2 / fd00:64::2.
    Returns (ns_a, wg_a, ns_b, wg_b); both sides have a persistent keepalive off
    and a handshake happens on first traffic.
    """
    ns_a, ns_b = tb.netns(), tb.netns()
    tb.veth(ns_a, "198.18.0.1/30", ns_b, "198.18.0.2/30")
    wg_a = tb.wireguard_go(ns_a, listen_port=51820,
                           addresses=["100.64.0.1/32", "fd00:64::1/128"])
    wg_b = tb.wireguard_go(ns_b, listen_port=51820,
                           addresses=["100.64.0.2/32", "fd00:64::2/128"])
    wg_a.add_peer(wg_b.keys.public, allowed_ips=["100.64.0.2/32", "fd00:64::2/128"],
                  endpoint="198.18.0.2:51820")
    wg_b.add_peer(wg_a.keys.public, allowed_ips=["100.64.0.1/32", "fd00:64::1/128"],
                  endpoint="198.18.0.1:51820")
    ns_a.add_route(wg_a.ifname, "100.64.0.2/32")
    ns_a.add_route(wg_a.ifname, "fd00:64::2/128")
    ns_b.add_route(wg_b.ifname, "100.64.0.1/32")
    ns_b.add_route(wg_b.ifname, "fd00:64::1/128")
    return ns_a, wg_a, ns_b, wg_b
