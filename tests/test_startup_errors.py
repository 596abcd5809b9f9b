"""Startup errors of the twistd plugins read as one line, not as a crash
(issue 12.4): a bad flag is one line on stderr with exit status 2 (not the
help text); a port that cannot be bound is one log line naming the port,
the flag/variable that set it and the fix, exit status 1, no traceback.

Real ``twistd`` processes on loopback ports."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from twisted.internet.error import CannotListenError
from twisted.python import usage

from nbgateway.management.tap import Options as ManagementOptions
from nbgateway.options import Options as GatewayOptions
from nbgateway.startup import ListenError, usage_message
from tests.test_tac import free_port, gateway_env

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(tmp_path, *argv: str, env: dict[str, str] | None = None):
    return subprocess.run([TWISTD, "-n", "--pidfile=", *argv], cwd=tmp_path,
                          env=env or gateway_env(tmp_path), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("argv, needle", [
    (["nbgateway", "--wg-port", "nope"], "twistd nbgateway: error: invalid --wg-port value"),
    (["nbgateway", "--bogus"], "twistd nbgateway: error: unknown option --bogus"),
    (["nbgateway", "--addr"], "twistd nbgateway: error: option --addr requires argument"),
    (["nbmanagement", "--api-addr", "foo:bar"], "twistd nbmanagement: error: --api-addr:"),
    (["nbmanagement", "--grpc-cert", "c.pem"],
     "twistd nbmanagement: error: --grpc-cert and --grpc-key must be given together"),
])
def test_bad_flag_is_one_line_with_status_2(tmp_path, argv, needle):
    r = twistd(tmp_path, *argv)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(needle), r.stderr
    assert r.stderr.rstrip().endswith(f"see 'twistd {argv[0]} --help'")


@contextlib.contextmanager
def busy_tcp_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held (bound and listening) for the block."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def _one_failure_line(r: subprocess.CompletedProcess, needle: str) -> str:
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if "cannot listen" in ln]
    assert len(lines) == 1 and needle in lines[0], text
    return lines[0]


def test_busy_wireguard_udp_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        port = busy.getsockname()[1]
        r = twistd(tmp_path, "nbgateway",
                   env=gateway_env(tmp_path, NB_PROXY_WG_PORT=str(port)))
    line = _one_failure_line(r, f"cannot listen on WireGuard UDP all interfaces port {port}")
    assert "already in use by another process" in line
    assert "choose another port with --wg-port / NB_PROXY_WG_PORT" in line
    assert "#critical]" in line


def test_busy_public_tcp_port(tmp_path):
    with busy_tcp_port() as port:
        r = twistd(tmp_path, "nbgateway",
                   env=gateway_env(tmp_path, NB_PROXY_ADDRESS=f"127.0.0.1:{port}"))
    line = _one_failure_line(r, f"the public TCP listener 127.0.0.1 port {port}: already in use")
    assert "--addr / NB_PROXY_ADDRESS" in line


def test_busy_management_api_port(tmp_path):
    with busy_tcp_port() as port:
        env = gateway_env(tmp_path)
        r = twistd(tmp_path, "nbmanagement", "--datadir", str(tmp_path / "m"), "--api-addr",
                   f"127.0.0.1:{port}", "--grpc-addr", f"127.0.0.1:{free_port()}", env=env)
    line = _one_failure_line(r, f"the management REST API (TCP) 127.0.0.1 port {port}")
    assert "--api-addr / NB_MANAGEMENT_API_ADDR" in line


def test_options_without_twistd_still_raise_usage_error():
    # a library user (or a test) parsing the options gets the exception, no exit
    with pytest.raises(usage.UsageError):
        GatewayOptions(environ={}).parseOptions(["--wg-port", "nope"])
    with pytest.raises(usage.UsageError):
        ManagementOptions(environ={}).parseOptions(["--bogus"])


def test_listen_error_messages():
    def err(code: int) -> str:
        cause = CannotListenError("", 443, OSError(code, os.strerror(code)))
        return str(ListenError(cause, "the public TCP listener", "--addr / NB_PROXY_ADDRESS"))

    assert "permission denied; run as root" in err(errno.EACCES)
    assert "choose a port >= 1024 with --addr / NB_PROXY_ADDRESS" in err(errno.EACCES)
    assert "not on this host; fix --addr" in err(errno.EADDRNOTAVAIL)
    assert "all interfaces port 443: already in use" in err(errno.EADDRINUSE)
    assert isinstance(ListenError(CannotListenError("", 1, OSError()), "x", "y"),
                      CannotListenError)


def test_usage_message_plain_wording():
    assert usage_message(usage.UsageError("option --x not recognized")) == "unknown option --x"
    assert usage_message(usage.UsageError("No such option 'y'")) == "unknown option --y"
    assert usage_message(usage.UsageError("a\n  b")) == "a b"


def test_help_has_an_environment_section(tmp_path):
    r = subprocess.run([TWISTD, "nbgateway", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=gateway_env(tmp_path))
    assert r.returncode == 0
    env_part = r.stdout.partition("Environment variables")[2]
    assert "  NB_PROXY_WG_PORT (same as --wg-port; default 51820)" in env_part
    assert "  NB_PROXY_TUNNEL_CACHE_TTL (environment only; default 5m)" in env_part
    r = subprocess.run([TWISTD, "nbmanagement", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=gateway_env(tmp_path))
    assert "  NB_MANAGEMENT_API_ADDR (same as --api-addr; default 127.0.0.1:33071)" in r.stdout


def test_busy_management_grpc_port(tmp_path):
    # grpcio reports no errno: the message still says why (the address is probed)
    with busy_tcp_port() as port:
        r = twistd(tmp_path, "nbmanagement", "--datadir", str(tmp_path / "m"), "--api-addr",
                   "127.0.0.1:0", "--grpc-addr", f"127.0.0.1:{port}")
    line = _one_failure_line(r, f"the management gRPC listener 127.0.0.1 port {port}: "
                                "already in use")
    assert "--grpc-addr / NB_MANAGEMENT_GRPC_ADDR" in line


def test_busy_health_port(tmp_path):
    with busy_tcp_port() as port:
        r = twistd(tmp_path, "nbgateway",
                   env=gateway_env(tmp_path, NB_PROXY_HEALTH_ADDRESS=f"127.0.0.1:{port}"))
    line = _one_failure_line(r, f"the health and metrics listener 127.0.0.1 port {port}: "
                                "already in use")
    assert "--health-addr / NB_PROXY_HEALTH_ADDRESS" in line


def test_embedded_plaintext_grpc_on_all_interfaces_is_one_line(tmp_path):
    # the embedded management refuses a non-loopback plaintext gRPC bind like
    # `twistd nbmanagement` does: one line naming the fix, usage status, no traceback
    env = dict(gateway_env(tmp_path), NB_MANAGEMENT_GRPC_ADDR=f"0.0.0.0:{free_port()}")
    r = twistd(tmp_path, "nbgateway", env=env)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text, text
    assert r.stderr.startswith("twistd nbgateway: error: refusing to serve gRPC in plaintext"), text
    assert "NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY=1" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
