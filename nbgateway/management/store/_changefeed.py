"""Change notifications between management replicas through PostgreSQL LISTEN/NOTIFY.

Several ``twistd nbmanagement`` processes may share one PostgreSQL database.
Each one's store listeners (the gateways' mapping broadcaster, the peer-channel
hub) must hear about changes written through any of them, so:

* every write transaction on PostgreSQL sends its changes with ``pg_notify``
  on :data:`CHANNEL` before it commits (:func:`payloads`); PostgreSQL delivers
  them at commit, only if the transaction commits, in commit order;
* :class:`ChangeFeed` holds one ``LISTEN`` connection per process in one daemon
  thread and hands every change that another process (another ``origin``)
  wrote to the store's listeners, exactly as a local commit does; the
  process's own notifications are skipped (its listeners already ran).

Payloads are JSON ``{"o": origin, "c": [[kind, account, [ids...]], ...]}``,
split so that each stays below PostgreSQL's 8000-byte limit. A malformed
payload is counted and dropped. When the listening connection is lost, the
feed reconnects with backoff and then announces every service of every
account as updated and every account as changed (notifications sent while it
was away are lost with the connection), so listeners re-read the state.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.logger import Logger

from nbgateway.management.model import ChangeKind

log = Logger()

CHANNEL = "nbgw_changes"
#: PostgreSQL refuses payloads of 8000 bytes or more
MAX_PAYLOAD = 7000

Change = tuple[ChangeKind, str, tuple[str, ...]]


def payloads(origin: str, changes: list[Change]) -> Iterator[str]:
    """JSON payloads carrying ``changes``, each under :data:`MAX_PAYLOAD` bytes."""
    batch: list[list[Any]] = []
    size = 0
    for kind, account_id, ids in changes:
        chunk: list[str] = []
        chunk_size = 0
        pieces: list[list[str]] = []
        for i in ids:
            if chunk and chunk_size + len(i) + 4 > MAX_PAYLOAD // 2:
                pieces.append(chunk)
                chunk, chunk_size = [], 0
            chunk.append(i)
            chunk_size += len(i) + 4
        pieces.append(chunk)
        for piece in pieces:
            entry = [str(kind), account_id, piece]
            n = len(json.dumps(entry)) + 1
            if batch and size + n > MAX_PAYLOAD:
                yield json.dumps({"o": origin, "c": batch}, separators=(",", ":"))
                batch, size = [], 0
            batch.append(entry)
            size += n
    if batch:
        yield json.dumps({"o": origin, "c": batch}, separators=(",", ":"))


def parse(payload: str) -> tuple[str, list[Change]] | None:
    """``(origin, changes)`` of a payload; None when it is not one of ours."""
    try:
        doc = json.loads(payload)
        origin = doc["o"]
        out: list[Change] = []
        for kind, account_id, ids in doc["c"]:
            if not isinstance(account_id, str) or not all(isinstance(i, str) for i in ids):
                return None
            out.append((ChangeKind(kind), account_id, tuple(ids)))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(origin, str):
        return None
    return origin, out


class ChangeFeed:
    """One LISTEN connection in one thread, feeding another replica's changes to
    ``deliver`` (the store's listener fan-out); ``resync()`` after a reconnect."""

    def __init__(
        self,
        conninfo: str,
        origin: str,
        deliver: Callable[[list[Change]], None],
        resync: Callable[[], None],
        *,
        connect: Callable[[str], Any] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.origin = origin
        self._deliver = deliver
        self._resync = resync
        self._connect = connect or _psycopg_connect
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: notifications applied / dropped as malformed; (re)connections made
        self.received = 0
        self.malformed = 0
        self.connections = 0
        self.listening = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="nbmanagement-change-feed", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def handle(self, payload: str) -> None:
        """Apply one notification payload (another origin's changes only)."""
        parsed = parse(payload)
        if parsed is None:
            self.malformed += 1
            log.warn("change feed: malformed notification dropped ({n} so far)",
                     n=self.malformed)
            return
        origin, changes = parsed
        if origin == self.origin:
            return
        self.received += 1
        self._deliver(changes)

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                conn = self._connect(self.conninfo)
            except Exception as exc:
                log.warn("change feed: cannot connect ({error}); retrying in {delay:.1f} s",
                         error=type(exc).__name__, delay=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                self.connections += 1
                if self.connections > 1:
                    log.info("change feed: listening again; resynchronising listeners")
                    self._resync()
                self.listening.set()
                delay = 0.2
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        try:
                            self.handle(note.payload)
                        except Exception:
                            log.failure("change feed: delivering a notification failed")
            except Exception as exc:
                self.listening.clear()
                log.warn("change feed: connection lost ({error})", error=type(exc).__name__)
                time.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()


def _psycopg_connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
