"""Micro-benchmark: the shared request/idle deadlines (nbgateway.dial.deadlines)
of one request alone on the gateway (one connection), with no request in
flight in between: a request deadline and a pooled connection's idle deadline
added and cancelled per request (the request's also as the reverse proxy
holds it, ``Deadlines.add_owner`` cancelled by ``owner.due = None``, where
the tree has it).

Measures CPU microseconds per request and reactor timer calls (``callLater``)
per request on a ``task.Clock`` and on the real reactor's ``callLater``
(the reactor is not run, but its ``runUntilCurrent`` is called every 16
requests, as a loop turn would: new timers go into its heap and cancelled
ones are cleaned up there), for this tree or
``--tree DIR`` (another checkout), and with ``--no-linger`` the deadlines
without the lingering timer.

Run:  .venv/bin/python bench/deadlines.py [--requests 200000] [--tree DIR] [--no-linger]
"""

from __future__ import annotations

import argparse
import sys
import time


class _Owner:
    due: float | None = None

    def deadline_expired(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--tree", default="")
    parser.add_argument("--no-linger", action="store_true")
    args = parser.parse_args(argv)
    if args.tree:
        sys.path.insert(0, args.tree)
    from twisted.internet import reactor, task

    from nbgateway.dial import deadlines

    kw = {"linger": False} if args.no_linger else {}
    print(f"{deadlines.__file__}{' (linger off)' if args.no_linger else ''}")
    for name, clock in (("task.Clock", task.Clock()), ("reactor", reactor)):
        calls = [0]
        real = clock.callLater

        def counting(*a, real=real, calls=calls, **k):
            calls[0] += 1
            return real(*a, **k)

        clock.callLater = counting  # type: ignore[method-assign]
        dl = deadlines.Deadlines(clock, **kw)
        fn = lambda: None  # noqa: E731
        n = args.requests
        t0 = time.process_time()
        turn = getattr(clock, "runUntilCurrent", None)
        for i in range(n):
            if turn is not None and not i & 15:
                turn()
            dl.add(30.0, fn).cancel()  # the request's deadline, cancelled at the head
            dl.add(90.0, fn).cancel()  # the pooled connection's idle deadline
        cpu = time.process_time() - t0
        print(f"  {name:10s} {cpu / n * 1e6:6.2f} us per request, "
              f"{calls[0] / n:.4f} timer calls per request")
        if hasattr(dl, "add_owner"):  # the request deadline as the proxy holds it
            dl = deadlines.Deadlines(clock, **kw)
            owner = _Owner()
            calls[0] = 0
            t0 = time.process_time()
            for i in range(n):
                if turn is not None and not i & 15:
                    turn()
                dl.add_owner(30.0, owner)
                owner.due = None  # cancelled: an attribute store
                dl.add(90.0, fn).cancel()
            cpu = time.process_time() - t0
            print(f"  {name:10s} {cpu / n * 1e6:6.2f} us per request with add_owner, "
                  f"{calls[0] / n:.4f} timer calls per request")
        del clock.callLater
    return 0


if __name__ == "__main__":
    sys.exit(main())
