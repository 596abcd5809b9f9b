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

Deferred TCP writers (``writes``, on unless ``NBGW_LEAN_WRITES=0``): a
connected ``tcp.Client``/``tcp.Server`` that starts writing
(``transport.write`` -> ``startWriting`` -> ``addWriter``) is not
registered with epoll (``epoll_ctl`` MOD to IN|OUT, an OUT event next
poll, ``epoll_ctl`` MOD back to IN once its buffer is empty: two syscalls
and one dispatched event per write burst); it is kept in an ordered set and
its ``doWrite`` runs once at the end of the current ``doIteration``, after
the poll's events (so every write of that turn leaves in one ``send``, as
before).  A writer whose ``doWrite`` could not send everything (a full
socket buffer: the send returns EAGAIN, ``doWrite`` keeps the rest) is then
registered with epoll exactly as Twisted would have, and everything after
that is Twisted's.  Writers added outside a poll's dispatch (by timers,
``callFromThread`` calls) make the next poll not sleep.  ``getWriters``
and ``removeAll`` include the deferred writers, ``removeWriter`` drops one
(a connection closed or aborted before its turn is not written).  A first
send that fails (reset, broken pipe) is not acted on: the writer goes to
epoll, whose next poll reads the input still queued first (the peer's early
answer before its reset), as Twisted does for a readable and writable
socket, and the write then fails there.  What
changes: the first send of a burst happens at the end of the turn that
wrote, not after the next poll (sooner; timers of the turn run after it,
not before), and on a socket that epoll did not report writable (a failed
send costs one syscall, the same as before for a full buffer).

The timers' share of a turn: Twisted's ``mainLoop`` calls
``runUntilCurrent`` and ``timeout`` before every poll, about 7,000
instructions together with nothing due (callgrind, 40 pending timers):
``_insertNewDelayedCalls`` twice, two clock reads and the checks for thread
calls, due timers, cancellations and a stop.  :func:`_lean_run_until_current`
answers the common case (no thread calls, no new or due timers, no stop, at
most 50 cancellations) with one clock read and returns, and hands anything
else to Twisted's own method; :func:`_lean_timeout` is Twisted's
``timeout`` with the new-timers check inline (about 4,300 instructions for
the two).  ``mainLoop`` itself keeps running (the service installs this
from inside it): both are looked up on the instance every turn.

Fail safe: installed only on an instance whose type is exactly
:class:`twisted.internet.epollreactor.EPollReactor` with Twisted's own
``doPoll``/``_doReadOrWrite``/``runUntilCurrent``/``timeout`` (not a
subclass, not another reactor, not an instance someone already patched),
and not with ``NBGW_LEAN_DISPATCH=0``.
"""

from __future__ import annotations

import errno
import os
import sys
import types
from typing import Any

from twisted.internet import base
from twisted.logger import Logger
from twisted.python import failure
from twisted.python import log as legacy_log

try:
    from twisted.internet import epollreactor, error, posixbase, tcp
    from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
except ImportError:  # no epoll on this platform: nothing to replace
    epollreactor = error = posixbase = tcp = None  # type: ignore[assignment]

log = Logger()

#: the environment switch (``0``: keep Twisted's dispatch)
ENV = "NBGW_LEAN_DISPATCH"
#: ``0``: the lean dispatch without deferred TCP writers
ENV_WRITES = "NBGW_LEAN_WRITES"


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


def _dispatch(self: Any, selectable: Any, fd: int, event: int) -> None:
    """``_doReadOrWrite`` inside ``callWithLogger``, without the context:
    one ready descriptor of a poll."""
    try:
        why = None
        in_read = False
        if event & self._POLL_DISCONNECTED and not event & self._POLL_IN:
            # hang-up or error with no input left: clean close if reading
            if fd in self._reads:
                in_read = True
                why = CONNECTION_DONE
            else:
                why = CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & self._POLL_IN:
                        why = selectable.doRead()
                        in_read = True
                    if not why and event & self._POLL_OUT:
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


def _lean_do_poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` without the per-event log context (module
    doc); then the first ``doWrite`` of the deferred writers."""
    if self._nbgw_pending:  # writers waiting (added by timers): no sleeping
        timeout = 0
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno != errno.EINTR:
            raise
        events = ()
    selectables = self._selectables  # the reactor's own dict, read per event
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:  # (None: removed by an earlier callback)
            _dispatch(self, selectable, fd, event)
    if self._nbgw_pending:
        _flush_writers(self)


