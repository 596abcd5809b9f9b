"""``--log-level`` applies to every log destination of a real ``twistd
nbgateway`` (issue 11.9 / 12.6): with ``-l FILE`` at the default level no
debug line reaches the file (before, twistd's own file observer logged
everything); ``--log-level debug`` does write them; ``--log-format json``
with ``-l FILE`` writes filtered JSON lines to that file.

Short-lived processes on loopback (embedded management), stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_tac import free_port, gateway_env

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
READY = "Initial mapping sync complete"


def run_gateway(tmp_path, logfile, *flags: str) -> str:
    """Start, wait until ready (health probe), stop with SIGTERM; the log text."""
    health = free_port()
    env = gateway_env(tmp_path, NB_PROXY_HEALTH_ADDRESS=f"127.0.0.1:{health}")
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-l", str(logfile), "nbgateway",
                             *flags], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(health):
            assert proc.poll() is None, proc.stdout.read().decode()
            if time.monotonic() > deadline:
                pytest.fail("gateway did not become ready")
            time.sleep(0.1)
        time.sleep(0.3)  # let the first periodic work (and its debug lines) happen
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert out == "", out  # with -l FILE nothing goes to stdout
    return logfile.read_text()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_default_info_level_writes_no_debug_lines_to_the_file(tmp_path) -> None:
    text = run_gateway(tmp_path, tmp_path / "gw.log")
    assert READY in text and "health and metrics listener" in text
    assert "#debug]" not in text


def test_debug_and_warn_levels_apply_to_the_file(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "w").mkdir()
    text = run_gateway(tmp_path / "d", tmp_path / "d" / "gw.log", "--log-level", "debug")
    assert "#debug]" in text and "#info]" in text
    quiet = run_gateway(tmp_path / "w", tmp_path / "w" / "gw.log", "--log-level", "warn")
    assert "#info]" not in quiet and "#debug]" not in quiet


def test_json_format_goes_to_the_file_filtered(tmp_path) -> None:
    text = run_gateway(tmp_path, tmp_path / "gw.jsonl", "--log-format", "json")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(r["msg"] == READY for r in records)
    assert {r["level"] for r in records} <= {"info", "warn", "error", "critical"}


def run_management(tmp_path, *flags: str) -> str:
    """``twistd nbmanagement -l FILE``: start, one REST request (logged at
    debug), SIGTERM; the log text."""
    api = free_port()
    logfile = tmp_path / "mgmt.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NB_MANAGEMENT_")}
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-l", str(logfile), "nbmanagement",
                             "--datadir", str(tmp_path / "data"), "--api-addr", f"127.0.0.1:{api}",
                             "--grpc-addr", f"127.0.0.1:{free_port()}", *flags],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/openapi.json",
                                            timeout=1) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                if time.monotonic() > deadline:
                    pytest.fail("management did not start")
                time.sleep(0.1)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert out == "", out
    return logfile.read_text()


def test_management_default_level_writes_no_debug_lines(tmp_path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "d").mkdir()
    text = run_management(tmp_path / "i")
    assert "management REST API listening" in text and "#debug]" not in text
    assert "#debug]" in run_management(tmp_path / "d", "--log-level", "debug")
