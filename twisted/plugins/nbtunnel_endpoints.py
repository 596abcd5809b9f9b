"""twisted dropin: the ``nbtunnel:`` string endpoints (server and client).

``serverFromString(reactor, "nbtunnel:account=ID:port=443")`` listens on an
account's tunnel of a GatewayService running in this process,
``clientFromString(reactor, "nbtunnel:account=ID:host=100.64.0.5:port=80")``
dials through it; see :mod:`nbgateway.tunnels`.  Nothing heavy at import.
"""

from nbgateway.tunnels import ClientParser, ServerParser

nbtunnel_server = ServerParser()
nbtunnel_client = ClientParser()