#: Twisted's own (what :func:`_lean_run_until_current` hands the work to)
_RUN_UNTIL_CURRENT = base.ReactorBase.runUntilCurrent
_TIMEOUT = base.ReactorBase.timeout
#: epoll_wait's longest timeout in seconds (Twisted's ``timeout``)
_LONGEST = 2147483


def _lean_run_until_current(self: Any) -> None:
    """``ReactorBase.runUntilCurrent``, run by ``mainLoop`` before every
    poll: nothing to do without thread calls, new or due timers, a stop or
    more than 50 cancelled timers (Twisted's compaction threshold); anything
    else is Twisted's own method."""
    pending = self._pendingTimedCalls
    if (self.threadCallQueue or self._newTimedCalls or self._justStopped
            or self._cancellations > 50 or (pending and pending[0].time <= self.seconds())):
        _RUN_UNTIL_CURRENT(self)


def _lean_timeout(self: Any) -> float | None:
    """``ReactorBase.timeout`` (how long the poll may sleep), the new
    timers' check inline."""
    if self._newTimedCalls:
        self._insertNewDelayedCalls()
    pending = self._pendingTimedCalls
    if not pending:
        return None
    delay = pending[0].time - self.seconds()
    return 0 if delay < 0 else delay if delay < _LONGEST else _LONGEST


_TIMER_METHODS = {"runUntilCurrent": _lean_run_until_current, "timeout": _lean_timeout}


# -- deferred writers ----------------------------------------------------------------------


def _deferrable(writer: Any) -> bool:
    """A connected TCP transport (whose ``doWrite`` sends what it can and
    returns 0 bytes on EAGAIN), not connecting or aborted."""
    return (type(writer) in _TCP and writer.connected and "doWrite" not in vars(writer)
            and not writer.disconnected)


def _add_writer(self: Any, writer: Any) -> None:
    if writer in self._nbgw_pending or writer in self._nbgw_batch:
        return
    if writer is self._nbgw_trying:  # asks again during its own doWrite
        self._nbgw_wants = True
        return
    if _deferrable(writer) and writer.fileno() not in self._writes:
        self._nbgw_pending[writer] = None
        return
    type(self).addWriter(self, writer)


def _remove_writer(self: Any, writer: Any) -> None:
    if self._nbgw_pending.pop(writer, _ABSENT) is not _ABSENT:
        return
    if self._nbgw_batch.pop(writer, _ABSENT) is not _ABSENT:
        return
    if writer is self._nbgw_trying:
        self._nbgw_wants = False
        return
    type(self).removeWriter(self, writer)


def _deferred(self: Any) -> list:
    out = list(self._nbgw_pending) + list(self._nbgw_batch)
    if self._nbgw_trying is not None and self._nbgw_wants:
        out.append(self._nbgw_trying)
    return out


def _get_writers(self: Any) -> list:
    return type(self).getWriters(self) + _deferred(self)


def _remove_all(self: Any) -> list:
    removed = type(self).removeAll(self)
    deferred = _deferred(self)
    self._nbgw_pending = {}
    self._nbgw_batch = {}
    self._nbgw_wants = False
    return removed + [w for w in deferred if not any(w is r for r in removed)]


def _first_write(self: Any, writer: Any) -> None:
    """A deferred writer's first ``doWrite``: as :func:`_dispatch` with an
    OUT event, except when the send failed (``doWrite`` returned a
    ``ConnectionLost``: a reset, a broken pipe): the writer is then left to
    epoll, whose next poll reads the input still queued (the peer's last
    answer, its EOF) before the write fails again, in Twisted's order."""
    try:
        try:
            why = writer.doWrite() if writer.fileno() != -1 else _NO_FILEDESC
        except BaseException:
            why = sys.exc_info()[1]
            _log_failure(writer)
        else:
            if isinstance(why, error.ConnectionLost):
                self._nbgw_wants = True
                return
        if why:
            self._disconnectSelectable(writer, why, False)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _log_failure(writer)


