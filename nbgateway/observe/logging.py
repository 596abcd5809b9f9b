"""Log observers, level filtering and secret redaction.

Observers (nothing here touches global logging; callers install them):

* :class:`JSONLinesObserver` -- one JSON object per line, no ASCII RS prefix
  (unlike ``jsonFileLogObserver``): ``time`` (RFC 3339 UTC), ``level``,
  ``namespace``, ``msg`` (the formatted message), then the event's own
  structured fields; a failure becomes ``error`` (its traceback, escaped).
  Values that are not JSON become their ``repr`` -- except protobuf
  ``ProxyMapping`` objects, which are always rendered redacted (in fields and
  in the message; the text observers get the same via :class:`RedactingObserver`).
* :func:`make_observer` -- ``text`` or ``json`` observer behind a level filter.
* :func:`jsonObserverFactory` / :func:`textObserverFactory` -- zero-argument
  factories for ``twistd --logger=nbgateway.observe.logging.jsonObserverFactory``;
  their level comes from :data:`PROCESS_LEVEL`, which the application may
  change after parsing its flags (:meth:`LevelFilter.set`).
* :func:`filter_twistd_logs` -- for a twistd plugin's ``makeService``: the
  Application's log observer becomes the one twistd would have built (``-l
  FILE``, stdout, ``--syslog``; JSON lines on the same destination for
  ``json``), behind :data:`PROCESS_LEVEL` and redaction, so the level applies
  to every destination.

Redaction: a ``ProxyMapping`` is rendered only through the one redaction of
:mod:`nbgateway.routes.redaction` (:class:`~nbgateway.routes.redaction.LazyRedacted`
defers it until an observer actually formats the event, so a filtered-out
debug line costs nothing); :func:`redact_event` wraps raw mappings logged by
mistake.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.redaction import LazyRedacted, redacted_json

#: Upstream (logrus) level names -> twisted.logger levels.
LEVELS: dict[str, LogLevel] = {
    "panic": LogLevel.critical,
    "fatal": LogLevel.critical,
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
    "trace": LogLevel.debug,
}

# Keys of legacy (twisted.python.log) events that formatEvent already covers.
_SKIP = frozenset({"format", "message", "isError", "system", "why", "failure", "time"})


def log_level(name: str) -> LogLevel:
    """The twisted level for an upstream level name; ValueError if unknown."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


# -- redaction ----------------------------------------------------------------------------


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """``event``, or a shallow copy in which raw ``ProxyMapping`` field values are
    wrapped in :class:`LazyRedacted` (so neither the message nor the fields can
    carry a mapping's secrets, even when one is logged by mistake)."""
    if not any(isinstance(v, pb.ProxyMapping) for v in event.values()):
        return event
    return {k: LazyRedacted(v) if isinstance(v, pb.ProxyMapping) else v
            for k, v in event.items()}


