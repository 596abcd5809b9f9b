"""Settings that must reach the objects ``twistd nbgateway`` builds (issue 11.9)."""

from __future__ import annotations

from nbgateway.mgmt.client import BATCH_WATCHDOG
from nbgateway.tap import Options, build_gateway


def build(environ: dict[str, str], tmp_path) -> object:
    opts = Options(environ={"NB_PROXY_TOKEN": "secret", **environ})
    opts.parseOptions(["--mgmt", "http://127.0.0.1:1", "--domain", "gw.example",
                       "--datadir", str(tmp_path)])
    return build_gateway(opts.config)


def test_mapping_batch_watchdog_reaches_the_management_client(tmp_path) -> None:
    svc = build({"NB_PROXY_MAPPING_BATCH_WATCHDOG": "7s"}, tmp_path)
    assert svc.mgmt.batch_watchdog == 7.0
    assert build({"NB_PROXY_MAPPING_BATCH_WATCHDOG": "1m30s"}, tmp_path).mgmt.batch_watchdog == 90
    assert build({}, tmp_path).mgmt.batch_watchdog == BATCH_WATCHDOG == 120.0


def test_embedded_client_gets_it_too(tmp_path) -> None:
    opts = Options(environ={"NB_PROXY_MAPPING_BATCH_WATCHDOG": "3s"})
    opts.parseOptions(["--datadir", str(tmp_path / "data")])
    svc = build_gateway(opts.config, environ={"NB_MANAGEMENT_GRPC_ADDR": "127.0.0.1:40001"})
    assert svc.mgmt.batch_watchdog == 3.0
