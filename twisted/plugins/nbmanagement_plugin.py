"""twistd dropin: ``twistd -n nbmanagement --datadir DIR [--api-addr HOST:PORT] [--store-dsn DSN]``.

Nothing but the ServiceMaker (the ``nbgateway`` dropin's class); the heavy
imports happen in ``makeService``.  A port that cannot be bound at start is
one log line and exit status 1 (:mod:`nbgateway.startup`), not a traceback.
"""

from twisted.plugins.nbgateway_plugin import ListenFailureServiceMaker

nbmanagement = ListenFailureServiceMaker(
    "nbgateway management",
    "nbgateway.management.tap",
    "nbgateway management service (REST API, store) for NetBird-style private services",
    "nbmanagement",
)
