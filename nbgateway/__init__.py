"""nbgateway: a Twisted gateway for NetBird-style private services.

Data flows one way: UDP -> WireGuard -> netstack -> Twisted transports -> TLS/HTTP
-> auth -> reverse proxy / L4 relay -> upstream dialers.  The management client
and the mapping store sit to the side behind the interfaces in
:mod:`nbgateway.interfaces`.
"""

__version__ = "0.1.0"
