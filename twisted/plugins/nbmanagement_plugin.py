"""twistd dropin: ``twistd -n nbmanagement --datadir DIR [--api-addr HOST:PORT] [--store-dsn DSN]``.

Nothing but the ServiceMaker; the heavy imports happen in ``makeService``.
"""

from twisted.application.service import ServiceMaker

nbmanagement = ServiceMaker(
    "nbgateway management",
    "nbgateway.management.tap",
    "nbgateway management service (REST API, store) for NetBird-style private services",
    "nbmanagement",
)
