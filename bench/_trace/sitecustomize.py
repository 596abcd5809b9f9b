"""Stall tracer for bench/scale.py (on PYTHONPATH of the processes it starts).

Writes ``NBTRACE <prog> <unix time> <event> ...`` lines to stderr (the
process's log file) for: every cyclic-GC collection of generation 2 or one
taking >= 20 ms (``gc ...``), a main thread stuck in one Python frame for
>= 100 ms outside the reactor's poll (``stall ...`` with its innermost
frames), and the sampler thread waking >= 100 ms late (``late ...``: something
held the GIL).  Enabled only when ``NBTRACE=1``; read by bench/scale.py to
attribute slow mapping changes.  Bench tooling, not shipped.
"""

import contextlib
import os
import sys

if os.environ.get("NBTRACE") == "1":
    import gc
    import threading
    import time

    _PROG = ("nbmanagement" if "nbmanagement" in sys.argv else
             "nbgateway" if "nbgateway" in sys.argv else os.path.basename(sys.argv[0] or "py"))
    _IDLE = {"doPoll", "doSelect", "doIteration", "wait", "select", "poll"}
    _t_gc = [0.0]

    def _out(msg: str) -> None:
        with contextlib.suppress(OSError):
            os.write(2, f"NBTRACE {_PROG} {time.time():.3f} {msg}\n".encode())

    def _gc_cb(phase: str, info: dict) -> None:
        if phase == "start":
            _t_gc[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _t_gc[0]) * 1000
        if info.get("generation") == 2 or ms >= 20:
            _out(f"gc gen={info.get('generation')} ms={ms:.1f} "
                 f"collected={info.get('collected')} frozen={gc.get_freeze_count()}")

    gc.callbacks.append(_gc_cb)

    def _stack(frame) -> str:
        parts = []
        while frame is not None and len(parts) < 8:
            c = frame.f_code
            parts.append(f"{os.path.basename(c.co_filename)}:{frame.f_lineno}:{c.co_name}")
            frame = frame.f_back
        return " < ".join(parts)

    def _sampler() -> None:
        main = threading.main_thread().ident
        last_key, since, reported = None, 0.0, False
        prev = time.perf_counter()
        while True:
            time.sleep(0.01)
            now = time.perf_counter()
            if now - prev >= 0.1:
                _out(f"late ms={(now - prev) * 1000:.0f}")
            prev = now
            frame = sys._current_frames().get(main)
            if frame is None:
                continue
            key = (id(frame), frame.f_lasti, frame.f_code)
            if key != last_key:
                if reported:
                    _out(f"stall-end ms={(now - since) * 1000:.0f}")
                last_key, since, reported = key, now, False
                continue
            if not reported and now - since >= 0.1 and frame.f_code.co_name not in _IDLE:
                reported = True
                _out(f"stall {_stack(frame)}")

    threading.Thread(target=_sampler, name="nbtrace", daemon=True).start()
