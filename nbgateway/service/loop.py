"""Lean dispatch of ready descriptors for the gateway's epoll reactor.

Twisted's ``EPollReactor.doPoll`` runs every ready descriptor's
``doRead``/``doWrite`` (``_doReadOrWrite``) inside
``twisted.python.log.callWithLogger(selectable, ...)``: a ``logPrefix()``
call, a copy of the legacy log context dict, an update with
``{"system": prefix}`` and a push/pop of the context, about 1.1 us per event
against 0.04 us for the call itself.  Its only effect is the legacy
``system`` field of events logged *through* ``twisted.python.log`` while the
callback runs (and of the failure logged when the callback raises).  The
gateway logs with :mod:`twisted.logger`, whose events never read that
context.

:func:`install` replaces ``doIteration`` on one reactor instance (the
gateway's, at service start) with :func:`_lean_do_poll`: the same poll,
the same per-event work as ``_doReadOrWrite`` (disconnect on HUP/ERR once
the input is read, the ``fileno() == -1`` check, ``doRead`` then
``doWrite`` unless the read disconnected, any exception logged and the
descriptor disconnected, exceptions of the disconnect itself logged and
swallowed as ``callWithLogger`` does), without the context.  The
selectable's ``logPrefix()`` is asked only when a failure is logged, and
is that event's ``system``, as before.

What is lost: the ``system`` prefix (text log ``[HTTPChannel,3,10.0.0.1]``,
``[UDP (51820)]``) of *legacy* ``twisted.python.log`` events emitted inside
a read/write callback other than the dispatch's own failure (e.g. Twisted's
own ``log.msg`` calls in its transports); they show ``-``.

Fail safe: installed only on an instance whose type is exactly
:class:`twisted.internet.epollreactor.EPollReactor` with Twisted's own
``doPoll``/``_doReadOrWrite`` (not a subclass, not another reactor, not an
instance someone already patched), and not with ``NBGW_LEAN_DISPATCH=0``.
"""

from __future__ import annotations

import errno
import os
import sys
import types
from typing import Any

from twisted.logger import Logger
from twisted.python import failure
from twisted.python import log as legacy_log

try:
    from twisted.internet import epollreactor, posixbase
    from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
except ImportError:  # no epoll on this platform: nothing to replace
    epollreactor = posixbase = None  # type: ignore[assignment]

log = Logger()

#: the environment switch (``0``: keep Twisted's dispatch)
ENV = "NBGW_LEAN_DISPATCH"


def _log_failure(selectable: Any) -> None:
    """Log the exception being handled as ``callWithLogger`` would have: a
    legacy ``log.err`` event whose ``system`` is the selectable's prefix."""
    f = failure.Failure()
    try:
        prefix = selectable.logPrefix()
    except KeyboardInterrupt:
        raise
    except BaseException:
        prefix = "(buggy logPrefix method)"
        legacy_log.err(system=prefix)
    legacy_log.err(f, system=prefix)


def _lean_do_poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` with ``_doReadOrWrite`` inlined and no
    per-event log context (module doc)."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables  # the reactor's own dict, read per event
    reads = self._reads
    disconnected, poll_in, poll_out = self._POLL_DISCONNECTED, self._POLL_IN, self._POLL_OUT
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:  # removed by an earlier callback of this poll
            continue
        try:
            why = None
            in_read = False
            if event & disconnected and not event & poll_in:
                # hang-up or error with no input left: clean close if reading
                if fd in reads:
                    in_read = True
                    why = CONNECTION_DONE
                else:
                    why = CONNECTION_LOST
            else:
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        if event & poll_in:
                            why = selectable.doRead()
                            in_read = True
                        if not why and event & poll_out:
                            why = selectable.doWrite()
                            in_read = False
                except BaseException:
                    why = sys.exc_info()[1]
                    _log_failure(selectable)
            if why:
                self._disconnectSelectable(selectable, why, in_read)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _log_failure(selectable)


_NO_FILEDESC = getattr(posixbase, "_NO_FILEDESC", None)


def supported(reactor: Any) -> bool:
    """Is ``reactor`` Twisted's own epoll reactor, unmodified (module doc)?"""
    if epollreactor is None or _NO_FILEDESC is None:
        return False
    cls = epollreactor.EPollReactor
    if type(reactor) is not cls:
        return False
    if cls.doIteration is not cls.doPoll:
        return False
    if cls._doReadOrWrite is not posixbase._PollLikeMixin._doReadOrWrite:
        return False
    if cls._disconnectSelectable is not posixbase._DisconnectSelectableMixin._disconnectSelectable:
        return False
    own = vars(reactor)
    if "doIteration" in own and not installed(reactor):
        return False  # someone else's replacement: leave it alone
    return all(hasattr(reactor, name) for name in ("_poller", "_selectables", "_reads"))


def installed(reactor: Any) -> bool:
    """Does ``reactor`` dispatch with :func:`_lean_do_poll`?"""
    method = vars(reactor).get("doIteration") if hasattr(reactor, "__dict__") else None
    return getattr(method, "__func__", None) is _lean_do_poll


def install(reactor: Any) -> bool:
    """Make ``reactor`` dispatch ready descriptors without the per-event log
    context, if it is supported and ``NBGW_LEAN_DISPATCH`` is not ``0``;
    True when it does (also when it already did)."""
    if installed(reactor):
        return True
    if os.environ.get(ENV, "1") == "0":
        log.info("reactor dispatch: Twisted's ({env}=0)", env=ENV)
        return False
    if not supported(reactor):
        log.debug("reactor dispatch: Twisted's ({reactor} is not a plain EPollReactor)",
                  reactor=type(reactor).__qualname__)
        return False
    reactor.doIteration = types.MethodType(_lean_do_poll, reactor)
    log.info("reactor dispatch: lean (no legacy log context per ready descriptor)")
    return True


def uninstall(reactor: Any) -> None:
    """Give ``reactor`` Twisted's dispatch back (tests, benches)."""
    if installed(reactor):
        del reactor.doIteration
