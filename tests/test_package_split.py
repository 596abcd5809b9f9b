"""nbgateway.config and nbgateway.service are packages: every name imported
from them elsewhere is still importable from the package, and the log lines of
their submodules keep the package's namespace (it is printed in every line)."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher


def test_config_names():
    import nbgateway.config as config
    from nbgateway.config import _parsers

    for name in config.__all__:
        assert hasattr(config, name), name
    # the parsers are the same objects under both paths
    assert config.parse_management_url is _parsers.parse_management_url
    assert config.HostPort is _parsers.HostPort
    assert config.load({}).addr == config.HostPort("", 443)


def test_service_names():
    from nbgateway.service import GatewayService, _CAConstraints
    from nbgateway.service._observers import CAConstraints

    assert _CAConstraints is CAConstraints
    assert GatewayService.__module__ == "nbgateway.service"


def test_submodule_log_namespaces():
    from nbgateway.service import _accounts, _directdial, _drain
    from nbgateway.service import log as service_log

    assert service_log.namespace == "nbgateway.service"
    for module in (_accounts, _directdial, _drain):
        assert module.log.namespace == "nbgateway.service", module.__name__

    from nbgateway.config import parse_cache_ttl

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert parse_cache_ttl("nonsense") == 300.0
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if e.get("log_level") is LogLevel.warn]
    assert [e["log_namespace"] for e in warned] == ["nbgateway.config"]
