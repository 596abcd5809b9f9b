"""One-line startup failures for the twistd plugins (``nbgateway``,
``nbmanagement``).

Owns what an operator sees when a process cannot start:

* :class:`OneLineUsage`, a mixin for plugin ``Options``: under twistd a bad
  flag is one line on stderr (``twistd nbgateway: error: --wg-port: ...;
  see 'twistd nbgateway --help'``) and exit status 2, instead of twistd's
  whole help text followed by the error.  Used directly (no twistd parent),
  the options still raise :class:`~twisted.python.usage.UsageError`.
* :class:`ListenError` (a :class:`~twisted.internet.error.CannotListenError`),
  raised where a service binds, whose message names the port, the flag and
  environment variable that set it, and the fix.
* :func:`exit_on_listen_failure`, used by the twistd dropins: the service
  they build logs a :class:`ListenError` as one critical line and exits
  with status 1 instead of a traceback; :func:`bind_failure` builds one for
  listeners bound by libraries that report no errno (grpcio).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

log = Logger()

#: exit status of a usage error (bad flag) and of a failure to start
USAGE_EXIT = 2
FAILURE_EXIT = 1


def usage_message(exc: BaseException) -> str:
    """One line for a getopt/UsageError message (getopt's wording made plain)."""
    text = " ".join(str(exc).split())
    if text.startswith("option ") and text.endswith(" not recognized"):
        return f"unknown option {text[len('option '):-len(' not recognized')]}"
    if text.startswith("No such option "):
        return f"unknown option --{text[len('No such option '):].strip(chr(39))}"
    return text


class OneLineUsage:
    """Mixin for ``usage.Options`` subclasses run as twistd subcommands."""

    parent: Any

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[misc]
        except usage.UsageError as exc:
            parent = getattr(self, "parent", None)
            if parent is None:
                raise
            name = f"twistd {getattr(parent, 'subCommand', None) or ''}".strip()
            sys.stderr.write(f"{name}: error: {usage_message(exc)}; see '{name} --help'\n")
            raise SystemExit(USAGE_EXIT) from None


class ConfigurationError(ValueError):
    """A setting that cannot work, found while building services (before
    anything listens): under twistd its message is one line on stderr and the
    usage exit status, not a traceback (:func:`exit_on_listen_failure`)."""


class ListenError(CannotListenError):
    """A bind failure with a one-line explanation for the operator."""

    def __init__(self, cause: CannotListenError, what: str, setting: str):
        super().__init__(cause.interface, cause.port, cause.socketError)
        self.what = what
        self.setting = setting

    def __str__(self) -> str:
        err = self.socketError
        code = getattr(err, "errno", None)
        where = f"{self.interface or 'all interfaces'} port {self.port}"
        if code == errno.EADDRINUSE:
            return (f"cannot listen on {self.what} {where}: already in use by another "
                    f"process; stop it or choose another port with {self.setting}")
        if code in (errno.EACCES, errno.EPERM):
            return (f"cannot listen on {self.what} {where}: permission denied; run as root "
                    f"(or grant CAP_NET_BIND_SERVICE) or choose a port >= 1024 with "
                    f"{self.setting}")
        if code == errno.EADDRNOTAVAIL:
            return (f"cannot listen on {self.what} {where}: the address is not on this host; "
                    f"fix {self.setting}")
        reason = getattr(err, "strerror", None) or str(err)
        return f"cannot listen on {self.what} {where}: {reason}; check {self.setting}"


def listen_failed(exc: BaseException, what: str, setting: str) -> BaseException:
    """``exc`` as a :class:`ListenError` when it is a bind failure."""
    if isinstance(exc, CannotListenError) and not isinstance(exc, ListenError):
        return ListenError(exc, what, setting)
    return exc


def bind_failure(address: str, what: str, setting: str) -> ListenError:
    """A :class:`ListenError` for ``HOST:PORT`` bound by a library that
    reports no errno (grpcio): bind it once more here to learn why."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    port = int(port_text) if port_text.isdigit() else 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    code = errno.EADDRINUSE
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as exc:
        code = exc.errno or code
    cause = CannotListenError(host, port, OSError(code, os.strerror(code)))
    return ListenError(cause, what, setting)


class _ExitOnListenFailure(MultiService):
    """Parent of the twistd-built service: a bind failure at start is one
    critical log line and exit status 1."""

    def __init__(self, service: Any):
        super().__init__()
        self.name = f"{getattr(service, 'name', None) or 'service'}-startup"
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as exc:
            log.critical("{message}", message=str(exc))
            raise SystemExit(FAILURE_EXIT) from None

    def startService(self) -> None:  # some listeners (gRPC) bind when started
        try:
            super().startService()
        except ListenError as exc:
            log.critical("{message}", message=str(exc))
            raise SystemExit(FAILURE_EXIT) from None


def exit_on_listen_failure(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a tap module's ``makeService`` for twistd."""

    def makeService(options: Any) -> Any:
        try:
            built = make(options)
        except ConfigurationError as exc:
            parent = getattr(options, "parent", None)
            name = f"twistd {getattr(parent, 'subCommand', None) or ''}".strip()
            sys.stderr.write(f"{name}: error: {' '.join(str(exc).split())}\n")
            raise SystemExit(USAGE_EXIT) from None
        return _ExitOnListenFailure(built)

    return makeService
