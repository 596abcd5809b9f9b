"""README's quickstart, literally, on a newcomer's machine (issue 12 acceptance).

``test_readme_quickstart_in_a_namespace`` (root, wireguard-go): the commands
of the fenced block after ``<!-- quickstart -->`` in README.md run, as written,
in a fresh network namespace, in a fresh copy of the repository installed with
README's install command (fresh ``.venv``, fresh data dir), with the PATH of a
stock Debian/Ubuntu user where ``resolvconf`` does not exist (asserted):
``nbgateway-admin demo-upstream``, ``twistd -n nbgateway`` with embedded
management, ``nbgateway-admin quickstart``, the real ``wg-quick up
./laptop.conf`` (``sudo`` is a shim that runs its arguments, the test is
root; wg-quick falls back to wireguard-go without the kernel module) and the
final ``curl``.  Then: the page shows the identity the gateway stamped, and
nothing of the working or data directory (admin token, CA key, the config)
is reachable through the tunnel (404).  The install step (README's command
minus its final foreground run) takes ~20-30 s with a warm pip cache;
``NBGW_QUICKSTART_REUSE_VENV=1`` symlinks the running venv instead.

``QuickstartCommandTests`` (no root): the quickstart module against a real
in-process gateway with embedded management: what it creates, prints and
writes (with and without a DNS line), and that a re-run reuses everything.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from cryptography import x509
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbgateway.config import load
from nbgateway.management import quickstart
from nbgateway.management.cli._client import Client, CliError
from nbgateway.tap import build_gateway
from nbgateway.tls.ca import constraints_of
from tests.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
VENV = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def quickstart_commands(text: str) -> list[str]:
    """The command lines of the ``sh`` block after ``<!-- quickstart -->``."""
    after = text.split("<!-- quickstart -->", 1)[1]
    block = re.search(r"```sh\n(.*?)\n```", after, re.S)
    assert block, "no ```sh block after <!-- quickstart -->"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def install_commands(text: str) -> list[str]:
    """The install steps of README's install-and-run command (block after
    ``<!-- install-and-run -->``): creating the venv and the pip installs, not
    the final step that runs something in the foreground."""
    after = text.split("<!-- install-and-run -->", 1)[1]
    block = re.search(r"```sh\n(.*?)\n```", after, re.S)
    assert block, "no ```sh block after <!-- install-and-run -->"
    steps = [step.strip() for step in block.group(1).replace("\\\n", " ").split("&&")]
    return [step for step in steps if re.search(r"-m venv |pip install ", step)]


def copy_tree(dest: str) -> None:
    """The working tree (tracked and untracked-but-not-ignored files) -> dest."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        path = os.path.join(ROOT, rel)
        if os.path.isfile(path):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(path, os.path.join(dest, rel))


def test_readme_quickstart_block_shape():
    commands = quickstart_commands(_read(README))
    joined = "\n".join(commands)
    assert any("twistd" in c and " nbgateway" in c and c.endswith("&") for c in commands)
    assert any("nbgateway-admin quickstart" in c for c in commands)
    assert any(c.startswith("sudo wg-quick up ") for c in commands)
    assert commands[-1].startswith("curl ")
    assert "--mgmt" not in joined  # the embedded default
    install = install_commands(_read(README))
    assert install[0].startswith("python3 -m venv .venv"), install
    assert any("pip install" in step for step in install), install


# --------------------------------------------------------------------- in process

def run_quickstart(url: str, argv: list[str], out, err, token: str | None = None,
                   token_file: str | None = None) -> int:
    """``nbgateway-admin [--json] quickstart ARGV`` without the CLI's wiring:
    the module's own options and ``run`` (the CLI only delegates to them)."""
    p = argparse.ArgumentParser()
    p.add_argument("--json", action="store_true")
    quickstart.add_arguments(p)
    args = p.parse_args(argv)
    if token is None and token_file:
        deadline = time.monotonic() + 30
        while not (os.path.exists(token_file) and _read(token_file).strip()):
            assert time.monotonic() < deadline, "no admin token"
            time.sleep(0.1)
        token = _read(token_file).strip()
    try:
        quickstart.run(Client(url, token), args, out)
    except CliError as exc:
        err.write(f"error: {exc.message}\n")
        return exc.code
    return 0


class QuickstartCommandTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.datadir = os.path.join(self.workdir, "nbgateway-data")
        config = load({"wg_port": "0", "datadir": self.datadir, "health_addr": "",
                       "addr": "127.0.0.1:0", "private": True,
                       "wg_endpoint": "127.0.0.1:51999"}, {})
        self.svc = build_gateway(config, reactor, environ={
            "NB_MANAGEMENT_API_ADDR": "127.0.0.1:0",
            "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
        self.svc.privilegedStartService()
        self.svc.startService()
        self.url = f"http://127.0.0.1:{self.svc.embedded.management.port.getHost().port}"
        yield deferLater(reactor, 0, lambda: None)

    def tearDown(self):
        return self.svc.stopService()

    def quickstart(self, *extra: str):
        def call():
            out, err = io.StringIO(), io.StringIO()
            cwd = os.getcwd()
            os.chdir(self.workdir)  # the token file and laptop.conf are cwd-relative
            try:
                rc = run_quickstart(self.url, ["--wait", "60", *extra], out, err,
                                    token_file=os.path.join(self.datadir, "admin-token"))
            finally:
                os.chdir(cwd)
            return rc, out.getvalue(), err.getvalue()

        return threads.deferToThread(call)

    @defer.inlineCallbacks
    def test_creates_everything_prints_config_qr_and_curl_then_reuses(self):
        rc, out, err = yield self.quickstart("--upstream", "http://127.0.0.1:8000",
                                             "--dns", "keep")
        self.assertEqual(rc, 0, err)
        conf_path = os.path.join(self.workdir, "laptop.conf")
        with open(conf_path) as f:
            conf = f.read()
        self.assertEqual(os.stat(conf_path).st_mode & 0o777, 0o600)
        self.assertIn(conf, out)
        self.assertIn("[Peer]", conf)
        self.assertIn("Endpoint = 127.0.0.1:51999", conf)
        self.assertRegex(conf, r"PrivateKey = [A-Za-z0-9+/]{43}=")
        gateway_ip = re.search(r"^DNS = ([0-9.]+)", conf, re.M).group(1)
        # the gateway registered its tunnel peer before ours: the first address
        self.assertEqual(gateway_ip, "100.64.0.1")
        self.assertIn("gateway nbgateway.internal, tunnel address 100.64.0.1", out)
        self.assertIn("█", out)  # the terminal QR code
        # the private CA, as management got it from the gateway, beside the
        # config: the account's own CA (account-cas/<hash>/), not the gateway's
        # ca.crt, which signs only its default name
        account_cas = glob.glob(os.path.join(self.datadir, "account-cas", "*", "ca.crt"))
        self.assertEqual(len(account_cas), 1, account_cas)
        downloaded = _read(os.path.join(self.workdir, "nbgateway-ca.crt"), "rb")
        self.assertEqual(downloaded, _read(account_cas[0], "rb"))
        own = os.path.join(self.datadir, "ca.crt")
        self.assertFalse(os.path.exists(own) and _read(own, "rb") == downloaded)
        self.assertEqual(constraints_of(x509.load_pem_x509_certificate(downloaded)),
                         {"demo.nbgateway.internal"})
        self.assertIn("nbgateway-ca.crt beside the config", out)
        # the curl form README uses: independent of the system resolver
        self.assertIn("curl --cacert nbgateway-ca.crt --resolve "
                      "demo.nbgateway.internal:443:100.64.0.1 https://demo.nbgateway.internal/",
                      out)
        self.assertIn("sudo wg-quick up ./laptop.conf", out)
        # what management holds: a private service for the group, on the gateway
        services = yield self.api("services", "list")
        self.assertEqual(len(services), 1)
        svc = services[0]
        self.assertEqual(svc["domain"], "demo.nbgateway.internal")
        self.assertTrue(svc["private"])
        target = svc["targets"][0]
        self.assertEqual((target["host"], target["port"], target["protocol"]),
                         ("127.0.0.1", 8000, "http"))
        self.assertTrue(target["options"]["direct_upstream"])
        groups = yield self.api("groups", "list")
        group = next(g for g in groups if g["name"] == "quickstart")
        self.assertEqual(svc["access_groups"], [group["id"]])
        self.assertEqual([p["name"] for p in group["peers"]], ["laptop"])
        yield self.wait_for(lambda: self.svc.routes.lookup("demo.nbgateway.internal"))

        # idempotent: a re-run reuses the group, the peer and the service
        rc, out2, err = yield self.quickstart("--upstream", "http://127.0.0.1:8000", "--no-qr",
                                              "--dns", "keep")
        self.assertEqual(rc, 0, err)
        self.assertIn("(reused;", out2)
        self.assertNotIn("█", out2)
        with open(conf_path) as f:
            self.assertEqual(f.read(), conf)  # same peer, same key
        # where wg-quick cannot apply a DNS line (no resolvconf) it is a comment
        rc, out2, err = yield self.quickstart("--upstream", "http://127.0.0.1:8000", "--no-qr",
                                              "--dns", "omit")
        self.assertEqual(rc, 0, err)
        with open(conf_path) as f:
            omitted = f.read()
        self.assertNotRegex(omitted, r"(?m)^\s*DNS\s*=")
        self.assertIn("# DNS = 100.64.0.1", omitted)
        self.assertIn("resolvconf", omitted)
        self.assertEqual(quickstart.without_dns(conf), omitted)
        self.assertIn("the config has no DNS line", out2)
        self.assertEqual(len((yield self.api("services", "list"))), 1)
        self.assertEqual(len([g for g in (yield self.api("groups", "list"))
                              if g["name"] == "quickstart"]), 1)
        self.assertEqual(len([p for p in (yield self.api("peers", "list"))
                              if p["name"] == "laptop"]), 1)
        # a different upstream updates the service in place
        rc, out3, err = yield self.quickstart("--upstream", "http://127.0.0.1:9000/app",
                                              "--no-qr")
        self.assertEqual(rc, 0, err)
        self.assertIn("(updated;", out3)
        services = yield self.api("services", "list")
        self.assertEqual(len(services), 1)
        self.assertEqual(services[0]["targets"][0]["port"], 9000)
        # --json: "ca" is the account's CA beside the config, the file curl trusts
        rc, out4, err = yield self.quickstart("--json", "--upstream",
                                              "http://127.0.0.1:9000/app", "--no-qr")
        self.assertEqual(rc, 0, err)
        shown = json.loads(out4)
        ca_path = os.path.join(self.workdir, "nbgateway-ca.crt")
        self.assertEqual((shown["ca"], shown["peer_ca"]), (ca_path, ca_path))
        self.assertEqual(_read(ca_path, "rb"), _read(account_cas[0], "rb"))
        self.assertTrue(shown["curl"].startswith("curl --cacert nbgateway-ca.crt "))

    @defer.inlineCallbacks
    def test_bad_upstream_is_a_clear_error(self):
        rc, _out, err = yield self.quickstart("--upstream", "ftp://x")
        self.assertEqual(rc, 1)
        self.assertIn("--upstream must be an http(s)://host[:port] URL", err)

    def api(self, what: str, _list: str = "list"):
        path = {"services": "/reverse-proxies/services", "groups": "/groups",
                "peers": "/peers"}[what]

        def call():
            token = _read(os.path.join(self.datadir, "admin-token")).strip()
            return Client(self.url, token).get(path)

        return threads.deferToThread(call)

    @defer.inlineCallbacks
    def wait_for(self, predicate, timeout=15.0):
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail("condition not reached in time")
            yield deferLater(reactor, 0.05, lambda: None)


def test_quickstart_without_a_gateway_times_out_with_a_hint():
    err = io.StringIO()
    rc = run_quickstart(f"http://127.0.0.1:{free_port()}", ["--wait", "0.5"], io.StringIO(),
                        err, token="t")
    assert rc == 1
    assert "timed out waiting for a connected gateway" in err.getvalue()
    assert "cannot reach" in err.getvalue()


def test_resolvconf_detection(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "SBIN_DIRS", ())
    assert not quickstart.has_resolvconf(str(tmp_path))
    exe = tmp_path / "resolvconf"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert quickstart.has_resolvconf(str(tmp_path))
    # sudo's PATH has the sbin directories even when the user's has not
    monkeypatch.setattr(quickstart, "SBIN_DIRS", (str(tmp_path),))
    assert quickstart.has_resolvconf("/nonexistent")


def test_without_dns_keeps_everything_else():
    conf = ("[Interface]\nPrivateKey = k\nAddress = 100.64.0.2/32\nDNS = 100.64.0.1\n\n"
            "[Peer]\nPublicKey = p\nAllowedIPs = 100.64.0.1/32\n")
    out = quickstart.without_dns(conf)
    assert "\nDNS" not in out
    assert [x for x in out.splitlines() if not x.startswith("#")] == \
        [x for x in conf.splitlines() if not x.startswith("DNS")]


# --------------------------------------------------------------------- interop

def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


#: the newcomer's PATH (a sudo-capable user's, with the sbin directories sudo
#: adds); the test asserts that no resolvconf is on it
NEWCOMER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
#: paths that must never be reachable through the demo upstream
SECRETS = ("/nbgateway-data/admin-token", "/admin-token", "/nbgateway-data/ca.key", "/ca.key",
           "/nbgateway-data/account-cas/",
           "/laptop.conf", "/nbgateway-data/", "/nbgateway-data/management.db", "/README.md",
           "/../nbgateway-data/admin-token", "/%2e%2e/nbgateway-data/admin-token")


WG_RUN = "/run/wireguard"


def _comm(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/comm").strip()
    except OSError:
        return ""


def _sudo_shim(bindir: str) -> None:
    """``sudo CMD`` runs CMD: the test runs as root, a newcomer types sudo."""
    os.makedirs(bindir, exist_ok=True)
    path = os.path.join(bindir, "sudo")
    with open(path, "w") as f:
        f.write('#!/bin/sh\nexec "$@"\n')
    os.chmod(path, 0o755)


@pytest.mark.interop
@pytest.mark.index
def test_readme_quickstart_in_a_namespace():
    from tests.interop.conftest import require_testbed
    from tests.interop.testbed import Testbed

    require_testbed("curl", "wg-quick", "python3", "ping")
    commands = quickstart_commands(_read(README))
    tb = Testbed()
    ns = None
    try:
        ns = tb.netns()
        # a fresh copy of the repository, installed with README's own install
        # command into a fresh .venv (outside the namespace: pip needs the index)
        work = os.path.join(tb.tmpdir, "work")
        copy_tree(work)
        if os.environ.get("NBGW_QUICKSTART_REUSE_VENV") == "1":
            os.symlink(VENV, os.path.join(work, ".venv"))  # faster local iterations
        else:
            for step in install_commands(_read(README)):
                r = subprocess.run(["bash", "-c", step], cwd=work, capture_output=True,
                                   text=True, timeout=900, check=False)
                assert r.returncode == 0, (step, r.stdout[-3000:], r.stderr[-3000:])
        shim = os.path.join(tb.tmpdir, "bin")
        _sudo_shim(shim)
        path = f"{shim}:{NEWCOMER_PATH}"
        # the machine state of a newcomer on stock Debian/Ubuntu: no resolvconf,
        # so wg-quick fails on a DNS line (this is what must not regress)
        if shutil.which("resolvconf", path=path) or quickstart.has_resolvconf(path):
            pytest.skip("resolvconf is installed here: wg-quick would change this "
                        "machine's resolver; the test needs a newcomer's machine without it")
        os.makedirs(WG_RUN, exist_ok=True)
        env = f"export PATH={shlex.quote(path)} && cd {shlex.quote(work)} && "
        probe = ns.run(["bash", "-c", env + "command -v resolvconf"], check=False)
        assert probe.returncode != 0, probe.stdout
        log = open(os.path.join(tb.tmpdir, "background.log"), "ab")  # noqa: SIM115
        last = None
        for line in commands:
            if line.endswith("&"):
                ns.popen(["bash", "-c", env + "exec " + line[:-1].strip()], cwd=work,
                         stdout=log, stderr=subprocess.STDOUT)
            elif line is commands[-1]:
                # the final curl: the tunnel's first handshake may take a moment
                def attempt(line=line):
                    r = ns.run(["bash", "-c", env + line], check=False, timeout=60)
                    return r if r.returncode == 0 else None
                last = _wait(attempt, 60, f"{line!r} to succeed", interval=1)
            else:  # literally, wg-quick included (wireguard-go when there is no kmod)
                if "wg-quick up" in line:
                    # wireguard-go's control socket goes to a tmpfs private to this
                    # `ip netns exec` mount namespace: another test's "laptop"
                    # interface cannot collide with ours
                    line = f"mount -t tmpfs nbgw-wg {WG_RUN} && {line}"
                r = ns.run(["bash", "-c", env + line], check=False, timeout=150)
                assert r.returncode == 0, (line, r.stdout[-3000:], r.stderr[-3000:])
        assert last is not None
        # the demo page, showing the identity the gateway stamped
        assert "nbgateway demo upstream" in last.stdout, last.stdout[-2000:]
        assert "X-NetBird-User" in last.stdout
        assert "quickstart" in last.stdout  # the peer's group, from X-NetBird-Groups
        # nothing of the working directory or the data directory is reachable
        curl = shlex.split(commands[-1])
        url = curl[-1].rstrip("/")
        for secret in SECRETS:
            r = ns.run(["bash", "-c", env + shlex.join(
                [*curl[:-1], "--path-as-is", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                 url + secret])], check=False, timeout=30)
            assert r.stdout.strip() == "404", (secret, r.stdout, r.stderr)
        # README: the gateway's tunnel address answers ping for this peer
        gateway_ip = re.search(r"--resolve \S+:443:([0-9.]+)", commands[-1]).group(1)
        r = ns.run(["ping", "-c", "1", "-W", "3", gateway_ip], check=False, timeout=15)
        assert r.returncode == 0, r.stdout + r.stderr
        conf = _read(os.path.join(work, "laptop.conf"))
        assert not re.search(r"(?m)^\s*DNS\s*=", conf), conf  # no resolvconf here
    finally:
        if ns is not None:  # what wg-quick down does to a userspace interface
            ns.run(["ip", "link", "delete", "dev", "laptop"], check=False)
            _wait(lambda: not [pid for pid in ns.pids() if _comm(pid) == "wireguard-go"], 10,
                  "wireguard-go to exit", interval=0.1)
        for name in ("background.log",):
            path = os.path.join(tb.tmpdir, name)
            if os.path.exists(path):
                print(f"--- {name} ---")
                print(_read(path, "rb")[-6000:].decode(errors="replace"))
        gw_log = os.path.join(tb.tmpdir, "work", "nbgateway.log")
        if os.path.exists(gw_log):
            print("--- nbgateway.log ---")
            print(_read(gw_log, "rb")[-6000:].decode(errors="replace"))
        left = tb.close()
    assert not left, left
