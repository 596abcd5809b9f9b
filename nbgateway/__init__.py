"""nbgateway: a Twisted gateway for NetBird-style private services.

Data flows one way: UDP -> WireGuard -> netstack -> Twisted transports -> TLS/HTTP
-> auth -> reverse proxy / L4 relay -> upstream dialers.  The management client
and the mapping store sit to the side behind the interfaces in
:mod:`nbgateway.interfaces`.

Library use (an existing Twisted host; nothing global is touched: no log
observers, no signal handlers, no reactor installation)::

    from nbgateway import load_config, makeGateway

    config = load_config({"domain": "gw.example", "wg_port": "51820"}, os.environ)
    makeGateway(config, reactor=my_reactor).setServiceParent(my_application)

The public names below are imported lazily, so ``import nbgateway`` stays
cheap (no reactor import, no gRPC).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["GatewayService", "__version__", "build_gateway", "load_config", "makeGateway"]

_LAZY = {
    "build_gateway": ("nbgateway.tap", "build_gateway"),
    "makeGateway": ("nbgateway.tap", "build_gateway"),
    "GatewayService": ("nbgateway.service", "GatewayService"),
    "load_config": ("nbgateway.config", "load"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbgateway' has no attribute {name!r}") from None
    from importlib import import_module

    return getattr(import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