def _flush_writers(self: Any) -> None:
    """The first ``doWrite`` of every writer added since the last poll, in
    the order they asked; one that could not send everything (or asked to
    write again during it) is then registered with epoll as Twisted would
    have from the start.  Writers added meanwhile wait for the next turn."""
    batch = self._nbgw_batch = self._nbgw_pending
    self._nbgw_pending = {}
    add = type(self).addWriter
    try:
        while batch:
            writer = next(iter(batch))
            del batch[writer]
            if writer.disconnected:  # lost meanwhile without removeWriter: nothing to do
                continue
            self._nbgw_trying = writer
            self._nbgw_wants = True
            _first_write(self, writer)
            self._nbgw_trying = None
            if self._nbgw_wants:
                try:
                    add(self, writer)
                except BaseException:  # an unregistrable descriptor: as a failed write
                    _log_failure(writer)
                    self._disconnectSelectable(writer, sys.exc_info()[1], False)
    finally:
        self._nbgw_trying = None
        self._nbgw_wants = False
        if batch:  # KeyboardInterrupt: the rest waits for the next turn
            self._nbgw_pending = {**batch, **self._nbgw_pending}
        self._nbgw_batch = {}


_NO_FILEDESC = getattr(posixbase, "_NO_FILEDESC", None)
_TCP = (tcp.Client, tcp.Server) if tcp is not None else ()
_ABSENT = object()

#: the reactor methods replaced, and what replaces them with ``writes``
_WRITER_METHODS = {"addWriter": _add_writer, "removeWriter": _remove_writer,
                   "getWriters": _get_writers, "removeAll": _remove_all}
_STATE = ("_nbgw_pending", "_nbgw_batch", "_nbgw_trying", "_nbgw_wants")


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
    if cls.runUntilCurrent is not _RUN_UNTIL_CURRENT or cls.timeout is not _TIMEOUT:
        return False
    own = vars(reactor)
    if not installed(reactor) and any(name in own for name in ("doIteration", *_WRITER_METHODS,
                                                               *_TIMER_METHODS)):
        return False  # someone else's replacement: leave it alone
    return all(hasattr(reactor, name) for name in ("_poller", "_selectables", "_reads",
                                                     "_writes"))


def installed(reactor: Any) -> bool:
    """Does ``reactor`` dispatch with :func:`_lean_do_poll`?"""
    method = vars(reactor).get("doIteration") if hasattr(reactor, "__dict__") else None
    return getattr(method, "__func__", None) is _lean_do_poll


def defers_writes(reactor: Any) -> bool:
    """Does ``reactor`` defer its TCP writers (:func:`install` ``writes``)?"""
    method = vars(reactor).get("addWriter") if hasattr(reactor, "__dict__") else None
    return getattr(method, "__func__", None) is _add_writer


def install(reactor: Any, writes: bool | None = None) -> bool:
    """Make ``reactor`` dispatch ready descriptors without the per-event log
    context, if it is supported and ``NBGW_LEAN_DISPATCH`` is not ``0``;
    True when it does (also when it already did).  ``writes`` (None: on
    unless ``NBGW_LEAN_WRITES=0``) also defers TCP writers (module doc)."""
    if installed(reactor):
        return True
    if os.environ.get(ENV, "1") == "0":
        log.info("reactor dispatch: Twisted's ({env}=0)", env=ENV)
        return False
    if not supported(reactor):
        log.debug("reactor dispatch: Twisted's ({reactor} is not a plain EPollReactor)",
                  reactor=type(reactor).__qualname__)
        return False
    if writes is None:
        writes = os.environ.get(ENV_WRITES, "1") != "0"
    reactor._nbgw_pending = {}
    reactor._nbgw_batch = {}
    reactor._nbgw_trying = None
    reactor._nbgw_wants = False
    if writes and _TCP:
        for name, func in _WRITER_METHODS.items():
            setattr(reactor, name, types.MethodType(func, reactor))
    for name, func in _TIMER_METHODS.items():
        setattr(reactor, name, types.MethodType(func, reactor))
    reactor.doIteration = types.MethodType(_lean_do_poll, reactor)
    log.info("reactor dispatch: lean (no legacy log context per ready descriptor; "
             "TCP writers deferred: {writes})", writes=bool(writes and _TCP))
    return True


def uninstall(reactor: Any) -> None:
    """Give ``reactor`` Twisted's dispatch back (tests, benches): deferred
    writers are registered with epoll as Twisted would have."""
    if not installed(reactor):
        return
    deferred = _deferred(reactor)
    for name in ("doIteration", *_WRITER_METHODS, *_TIMER_METHODS, *_STATE):
        vars(reactor).pop(name, None)
    for writer in deferred:
        reactor.addWriter(writer)
