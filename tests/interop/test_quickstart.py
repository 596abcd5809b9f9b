"""README's quickstart, literally (issue 7 acceptance).

``test_readme_quickstart_in_a_namespace`` (root, wireguard-go): the commands
of the fenced block after ``<!-- quickstart -->`` in README.md run, as written,
in a fresh network namespace, in a fresh copy of the repository installed with
README's install command (fresh ``.venv``, fresh data dir):
the demo upstream, ``twistd -n nbgateway`` with embedded management,
``nbgateway-admin quickstart``, then the final ``curl``.  The one step that
cannot run as written is ``sudo wg-quick up ./laptop.conf`` (no sudo/resolvconf
in a namespace): it is replaced by what wg-quick does with that same file --
wireguard-go, ``wg-quick strip | wg setconf``, its Address and AllowedIPs
routes, and its DNS line as the namespace's resolv.conf (``ip netns exec``
bind-mounts ``/etc/netns/<ns>/resolv.conf``).  So curl resolves the service
name through the gateway's DNS and reaches the private service over a stock
wireguard-go peer.  The install step (README's command minus its final
``nbgateway-wg run`` demo) takes ~20-30 s with a warm pip cache;
``NBGW_QUICKSTART_REUSE_VENV=1`` symlinks the running venv instead.

``QuickstartCommandTests`` (no root): ``nbgateway-admin quickstart`` against a
real in-process gateway with embedded management: what it creates, prints and
writes, and that a re-run reuses everything.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbgateway.config import load
from nbgateway.management import cli
from nbgateway.tap import build_gateway

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

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                rc = cli.main(["--url", self.url, "quickstart", "--wait", "60", *extra],
                              out=out, err=err)
            finally:
                os.chdir(cwd)
            return rc, out.getvalue(), err.getvalue()

        return threads.deferToThread(call)

    @defer.inlineCallbacks
    def test_creates_everything_prints_config_qr_and_curl_then_reuses(self):
        rc, out, err = yield self.quickstart("--upstream", "http://127.0.0.1:8000")
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
        self.assertIn("█", out)  # the terminal QR code
        ca = os.path.join(self.datadir, "ca.crt")
        self.assertTrue(os.path.exists(ca))
        self.assertIn(f"curl --cacert {ca} https://demo.nbgateway.internal/", out)
        self.assertIn(f"--resolve demo.nbgateway.internal:443:{gateway_ip}", out)
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
        rc, out2, err = yield self.quickstart("--upstream", "http://127.0.0.1:8000", "--no-qr")
        self.assertEqual(rc, 0, err)
        self.assertIn("(reused;", out2)
        self.assertNotIn("█", out2)
        with open(conf_path) as f:
            self.assertEqual(f.read(), conf)  # same peer, same key
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

    @defer.inlineCallbacks
    def test_bad_upstream_is_a_clear_error(self):
        rc, _out, err = yield self.quickstart("--upstream", "ftp://x")
        self.assertEqual(rc, 1)
        self.assertIn("--upstream must be an http(s)://host[:port] URL", err)

    def api(self, *args: str):
        def call():
            out = io.StringIO()
            token = _read(os.path.join(self.datadir, "admin-token")).strip()
            rc = cli.main(["--url", self.url, "--token", token, "--json", *args], out=out,
                          err=io.StringIO())
            assert rc == 0
            return json.loads(out.getvalue())

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
    rc = cli.main(["--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "quickstart",
                   "--wait", "0.5"], out=io.StringIO(), err=err)
    assert rc == 3
    assert "timed out waiting for a connected gateway" in err.getvalue()
    assert "cannot reach" in err.getvalue()


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


def _wg_quick_up(tb, ns, conf_path: str) -> None:
    """What ``wg-quick up conf_path`` does, with wireguard-go, inside ``ns``."""
    with open(conf_path) as f:
        conf = f.read()
    wg = tb.wireguard_go(ns)
    stripped = ns.run(["wg-quick", "strip", conf_path]).stdout
    ns.run(["wg", "setconf", wg.ifname, "/dev/stdin"], input=stripped)
    values = {}
    for line in conf.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), []).extend(
                v.strip() for v in value.split(",") if v.strip())
    for cidr in values.get("Address", []):
        ns.add_address(wg.ifname, cidr)
    for cidr in values.get("AllowedIPs", []):
        ns.add_route(wg.ifname, cidr)
    etc = f"/etc/netns/{ns.name}"
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write("".join(f"nameserver {ip}\n" for ip in values.get("DNS", [])))


@pytest.mark.interop
def test_readme_quickstart_in_a_namespace():
    from tests.interop.conftest import require_testbed
    from tests.interop.testbed import Testbed

    require_testbed("curl", "wg-quick", "python3")
    commands = quickstart_commands(_read(README))
    tb = Testbed()
    etc = None
    try:
        ns = tb.netns()
        etc = f"/etc/netns/{ns.name}"
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
        log = open(os.path.join(tb.tmpdir, "background.log"), "ab")  # noqa: SIM115
        last = None
        in_work = f"cd {shlex.quote(work)} && "
        for line in commands:
            if line.startswith("sudo wg-quick up "):
                _wg_quick_up(tb, ns, os.path.join(work, shlex.split(line)[-1]))
            elif line.endswith("&"):
                ns.popen(["bash", "-c", "exec " + line[:-1].strip()], cwd=work,
                         stdout=log, stderr=subprocess.STDOUT)
            elif line is commands[-1]:
                # the final curl: the tunnel's first handshake and DNS may take a moment
                def attempt(line=line):
                    r = ns.run(["bash", "-c", in_work + line], check=False, timeout=60)
                    return r if r.returncode == 0 else None
                last = _wait(attempt, 60, f"{line!r} to succeed", interval=1)
            else:
                r = ns.run(["bash", "-c", in_work + line], check=False, timeout=150)
                assert r.returncode == 0, (line, r.stdout[-3000:], r.stderr[-3000:])
        assert last is not None
        # python3 -m http.server lists the working directory: served through the tunnel
        assert "Directory listing for /" in last.stdout, last.stdout[-2000:]
        assert "laptop.conf" in last.stdout
    finally:
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
        if etc is not None:
            shutil.rmtree(etc, ignore_errors=True)
    assert not left, left
