"""One asyncio loop thread and one small fixed thread pool hosting the
management's gRPC servers (``grpc.aio``), whatever the number of streams.

What it owns:

* :class:`GrpcLoop`: an asyncio event loop running on one daemon thread,
  created by :meth:`GrpcLoop.start` (never at import or construction, so
  nothing is live before ``twistd`` forks), and a ``ThreadPoolExecutor`` of
  ``workers`` threads that is the loop's default executor.  Blocking store
  work (SQLAlchemy) of stream coroutines goes there with
  ``loop.run_in_executor(None, ...)``; grpcio runs the synchronous (unary)
  handlers there too (its ``migration_thread_pool``).
* :class:`LoopServer`: a ``grpc.aio.server`` built and driven on a
  :class:`GrpcLoop`, with the synchronous surface of ``grpc.Server`` callers
  use (``add_generic_rpc_handlers``, ``add_*_port``, ``start``, ``stop``
  returning an event), so the Twisted service, tests and benches drive it
  from any thread.

A long-lived stream is a coroutine waiting on an ``asyncio.Event``; it holds
no thread.  Thread count is ``1 + workers`` (+ grpc's own core threads)
whatever the number of streams.  :func:`wake_threadsafe` is how other
threads (the store's change listener, the mapping dispatcher) wake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
from twisted.logger import Logger

log = Logger()

T = TypeVar("T")

#: threads for blocking store work and unary handlers (fixed)
DEFAULT_WORKERS = 8


def wake_threadsafe(loop: asyncio.AbstractEventLoop | None, event: asyncio.Event) -> None:
    """Set ``event`` (owned by ``loop``) from any thread; a closed loop is ignored."""
    if loop is None:
        return
    with contextlib.suppress(RuntimeError):  # loop closed: the stream is gone anyway
        loop.call_soon_threadsafe(event.set)


def _meet(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(10.0)


class GrpcLoop:
    """See the module docstring."""

    def __init__(self, *, workers: int = DEFAULT_WORKERS, name: str = "nbmanagement-grpc") -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.loop is not None:
            return
        loop = asyncio.new_event_loop()
        executor = futures.ThreadPoolExecutor(max_workers=self.workers,
                                              thread_name_prefix=f"{self.name}-work")
        loop.set_default_executor(executor)
        # start every pool thread now (the executor would add them lazily, one per
        # busy moment): the thread count is fixed from the start
        barrier = threading.Barrier(self.workers)
        for _ in range(self.workers):
            executor.submit(_meet, barrier)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"{self.name}-loop", daemon=True)
        self.loop, self.executor, self._thread = loop, executor, thread
        thread.start()
        ready.wait(10.0)

    def run(self, coro: Awaitable[T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the loop from another thread and return its result."""
        if self.loop is None:
            raise RuntimeError("GrpcLoop is not started")
        if threading.current_thread() is self._thread:
            raise RuntimeError("GrpcLoop.run called from the loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def submit(self, coro: Awaitable[Any]) -> futures.Future[Any]:
        """Schedule ``coro`` on the loop from another thread (not waiting)."""
        if self.loop is None:
            raise RuntimeError("GrpcLoop is not started")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop thread, then the pool once its queued work is done (call
        after the servers have stopped; not from the loop thread)."""
        loop, thread, executor = self.loop, self._thread, self.executor
        self.loop = self._thread = self.executor = None
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        # The loop is stopped but deliberately not closed: grpc's process-wide
        # completion-queue poller may still hand a late event of this loop's
        # calls to it (call_soon_threadsafe) from another aio loop of the
        # process; on a closed loop that raises there.
        if executor is not None:
            # queued store work (ended streams marking their peer or proxy
            # disconnected) still runs: the streams ended before the loop stopped
            executor.shutdown(wait=True)


class LoopServer:
    """A ``grpc.aio`` server on a :class:`GrpcLoop` behind a synchronous facade.

    ``loop``: a started or unstarted :class:`GrpcLoop` (started here if
    needed; :meth:`stop` stops it only when this server created it, with
    ``workers`` threads).
    """

    def __init__(
        self,
        loop: GrpcLoop | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        options: Sequence[tuple[str, Any]] = (),
        maximum_concurrent_rpcs: int | None = None,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        self._owns_loop = loop is None
        self.grpc_loop = loop or GrpcLoop(workers=workers)
        self.grpc_loop.start()
        executor = self.grpc_loop.executor

        async def build() -> grpc.aio.Server:
            return grpc.aio.server(
                migration_thread_pool=executor,
                handlers=list(handlers),
                options=list(options),
                maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            )

        self.server: grpc.aio.Server = self.grpc_loop.run(build())
        self._stopped = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self.grpc_loop.loop is not None
        return self.grpc_loop.loop

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.grpc_loop.run(call())

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._on_loop(lambda: self.server.add_generic_rpc_handlers(handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._on_loop(lambda: self.server.add_registered_method_handlers(service, handlers))

    def add_insecure_port(self, address: str) -> int:
        return self._on_loop(lambda: self.server.add_insecure_port(address))

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._on_loop(lambda: self.server.add_secure_port(address, credentials))

    def start(self) -> None:
        self.grpc_loop.run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (streams still open after ``grace`` are cancelled);
        the returned event is set once grpc has shut down."""
        if self._stopped.is_set() or self.grpc_loop.loop is None:
            self._stopped.set()
            return self._stopped

        async def stop() -> None:
            try:
                await self.server.stop(grace)
            except Exception:
                log.failure("stopping the management gRPC server")

        def finish(_: Any) -> None:
            if self._owns_loop:
                threading.Thread(target=self._stop_loop, name="nbmanagement-grpc-stop",
                                 daemon=True).start()
            else:
                self._stopped.set()

        try:
            self.grpc_loop.submit(stop()).add_done_callback(finish)
        except RuntimeError:
            self._stopped.set()
        return self._stopped

    def _stop_loop(self) -> None:
        self.grpc_loop.stop()
        self._stopped.set()


class RpcAbortError(Exception):
    """Raised by blocking (executor-side) code: end the RPC with this status.

    The handler turns it into ``context.abort`` (awaited on the loop, called
    in a synchronous handler), so blocking helpers need no context.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome (no "exception never retrieved" noise)."""
    if not task.cancelled():
        task.exception()


async def race(awaitable: Awaitable[T], stop: asyncio.Event, *,
               grace: float = 0.0) -> tuple[bool, T | None]:
    """Await ``awaitable`` unless ``stop`` is set first: ``(True, result)``, or
    ``(False, None)`` with ``awaitable`` cancelled.  When ``stop`` wins, the work
    still gets ``grace`` seconds to complete.  Its exceptions propagate."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return False, None
    work = asyncio.ensure_future(awaitable)
    # if this coroutine is cancelled (client gone) or gives up, the work may still
    # end with its own exception: retrieve it (no "never retrieved" noise)
    work.add_done_callback(_consume)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done() and grace > 0:
            await asyncio.wait({work}, timeout=grace)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return True, work.result()
    return False, None


#: how long a write in flight may still complete once its stream is stopped
WRITE_GRACE = 2.0


async def write_or_stop(context: Any, message: Any, stop: asyncio.Event) -> bool:
    """``await context.write(message)`` unless ``stop`` is set first (also
    while the write waits for a slow reader's flow control); True if written.

    A write in flight when ``stop`` is set gets :data:`WRITE_GRACE` to finish
    (usually it is only a loop turn away): grpc must not be asked for the
    call's status while the batch carrying its first message (and initial
    metadata) is still outstanding.  Only a reader blocking flow control for
    longer has its write abandoned."""
    written, _ = await race(context.write(message), stop, grace=WRITE_GRACE)
    return written
