"""twistd dropin: ``twistd -n nbgateway [options]`` (see ``twistd nbgateway --help``).

Nothing but the ServiceMaker; the heavy imports happen in ``makeService``.
"""

from twisted.application.service import ServiceMaker

nbgateway = ServiceMaker(
    "nbgateway",
    "nbgateway.tap",
    "Gateway for NetBird-style private services over userspace WireGuard",
    "nbgateway",
)
