"""The gRPC listener of ``twistd nbmanagement`` is loopback by default and never
plaintext on another address unless explicitly allowed (issue 11.4)."""

from __future__ import annotations

import pytest
from twisted.python import usage

from nbgateway.management.grpcserver import (
    DEFAULT_GRPC_ADDR,
    ProxyGrpcService,
    grpc_bind_address,
    is_loopback_bind,
)
from nbgateway.management.service import ManagementService
from nbgateway.management.tap import Options


def parse(args: list[str], environ: dict[str, str] | None = None) -> Options:
    opts = Options(environ=environ or {})
    opts.parseOptions(args)
    return opts


def test_default_is_loopback() -> None:
    assert DEFAULT_GRPC_ADDR == "127.0.0.1:33073"
    opts = parse([])
    assert opts["grpc-addr"] == "127.0.0.1:33073" and not opts["grpc-insecure-bind-any"]
    assert "default: 127.0.0.1:33073]" in " ".join(str(opts).split())  # --help says so


@pytest.mark.parametrize("addr", ["127.0.0.1:1", "127.9.9.9:2", "[::1]:3", "localhost:4"])
def test_loopback_plaintext_is_fine(addr: str) -> None:
    assert is_loopback_bind(grpc_bind_address(addr))
    assert parse(["--grpc-addr", addr])["grpc-addr"] == addr


@pytest.mark.parametrize("addr", [":33073", "0.0.0.0:1", "[::]:2", "198.18.0.1:3",
                                  "mgmt.example:4", "[::ffff:127.0.0.1]:5"])
def test_non_loopback_plaintext_is_refused(addr: str) -> None:
    with pytest.raises(usage.UsageError, match="refusing to serve gRPC in plaintext"):
        parse(["--grpc-addr", addr])
    with pytest.raises(ValueError, match="refusing"):
        ProxyGrpcService(store=object(), addr=addr)


def test_explicitly_allowed_by_flag_env_or_tls(tmp_path) -> None:
    assert parse(["--grpc-addr", ":1", "--grpc-insecure-bind-any"])["grpc-insecure-bind-any"]
    env = {"NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY": "true", "NB_MANAGEMENT_GRPC_ADDR": ":1"}
    assert parse([], env)["grpc-insecure-bind-any"]
    assert not parse([], {"NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY": "0"})["grpc-insecure-bind-any"]
    tls = parse(["--grpc-addr", ":1", "--grpc-cert", "c.pem", "--grpc-key", "k.pem"])
    assert not tls["grpc-insecure-bind-any"]
    svc = ManagementService(datadir=str(tmp_path), grpc_addr="0.0.0.0:0",
                            grpc_insecure_bind_any=True)
    assert svc.grpc.bind_address == "0.0.0.0:0"


def test_library_use_reads_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY", raising=False)
    with pytest.raises(ValueError, match="refusing"):
        ManagementService(datadir=str(tmp_path), grpc_addr=":0")
    monkeypatch.setenv("NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY", "1")
    assert ManagementService(datadir=str(tmp_path), grpc_addr=":0").grpc is not None
