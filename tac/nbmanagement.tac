# -*- mode: python -*-
"""The nbgateway management service as a twistd application file:
``twistd -ny tac/nbmanagement.tac``.

Settings come from the ``NB_MANAGEMENT_*`` environment variables (the same as
``twistd nbmanagement --help``): ``NB_MANAGEMENT_DATADIR`` (default
``./nbgateway-data``; SQLite store and ``admin-token``),
``NB_MANAGEMENT_API_ADDR`` (REST, default 127.0.0.1:33071),
``NB_MANAGEMENT_GRPC_ADDR`` (gRPC for proxies and peers, default
127.0.0.1:33073), ``NB_MANAGEMENT_STORE_DSN`` (PostgreSQL instead of SQLite),
``NB_MANAGEMENT_GRPC_CERT``/``NB_MANAGEMENT_GRPC_KEY`` (TLS for gRPC).
Logging: text lines on stdout via nbgateway's observer (``NB_MANAGEMENT_LOG_FORMAT``
text or json, ``NB_MANAGEMENT_LOG_LEVEL``).
"""

import os

from twisted.application import service
from twisted.logger import ILogObserver

from nbgateway.management.tap import Options, makeService
from nbgateway.observe.logging import make_observer

options = Options(os.environ)
options.parseOptions([])  # validates the environment like the twistd plugin does

application = service.Application("nbmanagement")
application.setComponent(ILogObserver, make_observer(
    os.environ.get("NB_MANAGEMENT_LOG_FORMAT", "text"),
    os.environ.get("NB_MANAGEMENT_LOG_LEVEL", "info")))

makeService(options).setServiceParent(application)
