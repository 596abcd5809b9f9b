"""``twistd nbmanagement`` options (flags > NB_MANAGEMENT_* env > defaults) and the dropin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.python import usage

from nbgateway.management.service import ManagementService, endpoint_description
from nbgateway.management.tap import Options, makeService

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(argv, environ=None):
    opts = Options(environ=environ or {})
    opts.parseOptions(argv)
    return opts


def test_defaults():
    opts = parse([])
    assert opts["datadir"] == "nbgateway-data"
    assert opts["api-addr"] == "127.0.0.1:33071"
    assert opts["store-dsn"] is None


def test_env_used_when_flag_absent_and_flag_wins():
    env = {"NB_MANAGEMENT_DATADIR": "/env/dir", "NB_MANAGEMENT_API_ADDR": "0.0.0.0:1",
           "NB_MANAGEMENT_STORE_DSN": "postgresql://env"}
    opts = parse([], env)
    assert (opts["datadir"], opts["api-addr"], opts["store-dsn"]) == (
        "/env/dir", "0.0.0.0:1", "postgresql://env")
    opts = parse(["--datadir", "/flag", "--api-addr", "[::1]:9", "--store-dsn", "sqlite:///x"],
                 env)
    assert (opts["datadir"], opts["api-addr"], opts["store-dsn"]) == (
        "/flag", "[::1]:9", "sqlite:///x")


@pytest.mark.parametrize("bad", ["nohostport", "1.2.3.4:http", "[::1", "h:70000"])
def test_bad_api_addr_is_a_usage_error(bad):
    with pytest.raises(usage.UsageError):
        parse(["--api-addr", bad])


@pytest.mark.parametrize("addr,desc", [
    ("127.0.0.1:33071", "tcp:port=33071:interface=127.0.0.1"),
    (":8080", "tcp:port=8080"),
    ("[::1]:80", r"tcp6:port=80:interface=\:\:1"),
    ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"),
])
def test_endpoint_description(addr, desc):
    assert endpoint_description(addr) == desc


def test_make_service_builds_without_io(tmp_path):
    datadir = tmp_path / "data"
    svc = makeService(parse(["--datadir", str(datadir), "--api-addr", "127.0.0.1:0"]))
    assert isinstance(svc, ManagementService)
    assert not datadir.exists()  # nothing touched before privilegedStartService
    assert svc.port is None and svc.store is None
    assert not svc.threadpool.started


def test_plugin_is_discoverable_by_twistd(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                          "nbmanagement", "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--datadir" in res.stdout and "NB_MANAGEMENT_API_ADDR" in res.stdout
