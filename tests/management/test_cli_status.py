"""``nbgateway-admin status`` and the token errors against a real ``twistd
nbgateway`` (embedded management, private mode) in a subprocess on loopback
ports: connected, degraded (a TCP service the gateway reports ERROR), and
management down after the gateway stopped."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nbgateway.management.cli import main
from tests.test_tac import free_port, gateway_env

from .apiserver import REPO

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Gateway:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.api, self.tls, self.wg = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api}"
        env = gateway_env(tmp_path, NB_MANAGEMENT_API_ADDR=f"127.0.0.1:{self.api}",
                          NB_PROXY_ADDRESS=f"127.0.0.1:{self.tls}",
                          NB_PROXY_WG_PORT=str(self.wg), NB_PROXY_PRIVATE="true")
        self.log = open(tmp_path / "gw.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "nbgateway"], cwd=tmp_path,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.token = ""
        self._wait(self._connected, "the gateway to connect to its management")

    def _connected(self) -> bool:
        path = self.tmp / "data" / "admin-token"
        if not self.token and path.exists():
            self.token = path.read_text().strip()
        if not self.token:
            return False
        code, out, _ = self.cli("--json", "clusters", "list")
        return code == 0 and any(c.get("online") for c in json.loads(out))

    def _wait(self, predicate, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, (self.tmp / "gw.log").read_text()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.1)

    def cli(self, *argv: str, token: str | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--url", self.url, "--token", token or self.token, *argv], out, err)
        return code, out.getvalue(), err.getvalue()

    def service_status(self, domain: str) -> str:
        code, out, _ = self.cli("--json", "services", "show", domain)
        return json.loads(out)["meta"]["status"] if code == 0 else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    try:
        yield gw
    finally:
        gw.stop()


def test_status_connected_degraded_and_management_down(gateway):
    tls = f"127.0.0.1:{gateway.tls}"
    # connected, nothing configured yet
    code, out, err = gateway.cli("status", "--tls-addr", tls)
    assert code == 0, out + err
    assert f"management  reachable  {gateway.url}" in out
    assert "cluster nbgateway.internal: connected, 1 gateway(s), private services" in out
    assert "capabilities: private" in out
    assert out.rstrip().endswith("status: OK")

    # a private and a public service: the certificate served for the public one,
    # the gateway's tunnel listener, the loopback WireGuard endpoint hint
    assert gateway.cli("groups", "create", "admins")[0] == 0
    assert gateway.cli("peers", "create", "laptop", "--group", "admins")[0] == 0
    assert gateway.cli("services", "create", "--domain", "app.nbgateway.internal",
                       "--private", "--access-group", "admins",
                       "--target", "http://127.0.0.1:8000")[0] == 0
    assert gateway.cli("services", "create", "--domain", "pub.nbgateway.internal",
                       "--target", "http://127.0.0.1:8000")[0] == 0
    gateway._wait(lambda: gateway.service_status("pub.nbgateway.internal") == "active"
                  and gateway.service_status("app.nbgateway.internal") == "active",
                  "both services ACTIVE")
    code, out, err = gateway.cli("status", "--tls-addr", tls)
    assert code == 0, out + err
    assert "app.nbgateway.internal  ACTIVE (private)" in out
    assert "certificate: served inside the tunnel only" in out
    # the account's own local CA (review 16: "nbgateway local CA <tag of the account>")
    assert re.search(r"pub\.nbgateway\.internal  ACTIVE\n    certificate: pub\.nbgateway\.internal "
                     r"issued by nbgateway local CA [0-9a-f]{12}, valid until 20", out), out
    assert "inbound listener in the tunnel: 100.64." in out
    assert f"127.0.0.1:{gateway.wg} (gateway peer" in out and "loopback: this host only" in out
    assert f"hint: WireGuard endpoint 127.0.0.1:{gateway.wg} is loopback" in out
    report = json.loads(gateway.cli("--json", "status", "--tls-addr", tls)[1])
    assert report["healthy"] is True
    [pub] = [s for s in report["services"] if s["domain"] == "pub.nbgateway.internal"]
    assert pub["certificate"]["matches"] is True

    # degraded: the gateway refuses a TCP service whose port is its own
    # WireGuard port, and says why
    assert gateway.cli("services", "create", "--domain", "tcp.nbgateway.internal", "--mode",
                       "tcp", "--listen-port", str(gateway.wg),
                       "--target", "tcp://127.0.0.1:9000")[0] == 0
    gateway._wait(lambda: gateway.service_status("tcp.nbgateway.internal") == "error",
                  "the TCP service to be reported ERROR")
    code, out, _ = gateway.cli("status", "--no-tls-check")
    assert code == 1
    assert (f"tcp.nbgateway.internal  ERROR: port {gateway.wg} conflicts with tunnel port"
            in out), out
    assert "problem: service tcp.nbgateway.internal is ERROR" in out
    assert out.rstrip().endswith("status: DEGRADED (1 problem(s))")

    # management down
    gateway.stop()
    code, out, err = gateway.cli("status")
    assert code == 1 and err == ""
    assert "management  UNREACHABLE  cannot reach management at " in out
    assert out.rstrip().endswith("status: DOWN")


def test_wrong_token_names_where_it_came_from(gateway, tmp_path):
    code, _, err = gateway.cli("groups", "list", token="nbp_wrong")
    assert code == 1 and err.count("\n") == 1
    assert "management rejected the token from --token" in err and "(HTTP 401)" in err
    # from the token file in the working directory: the error names the file
    work = tmp_path / "elsewhere"
    (work / "nbgateway-data").mkdir(parents=True)
    (work / "nbgateway-data" / "admin-token").write_text("nbp_stale\n")
    env = {k: v for k, v in os.environ.items() if k != "NB_ADMIN_TOKEN"}
    env.update(PYTHONPATH=REPO, NB_ADMIN_URL=gateway.url)
    res = subprocess.run([sys.executable, "-m", "nbgateway.management.cli", "peers", "list"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert (f"management rejected the token from {work / 'nbgateway-data' / 'admin-token'}"
            in res.stderr)
    res = subprocess.run([sys.executable, "-m", "nbgateway.management.cli", "peers", "list"],
                         cwd=work, env=dict(env, NB_ADMIN_TOKEN="nbp_env"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "the token from NB_ADMIN_TOKEN" in res.stderr


def test_status_degraded_when_the_gateway_disconnects(tmp_path):
    """A standalone ``twistd nbmanagement`` and a gateway connecting with
    ``--mgmt`` and a proxy token: connected, then the gateway stops and
    status says which gateway is gone (management still up)."""
    api, grpc = free_port(), free_port()
    env = gateway_env(tmp_path)
    with open(tmp_path / "mgmt.log", "w") as mlog:
        mgmt = subprocess.Popen([TWISTD, "-n", "--pidfile=", "nbmanagement", "--datadir",
                                 str(tmp_path / "m"), "--api-addr", f"127.0.0.1:{api}",
                                 "--grpc-addr", f"127.0.0.1:{grpc}"], cwd=tmp_path, env=env,
                                stdout=mlog, stderr=subprocess.STDOUT)
    gw = None
    try:
        url, token_file = f"http://127.0.0.1:{api}", tmp_path / "m" / "admin-token"

        def cli(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = main(["--url", url, "--token", token_file.read_text().strip(), *argv],
                        out, err)
            return code, out.getvalue(), err.getvalue()

        def wait(predicate, what: str) -> None:
            deadline = time.monotonic() + 20
            while not predicate():
                assert mgmt.poll() is None, (tmp_path / "mgmt.log").read_text()
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for {what}")
                time.sleep(0.1)

        wait(lambda: token_file.exists() and cli("clusters", "list")[0] == 0, "management")
        code, out, _ = cli("--json", "tokens", "create", "eu-gateway")
        assert code == 0
        proxy_token = json.loads(out)["plain_token"]
        gw_env = dict(env, NB_PROXY_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{grpc}",
                      NB_PROXY_DOMAIN="eu.gw.test", NB_PROXY_TOKEN=proxy_token)
        with open(tmp_path / "gw.log", "w") as glog:
            gw = subprocess.Popen([TWISTD, "-n", "--pidfile=", "nbgateway"], cwd=tmp_path,
                                  env=gw_env, stdout=glog, stderr=subprocess.STDOUT)

        def online() -> bool:
            assert gw.poll() is None, (tmp_path / "gw.log").read_text()
            code, out, _ = cli("--json", "clusters", "list")
            return code == 0 and any(c.get("online") for c in json.loads(out))

        wait(online, "the gateway to connect")
        code, out, _ = cli("status", "--no-tls-check")
        assert code == 0, out
        assert "cluster eu.gw.test: connected, 1 gateway(s)" in out

        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=20)
        wait(lambda: cli("status", "--no-tls-check")[0] == 1, "status to see the gateway gone")
        code, out, _ = cli("status", "--no-tls-check")
        assert "cluster eu.gw.test: disconnected" in out
        assert "problem: no gateway is connected to management" in out
        assert "problem: gateway " in out and "(eu.gw.test) is disconnected" in out
        assert "status: DEGRADED" in out
        report = json.loads(cli("--json", "status", "--no-tls-check")[1])
        assert report["healthy"] is False and report["management"]["reachable"] is True
    finally:
        for proc in (gw, mgmt):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
