"""twistd dropin: ``twistd -n nbgateway [options]`` (see ``twistd nbgateway --help``).

Nothing but the ServiceMaker; the heavy imports happen in ``makeService``.
A port that cannot be bound at start is one log line and exit status 1
(:mod:`nbgateway.startup`), not a traceback.  :class:`ListenFailureServiceMaker`
also serves the ``nbmanagement`` dropin (``nbmanagement_plugin.py``).
"""

from twisted.application.service import ServiceMaker


class ListenFailureServiceMaker(ServiceMaker):
    """A ServiceMaker whose service exits with one log line when a port
    cannot be bound (:func:`nbgateway.startup.exit_on_listen_failure`)."""

    @property
    def makeService(self):
        from nbgateway.startup import exit_on_listen_failure

        return exit_on_listen_failure(super().makeService)


nbgateway = ListenFailureServiceMaker(
    "nbgateway",
    "nbgateway.tap",
    "Gateway for NetBird-style private services over userspace WireGuard",
    "nbgateway",
)
