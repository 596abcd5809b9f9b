"""The example .tac files (issue 7): they load with
``twisted.application.service.loadApplication`` into an Application with the
expected service and an ``ILogObserver`` component, and they run for real with
``twistd -ny`` (a short-lived process on loopback, stopped with SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from twisted.application import service
from twisted.logger import ILogObserver

from nbgateway.management.service import ManagementService
from nbgateway.service import GatewayService
from tests.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY_TAC = os.path.join(ROOT, "tac", "nbgateway.tac")
MANAGEMENT_TAC = os.path.join(ROOT, "tac", "nbmanagement.tac")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


#: twistd's exit status after SIGTERM: 0, or (Twisted >= 22) death by the same signal
STOPPED = (0, -signal.SIGTERM)


def gateway_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NB_PROXY_", "NB_MANAGEMENT_"))}
    env.update({
        "NB_PROXY_WG_PORT": "0",
        "NB_PROXY_ADDRESS": "127.0.0.1:0",
        "NB_PROXY_HEALTH_ADDRESS": f"127.0.0.1:{free_port()}",
        "NB_PROXY_DATADIR": str(tmp_path / "data"),
        "NB_PROXY_CERTIFICATE_DIRECTORY": str(tmp_path / "certs"),
        "NB_MANAGEMENT_API_ADDR": f"127.0.0.1:{free_port()}",
        "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}",
    })
    env.update(extra)
    return env


def load(path: str, env: dict[str, str], monkeypatch) -> service.Application:
    monkeypatch.setattr(os, "environ", env)
    return service.loadApplication(path, "python")


def test_gateway_tac_loads(tmp_path, monkeypatch):
    app = load(GATEWAY_TAC, gateway_env(tmp_path, NB_PROXY_LOG_FORMAT="json"), monkeypatch)
    services = list(service.IServiceCollection(app))
    assert len(services) == 1 and isinstance(services[0], GatewayService)
    assert services[0].embedded is not None  # no NB_PROXY_MANAGEMENT_ADDRESS: embedded
    assert services[0].config.log_format == "json"
    observer = app.getComponent(ILogObserver, None)
    assert observer is not None and ILogObserver.providedBy(observer)
    assert not services[0].running  # loading starts nothing


def test_gateway_tac_rejects_bad_environment(tmp_path, monkeypatch):
    from nbgateway.config import ConfigError

    with pytest.raises(ConfigError, match="--wg-port"):
        load(GATEWAY_TAC, gateway_env(tmp_path, NB_PROXY_WG_PORT="seventy"), monkeypatch)


def test_management_tac_loads(tmp_path, monkeypatch):
    env = {"NB_MANAGEMENT_DATADIR": str(tmp_path / "mgmt"),
           "NB_MANAGEMENT_API_ADDR": "127.0.0.1:0"}
    app = load(MANAGEMENT_TAC, env, monkeypatch)
    services = list(service.IServiceCollection(app))
    assert len(services) == 1 and isinstance(services[0], ManagementService)
    assert app.getComponent(ILogObserver, None) is not None


def _http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _run_tac(path: str, env: dict[str, str], cwd, url: str) -> tuple[int, str]:
    """Start ``twistd -ny path``, wait for ``url`` to answer 200, SIGTERM it;
    (exit status, its stdout)."""
    with open(cwd / "twistd.out", "w+b") as out:
        rc = _supervise(path, env, cwd, url, out)
        out.seek(0)
        return rc, out.read().decode(errors="replace")


def _supervise(path: str, env: dict[str, str], cwd, url: str, out) -> int:
    proc = subprocess.Popen([TWISTD, "-ny", path, "--pidfile="], env=env, cwd=cwd,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _http(url)[0] != 200:
            assert proc.poll() is None, (cwd / "twistd.out").read_text()
            assert time.monotonic() < deadline, "the .tac never became ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gateway_tac_runs_with_twistd(tmp_path):
    env = gateway_env(tmp_path, NB_PROXY_LOG_FORMAT="json")
    health = env["NB_PROXY_HEALTH_ADDRESS"]
    rc, output = _run_tac(GATEWAY_TAC, env, tmp_path, f"http://{health}/healthz/live")
    assert rc in STOPPED, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = " ".join(event.get("msg", "") for event in lines)
    assert "WireGuard listening on UDP" in messages, output
    assert "embedded management" in messages, output
    assert all({"time", "level", "msg"} <= set(event) for event in lines)
    assert os.path.exists(tmp_path / "data" / "admin-token")


def test_management_tac_runs_with_twistd(tmp_path):
    api = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NB_MANAGEMENT_")}
    env.update({"NB_MANAGEMENT_DATADIR": str(tmp_path / "mgmt"), "NB_MANAGEMENT_API_ADDR": api,
                "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
    rc, output = _run_tac(MANAGEMENT_TAC, env, tmp_path, f"http://{api}/api/openapi.json")
    assert rc in STOPPED, output
    assert os.path.exists(tmp_path / "mgmt" / "admin-token")
    assert "Main loop terminated" in output, output