@implementer(ILogObserver)
class RedactingObserver:
    """Applies :func:`redact_event` before handing events to ``observer``."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        self._observer(redact_event(event))


# -- JSON lines -----------------------------------------------------------------------------


def _fallback(value: Any) -> Any:
    if isinstance(value, pb.ProxyMapping):
        return json.loads(redacted_json(value))
    if isinstance(value, LazyRedacted):
        return json.loads(str(value))
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _rfc3339(t: float) -> str:
    whole = int(t)
    millis = int((t - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def event_as_json(event: dict[str, Any]) -> str:
    """One JSON line (without the newline) for a twisted.logger event."""
    event = redact_event(event)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _rfc3339(event.get("log_time") or time.time()),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in record:
            continue
        record[key] = value
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        try:
            record["error"] = failure.getTraceback()
        except Exception:
            record["error"] = repr(failure)
    try:
        return json.dumps(record, default=_fallback, ensure_ascii=False)
    except (TypeError, ValueError):  # e.g. a circular structure in a field
        safe = {k: record[k] for k in ("time", "level", "namespace", "msg")}
        safe["unserializable_fields"] = sorted(set(record) - set(safe))
        return json.dumps(safe, ensure_ascii=False)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON line to ``out`` (flushed per line)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(event_as_json(event) + "\n")
        self._out.flush()


# -- level filter and factories -----------------------------------------------------------


class LevelFilter:
    """A mutable minimum-level predicate for :class:`FilteringLogObserver`."""

    def __init__(self, level: str | LogLevel = "info") -> None:
        self.level = LogLevel.info
        self.set(level)

    def set(self, level: str | LogLevel) -> None:
        self.level = level if isinstance(level, type(LogLevel.info)) else log_level(level)

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return PredicateResult.no
        return PredicateResult.maybe


def make_observer(fmt: str, level: str | LogLevel = "info",
                  out: IO[str] | None = None) -> ILogObserver:
    """A ``text`` or ``json`` observer on ``out`` (default stdout) behind a
    :class:`LevelFilter`."""
    stream = sys.stdout if out is None else out
    if fmt == "json":
        base: ILogObserver = JSONLinesObserver(stream)
    elif fmt == "text":
        base = RedactingObserver(textFileLogObserver(stream))
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    return FilteringLogObserver(base, [LevelFilter(level)])


def _level_from_env() -> LogLevel:
    if os.environ.get("NB_PROXY_DEBUG_LOGS", "").lower() in ("1", "t", "true"):
        return LogLevel.debug
    try:
        return log_level(os.environ.get("NB_PROXY_LOG_LEVEL", "info"))
    except ValueError:
        return LogLevel.info


#: The level used by the ``twistd --logger`` factories below.
PROCESS_LEVEL = LevelFilter(_level_from_env())


def jsonObserverFactory() -> ILogObserver:
    """JSON lines on stdout, filtered by :data:`PROCESS_LEVEL`."""
    return FilteringLogObserver(JSONLinesObserver(sys.stdout), [PROCESS_LEVEL])


def textObserverFactory() -> ILogObserver:
    """Text lines on stdout, filtered by :data:`PROCESS_LEVEL`."""
    return FilteringLogObserver(RedactingObserver(textFileLogObserver(sys.stdout)),
                                [PROCESS_LEVEL])


def filter_twistd_logs(service: Any, fmt: str, server_options: Any) -> None:
    """Make twistd log through :data:`PROCESS_LEVEL` whatever the destination.

    twistd's AppLogger uses the Application's ``ILogObserver`` component when
    no ``--logger`` is given; it is set when twistd attaches ``service`` (or
    the service wrapping it) to its Application, before logging starts:

    * ``json``: JSON lines on twistd's log destination (``-l FILE``, else stdout);
    * ``text``: the observer twistd itself would build (``-l FILE`` with
      SIGUSR1 rotation, stdout, ``--syslog``), redacted; only under twistd
      (``server_options``, the parent ``ServerOptions``, given), so a plain
      ``Options`` parse leaves twistd's defaults alone.

    With ``--logger`` nothing is changed (the factories above filter already).
    """
    if server_options is not None and server_options.get("logger"):
        return
    if fmt != "json" and server_options is None:
        return

    def hook(svc: Any) -> None:
        attach = svc.setServiceParent

        def set_service_parent(parent: Any) -> Any:
            set_component = getattr(parent, "setComponent", None)
            if set_component is not None:
                set_component(ILogObserver, _twistd_observer(fmt, server_options))
            else:  # a wrapping service: it meets the Application later
                hook(parent)
            return attach(parent)

        svc.setServiceParent = set_service_parent

    hook(service)


def _twistd_observer(fmt: str, server_options: Any) -> ILogObserver:
    logfilename = (server_options or {}).get("logfile") or ""
    if fmt == "json":
        if logfilename and logfilename != "-":
            from twisted.python.logfile import LogFile

            out: Any = LogFile.fromFullPath(logfilename)
        else:
            out = sys.stdout
        return FilteringLogObserver(JSONLinesObserver(out), [PROCESS_LEVEL])
    try:
        from twisted.scripts._twistd_unix import UnixAppLogger as AppLogger
    except ImportError:  # pragma: no cover - not posix
        from twisted.application.app import AppLogger  # type: ignore[assignment]
    base = AppLogger(server_options)._getLogObserver()
    if not ILogObserver.providedBy(base):  # syslog: a legacy observer
        base = LegacyLogObserverWrapper(base)
    return FilteringLogObserver(RedactingObserver(base), [PROCESS_LEVEL])
