"""grpcio <-> reactor bridge: the only module in nbgateway that knows threads.

Two kinds of multicallable are accepted, told apart by type:

* **grpcio's asyncio API** (``grpc.aio`` channels: what
  :func:`nbgateway.mgmt.session.make_channel` builds for the gateway).  Every
  call of every bridge runs as a coroutine on ONE process-wide event loop
  thread (:func:`aio_loop`, thread ``nbgw-grpc-aio``), next to grpcio's one
  completion-queue poller thread: no thread per stream, per account or per
  RPC, so a gateway serving a thousand accounts (a peer-channel stream each)
  has the same threads as one serving one account.  Results hop to the
  reactor with ``callFromThread``; credit (the one-message-in-flight rule
  below) and requests hop to the loop with ``call_soon_threadsafe``.  A
  unary call (:class:`_AioUnary`) is one hop each way and, on the loop, the
  call's own awaitable stepped from its futures' callbacks: no coroutine,
  task or concurrent future of the bridge's (issue 20: the loop thread holds
  the GIL for every Python step it takes, stalling the reactor).
* grpcio's synchronous API (a caller-supplied ``grpc.Channel``, tests' fakes):

* unary: ``multicallable.future(...)`` -> :class:`Deferred`.  The future's done
  callback only hops to the reactor with ``callFromThread``; the Deferred's
  canceller cancels the future; a Deferred is never fired twice.
* server streams and bidi streams: one dedicated daemon thread per stream
  iterates the responses and hands each message to the reactor.  The reader
  waits until the reactor-side handler has finished with a message before it
  reads the next one (one message in flight: bounded memory, and gRPC flow
  control pushes back to the server).  Bidi requests are fed from the reactor
  through a :class:`queue.Queue` that grpcio's request iterator drains.
* :class:`grpc.RpcError` codes become :mod:`nbgateway.errors` types.
* :meth:`GrpcBridge.stop` cancels every live call and joins the stream threads
  (synchronous API) with a bound; asyncio calls are cancelled on the loop.

Nothing here touches a Twisted object from a non-reactor thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway import errors

log = Logger()

_ERRORS_BY_CODE: dict[grpc.StatusCode, type[errors.ManagementError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.ManagementUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.ManagementTimeoutError,
    grpc.StatusCode.CANCELLED: errors.ManagementCancelledError,
    grpc.StatusCode.UNAUTHENTICATED: errors.ManagementUnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.ManagementPermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: errors.ManagementNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.ManagementInvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ManagementRateLimitedError,
    grpc.StatusCode.UNIMPLEMENTED: errors.ManagementUnimplementedError,
}


def map_rpc_error(exc: BaseException) -> errors.ManagementError:
    """Translate a grpcio exception into the nbgateway error family."""
    if isinstance(exc, errors.ManagementError):
        return exc
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        details = exc.details() if hasattr(exc, "details") else ""
        cls = _ERRORS_BY_CODE.get(code, errors.ManagementError)
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        return cls(details or "", code=name)
    if isinstance(exc, grpc.FutureCancelledError):
        return errors.ManagementCancelledError("call cancelled")
    return errors.ManagementError(f"{type(exc).__name__}: {exc}")


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_error(number: int, details: str = "") -> errors.ManagementError:
    """The nbgateway error for a gRPC status code given as its number (a
    status carried inside a message, e.g. one peer's end on a shared stream)."""
    code = _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
    return _ERRORS_BY_CODE.get(code, errors.ManagementError)(details, code=code.name)


_CLOSE = object()  # sentinel ending a bidi request iterator

_AIO_TYPES = (
    grpc.aio.UnaryUnaryMultiCallable,
    grpc.aio.UnaryStreamMultiCallable,
    grpc.aio.StreamStreamMultiCallable,
)


def is_aio(method: Any) -> bool:
    """True for a multicallable of a ``grpc.aio`` channel."""
    return isinstance(method, _AIO_TYPES)


class AioLoop:
    """One asyncio event loop on one daemon thread, shared by every bridge."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        #: unary calls the reactor posted, not yet started (see post)
        self._posted: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._post_pending = False
        self.thread = threading.Thread(target=self._run, name="nbgw-grpc-aio", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the loop (from any thread); a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread soon (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread soon, in posting order; from the
        reactor thread only (one poster).  Posts made before the loop ran the
        first share its one wake-up (``call_soon_threadsafe``: a socket write
        and a loop turn each): a busy reactor starting several calls in a
        turn wakes the loop once."""
        self._posted.append((fn, args))
        if not self._post_pending:
            self._post_pending = True
            self.loop.call_soon_threadsafe(self._run_posted)

    def _run_posted(self) -> None:  # loop thread
        # cleared before draining: a post after this point schedules a new run,
        # a post before it is drained here
        self._post_pending = False
        posted = self._posted
        while posted:
            fn, args = posted.popleft()
            try:
                fn(*args)
            except Exception:
                log.failure("posted call {fn!r} failed", fn=fn)

    def run(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the loop thread and wait for its result (setup only:
        channel creation, which grpc.aio binds to the running loop)."""

        async def call() -> Any:
            return fn()

        return self.submit(call()).result(timeout)


_aio_loop: AioLoop | None = None
_aio_lock = threading.Lock()


def aio_loop() -> AioLoop:
    """The process-wide loop thread, started on first use."""
    global _aio_loop
    with _aio_lock:
        if _aio_loop is None:
            _aio_loop = AioLoop()
        return _aio_loop

#: Bound on concurrent unary calls (memory and management load); past it calls
#: fail fast with ManagementUnavailableError, which callers treat as "deny".
MAX_INFLIGHT_UNARY = 4096


class StreamCall:
    """One open server-streaming or bidi call, owned by the reactor thread.

    ``on_message(msg)`` runs on the reactor for each response, one at a time;
    it may return a Deferred, and the next message is not read until that
    Deferred fires.  If ``on_message`` fails, the call is cancelled and
    :attr:`done` fails with that error.  :attr:`done` fires exactly once: with
    ``None`` when the server closed the stream cleanly, otherwise with a
    :class:`~nbgateway.errors.ManagementError` failure.  Cancelling
    :attr:`done` cancels the call.

    Memory (issue 18: one of these per account's ``Sync`` stream): slots, a
    plain ``_stopping`` flag (set on the reactor, read by the reader; a bool
    store is atomic), the reader thread's semaphore only in thread mode, and
    in asyncio mode no per-stream lock or event: the task waits for credit
    on a loop future that exists only while a message is being handled.
    """

    __slots__ = (
        "__weakref__",
        "_aio",
        "_aio_requests",
        "_aio_waiter",
        "_bridge",
        "_call",
        "_credit",
        "_name",
        "_on_message",
        "_requests",
        "_stopping",
        "_task",
        "_thread",
        "done",
        "messages_received",
    )

    def __init__(
        self,
        bridge: GrpcBridge,
        name: str,
        on_message: Callable[[Any], Deferred[Any] | None],
    ) -> None:
        self._bridge = bridge
        self._name = name
        self._on_message = on_message
        self._call: Any = None
        self._requests: queue.Queue[Any] | None = None
        #: thread mode only: the reader waits here for the reactor's credit
        self._credit: threading.Semaphore | None = None
        #: set once (reactor thread, or the reader on a handler failure)
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: asyncio mode: the loop, the task, the credit future while a message
        #: is out, the request queue (bidi only; touched on the loop thread only)
        self._aio: AioLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._aio_waiter: asyncio.Future[None] | None = None
        self._aio_requests: asyncio.Queue[Any] | None = None
        self.messages_received = 0
        self.done: Deferred[None] = Deferred(self._cancelled)

    def _cancelled(self, _d: Deferred[None]) -> None:
        self.cancel()

    # -- reactor side -------------------------------------------------------

    def send(self, request: Any) -> None:
        """Queue one request on a bidi stream (non-blocking)."""
        if self._aio is not None:
            if self._aio_requests is None:
                raise TypeError(f"{self._name} is not a client-streaming call")
            if not self._stopping:
                self._aio.call(self._aio_requests.put_nowait, request)
            return
        if self._requests is None:
            raise TypeError(f"{self._name} is not a client-streaming call")
        if not self._stopping:
            self._requests.put(request)

    def cancel(self) -> None:
        """Cancel the call; :attr:`done` fails with a cancellation error."""
        if self._stopping:
            return
        self._stopping = True
        self._abort()
        self._finish(Failure(errors.ManagementCancelledError(f"{self._name} cancelled")))

    def _abort(self) -> None:
        """Stop the call and wake its reader (after ``_stopping`` is set)."""
        if self._aio is not None:
            self._aio.call(self._aio_abort)
            return
        if self._requests is not None:
            self._requests.put(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        if self._credit is not None:
            self._credit.release()

    def _release_credit(self) -> None:
        if self._aio is not None:
            self._aio.call(self._aio_grant)
        elif self._credit is not None:
            self._credit.release()

    @property
    def active(self) -> bool:
        return not self.done.called

    def _finish(self, result: Failure | None) -> None:
        self._bridge._forget(self)
        if self.done.called:
            return
        self.done.callback(None) if result is None else self.done.errback(result)

    def _deliver(self, message: Any) -> None:
        if self.done.called:
            self._release_credit()
            return
        self.messages_received += 1
        d = maybeDeferred(self._on_message, message)

        def handled(_: object) -> None:
            self._release_credit()

        def failed(reason: Failure) -> None:
            log.failure("{name}: message handler failed; closing stream", reason, name=self._name)
            self._stopping = True
            self._abort()
            self._finish(reason)

        d.addCallbacks(handled, failed)

    # -- stream thread ------------------------------------------------------

    def _request_iterator(self) -> Iterator[Any]:
        assert self._requests is not None
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _run(self) -> None:
        reactor = self._bridge.reactor
        outcome: Failure | None = None
        credit = self._credit
        assert credit is not None
        try:
            for message in self._call:
                if self._stopping:
                    break
                reactor.callFromThread(self._deliver, message)
                del message  # not kept while the next read waits (issue 18: a map is MBs)
                credit.acquire()
                if self._stopping:
                    break
        except grpc.RpcError as exc:
            outcome = Failure(map_rpc_error(exc))
        except Exception as exc:  # grpcio internals; never let the thread die silently
            outcome = Failure(map_rpc_error(exc))
        finally:
            if self._requests is not None:
                self._requests.put(_CLOSE)
        if not self._stopping:
            reactor.callFromThread(self._finish, outcome)

    # -- asyncio loop thread (asyncio mode) ------------------------------------------

    def _aio_grant(self) -> None:
        waiter, self._aio_waiter = self._aio_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _aio_abort(self) -> None:
        if self._aio_requests is not None:
            self._aio_requests.put_nowait(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        self._aio_grant()

    async def _aio_request_iterator(self) -> AsyncIterator[Any]:
        assert self._aio_requests is not None
        while True:
            item = await self._aio_requests.get()
            if item is _CLOSE:
                return
            yield item

    def _aio_spawn(self, start: Callable[[], Any]) -> None:
        """Start the reading task (on the loop thread): no concurrent future
        (its Condition) per stream, as ``run_coroutine_threadsafe`` would add."""
        assert self._aio is not None
        self._task = self._aio.loop.create_task(self._run_aio(start))

    async def _run_aio(self, start: Callable[[], Any]) -> None:
        reactor = self._bridge.reactor
        outcome: Failure | None = None
        loop = asyncio.get_running_loop()
        try:
            if self._stopping:
                return
            self._call = call = start()
            # read() rather than ``async for``: no async generator per stream
            while (message := await call.read()) is not grpc.aio.EOF:
                if self._stopping:
                    break
                self._aio_waiter = waiter = loop.create_future()
                reactor.callFromThread(self._deliver, message)
                del message  # not kept while the next read waits (issue 18: a map is MBs)
                await waiter
                if self._stopping:
                    break
        except asyncio.CancelledError:
            outcome = Failure(errors.ManagementCancelledError(f"{self._name} cancelled"))
        except grpc.RpcError as exc:
            outcome = Failure(map_rpc_error(exc))
        except Exception as exc:  # grpcio internals; never let the task die silently
            outcome = Failure(map_rpc_error(exc))
        finally:
            self._aio_waiter = None
            self._task = None
            if self._aio_requests is not None:
                self._aio_requests.put_nowait(_CLOSE)
        if not self._stopping:
            reactor.callFromThread(self._finish, outcome)


class GrpcBridge:
    """Starts grpcio calls and routes their results to the reactor (slotted:
    one per account's peer channel)."""

    __slots__ = ("_stopped", "_streams", "_unary", "join_timeout", "max_inflight", "reactor",
                 "refused")

    def __init__(
        self,
        reactor: IReactorFromThreads,
        join_timeout: float = 2.0,
        max_inflight: int = MAX_INFLIGHT_UNARY,
    ) -> None:
        self.reactor = reactor
        self.join_timeout = join_timeout
        self.max_inflight = max_inflight
        #: Unary calls refused because ``max_inflight`` were already running.
        self.refused = 0
        # live calls as dict keys (an empty dict is a third of an empty set:
        # one bridge per account)
        self._unary: dict[Any, None] = {}  # grpc.Future (sync API) or _AioUnary
        self._streams: dict[StreamCall, None] = {}
        self._stopped = False

    def unary(
        self,
        method: grpc.UnaryUnaryMultiCallable,
        request: Any,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Deferred[Any]:
        """Start a unary call; the Deferred fires with the response message."""
        if self._stopped:
            return _failed(errors.ManagementUnavailableError("management client stopped"))
        if len(self._unary) >= self.max_inflight:
            self.refused += 1
            return _failed(errors.ManagementUnavailableError("too many in-flight management calls"))
        if is_aio(method):
            op = _AioUnary(self)
            self._unary[op] = None
            aio_loop().post(op.start, method, request, timeout, metadata)
            return op.d
        future: Any = method.future(request, timeout=timeout, metadata=metadata)
        self._unary[future] = None
        d: Deferred[Any] = Deferred(lambda _d: future.cancel())

        def settle(fut: Any) -> None:  # reactor thread
            self._settled(fut)
            if d.called:  # cancelled by the caller: already failed
                return
            if fut.cancelled():
                d.errback(errors.ManagementCancelledError("call cancelled"))
                return
            exc = fut.exception()
            if exc is not None:
                d.errback(map_rpc_error(exc))
            else:
                d.callback(fut.result())

        # grpc thread (or this thread, if already done): only hop threads here.
        future.add_done_callback(lambda fut: self.reactor.callFromThread(settle, fut))
        return d

    def _settled(self, call: Any) -> None:
        """Forget a finished unary call (reactor thread)."""
        self._unary.pop(call, None)
        if not self._unary:
            # an emptied dict keeps its table (~0.2 KiB); clear() drops it:
            # an idle account's bridge has no call in flight
            self._unary.clear()

    def server_stream(
        self,
        method: grpc.UnaryStreamMultiCallable,
        request: Any,
        on_message: Callable[[Any], Deferred[Any] | None],
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        name: str = "stream",
    ) -> StreamCall:
        """Open a server-streaming call read by its own daemon thread."""
        stream = StreamCall(self, name, on_message)
        if self._stopped:
            stream._finish(Failure(errors.ManagementUnavailableError("management client stopped")))
            return stream
        if is_aio(method):
            self._start_aio(stream, lambda: method(request, metadata=metadata))
            return stream
        stream._call = method(request, metadata=metadata)
        self._start(stream)
        return stream

    def bidi_stream(
        self,
        method: grpc.StreamStreamMultiCallable,
        on_message: Callable[[Any], Deferred[Any] | None],
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        name: str = "bidi",
        first: Any = None,
    ) -> StreamCall:
        """Open a bidi call; requests are fed with :meth:`StreamCall.send`.
        ``first`` (if given) is queued before the call starts."""
        stream = StreamCall(self, name, on_message)
        if self._stopped:
            stream._finish(Failure(errors.ManagementUnavailableError("management client stopped")))
            return stream
        if is_aio(method):
            stream._aio_requests = asyncio.Queue()
            if first is not None:
                stream._aio_requests.put_nowait(first)  # the loop has not seen it yet
            self._start_aio(
                stream, lambda: method(stream._aio_request_iterator(), metadata=metadata))
            return stream
        stream._requests = queue.Queue()
        if first is not None:
            stream._requests.put(first)
        stream._call = method(stream._request_iterator(), metadata=metadata)
        self._start(stream)
        return stream

    def _start_aio(self, stream: StreamCall, start: Callable[[], Any]) -> None:
        self._streams[stream] = None
        stream._aio = loop = aio_loop()
        loop.call(stream._aio_spawn, start)

    def _start(self, stream: StreamCall) -> None:
        self._streams[stream] = None
        stream._credit = threading.Semaphore(0)
        thread = threading.Thread(target=stream._run, name=f"nbgw-grpc-{stream._name}")
        thread.daemon = True
        stream._thread = thread
        thread.start()

    def _forget(self, stream: StreamCall) -> None:
        self._streams.pop(stream, None)

    @property
    def live_calls(self) -> int:
        return len(self._unary) + len(self._streams)

    def stop(self) -> None:
        """Cancel every live call and join stream threads (bounded wait).

        Idempotent.  Called from the reactor thread (stopService)."""
        self._stopped = True
        for future in list(self._unary):
            future.cancel()
        self._unary.clear()
        streams = list(self._streams)
        for stream in streams:
            stream.cancel()
        for stream in streams:
            if stream._thread is not None:
                stream._thread.join(self.join_timeout)
                if stream._thread.is_alive():
                    log.warn("gRPC stream thread {name} did not stop", name=stream._name)


class _Inbox:
    """Finished unary calls on their way to one reactor: the loop appends, the
    reactor drains.  Outcomes that arrive before the reactor ran the first
    drain share its one ``callFromThread`` (a pipe write and a reactor wake-up
    each): a busy reactor gets a burst of answers in one turn."""

    __slots__ = ("items", "pending", "reactor")

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self.reactor = reactor
        self.items: deque[tuple[_AioUnary, bool, Any]] = deque()
        self.pending = False

    def put(self, op: _AioUnary, ok: bool, value: Any) -> None:  # loop thread
        self.items.append((op, ok, value))
        if not self.pending:
            self.pending = True
            self.reactor.callFromThread(self.drain)

    def drain(self) -> None:  # reactor thread
        self.pending = False  # before draining: see AioLoop._run_posted
        items = self.items
        while items:
            op, ok, value = items.popleft()
            try:
                op._settle(ok, value)
            except Exception:
                log.failure("settling a management call failed")


#: one inbox per reactor (keyed by identity; touched by the loop thread only)
_inboxes: dict[int, _Inbox] = {}


def _inbox(reactor: IReactorFromThreads) -> _Inbox:
    box = _inboxes.get(id(reactor))
    if box is None or box.reactor is not reactor:
        box = _inboxes[id(reactor)] = _Inbox(reactor)
    return box


class _AioUnary:
    """One unary call on a ``grpc.aio`` channel (issue 20: the per-call cost).

    The reactor hands the call to the loop with one ``call_soon_threadsafe``
    (no coroutine, task or concurrent future of ours); on the loop the call's
    own awaitable (``call.__await__()``, grpc.aio's public protocol) is
    stepped from its futures' done callbacks, as a task would step it but
    without one; the outcome hops back with one ``callFromThread``.
    Cancelling :attr:`d` (or :meth:`GrpcBridge.stop`) cancels the RPC on
    the loop; a Deferred is never fired twice."""

    __slots__ = ("_await", "bridge", "call", "d", "stopped")

    def __init__(self, bridge: GrpcBridge) -> None:
        self.bridge = bridge
        self.call: Any = None
        self._await: Any = None
        #: set on the reactor (caller's cancel, bridge stop); read on the loop
        self.stopped = False
        self.d: Deferred[Any] = Deferred(self._cancelled)

    # -- reactor thread ---------------------------------------------------------

    def _cancelled(self, _d: Deferred[Any]) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Cancel the RPC (the loop does it); :attr:`d` fails once."""
        if not self.stopped:
            self.stopped = True
            aio_loop().post(self._abort)

    def _settle(self, ok: bool, value: Any) -> None:
        self.bridge._settled(self)
        if self.d.called:  # cancelled by the caller: already failed
            return
        if ok:
            self.d.callback(value)
        elif isinstance(value, (asyncio.CancelledError, concurrent.futures.CancelledError)):
            self.d.errback(errors.ManagementCancelledError("call cancelled"))
        else:
            self.d.errback(map_rpc_error(value))

    # -- loop thread ----------------------------------------------------------

    def start(self, method: Any, request: Any, timeout: float | None,
              metadata: tuple[tuple[str, str], ...]) -> None:
        if self.stopped:
            self._report(False, asyncio.CancelledError())
            return
        try:
            self.call = method(request, timeout=timeout, metadata=metadata)
            self._await = self.call.__await__()
        except Exception as exc:  # a closed channel, grpcio internals: fail the call
            self._report(False, exc)
            return
        self._step(None)

    def _step(self, _fut: Any) -> None:
        try:
            waiting = self._await.send(None)
        except StopIteration as done:
            self._report(True, done.value)
            return
        except BaseException as exc:  # the RPC's error, or its cancellation
            self._report(False, exc)
            return
        if waiting is None:  # a bare yield: step again on the next turn
            asyncio.get_running_loop().call_soon(self._step, None)
            return
        waiting._asyncio_future_blocking = False  # as a task does with what it awaits
        waiting.add_done_callback(self._step)

    def _abort(self) -> None:
        if self.call is not None:
            self.call.cancel()

    def _report(self, ok: bool, value: Any) -> None:
        self._await = None
        self.call = None
        _inbox(self.bridge.reactor).put(self, ok, value)


def _failed(exc: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d
