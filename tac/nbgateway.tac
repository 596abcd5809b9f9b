# -*- mode: python -*-
"""nbgateway as a twistd application file: ``twistd -ny tac/nbgateway.tac``.

Settings come from the ``NB_PROXY_*`` environment variables (the same table as
``twistd nbgateway --help``; a .tac has no command-line flags), e.g.::

    NB_PROXY_ADDRESS=:8443 NB_PROXY_PRIVATE=true twistd -ny tac/nbgateway.tac

Without ``NB_PROXY_MANAGEMENT_ADDRESS`` the management service runs
in-process (SQLite in ``NB_PROXY_DATADIR``, default ``./nbgateway-data``).
Logging goes to stdout through nbgateway's observer (``NB_PROXY_LOG_FORMAT``
text or json, ``NB_PROXY_LOG_LEVEL``), installed as the application's
``ILogObserver`` component, which twistd uses when no ``--logger`` is given.
Unlike ``twistd nbgateway`` this file installs no SIGHUP handler; add one here
if you want certificate reloads on SIGHUP (``gateway.reload()``).
"""

import os

from twisted.application import service
from twisted.logger import ILogObserver

from nbgateway import load_config, makeGateway
from nbgateway.observe.logging import make_observer

config = load_config({}, os.environ)

application = service.Application("nbgateway")
application.setComponent(
    ILogObserver, make_observer(config.log_format, config.effective_log_level))

gateway = makeGateway(config)
gateway.setServiceParent(application)
